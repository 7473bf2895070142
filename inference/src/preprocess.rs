//! Frame preprocessing, identical to `training/pleura_train/preprocess.py`: BT.601 luma,
//! box-filter ("area") resize to the model's square input, uniform frame sampling.

/// Side of the square model input for a model whose sidecar does not name one
/// (`input.size`; LUSNet-S). The model's own size is `ModelInfo::input_size`.
pub const DEFAULT_INPUT_SIZE: usize = 112;
/// Frames taken from one video unless the sidecar says (`input.max_frames`); more adds
/// time, not accuracy (frames are highly correlated).
pub const MAX_FRAMES: usize = 32;

/// A grayscale frame, values 0..=255 as f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct GrayFrame {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
}

impl GrayFrame {
    pub fn from_rgb8(width: usize, height: usize, rgb: &[u8]) -> Self {
        let pixels = rgb
            .chunks_exact(3)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect();
        Self {
            width,
            height,
            pixels,
        }
    }

    pub fn from_rgba8(width: usize, height: usize, rgba: &[u8]) -> Self {
        let pixels = rgba
            .chunks_exact(4)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect();
        Self {
            width,
            height,
            pixels,
        }
    }

    /// A luma plane with a row stride (decoders pad rows).
    pub fn from_plane(width: usize, height: usize, stride: usize, plane: &[u8]) -> Self {
        let mut pixels = Vec::with_capacity(width * height);
        for row in plane.chunks(stride).take(height) {
            pixels.extend(row[..width].iter().map(|&v| v as f32));
        }
        Self {
            width,
            height,
            pixels,
        }
    }
}

fn luma(r: u8, g: u8, b: u8) -> f32 {
    (0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64) as f32
}

/// Indices of the frames to analyse: all if few, else `max` centred in equal bins.
pub fn sample_indices(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    (0..max)
        .map(|i| ((i as f64 + 0.5) * n as f64 / max as f64) as usize)
        .collect()
}

/// Sparse rows of the box-filter matrix: for output `i`, `(first input index, weights)`.
fn area_weights(n_in: usize, n_out: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|i| {
            let lo = i as f64 * scale;
            let hi = (i + 1) as f64 * scale;
            let j0 = lo.floor() as usize;
            let j1 = (hi.ceil() as usize).min(n_in);
            let w = (j0..j1)
                .map(|j| {
                    let overlap = hi.min(j as f64 + 1.0) - lo.max(j as f64);
                    (overlap.max(0.0) / scale) as f32
                })
                .collect();
            (j0, w)
        })
        .collect()
}

/// Box-filter resize to `size`×`size`. Anti-aliased when shrinking, which matters for
/// speckle: a plain bilinear shrink of a 350 px frame to 112 px aliases it.
pub fn resize_area(frame: &GrayFrame, size: usize) -> Vec<f32> {
    resize_area_to(frame, size, size)
}

/// Box-filter resize to `out_w`×`out_h` (the same filter as `resize_area`).
pub fn resize_area_to(frame: &GrayFrame, out_w: usize, out_h: usize) -> Vec<f32> {
    let wx = area_weights(frame.width, out_w);
    let wy = area_weights(frame.height, out_h);
    // horizontal pass: height × out_w
    let mut tmp = vec![0f32; frame.height * out_w];
    for y in 0..frame.height {
        let row = &frame.pixels[y * frame.width..(y + 1) * frame.width];
        for (x, (j0, w)) in wx.iter().enumerate() {
            tmp[y * out_w + x] = w.iter().zip(&row[*j0..]).map(|(a, b)| a * b).sum();
        }
    }
    let mut out = vec![0f32; out_w * out_h];
    for (y, (j0, w)) in wy.iter().enumerate() {
        let dst = &mut out[y * out_w..(y + 1) * out_w];
        for (k, wk) in w.iter().enumerate() {
            let src = &tmp[(j0 + k) * out_w..(j0 + k + 1) * out_w];
            for (d, s) in dst.iter_mut().zip(src) {
                *d += wk * s;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sampling_is_uniform_and_bounded() {
        assert_eq!(sample_indices(5, 32), vec![0, 1, 2, 3, 4]);
        let idx = sample_indices(100, 32);
        assert_eq!(idx.len(), 32);
        assert_eq!(idx[0], 1);
        assert_eq!(*idx.last().unwrap(), 98);
    }

    #[test]
    fn resize_of_constant_image_is_constant() {
        let f = GrayFrame {
            width: 350,
            height: 333,
            pixels: vec![77.0; 350 * 333],
        };
        let out = resize_area(&f, DEFAULT_INPUT_SIZE);
        assert!(out.iter().all(|v| (v - 77.0).abs() < 1e-3));
    }

    #[test]
    fn resize_to_same_size_is_identity() {
        let pixels: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let f = GrayFrame {
            width: 4,
            height: 4,
            pixels: pixels.clone(),
        };
        assert_eq!(resize_area(&f, 4), pixels);
    }

    proptest! {
        #[test]
        fn resize_preserves_mean(w in 1usize..300, h in 1usize..300, seed in 0u32..1000) {
            let pixels: Vec<f32> = (0..w * h).map(|i| (((i as u32 * 2654435761u32) ^ seed) % 256) as f32).collect();
            let mean_in = pixels.iter().map(|&v| v as f64).sum::<f64>() / (w * h) as f64;
            let out = resize_area(&GrayFrame { width: w, height: h, pixels }, 16);
            let mean_out = out.iter().map(|&v| v as f64).sum::<f64>() / out.len() as f64;
            prop_assert!((mean_in - mean_out).abs() < 0.05, "{mean_in} vs {mean_out}");
        }
    }
}
