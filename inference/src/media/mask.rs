//! Which pixels of a scan may leave the device: the ultrasound sector, minus anything
//! that looks like burned-in text. Everything else is set to 0 in every frame.
//!
//! - Video (frames that vary): the sector is the filled convex hull of the large
//!   regions of pixels that change over time, widened a little; inside it, pixels that
//!   never change and are not at background level (text, logos, calipers, rulers) are
//!   masked with a one-pixel margin for anti-aliased glyph edges. Static pixels at
//!   background level are kept: they carry no text, and deep tissue of a still probe
//!   is static in lossy video.
//! - Still (one frame, or frames that do not vary): the sector is the filled convex
//!   hull of the largest bright region once speckle gaps are closed.
//! - Both: bands of content at the image borders that are cut off from the rest by a
//!   dark gap (header lines of name/ID/date, side labels, depth scales) are masked
//!   before the sector is looked for, so they can never join it.
//! - Both: text drawn over the image is masked wherever it is (`glyphs`): lines of thin
//!   strokes of local contrast (any colour, mid-grey on grey, 1-pixel strokes, found at
//!   source resolution while decoding, `Frame8::text`), and coloured pixels of colour
//!   sources (ultrasound is gray). A still's mask leaves them out; in video every kept
//!   frame is searched and its text masked in it and the frames either side
//!   (`glyphs::mask_text_per_frame`, from `decode_masked`). Clusters of sharp edges
//!   in a sample of frames are masked in all frames too (clocks and other changing
//!   text that stays in one place).
//! - DICOM with ultrasound regions: only the union of the regions is considered at all.

use crate::decode::media_frames::Frame8;
use crate::decode::morph::{close, convex_hull_fill, dilate, large_components, largest_component};

/// A pixel brighter than this is content, not background.
const BRIGHT: u8 = 24;
/// A still's sector pixels are this much brighter than its background (5th percentile).
const STILL_ABOVE_BACKGROUND: u8 = 8;
/// Temporal range (max − min) above which a pixel is part of the moving image.
const VARYING: u8 = 16;
/// Temporal range at or below which a pixel is static (overlay or background). Leaves
/// room for codec noise around static text in lossy video.
const STATIC: u8 = 10;
/// A static pixel this much brighter than the background (5th percentile), and at
/// least `TEXT_MIN`, is overlay; darker static pixels are background, near-constant and
/// harmless (lower, and the speckle of a scan of few, similar frames goes too).
const TEXT_ABOVE_BACKGROUND: u8 = 32;
const TEXT_MIN: u8 = 48;
/// Share of the frame that must vary for the scan to be treated as a video.
const MIN_VARYING_SHARE: f64 = 0.01;
/// A moving region at least this share of the largest one is part of the sector too
/// (a sector whose middle is dark and still falls apart into pieces).
const PART: f64 = 0.1;
/// A jump between neighbouring pixels this large is an edge of drawn text.
const SHARP: u8 = 96;
/// Sharp edges in one window that make it text.
const GLYPH_EDGES: u32 = 10;
/// Frames searched for sharp-edged text to mask in all frames, at most.
const GLYPH_FRAMES: usize = 32;
/// Border bands are looked for within this share of the frame from each edge.
const BAND_REACH: f64 = 0.25;

/// Kept pixels of one frame size (`true` = shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub keep: Vec<bool>,
}

impl Mask {
    /// Sets every masked pixel of `frame` to 0.
    pub fn apply(&self, frame: &mut Frame8) {
        assert_eq!(
            (frame.width, frame.height),
            (self.width, self.height),
            "mask and frame sizes differ"
        );
        for (p, &k) in frame.pixels.iter_mut().zip(&self.keep) {
            if !k {
                *p = 0;
            }
        }
    }

    pub fn kept(&self) -> usize {
        self.keep.iter().filter(|&&k| k).count()
    }
}

/// A box in frame pixels, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

