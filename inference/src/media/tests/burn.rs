//! Burns synthetic "PHI" into frames with a tiny 5×7 bitmap font, the way ultrasound
//! devices print name, ID and date: a black header band with white text across the top,
//! and a label in a corner drawn straight over the image. Constant across frames.

use crate::decode::media_frames::Frame8;

const GLYPHS: &[(char, [u8; 7])] = &[
    (
        'D',
        [
            0b11110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11110,
        ],
    ),
    (
        'O',
        [
            0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
        ],
    ),
    (
        'E',
        [
            0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111,
        ],
    ),
    (
        'J',
        [
            0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100,
        ],
    ),
    (
        'A',
        [
            0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001,
        ],
    ),
    (
        'N',
        [
            0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0b10001,
        ],
    ),
    (
        'M',
        [
            0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001,
        ],
    ),
    (
        'R',
        [
            0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001,
        ],
    ),
    ('-', [0, 0, 0, 0b11111, 0, 0, 0]),
    (
        '/',
        [
            0b00001, 0b00010, 0b00010, 0b00100, 0b01000, 0b01000, 0b10000,
        ],
    ),
    (
        '0',
        [
            0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110,
        ],
    ),
    (
        '1',
        [
            0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
    ),
    (
        '2',
        [
            0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111,
        ],
    ),
    (
        '3',
        [
            0b11110, 0b00001, 0b00001, 0b01110, 0b00001, 0b00001, 0b11110,
        ],
    ),
    (
        '4',
        [
            0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010,
        ],
    ),
    (
        '7',
        [
            0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000,
        ],
    ),
    (
        '9',
        [
            0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100,
        ],
    ),
];

pub const HEADER: &str = "DOE JANE MRN-4471 12/03/1947";
pub const CORNER: &str = "MRN-4471";

/// Where text was burned: `true` on every glyph pixel.
pub struct Burned {
    pub width: usize,
    pub height: usize,
    pub text: Vec<bool>,
}

/// Draws `s` at (x, y), `scale` pixels per font pixel; marks glyph pixels in `text`.
fn draw(f: &mut Frame8, text: &mut [bool], s: &str, x: usize, y: usize, scale: usize) {
    let w = f.width;
    each_pixel(s, x, y, scale, |px, py| {
        if px < w && py < f.height {
            f.pixels[py * w + px] = 255;
            text[py * w + px] = true;
        }
    });
}

/// Calls `put(x, y)` on every pixel of `s` drawn at (x, y), `scale` pixels per font
/// pixel (may lie outside the frame).
pub fn each_pixel(s: &str, x: usize, y: usize, scale: usize, mut put: impl FnMut(usize, usize)) {
    for (k, c) in s.chars().enumerate() {
        let Some((_, rows)) = GLYPHS.iter().find(|(g, _)| *g == c) else {
            continue;
        };
        let gx = x + k * 6 * scale;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..5 {
                if bits & (1 << (4 - col)) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        put(gx + col * scale + dx, y + r * scale + dy);
                    }
                }
            }
        }
    }
}

/// Burns the header band and the corner label into every frame (all the same size).
pub fn burn(frames: &mut [Frame8]) -> Burned {
    let (w, h) = (frames[0].width, frames[0].height);
    let scale = (w / 300).max(1);
    let band = 11 * scale;
    let mut text = vec![false; w * h];
    for f in frames.iter_mut() {
        f.pixels[..band * w].fill(0);
        draw(f, &mut text, HEADER, 3 * scale, 2 * scale, scale);
        let corner_w = CORNER.len() * 6 * scale;
        draw(
            f,
            &mut text,
            CORNER,
            w - corner_w - 4 * scale,
            h - 12 * scale,
            scale,
        );
    }
    Burned {
        width: w,
        height: h,
        text,
    }
}

impl Burned {
    /// The text map at `w`×`h`: an output pixel is text if any source pixel under it is.
    pub fn at(&self, w: usize, h: usize) -> Vec<bool> {
        let mut out = vec![false; w * h];
        for y in 0..self.height {
            for x in 0..self.width {
                if self.text[y * self.width + x] {
                    let x0 = x * w / self.width;
                    let x1 = ((x + 1) * w).div_ceil(self.width).min(w);
                    let y0 = y * h / self.height;
                    let y1 = ((y + 1) * h).div_ceil(self.height).min(h);
                    for oy in y0..y1 {
                        for ox in x0..x1.max(x0 + 1) {
                            out[oy * w + ox] = true;
                        }
                    }
                }
            }
        }
        out
    }
}
