//! Plant photos over real HTTP into a real (local) object store: metadata stripped, types told by
//! content, sizes and pixel bombs refused without leaving anything stored, orphans swept, and
//! who may see or add them.

use std::io::Cursor;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::{config, unique_email, Reply, TestApp};

const BOUNDARY: &str = "arosaje-test-boundary";

fn multipart(field: &str, filename: &str, content_type: &str, bytes: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n\
         Content-Type: {content_type}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

pub async fn upload(t: &TestApp, token: &str, plant: &str, filename: &str, bytes: &[u8]) -> Reply {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/plants/{plant}/photos"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from(multipart("file", filename, "image/jpeg", bytes)))
        .expect("request");
    t.raw(request).await
}

/// The raw bytes of a GET (images are not JSON).
async fn fetch(t: &TestApp, token: &str, uri: &str) -> (StatusCode, String, Vec<u8>) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = Request::builder()
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request");
    let response = t.router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, content_type, bytes)
}

/// A JPEG photo, as a phone makes it.
pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 3 % 256) as u8,
            ((x + y) % 256) as u8,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("jpeg");
    out.into_inner()
}

/// `jpeg` with an EXIF segment carrying GPS data (latitude reference north, a version) right
/// after the start-of-image marker.
fn with_gps_exif(jpeg: &[u8]) -> Vec<u8> {
    let mut tiff: Vec<u8> = Vec::new();
    tiff.extend_from_slice(b"II\x2a\x00\x08\x00\x00\x00");
    // IFD0 at 8: one entry, GPSInfo -> the GPS IFD at 26.
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x8825u16.to_le_bytes());
    tiff.extend_from_slice(&4u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&26u32.to_le_bytes());
    tiff.extend_from_slice(&0u32.to_le_bytes());
    // GPS IFD: GPSVersionID 2.3.0.0, GPSLatitudeRef "N".
    tiff.extend_from_slice(&2u16.to_le_bytes());
    tiff.extend_from_slice(&0x0000u16.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&4u32.to_le_bytes());
    tiff.extend_from_slice(&[2, 3, 0, 0]);
    tiff.extend_from_slice(&0x0001u16.to_le_bytes());
    tiff.extend_from_slice(&2u16.to_le_bytes());
    tiff.extend_from_slice(&2u32.to_le_bytes());
    tiff.extend_from_slice(b"N\0\0\0");
    tiff.extend_from_slice(&0u32.to_le_bytes());
    let mut segment = vec![0xFF, 0xE1];
    segment.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
    segment.extend_from_slice(b"Exif\0\0");
    segment.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&segment);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn gps_of(bytes: &[u8]) -> Option<String> {
    let exif = exif::Reader::new()
        .read_from_container(&mut Cursor::new(bytes))
        .ok()?;
    exif.get_field(exif::Tag::GPSLatitudeRef, exif::In::PRIMARY)
        .map(|f| f.display_value().to_string())
}

/// A PNG that says it is 60,000 x 60,000 pixels (3.6 gigapixels) in a few bytes.
fn pixel_bomb() -> Vec<u8> {
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
        out
    }
    let mut header = Vec::new();
    header.extend_from_slice(&60_000u32.to_be_bytes());
    header.extend_from_slice(&60_000u32.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &header));
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

async fn nothing_stored(t: &TestApp) {
    assert_eq!(
        t.app.photos.count().await.expect("count"),
        0,
        "objects were left behind"
    );
    let uploads: i64 = sqlx::query_scalar("SELECT count(*) FROM photo_uploads")
        .fetch_one(&t.pool)
        .await
        .expect("count");
    assert_eq!(uploads, 0);
}

