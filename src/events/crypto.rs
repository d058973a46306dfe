//! Crypto-shredding: personal data inside events is sealed with a per-user AES-256-GCM key kept in
//! the `user_keys` table, never in the log. Deleting the key makes every sealed field of that user
//! unreadable forever while the log itself stays intact.

use std::collections::HashMap;
use std::fmt;
use std::sync::RwLock;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 12;

/// A sealed (encrypted) field as stored inside an event payload: `v1:` + base64(nonce || ciphertext).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    /// The stored form, for a read model that keeps a field sealed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A field read back from where [`Sealed::as_str`] put it.
    pub fn from_stored(value: String) -> Sealed {
        Sealed(value)
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealed(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the data key of user {0} is gone (erased) or was never created")]
    KeyMissing(Uuid),
    #[error("sealed field is malformed or was not sealed with this key")]
    Corrupt,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One user's data key, ready to seal and open. The user id is bound in as associated data, so a
/// field copied into another user's event does not open.
#[derive(Clone)]
pub struct Cipher {
    user_id: Uuid,
    aead: Aes256Gcm,
}

impl Cipher {
    /// The cipher of `user_id` under a 32-byte key (for bulk writers that create the keys rows
    /// themselves, in the transaction of the events sealed with them: `seed load`).
    pub fn new(user_id: Uuid, key: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != 32 {
            return Err(CryptoError::Corrupt);
        }
        Ok(Self {
            user_id,
            aead: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
        })
    }

    pub fn seal(&self, plaintext: &str) -> Sealed {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: self.user_id.as_bytes(),
        };
        // Encryption with a valid key and a fresh nonce cannot fail for inputs of this size.
        let ciphertext = self
            .aead
            .encrypt(&nonce, payload)
            .expect("AES-GCM encryption of a bounded plaintext");
        let mut bytes = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ciphertext);
        Sealed(format!("{PREFIX}{}", STANDARD.encode(bytes)))
    }

    pub fn open(&self, sealed: &Sealed) -> Result<String, CryptoError> {
        let encoded = sealed.0.strip_prefix(PREFIX).ok_or(CryptoError::Corrupt)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| CryptoError::Corrupt)?;
        if bytes.len() < NONCE_LEN {
            return Err(CryptoError::Corrupt);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: self.user_id.as_bytes(),
        };
        let plain = self
            .aead
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| CryptoError::Corrupt)?;
        String::from_utf8(plain).map_err(|_| CryptoError::Corrupt)
    }
}

/// The `user_keys` table with an in-process cache of keys already read.
pub struct KeyStore {
    pool: PgPool,
    cache: RwLock<HashMap<Uuid, Cipher>>,
}

