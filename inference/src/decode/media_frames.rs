//! Frames kept for media (previews, clips) rather than for the model: 8-bit gray at the
//! source's aspect ratio, shrunk (never enlarged) to fit a maximum side.

use super::Format;
use crate::preprocess::{resize_area_to, sample_indices, GrayFrame};

/// An 8-bit grayscale frame, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame8 {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
    /// Pixels over which text was found while decoding, at the source's resolution and
    /// in colour where it had colour (`glyphs`); empty when none was searched.
    pub text: Vec<bool>,
}

/// Which frames to keep and how large.
#[derive(Debug, Clone)]
pub struct MediaSampling {
    /// Uniformly sampled frames to keep (as the model's sampling, `sample_indices`).
    pub max_frames: usize,
    /// Longest side of a kept frame.
    pub max_side: usize,
    /// Frames wanted by source number, on top of the uniform sample.
    pub frames: Vec<usize>,
    /// Also keep the first and the middle frame.
    pub first_and_middle: bool,
}

/// Decoded frames at media resolution.
#[derive(Debug, Clone)]
pub struct MediaFrames {
    pub format: Format,
    pub source_width: usize,
    pub source_height: usize,
    pub frames_total: usize,
    /// Frames per second the container declares, if any.
    pub fps: Option<f32>,
    /// Kept frames in display order, with their source frame numbers.
    pub frames: Vec<(usize, Frame8)>,
}

impl MediaFrames {
    /// Size of the kept frames.
    pub fn size(&self) -> (usize, usize) {
        self.frames
            .first()
            .map_or((0, 0), |(_, f)| (f.width, f.height))
    }
}

/// The media side of a `FrameSink`.
#[derive(Debug)]
pub(crate) struct MediaKeep {
    sampling: MediaSampling,
    kept: Vec<(usize, Frame8)>,
    /// Saturated (coloured, so drawn) pixels of the next frame, at source size.
    colour: Option<Vec<bool>>,
}

impl MediaKeep {
    pub(crate) fn new(sampling: &MediaSampling) -> Self {
        Self {
            sampling: sampling.clone(),
            kept: Vec::new(),
            colour: None,
        }
    }

    /// Notes the colour of the next frame (`channels` interleaved, RGB first): its
    /// saturated pixels are overlay, as ultrasound is gray.
    pub(crate) fn colour(&mut self, pixels: &[u8], channels: usize) {
        self.colour = super::glyphs::saturated(pixels, channels);
    }

    /// Adds the frames wanted by number to the sorted `wanted` list of a scan of `n` frames.
    pub(crate) fn add_wanted(&self, n: usize, wanted: &mut Vec<usize>) {
        wanted.extend(self.sampling.frames.iter().copied().filter(|&i| i < n));
        if self.sampling.first_and_middle && n > 0 {
            wanted.extend([0, n / 2]);
        }
        wanted.sort_unstable();
        wanted.dedup();
    }

    /// Keeps frame `index`, shrunk to fit, every frame at the size of the first (a clip
    /// whose frame size changes midway is brought back to one size).
    pub(crate) fn keep(&mut self, index: usize, frame: &GrayFrame) {
        let (w, h) = match self.kept.first() {
            Some((_, f)) => (f.width, f.height),
            None => fit(frame.width, frame.height, self.sampling.max_side),
        };
        use super::glyphs;
        let (fw, fh) = (frame.width, frame.height);
        // Text is looked for before shrinking, which would soften thin strokes, at the
        // source size divided by a whole factor to at least twice the kept size (the
        // cost is per pixel searched).
        let k = (fw / (2 * w).max(1)).min(fh / (2 * h).max(1)).max(1);
        let (tw, th) = (fw.div_ceil(k), fh.div_ceil(k));
        let large: Vec<u8> = if (tw, th) == (fw, fh) {
            frame.pixels.iter().map(|&v| to_u8(v)).collect()
        } else {
            resize_area_to(frame, tw, th)
                .into_iter()
                .map(to_u8)
                .collect()
        };
        let mut text = glyphs::text(&large, tw, th);
        if let Some(c) = self.colour.take().filter(|c| c.len() == fw * fh) {
            let c = glyphs::widen_colour(&c, fw, fh);
            let c = match (tw, th) == (fw, fh) {
                true => c,
                false => glyphs::shrink(&c, fw, fh, tw, th),
            };
            text.iter_mut().zip(c).for_each(|(t, c)| *t |= c);
        }
        let (pixels, text) = if (w, h) == (tw, th) {
            (large, text)
        } else {
            let px = resize_area_to(frame, w, h).into_iter().map(to_u8).collect();
            (px, glyphs::shrink(&text, tw, th, w, h))
        };
        self.kept.push((
            index,
            Frame8 {
                width: w,
                height: h,
                pixels,
                text,
            },
        ));
    }

    /// The kept frames; `sample_now` when the count was unknown while decoding.
    pub(crate) fn finish(
        self,
        sample_now: bool,
        seen: usize,
        max_frames: usize,
    ) -> Vec<(usize, Frame8)> {
        if !sample_now {
            return self.kept;
        }
        let mut keep = sample_indices(seen, max_frames);
        let probe = MediaKeep::new(&self.sampling);
        probe.add_wanted(seen, &mut keep);
        self.kept
            .into_iter()
            .filter(|(i, _)| keep.binary_search(i).is_ok())
            .collect()
    }
}

fn to_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// `w`×`h` shrunk to fit `max_side`, aspect kept, never enlarged, at least 1×1.
pub fn fit(w: usize, h: usize, max_side: usize) -> (usize, usize) {
    let long = w.max(h);
    if long <= max_side || max_side == 0 {
        return (w, h);
    }
    let s = max_side as f64 / long as f64;
    (
        ((w as f64 * s).round() as usize).clamp(1, max_side),
        ((h as f64 * s).round() as usize).clamp(1, max_side),
    )
}