/// The mask for `frames` (all the same size). `regions`, when given, are in frame pixels
/// and bound everything kept; an empty list keeps nothing.
pub fn compute(frames: &[&Frame8], regions: Option<&[Region]>) -> Mask {
    let (w, h) = (frames[0].width, frames[0].height);
    let (lo, hi) = min_max(frames);
    let range: Vec<u8> = lo.iter().zip(&hi).map(|(a, b)| b - a).collect();
    let mut allowed = match regions {
        Some(r) => region_mask(r, w, h),
        None => vec![true; w * h],
    };
    let bands = border_bands(&hi, w, h);
    for (a, b) in allowed.iter_mut().zip(&bands) {
        *a &= !b;
    }
    let varying: Vec<bool> = range
        .iter()
        .zip(&allowed)
        .map(|(&r, &a)| a && r > VARYING)
        .collect();
    let share = varying.iter().filter(|&&v| v).count() as f64 / (w * h) as f64;
    let mut keep = if frames.len() >= 3 && share >= MIN_VARYING_SHARE {
        video_keep(&varying, &range, &hi, &allowed, w, h)
    } else {
        let mut keep = still_keep(&hi, &allowed, w, h);
        // Low-contrast text too (video: per frame, `glyphs::mask_text_per_frame`).
        for f in frames {
            for (k, t) in keep.iter_mut().zip(crate::decode::glyphs::text_of(f)) {
                *k &= !t;
            }
        }
        keep
    };
    // Text that changes sits in one place: a uniform sample of frames finds it.
    for f in frames.iter().step_by(frames.len().div_ceil(GLYPH_FRAMES)) {
        for (k, t) in keep.iter_mut().zip(glyphs(&f.pixels, w, h)) {
            *k &= !t;
        }
    }
    Mask {
        width: w,
        height: h,
        keep,
    }
}

fn video_keep(
    varying: &[bool],
    range: &[u8],
    hi: &[u8],
    allowed: &[bool],
    w: usize,
    h: usize,
) -> Vec<bool> {
    let side = w.max(h);
    let sector = large_components(&close(varying, w, h, (side / 30).max(1)), w, h, PART);
    let sector = dilate(&convex_hull_fill(&sector, w, h), w, h, (side / 100).max(1));
    let level = percentile(hi, 0.05)
        .saturating_add(TEXT_ABOVE_BACKGROUND)
        .max(TEXT_MIN);
    let text: Vec<bool> = range
        .iter()
        .zip(hi)
        .map(|(&r, &v)| r <= STATIC && v > level)
        .collect();
    let text = dilate(&text, w, h, 1);
    (0..w * h)
        .map(|i| sector[i] && allowed[i] && !text[i])
        .collect()
}

/// Text drawn over the image: clusters of sharp edges (a jump of `SHARP` between
/// neighbours), which speckle, blurred by the point spread of the probe, hardly has.
/// Each cluster is masked with a margin of its window.
fn glyphs(img: &[u8], w: usize, h: usize) -> Vec<bool> {
    let sharp: Vec<bool> = (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            let v = img[i];
            (x + 1 < w && v.abs_diff(img[i + 1]) >= SHARP)
                || (y + 1 < h && v.abs_diff(img[i + w]) >= SHARP)
        })
        .collect();
    let r = (w.max(h) / 40).max(2);
    let counts = crate::decode::glyphs::window_counts(&sharp, w, h, r);
    let core: Vec<bool> = counts.iter().map(|&c| c >= GLYPH_EDGES).collect();
    dilate(&core, w, h, r)
}

