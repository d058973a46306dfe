//! Uploaded photos: the type is told by content (JPEG, PNG or WebP), never by name; the size in
//! pixels is checked from the header before anything is decoded (a decompression bomb is refused
//! without taking the memory); the image is decoded, turned upright (EXIF orientation), and
//! encoded anew as JPEG, so EXIF, GPS and any other metadata of the upload are gone; plus a
//! thumbnail.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIZE: u32 = 320;
const PHOTO_QUALITY: u8 = 85;
const THUMBNAIL_QUALITY: u8 = 80;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PhotoError {
    #[error("not a JPEG, PNG or WebP image")]
    Unsupported,
    #[error("the image is {width} x {height} pixels; at most {max} pixels are accepted")]
    TooManyPixels { width: u32, height: u32, max: u64 },
    #[error("the image cannot be read: {0}")]
    Unreadable(String),
}

/// A photo ready to store: both images are JPEG without metadata.
pub struct Processed {
    pub photo: Vec<u8>,
    pub thumbnail: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Checks, decodes and re-encodes an upload. CPU-bound: run it on a blocking thread.
pub fn process(bytes: &[u8], max_pixels: u64) -> Result<Processed, PhotoError> {
    let format = image::guess_format(bytes).map_err(|_| PhotoError::Unsupported)?;
    if !matches!(
        format,
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP
    ) {
        return Err(PhotoError::Unsupported);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // RGBA at 4 bytes a pixel, plus the decoder's own buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(4).saturating_add(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(unreadable)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(PhotoError::TooManyPixels {
            width,
            height,
            max: max_pixels,
        });
    }
    let orientation = decoder.orientation().ok();
    let mut image = DynamicImage::from_decoder(decoder).map_err(unreadable)?;
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    let photo = jpeg(&image, PHOTO_QUALITY)?;
    let thumbnail = jpeg(
        &image.thumbnail(THUMBNAIL_SIZE, THUMBNAIL_SIZE),
        THUMBNAIL_QUALITY,
    )?;
    Ok(Processed {
        photo,
        thumbnail,
        width: image.width(),
        height: image.height(),
    })
}

fn unreadable(err: image::ImageError) -> PhotoError {
    match err {
        image::ImageError::Limits(_) => PhotoError::TooManyPixels {
            width: 0,
            height: 0,
            max: 0,
        },
        image::ImageError::Unsupported(_) => PhotoError::Unsupported,
        other => PhotoError::Unreadable(other.to_string()),
    }
}

fn jpeg(image: &DynamicImage, quality: u8) -> Result<Vec<u8>, PhotoError> {
    let rgb = image.to_rgb8();
    let mut out = Vec::with_capacity(rgb.len() / 8);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&rgb)
        .map_err(|err| PhotoError::Unreadable(err.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).expect("png");
        out.into_inner()
    }

    #[test]
    fn a_png_becomes_a_jpeg_and_a_thumbnail() {
        let processed = process(&png(800, 600), 1_000_000).expect("processed");
        assert_eq!((processed.width, processed.height), (800, 600));
        assert_eq!(
            image::guess_format(&processed.photo).ok(),
            Some(ImageFormat::Jpeg)
        );
        let thumb = image::load_from_memory(&processed.thumbnail).expect("thumbnail");
        assert_eq!((thumb.width(), thumb.height()), (320, 240));
    }

    #[test]
    fn text_and_oversized_images_are_refused() {
        assert_eq!(
            process(b"just some text, named photo.jpg", 1_000).err(),
            Some(PhotoError::Unsupported)
        );
        assert!(matches!(
            process(&png(200, 200), 10_000),
            Err(PhotoError::TooManyPixels {
                width: 200,
                height: 200,
                ..
            })
        ));
        let mut truncated = png(50, 50);
        truncated.truncate(60);
        assert!(matches!(
            process(&truncated, 10_000),
            Err(PhotoError::Unreadable(_))
        ));
    }
}
