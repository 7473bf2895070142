//! Drawn text over the image, found by local contrast rather than absolute brightness:
//! strokes (runs of one to `MAX_STROKE` pixels that differ from the pixels on both
//! sides by `STROKE` or more, all brighter or all darker) packed into text-line-shaped
//! clusters more densely than speckle packs them. Red text on black is about 76 in
//! luma, blue about 29, mid-grey text 20–50 above a grey background: all are strokes.
//!
//! Video: every frame that is kept is searched (`mask_text_per_frame`), so text shown
//! on only a few frames is masked in those frames and their neighbours.

use super::media_frames::Frame8;
use super::morph::dilate;

/// A stroke differs from both of its neighbours by at least this much.
const STROKE: u8 = 20;
/// Widest stroke, pixels.
const MAX_STROKE: usize = 3;
/// Radius of the window in which strokes are counted.
const R: usize = 4;
/// Share of a window's pixels on strokes that makes it text (5×7 glyphs: 0.3–0.6;
/// speckle: mostly 0, rarely above 0.3 and then not in a text-line shape).
const DENSE: f64 = 0.25;
/// A cluster of dense windows is text when it is at most this tall (pixels) …
const LINE_MAX_HEIGHT: usize = 48;
/// … and at least this many times as wide as tall, less one (a single glyph's cluster
/// is about square).
const LINE_MIN_ASPECT: f64 = 0.8;
/// A cluster of fewer dense pixels than this is noise.
const MIN_CLUSTER: usize = 12;
/// Spread between a pixel's strongest and weakest colour channel that makes it colour,
/// hence overlay (ultrasound is gray; lossy chroma of gray stays well below).
const SATURATED: u8 = 40;
/// Above this share of coloured pixels the whole display is tinted: colour says nothing.
const TINTED: f64 = 0.2;
/// Margin around coloured pixels (chroma is subsampled and bleeds in JPEG and H.264).
const COLOUR_MARGIN: usize = 2;

/// Text in `img`: text-line-shaped clusters of dense strokes, with a margin.
pub fn text(img: &[u8], w: usize, h: usize) -> Vec<bool> {
    let s = strokes(img, w, h);
    let counts = window_counts(&s, w, h, R);
    let area = ((2 * R + 1) * (2 * R + 1)) as f64;
    let min = (DENSE * area).ceil() as u32;
    let dense: Vec<bool> = counts.iter().map(|&c| c >= min).collect();
    let mut lines = vec![false; w * h];
    // A line's box, widened by twice its height each way (a glyph of the line that is
    // narrow, less dense than the rest, or after a space, is still on it).
    for (x0, y0, x1, y1) in line_shaped(&dense, w, h) {
        let grow = 2 * (y1 - y0 + 1);
        let (x0, x1) = (x0.saturating_sub(grow), (x1 + grow).min(w - 1));
        for y in y0..=y1 {
            lines[y * w + x0..=y * w + x1].fill(true);
        }
    }
    dilate(&lines, w, h, R + 1)
}

/// Coloured pixels of an interleaved image (`channels` ≥ 3, RGB first), with a margin;
/// None when there are none or the whole display is tinted.
pub fn saturated(pixels: &[u8], channels: usize) -> Option<Vec<bool>> {
    if channels < 3 {
        return None;
    }
    let m: Vec<bool> = pixels
        .chunks_exact(channels)
        .map(|p| {
            let (lo, hi) = (p[0].min(p[1]).min(p[2]), p[0].max(p[1]).max(p[2]));
            hi - lo >= SATURATED
        })
        .collect();
    let n = m.iter().filter(|&&c| c).count();
    (n > 0 && (n as f64) < TINTED * m.len() as f64).then_some(m)
}

/// Dilates a source-size colour map by the colour margin.
pub fn widen_colour(m: &[bool], w: usize, h: usize) -> Vec<bool> {
    dilate(m, w, h, COLOUR_MARGIN)
}

/// `m` (`fw`×`fh`) at `w`×`h`: an output pixel is set if any source pixel under it is.
pub fn shrink(m: &[bool], fw: usize, fh: usize, w: usize, h: usize) -> Vec<bool> {
    let mut out = vec![false; w * h];
    for y in 0..fh {
        let (y0, y1) = (y * h / fh, ((y + 1) * h).div_ceil(fh).min(h));
        for x in 0..fw {
            if !m[y * fw + x] {
                continue;
            }
            let (x0, x1) = (x * w / fw, ((x + 1) * w).div_ceil(fw).min(w));
            for oy in y0..y1.max(y0 + 1) {
                out[oy * w + x0..oy * w + x1.max(x0 + 1)].fill(true);
            }
        }
    }
    out
}

/// The text map found while decoding, or, when none was searched, found now.
pub fn text_of(f: &Frame8) -> Vec<bool> {
    if f.text.len() == f.width * f.height {
        f.text.clone()
    } else {
        text(&f.pixels, f.width, f.height)
    }
}

