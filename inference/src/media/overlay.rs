//! The class-activation heat map drawn over a key frame: an RGBA PNG, transparent where
//! the map is low and everywhere the de-identification mask hides.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};

use super::MediaError;

/// Map values below this are not drawn.
const FLOOR: f32 = 0.35;
/// Most opaque the heat map gets.
const MAX_ALPHA: f32 = 170.0;
/// Levels the map is quantised to (keeps the PNG small; the map is coarse anyway).
const LEVELS: f32 = 12.0;

/// `cam` (`cam_size²`, 0..1) bilinearly upsampled to `w`×`h`, coloured blue→red, alpha
/// scaled by the frame's `pathology`, zero alpha where `keep` is false.
pub fn heat_png(
    cam: &[f32],
    cam_size: usize,
    keep: &[bool],
    w: usize,
    h: usize,
    pathology: f32,
) -> Result<Vec<u8>, MediaError> {
    let mut rgba = vec![0u8; w * h * 4];
    if cam_size > 0 && cam.len() == cam_size * cam_size {
        let weight = pathology.clamp(0.25, 1.0);
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if !keep[i] {
                    continue;
                }
                let v = (bilinear(cam, cam_size, x, y, w, h) * LEVELS).round() / LEVELS;
                if v < FLOOR {
                    continue;
                }
                let [r, g, b] = colour(v);
                let a = ((v - FLOOR) / (1.0 - FLOOR) * MAX_ALPHA * weight).round() as u8;
                rgba[i * 4..i * 4 + 4].copy_from_slice(&[r, g, b, a]);
            }
        }
    }
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Best, FilterType::Adaptive)
        .write_image(&rgba, w as u32, h as u32, ExtendedColorType::Rgba8)
        .map_err(|e| MediaError::encode("overlay PNG", e))?;
    Ok(out)
}

/// The map at output pixel (x, y), pixel centres aligned.
fn bilinear(cam: &[f32], s: usize, x: usize, y: usize, w: usize, h: usize) -> f32 {
    let at = |p: usize, n: usize| {
        ((p as f32 + 0.5) * s as f32 / n as f32 - 0.5).clamp(0.0, (s - 1) as f32)
    };
    let (fx, fy) = (at(x, w), at(y, h));
    let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(s - 1), (y0 + 1).min(s - 1));
    let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
    let top = cam[y0 * s + x0] * (1.0 - tx) + cam[y0 * s + x1] * tx;
    let bottom = cam[y1 * s + x0] * (1.0 - tx) + cam[y1 * s + x1] * tx;
    (top * (1.0 - ty) + bottom * ty).clamp(0.0, 1.0)
}

/// A "jet"-like colour for 0..1.
fn colour(v: f32) -> [u8; 3] {
    let c = |centre: f32| ((1.5 - (4.0 * v - centre).abs()).clamp(0.0, 1.0) * 255.0) as u8;
    [c(3.0), c(2.0), c(1.0)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_is_transparent_where_masked_and_low() {
        let cam = vec![0.0, 1.0, 0.0, 1.0];
        let (w, h) = (8, 8);
        let mut keep = vec![true; w * h];
        keep[7] = false; // top right, where the map is high
        let png = heat_png(&cam, 2, &keep, w, h, 1.0).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgba8();
        assert_eq!(img.get_pixel(7, 0)[3], 0, "masked");
        assert_eq!(img.get_pixel(0, 0)[3], 0, "low");
        assert!(img.get_pixel(7, 7)[3] > 100, "high and kept");
    }
}
