//! Small generated plant pictures for the demo world: a pot and leaves on a coloured wall, drawn
//! pixel by pixel and encoded as PNG, then uploaded like any photo (checked, re-encoded as JPEG).

use std::io::Cursor;

use image::{ImageFormat, Rgb, RgbImage};

const WIDTH: u32 = 480;
const HEIGHT: u32 = 360;

/// A PNG of a potted plant; `variant` changes the wall, the leaves and their layout.
pub fn plant_png(variant: u32) -> anyhow::Result<Vec<u8>> {
    let walls = [
        [236, 226, 208],
        [214, 228, 236],
        [240, 220, 222],
        [226, 236, 214],
        [232, 232, 232],
    ];
    let greens = [[46, 125, 50], [85, 139, 47], [27, 94, 32], [104, 159, 56]];
    let wall = walls[(variant as usize) % walls.len()];
    let green = greens[(variant as usize / walls.len()) % greens.len()];
    let mut picture = RgbImage::new(WIDTH, HEIGHT);
    let (cx, pot_top) = (WIDTH as f32 / 2.0, HEIGHT as f32 * 0.62);
    // Leaves: ellipses fanned around the stem, their count and tilt from the variant.
    let leaves = 5 + variant % 4;
    let leaf_shapes: Vec<(f32, f32, f32)> = (0..leaves)
        .map(|i| {
            let spread = (i as f32 / (leaves - 1) as f32 - 0.5) * 2.4;
            let reach = 95.0 + 25.0 * ((i + variant) % 3) as f32;
            (
                cx + spread.sin() * reach,
                pot_top - spread.cos().abs() * reach - 20.0,
                spread,
            )
        })
        .collect();
    for (x, y, pixel) in picture.enumerate_pixels_mut() {
        let (fx, fy) = (x as f32, y as f32);
        // A soft light from the top left.
        let light = 1.0 - 0.25 * (fx / WIDTH as f32 + fy / HEIGHT as f32) / 2.0;
        let mut colour = wall.map(|c| (c as f32 * light) as u8);
        if fy > HEIGHT as f32 * 0.9 {
            colour = [150, 120, 90];
        }
        // The pot: a trapezoid, wider at the top.
        let depth = (fy - pot_top) / (HEIGHT as f32 * 0.28);
        if (0.0..=1.0).contains(&depth) && (fx - cx).abs() < 70.0 - 20.0 * depth {
            colour = [
                (184.0 - 40.0 * depth) as u8,
                (96.0 - 20.0 * depth) as u8,
                60,
            ];
        }
        // The stem.
        if fy < pot_top && fy > pot_top - 110.0 && (fx - cx).abs() < 3.0 {
            colour = green.map(|c| c / 2);
        }
        for (lx, ly, tilt) in &leaf_shapes {
            let (dx, dy) = (fx - lx, fy - ly);
            let (c, s) = (tilt.cos(), tilt.sin());
            let (u, v) = (dx * c + dy * s, -dx * s + dy * c);
            let inside = (u / 26.0).powi(2) + (v / 48.0).powi(2);
            if inside <= 1.0 {
                let vein = if u.abs() < 1.5 { 0.7 } else { 1.0 };
                let shade = (1.0 - 0.3 * inside) * vein;
                colour = green.map(|g| (g as f32 * shade + 20.0) as u8);
            }
        }
        *pixel = Rgb(colour);
    }
    let mut png = Cursor::new(Vec::new());
    picture.write_to(&mut png, ImageFormat::Png)?;
    Ok(png.into_inner())
}
