//! Pictures for the simulator's image results: real JPG, PNG or WEBP files
//! at the requested size, made from the seed, so that what the CLI saves
//! opens in any image tool and base64 results grow with the image as they
//! do from Runware.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder, RgbImage};

use super::seed::splitmix;

/// An image file format Runware's `outputFormat` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JPEG.
    Jpg,
    /// PNG.
    Png,
    /// WebP.
    Webp,
}

impl Format {
    /// From `outputFormat` (JPG by default, as Runware's).
    pub fn from_output_format(name: Option<&str>) -> Option<Format> {
        match name.unwrap_or("JPG") {
            "JPG" | "JPEG" => Some(Format::Jpg),
            "PNG" => Some(Format::Png),
            "WEBP" => Some(Format::Webp),
            _ => None,
        }
    }

    /// The media type's subtype and the file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jpg => "jpg",
            Format::Png => "png",
            Format::Webp => "webp",
        }
    }

    /// The media type, for `data:` URIs.
    pub fn mime(self) -> &'static str {
        match self {
            Format::Jpg => "image/jpeg",
            Format::Png => "image/png",
            Format::Webp => "image/webp",
        }
    }
}

/// Colours of the seed's picture: two corners of a gradient and a disc.
fn palette(seed: u64) -> [[f32; 3]; 3] {
    let mut x = seed;
    let mut colour = || {
        x = splitmix(x);
        [
            (x & 0xff) as f32,
            ((x >> 8) & 0xff) as f32,
            ((x >> 16) & 0xff) as f32,
        ]
    };
    [colour(), colour(), colour()]
}

/// The seed's picture: a diagonal gradient with a soft disc, and a little
/// grain so that compressed sizes are those of a photograph's order rather
/// than of a flat fill. The same seed and size give the same pixels.
pub fn pixels(seed: u64, width: u32, height: u32) -> RgbImage {
    let [from, to, disc] = palette(seed);
    let centre = (
        (splitmix(seed ^ 1) % u64::from(width.max(1))) as f32,
        (splitmix(seed ^ 2) % u64::from(height.max(1))) as f32,
    );
    let radius = width.min(height) as f32 / 3.0;
    RgbImage::from_fn(width, height, |x, y| {
        let t = (x + y) as f32 / (width + height).max(1) as f32;
        let (dx, dy) = (x as f32 - centre.0, y as f32 - centre.1);
        let d = (dx * dx + dy * dy).sqrt() / radius;
        let inside = (1.0 - d).clamp(0.0, 1.0);
        let grain = splitmix(seed ^ (u64::from(y) << 32 | u64::from(x)));
        image::Rgb(std::array::from_fn(|c| {
            let base = from[c] * (1.0 - t) + to[c] * t;
            let v = base * (1.0 - inside) + disc[c] * inside;
            let noise = ((grain >> (8 * c)) & 0x0f) as f32 - 7.5;
            (v + noise).clamp(0.0, 255.0) as u8
        }))
    })
}

/// The seed's picture encoded as `format`; `quality` (20..99) for JPG.
pub fn encode(seed: u64, width: u32, height: u32, format: Format, quality: u8) -> Vec<u8> {
    let img = pixels(seed, width, height);
    let mut out = Cursor::new(Vec::new());
    let (w, h, rgb) = (img.width(), img.height(), ExtendedColorType::Rgb8);
    let written = match format {
        Format::Jpg => {
            JpegEncoder::new_with_quality(&mut out, quality).write_image(&img, w, h, rgb)
        }
        Format::Png => PngEncoder::new(&mut out).write_image(&img, w, h, rgb),
        Format::Webp => WebPEncoder::new_lossless(&mut out).write_image(&img, w, h, rgb),
    };
    // Encoding into memory fails only on sizes the validation refuses.
    written.map(|()| out.into_inner()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_decodes_at_the_requested_size() {
        for (format, magic) in [
            (Format::Jpg, &b"\xff\xd8\xff"[..]),
            (Format::Png, &b"\x89PNG"[..]),
            (Format::Webp, &b"RIFF"[..]),
        ] {
            let bytes = encode(42, 192, 128, format, 90);
            assert!(bytes.starts_with(magic), "{format:?}");
            let expected = match format {
                Format::Jpg => image::ImageFormat::Jpeg,
                Format::Png => image::ImageFormat::Png,
                Format::Webp => image::ImageFormat::WebP,
            };
            assert_eq!(image::guess_format(&bytes).unwrap(), expected);
            let decoded = image::load_from_memory(&bytes).unwrap();
            assert_eq!(
                (decoded.width(), decoded.height()),
                (192, 128),
                "{format:?}"
            );
        }
    }

    #[test]
    fn the_seed_decides_the_picture_and_size_decides_the_bytes() {
        assert_eq!(pixels(7, 64, 64), pixels(7, 64, 64));
        assert_ne!(pixels(7, 64, 64), pixels(8, 64, 64));
        let small = encode(7, 128, 128, Format::Png, 90).len();
        let large = encode(7, 512, 512, Format::Png, 90).len();
        assert!(large > 8 * small, "512² is {large} bytes, 128² {small}");
    }

    /// The README's picture is what `runwared image "a cat" --seed 42
    /// --width 192 --height 128 --format PNG` saved from the simulator.
    #[test]
    fn the_readme_picture_is_the_simulators() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/simulated-image.png");
        let saved = image::open(path).unwrap().to_rgb8();
        assert_eq!(saved, pixels(42, 192, 128));
    }
}