fn still_keep(img: &[u8], allowed: &[bool], w: usize, h: usize) -> Vec<bool> {
    let side = w.max(h);
    // Speckle at depth is dim: anything clearly above the background level counts.
    let level = percentile(img, 0.05).saturating_add(STILL_ABOVE_BACKGROUND);
    let bright: Vec<bool> = img
        .iter()
        .zip(allowed)
        .map(|(&v, &a)| a && v > level)
        .collect();
    let sector = largest_component(&close(&bright, w, h, (side / 40).max(1)), w, h);
    let sector = convex_hull_fill(&sector, w, h);
    (0..w * h).map(|i| sector[i] && allowed[i]).collect()
}

/// The value below which `share` of the pixels lie.
fn percentile(img: &[u8], share: f64) -> u8 {
    let mut hist = [0usize; 256];
    img.iter().for_each(|&v| hist[v as usize] += 1);
    let target = (img.len() as f64 * share) as usize;
    let mut seen = 0;
    for (v, n) in hist.iter().enumerate() {
        seen += n;
        if seen > target {
            return v as u8;
        }
    }
    255
}

fn min_max(frames: &[&Frame8]) -> (Vec<u8>, Vec<u8>) {
    let mut lo = frames[0].pixels.clone();
    let mut hi = frames[0].pixels.clone();
    for f in &frames[1..] {
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(&f.pixels) {
            *l = (*l).min(v);
            *h = (*h).max(v);
        }
    }
    (lo, hi)
}

fn region_mask(regions: &[Region], w: usize, h: usize) -> Vec<bool> {
    let mut m = vec![false; w * h];
    for r in regions {
        if r.x0 >= w || r.y0 >= h || r.x0 > r.x1 || r.y0 > r.y1 {
            continue;
        }
        let (x1, y1) = (r.x1.min(w - 1), r.y1.min(h - 1));
        for y in r.y0..=y1 {
            m[y * w + r.x0..=y * w + x1].fill(true);
        }
    }
    m
}

/// Bands of content at each border cut off from the inside by a dark line (row or
/// column), within `BAND_REACH` of the border; `img` is the brightest value over time.
fn border_bands(img: &[u8], w: usize, h: usize) -> Vec<bool> {
    let bright_in_row = |y: usize| {
        img[y * w..(y + 1) * w]
            .iter()
            .filter(|&&v| v > BRIGHT)
            .count()
    };
    let bright_in_col = |x: usize| (0..h).filter(|&y| img[y * w + x] > BRIGHT).count();
    let rows: Vec<bool> = (0..h).map(|y| bright_in_row(y) <= w / 200).collect();
    let cols: Vec<bool> = (0..w).map(|x| bright_in_col(x) <= h / 200).collect();
    let top = band_depth(&rows, BAND_REACH);
    let bottom = band_depth(&rows.iter().rev().copied().collect::<Vec<_>>(), BAND_REACH);
    let left = band_depth(&cols, BAND_REACH);
    let right = band_depth(&cols.iter().rev().copied().collect::<Vec<_>>(), BAND_REACH);
    let mut m = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            m[y * w + x] = y < top || y >= h - bottom || x < left || x >= w - right;
        }
    }
    m
}

/// How many lines from the start are a band: blocks of content lines that each end in a
/// dark line within `reach` of the start (the dark line included).
fn band_depth(dark: &[bool], reach: f64) -> usize {
    let limit = (dark.len() as f64 * reach) as usize;
    let mut depth = 0;
    let mut i = 0;
    loop {
        while i < dark.len() && dark[i] {
            i += 1;
        }
        // i: first content line of the next block
        let mut j = i;
        while j < dark.len() && !dark[j] {
            j += 1;
        }
        // j: first dark line after the block
        if i >= dark.len() || j >= limit {
            return depth;
        }
        depth = j + 1;
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_end_at_the_first_block_that_runs_deep() {
        // dark, text, dark, text, dark, then content to the end
        let mut d = vec![true, false, false, true, false, true];
        d.extend(vec![false; 30]);
        assert_eq!(band_depth(&d, 0.25), 6);
        let deep = vec![false; 20];
        assert_eq!(band_depth(&deep, 0.25), 0);
    }
}