impl KeyStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Creates a fresh key for a new user inside the caller's transaction (so it exists exactly
    /// when the user's first event does) and returns it ready to use.
    pub async fn create_in(
        &self,
        conn: &mut PgConnection,
        user_id: Uuid,
    ) -> Result<Cipher, CryptoError> {
        let key = zeroize::Zeroizing::new(Aes256Gcm::generate_key(&mut OsRng).to_vec());
        sqlx::query("INSERT INTO user_keys (user_id, key) VALUES ($1, $2)")
            .bind(user_id)
            .bind(key.as_slice())
            .execute(conn)
            .await?;
        Cipher::new(user_id, key.as_slice())
    }

    /// The cipher of a user, or `KeyMissing` once the key has been shredded.
    pub async fn cipher(&self, user_id: Uuid) -> Result<Cipher, CryptoError> {
        if let Some(cipher) = self.cache_get(user_id) {
            return Ok(cipher);
        }
        let key: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT key FROM user_keys WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        let key = zeroize::Zeroizing::new(key.ok_or(CryptoError::KeyMissing(user_id))?);
        let cipher = Cipher::new(user_id, &key)?;
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(user_id, cipher.clone());
        }
        Ok(cipher)
    }

    /// The plaintext of a field sealed under `user_id`'s key; `None` once that key is gone
    /// (erased): what read models store for an erased writer.
    pub async fn open_if_present(
        &self,
        user_id: Uuid,
        sealed: &Sealed,
    ) -> Result<Option<String>, CryptoError> {
        match self.cipher(user_id).await {
            Ok(cipher) => cipher.open(sealed).map(Some),
            Err(CryptoError::KeyMissing(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Whether a user's key is gone (erased). What projections skip by: the same answer live
    /// and in any later replay, unlike the presence of a read-model row, which may lag.
    pub async fn is_erased(&self, user_id: Uuid) -> Result<bool, CryptoError> {
        match self.cipher(user_id).await {
            Ok(_) => Ok(false),
            Err(CryptoError::KeyMissing(_)) => Ok(true),
            Err(err) => Err(err),
        }
    }

    /// The ciphers of several users at once (one query for those not cached yet); users whose
    /// key is gone are absent from the answer.
    pub async fn ciphers(&self, user_ids: &[Uuid]) -> Result<HashMap<Uuid, Cipher>, CryptoError> {
        let mut found = HashMap::with_capacity(user_ids.len());
        let mut missing = Vec::new();
        for id in user_ids {
            match self.cache_get(*id) {
                Some(cipher) => {
                    found.insert(*id, cipher);
                }
                None => missing.push(*id),
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let keys: Vec<(Uuid, Vec<u8>)> =
            sqlx::query_as("SELECT user_id, key FROM user_keys WHERE user_id = ANY($1)")
                .bind(&missing)
                .fetch_all(&self.pool)
                .await?;
        for (id, key) in keys {
            let key = zeroize::Zeroizing::new(key);
            let cipher = Cipher::new(id, &key)?;
            if let Ok(mut cache) = self.cache.write() {
                cache.insert(id, cipher.clone());
            }
            found.insert(id, cipher);
        }
        Ok(found)
    }

    /// Drops a user's key from this process's cache (their key was deleted: erasure).
    pub fn forget(&self, user_id: Uuid) {
        if let Ok(mut cache) = self.cache.write() {
            cache.remove(&user_id);
        }
    }

    /// Drops every cached key (after this process may have missed an erasure's announcement).
    pub fn forget_all(&self) {
        if let Ok(mut cache) = self.cache.write() {
            cache.clear();
        }
    }

    fn cache_get(&self, user_id: Uuid) -> Option<Cipher> {
        self.cache.read().ok()?.get(&user_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_field_opens_only_with_its_key_and_user() {
        let key = Aes256Gcm::generate_key(&mut OsRng);
        let alice = Uuid::new_v4();
        let cipher = Cipher::new(alice, key.as_slice()).unwrap();
        let sealed = cipher.seal("alice@example.com");
        assert!(!format!("{sealed:?}").contains("alice"));
        assert!(!sealed.0.contains("alice"));
        assert_eq!(cipher.open(&sealed).unwrap(), "alice@example.com");

        let other_user = Cipher::new(Uuid::new_v4(), key.as_slice()).unwrap();
        assert!(matches!(
            other_user.open(&sealed),
            Err(CryptoError::Corrupt)
        ));
        let other_key = Cipher::new(alice, Aes256Gcm::generate_key(&mut OsRng).as_slice()).unwrap();
        assert!(matches!(other_key.open(&sealed), Err(CryptoError::Corrupt)));
    }

    #[test]
    fn malformed_sealed_fields_are_errors_not_panics() {
        let cipher = Cipher::new(Uuid::new_v4(), &[7u8; 32]).unwrap();
        for bad in ["", "v1:", "v1:!!!", "v2:AAAA", "v1:AAAA"] {
            assert!(cipher.open(&Sealed(bad.to_string())).is_err(), "{bad}");
        }
    }
}

/// Per-message data keys (`message_keys`): a message's text is sealed under a key of its own, so
/// retention (`MESSAGE_RETENTION_DAYS`) and the erasure of its sender make exactly that text
/// unreadable, in the log and everywhere it was copied, by deleting keys. Not cached: each text
/// is opened once, by the projector.
pub struct MessageKeys {
    pool: PgPool,
}

impl MessageKeys {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Creates the key of a new message in the caller's transaction (the one appending it).
    pub async fn create_in(
        &self,
        conn: &mut PgConnection,
        message_id: Uuid,
        sender_id: Uuid,
    ) -> Result<Cipher, CryptoError> {
        let key = zeroize::Zeroizing::new(Aes256Gcm::generate_key(&mut OsRng).to_vec());
        sqlx::query("INSERT INTO message_keys (message_id, sender_id, key) VALUES ($1, $2, $3)")
            .bind(message_id)
            .bind(sender_id)
            .bind(key.as_slice())
            .execute(conn)
            .await?;
        Cipher::new(message_id, key.as_slice())
    }

    /// The cipher of a message, or `KeyMissing` once its key is gone.
    pub async fn cipher(&self, message_id: Uuid) -> Result<Cipher, CryptoError> {
        let key: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT key FROM message_keys WHERE message_id = $1")
                .bind(message_id)
                .fetch_optional(&self.pool)
                .await?;
        let key = zeroize::Zeroizing::new(key.ok_or(CryptoError::KeyMissing(message_id))?);
        Cipher::new(message_id, &key)
    }
    /// The ciphers of several messages in one query; messages whose key is gone are absent.
    pub async fn ciphers(
        &self,
        message_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Cipher>, CryptoError> {
        let keys: Vec<(Uuid, Vec<u8>)> =
            sqlx::query_as("SELECT message_id, key FROM message_keys WHERE message_id = ANY($1)")
                .bind(message_ids)
                .fetch_all(&self.pool)
                .await?;
        let mut found = HashMap::with_capacity(keys.len());
        for (id, key) in keys {
            let key = zeroize::Zeroizing::new(key);
            found.insert(id, Cipher::new(id, &key)?);
        }
        Ok(found)
    }
}

/// Per-month data keys (`access_keys`) for the details of access records: deleting a month's key
/// (retention, after a year) makes that month's records unreadable in the log for good. The
/// month's first day is bound in as associated data.
pub struct MonthKeys {
    pool: PgPool,
}

impl MonthKeys {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    fn aad(month: chrono::NaiveDate) -> Uuid {
        use chrono::Datelike;
        Uuid::from_u128(u128::from(month.num_days_from_ce().unsigned_abs()))
    }

    /// The key of `month` (its first day), created on first use.
    pub async fn current(&self, month: chrono::NaiveDate) -> Result<Cipher, CryptoError> {
        let key = zeroize::Zeroizing::new(Aes256Gcm::generate_key(&mut OsRng).to_vec());
        sqlx::query("INSERT INTO access_keys (month, key) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(month)
            .bind(key.as_slice())
            .execute(&self.pool)
            .await?;
        self.cipher(month).await
    }

    /// The key of `month`, or `KeyMissing` once retention deleted it.
    pub async fn cipher(&self, month: chrono::NaiveDate) -> Result<Cipher, CryptoError> {
        let key: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT key FROM access_keys WHERE month = $1")
                .bind(month)
                .fetch_optional(&self.pool)
                .await?;
        let key = zeroize::Zeroizing::new(key.ok_or(CryptoError::KeyMissing(Self::aad(month)))?);
        Cipher::new(Self::aad(month), &key)
    }
}

#[cfg(test)]
impl Cipher {
    /// A cipher with a random key, for unit tests of aggregates.
    pub fn for_tests() -> Cipher {
        let key = Aes256Gcm::generate_key(&mut OsRng);
        Cipher::new(Uuid::new_v4(), key.as_slice()).expect("32-byte key")
    }
}

/// Keyed hash (HMAC-SHA-256) of a normalised e-mail address: lets the service find an account by
/// e-mail, and check uniqueness, without keeping the address in clear anywhere but the read model.
#[derive(Clone)]
pub struct EmailIndex {
    key: Vec<u8>,
}

impl EmailIndex {
    pub fn new(pepper: &str) -> Self {
        Self {
            key: pepper.as_bytes().to_vec(),
        }
    }

    pub fn hash(&self, email: &crate::commands::values::Email) -> Vec<u8> {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        mac.update(email.as_str().as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}