/// Masks, in every frame, the text found in it and in the frames either side of it.
pub fn mask_text_per_frame(frames: &mut [&mut Frame8]) {
    let n = frames.len();
    if n == 0 {
        return;
    }
    let find = |f: &Frame8| text_of(f);
    let mut prev: Option<Vec<bool>> = None;
    let mut cur = find(frames[0]);
    for i in 0..n {
        let next = (i + 1 < n).then(|| find(frames[i + 1]));
        let f = &mut *frames[i];
        for (p, px) in f.pixels.iter_mut().enumerate() {
            let hit = cur[p]
                || prev.as_ref().is_some_and(|m| m[p])
                || next.as_ref().is_some_and(|m| m[p]);
            if hit {
                *px = 0;
            }
        }
        prev = Some(cur);
        match next {
            Some(m) => cur = m,
            None => break,
        }
    }
}

/// Pixels of thin runs, across rows or down columns.
fn strokes(img: &[u8], w: usize, h: usize) -> Vec<bool> {
    let mut out = vec![false; w * h];
    for y in 0..h {
        mark_runs(&img[y * w..(y + 1) * w], |x| out[y * w + x] = true);
    }
    let mut col = vec![0u8; h];
    for x in 0..w {
        for (y, c) in col.iter_mut().enumerate() {
            *c = img[y * w + x];
        }
        mark_runs(&col, |y| out[y * w + x] = true);
    }
    out
}

/// Calls `mark` on every index of a run of 1..=`MAX_STROKE` values that all differ from
/// the value before and the value after it by `STROKE` or more (all above or all below).
fn mark_runs(line: &[u8], mut mark: impl FnMut(usize)) {
    let n = line.len();
    for s in 1..n.saturating_sub(1) {
        let (mut lo, mut hi) = (255u8, 0u8);
        for e in s + 1..=(s + MAX_STROKE).min(n - 1) {
            // the run is line[s..e], line[e] the value after it
            lo = lo.min(line[e - 1]);
            hi = hi.max(line[e - 1]);
            let (l, r) = (line[s - 1], line[e]);
            let bright = lo as u16 >= l.max(r) as u16 + STROKE as u16;
            let dark = hi as u16 + STROKE as u16 <= l.min(r) as u16;
            if bright || dark {
                (s..e).for_each(&mut mark);
            }
        }
    }
}

/// Boxes (x0, y0, x1, y1, inclusive) of the 8-connected clusters of `m` shaped like a
/// line of text: not taller than `LINE_MAX_HEIGHT`, about as wide as tall or wider,
/// `MIN_CLUSTER` pixels or more.
fn line_shaped(m: &[bool], w: usize, h: usize) -> Vec<(usize, usize, usize, usize)> {
    let mut label = vec![u32::MAX; w * h];
    let mut boxes = Vec::new();
    let mut id = 0u32;
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !m[start] || label[start] != u32::MAX {
            continue;
        }
        id += 1;
        label[start] = id;
        stack.push(start);
        let (mut x0, mut y0, mut x1, mut y1, mut size) = (w, h, 0, 0, 0usize);
        while let Some(p) = stack.pop() {
            size += 1;
            let (x, y) = (p % w, p / w);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let q = ny * w + nx;
                    if m[q] && label[q] == u32::MAX {
                        label[q] = id;
                        stack.push(q);
                    }
                }
            }
        }
        let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
        if size >= MIN_CLUSTER && bh <= LINE_MAX_HEIGHT && bw as f64 >= LINE_MIN_ASPECT * bh as f64
        {
            boxes.push((x0, y0, x1, y1));
        }
    }
    boxes
}

/// Set pixels in each pixel's (2r+1)² window.
pub(crate) fn window_counts(m: &[bool], w: usize, h: usize, r: usize) -> Vec<u32> {
    let mut sum = vec![0u32; (w + 1) * (h + 1)];
    for y in 0..h {
        for x in 0..w {
            sum[(y + 1) * (w + 1) + x + 1] =
                m[y * w + x] as u32 + sum[y * (w + 1) + x + 1] + sum[(y + 1) * (w + 1) + x]
                    - sum[y * (w + 1) + x];
        }
    }
    (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            let (x0, y0) = (x.saturating_sub(r), y.saturating_sub(r));
            let (x1, y1) = ((x + r + 1).min(w), (y + r + 1).min(h));
            sum[y1 * (w + 1) + x1] + sum[y0 * (w + 1) + x0]
                - sum[y0 * (w + 1) + x1]
                - sum[y1 * (w + 1) + x0]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_runs_either_way_are_strokes_and_steps_are_not() {
        let mut hit = vec![false; 12];
        // a 2-px bright run over 60, a 1-px dark run, and a step
        let line = [60, 60, 85, 85, 60, 60, 30, 60, 60, 200, 200, 200];
        mark_runs(&line, |i| hit[i] = true);
        let want: Vec<bool> = (0..12).map(|i| [2, 3, 6].contains(&i)).collect();
        assert_eq!(hit, want);
    }
}
