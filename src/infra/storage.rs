//! Where photos are kept: a local directory (`STORAGE_DIR`) or any object store `object_store`
//! speaks (`STORAGE_URL=s3://bucket/prefix`, for S3 and S3-compatible stores such as MinIO).

use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

#[derive(Clone)]
pub struct PhotoStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl PhotoStore {
    /// From `STORAGE_URL` when set, else the directory `STORAGE_DIR` (created if missing).
    pub fn from_config(storage_url: Option<&str>, storage_dir: &str) -> anyhow::Result<PhotoStore> {
        match storage_url.filter(|u| !u.trim().is_empty()) {
            Some(url) => {
                let parsed = url::Url::parse(url).context("STORAGE_URL is not a URL")?;
                let options: Vec<(String, String)> = std::env::vars()
                    .filter(|(k, _)| k.starts_with("AWS_"))
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect();
                let (store, prefix) = object_store::parse_url_opts(&parsed, options)
                    .context("STORAGE_URL: unsupported or misconfigured object store")?;
                Ok(PhotoStore {
                    store: Arc::from(store),
                    prefix,
                })
            }
            None => {
                std::fs::create_dir_all(storage_dir)
                    .with_context(|| format!("creating STORAGE_DIR {storage_dir}"))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(storage_dir)
                    .with_context(|| format!("STORAGE_DIR {storage_dir}"))?;
                Ok(PhotoStore {
                    store: Arc::new(store),
                    prefix: Path::default(),
                })
            }
        }
    }

    fn path(&self, key: &str) -> Path {
        self.prefix.parts().chain(Path::from(key).parts()).collect()
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.store
            .put(&self.path(key), PutPayload::from(bytes))
            .await
            .with_context(|| format!("storing {key}"))?;
        Ok(())
    }

    /// The object, or `None` when it is not there.
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>> {
        match self.store.get(&self.path(key)).await {
            Ok(found) => Ok(Some(found.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Deletes an object; one already gone is fine.
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// How many objects are stored (operators, tests).
    pub async fn count(&self) -> anyhow::Result<usize> {
        use futures::TryStreamExt;
        let listed: Vec<_> = self.store.list(Some(&self.prefix)).try_collect().await?;
        Ok(listed.len())
    }
}