#[sqlx::test]
async fn a_jpeg_with_gps_data_comes_back_without_it_to_those_who_may_see_the_plant(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, admin) = t.admin().await;
    let (_, owner) = t.user(&unique_email("owner")).await;
    let (_, stranger) = t.user(&unique_email("stranger")).await;
    let (_, botanist) = t.user_with_role(&admin, "BOTANIST").await;
    let plant = t.create_plant(&owner, "Photographed fern").await.body["id"]
        .as_str()
        .expect("plant")
        .to_string();
    let original = with_gps_exif(&jpeg(1200, 900));
    assert_eq!(
        gps_of(&original).as_deref(),
        Some("N"),
        "the upload carries GPS data"
    );

    let uploaded = upload(&t, &owner, &plant, "IMG_0001.jpg", &original).await;
    assert_eq!(uploaded.status, StatusCode::CREATED, "{uploaded:?}");
    assert_eq!(
        (
            uploaded.body["width"].as_i64(),
            uploaded.body["height"].as_i64()
        ),
        (Some(1200), Some(900))
    );
    let url = uploaded.body["url"].as_str().expect("url").to_string();
    let thumbnail_url = uploaded.body["thumbnail_url"]
        .as_str()
        .expect("thumb")
        .to_string();

    let (status, content_type, stored) = fetch(&t, &owner, &url).await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::OK, "image/jpeg")
    );
    assert_eq!(gps_of(&stored), None, "GPS data survived");
    assert!(
        !stored.windows(6).any(|w| w == b"Exif\0\0"),
        "an EXIF segment survived"
    );
    let decoded = image::load_from_memory(&stored).expect("a JPEG");
    assert_eq!((decoded.width(), decoded.height()), (1200, 900));
    let (status, _, thumbnail) = fetch(&t, &owner, &thumbnail_url).await;
    assert_eq!(status, StatusCode::OK);
    let thumbnail = image::load_from_memory(&thumbnail).expect("a JPEG");
    assert_eq!((thumbnail.width(), thumbnail.height()), (320, 240));

    assert_eq!(fetch(&t, &botanist, &url).await.0, StatusCode::OK);
    assert_eq!(fetch(&t, &stranger, &url).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        fetch(&t, &stranger, &thumbnail_url).await.0,
        StatusCode::NOT_FOUND
    );
    let listed = t.get(&format!("/api/plants/{plant}/photos"), &owner).await;
    assert_eq!(listed.body["items"][0]["url"], url.as_str(), "{listed:?}");
    assert_eq!(
        t.get(&format!("/api/plants/{plant}/photos"), &stranger)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // A botanist may look but not add; a stranger does not see the plant at all.
    assert_eq!(
        upload(&t, &botanist, &plant, "b.jpg", &original)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        upload(&t, &stranger, &plant, "s.jpg", &original)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Where the photo is stored is sealed in the log.
    let payload: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM events WHERE event_type = 'PhotoAdded'")
            .fetch_one(&t.pool)
            .await
            .expect("event");
    assert!(
        !payload.to_string().contains("photos/"),
        "an object key in clear: {payload}"
    );
}

#[sqlx::test]
async fn text_named_jpg_oversized_uploads_and_pixel_bombs_are_refused_leaving_nothing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut small = config();
    small.max_photo_bytes = 200_000;
    small.max_photo_pixels = 4_000_000;
    let t = TestApp::with_config(options, connect, small, true).await;
    let (_, owner) = t.user(&unique_email("owner")).await;
    let plant = t.create_plant(&owner, "Fern").await.body["id"]
        .as_str()
        .expect("plant")
        .to_string();

    let text = upload(
        &t,
        &owner,
        &plant,
        "holiday.jpg",
        b"this is not an image at all, just text",
    )
    .await;
    assert_eq!(
        (text.status, text.code()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let noise: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big = upload(&t, &owner, &plant, "big.jpg", &noise).await;
    assert_eq!(
        (big.status, big.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        "{big:?}"
    );
    let bomb = upload(&t, &owner, &plant, "bomb.png", &pixel_bomb()).await;
    assert_eq!(
        (bomb.status, bomb.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        "{bomb:?}"
    );
    // A PNG cut short (JPEG decoders fill in a truncated scan; PNG's checksums do not).
    let mut broken = Cursor::new(Vec::new());
    image::RgbImage::from_fn(300, 200, |x, y| image::Rgb([x as u8, y as u8, 7]))
        .write_to(&mut broken, image::ImageFormat::Png)
        .expect("png");
    let mut broken = broken.into_inner();
    broken.truncate(broken.len() / 3);
    let broken = upload(&t, &owner, &plant, "broken.jpg", &broken).await;
    assert_eq!(
        broken.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{broken:?}"
    );
    let not_multipart = t
        .post(
            &format!("/api/plants/{plant}/photos"),
            Some(&owner),
            json!({}),
        )
        .await;
    assert_eq!(
        not_multipart.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{not_multipart:?}"
    );
    nothing_stored(&t).await;
    // And a good one still works.
    let good = upload(&t, &owner, &plant, "ok.jpg", &jpeg(640, 480)).await;
    assert_eq!(good.status, StatusCode::CREATED, "{good:?}");
    assert_eq!(t.app.photos.count().await.expect("count"), 2);
}

#[sqlx::test]
async fn objects_of_an_upload_that_never_committed_are_swept(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner) = t.user(&unique_email("owner")).await;
    let plant = t.create_plant(&owner, "Fern").await.body["id"]
        .as_str()
        .expect("plant")
        .to_string();
    let kept = upload(&t, &owner, &plant, "kept.jpg", &jpeg(400, 300)).await;
    assert_eq!(kept.status, StatusCode::CREATED);
    // A process that died between storing the objects and appending the event.
    let orphan = Uuid::now_v7();
    let keys = [
        format!("photos/{orphan}.jpg"),
        format!("photos/{orphan}.thumb.jpg"),
    ];
    sqlx::query("INSERT INTO photo_uploads (photo_id, keys, created_at) VALUES ($1, $2, now() - interval '1 hour')")
        .bind(orphan)
        .bind(&keys)
        .execute(&t.pool)
        .await
        .expect("intent");
    for key in &keys {
        t.app
            .photos
            .put(key, b"orphaned bytes".to_vec())
            .await
            .expect("put");
    }
    // A recent one may still be uploading: left alone.
    let running = Uuid::now_v7();
    sqlx::query("INSERT INTO photo_uploads (photo_id, keys) VALUES ($1, $2)")
        .bind(running)
        .bind([format!("photos/{running}.jpg")])
        .execute(&t.pool)
        .await
        .expect("intent");
    assert_eq!(t.app.photos.count().await.expect("count"), 4);

    let swept = arosaje::photos::sweep_orphans(&t.app, arosaje::photos::ORPHAN_AGE)
        .await
        .expect("sweep");
    assert_eq!(swept, 1);
    assert_eq!(
        t.app.photos.count().await.expect("count"),
        2,
        "the committed photo stays"
    );
    for key in &keys {
        assert!(t.app.photos.get(key).await.expect("get").is_none());
    }
    let url = kept.body["url"].as_str().expect("url");
    assert_eq!(fetch(&t, &owner, url).await.0, StatusCode::OK);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM photo_uploads")
        .fetch_one(&t.pool)
        .await
        .expect("count");
    assert_eq!(left, 1, "the recent upload is not touched");
}

#[sqlx::test]
async fn the_sitter_of_a_running_sitting_adds_photos_and_sees_the_plant(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = crate::sittings::owner_with_plants(&t, 1).await;
    let (sitter_id, sitter) = t.verified_user(&unique_email("sitter")).await;
    let plant = plants[0].clone();
    let photo = jpeg(320, 240);
    assert_eq!(
        upload(&t, &sitter, &plant, "early.jpg", &photo)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.get(&format!("/api/plants/{plant}"), &sitter).await.status,
        StatusCode::NOT_FOUND
    );
    let body = crate::sittings::sitting_body(&plants, 0, 2, crate::sittings::LYON, "Lyon");
    let sitting = crate::sittings::request(&t, &owner, body).await.body["id"]
        .as_str()
        .expect("sitting")
        .to_string();
    t.post(
        &format!("/api/sittings/{sitting}/applications"),
        Some(&sitter),
        json!({}),
    )
    .await;
    let accepted = t
        .post(
            &format!("/api/sittings/{sitting}/accept"),
            Some(&owner),
            json!({"sitter_id": sitter_id}),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::OK, "{accepted:?}");
    assert_eq!(
        t.get(&format!("/api/plants/{plant}"), &sitter).await.status,
        StatusCode::OK
    );
    let added = upload(&t, &sitter, &plant, "care.jpg", &photo).await;
    assert_eq!(added.status, StatusCode::CREATED, "{added:?}");
    assert_eq!(added.body["uploaded_by"], sitter_id.to_string());
    let url = added.body["url"].as_str().expect("url");
    assert_eq!(fetch(&t, &owner, url).await.0, StatusCode::OK);

    // A care report names photos of its plant, and only those.
    let started = t
        .post(
            &format!("/api/sittings/{sitting}/start"),
            Some(&sitter),
            json!({}),
        )
        .await;
    assert_eq!(started.status, StatusCode::OK, "{started:?}");
    let photo_id = added.body["id"].as_str().expect("photo");
    let report = t
        .post(
            &format!("/api/sittings/{sitting}/reports"),
            Some(&sitter),
            json!({"plant_id": plant, "note": "Repotted", "after_photo_id": photo_id}),
        )
        .await;
    assert_eq!(report.status, StatusCode::CREATED, "{report:?}");
    assert_eq!(report.body["after_photo_id"], photo_id);
    // A photo of another plant, or no photo at all, is refused.
    let (_, neighbour, theirs) = crate::sittings::owner_with_plants(&t, 1).await;
    let foreign = upload(&t, &neighbour, &theirs[0], "x.jpg", &photo).await;
    assert_eq!(foreign.status, StatusCode::CREATED, "{foreign:?}");
    for wrong_photo in [foreign.body["id"].clone(), json!(Uuid::now_v7())] {
        let wrong = t
            .post(
                &format!("/api/sittings/{sitting}/reports"),
                Some(&sitter),
                json!({"plant_id": plant, "note": "x", "before_photo_id": wrong_photo}),
            )
            .await;
        assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY, "{wrong:?}");
        assert!(wrong.body["error"]["fields"]
            .get("before_photo_id")
            .is_some());
    }
}
