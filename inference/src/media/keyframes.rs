//! The preview: the most pathological analysed frames plus the first and the middle one,
//! each as a de-identified grayscale JPEG with its heat-map overlay, within a byte budget.

use image::codecs::jpeg::JpegEncoder;
use image::ExtendedColorType;

use super::{
    decode_masked, overlay, FrameScore, KeyFrameImage, KeyRole, MediaError, MediaLimits, Preview,
    DEFAULT_FPS,
};
use crate::decode::media_frames::{Frame8, MediaSampling};

/// Frames decoded besides the key frames, for the temporal mask.
const MASK_FRAMES: usize = 48;
/// JPEG qualities tried, best first, until the preview fits its budget.
const QUALITIES: [u8; 7] = [85, 75, 65, 55, 45, 35, 25];

/// Builds the preview of a scan from its bytes and the model's per-frame `scores`
/// (`cam_size²` maps). Without scores it holds the first and the middle frame only.
pub fn prepare_preview(
    bytes: &[u8],
    scores: &[FrameScore],
    cam_size: usize,
    limits: &MediaLimits,
) -> Result<Preview, MediaError> {
    let sampling = MediaSampling {
        max_frames: MASK_FRAMES,
        max_side: limits.preview_max_side.max(16) as usize,
        frames: scores.iter().map(|s| s.index).collect(),
        first_and_middle: true,
    };
    let masked = decode_masked(bytes, &sampling)?;
    let scan = &masked.scan;
    let total = scan.frames_total;
    let fps = match (scan.fps, total) {
        (_, 0 | 1) => 0.0,
        (Some(f), _) => f,
        (None, _) => DEFAULT_FPS,
    };
    let picks = choose(scores, total, limits.key_frames.max(1));
    let mut chosen: Vec<(Pick, &Frame8, Option<&FrameScore>)> = picks
        .into_iter()
        .filter_map(|p| {
            let (_, f) = scan
                .frames
                .iter()
                .min_by_key(|(i, _)| i.abs_diff(p.index))?;
            let score = scores.iter().min_by_key(|s| s.index.abs_diff(p.index));
            Some((p, f, score))
        })
        .collect();
    chosen.sort_by_key(|(p, _, _)| p.index);
    let overlays: Vec<Vec<u8>> = chosen
        .iter()
        .map(|(_, f, s)| match s {
            Some(s) => overlay::heat_png(
                &s.cam,
                cam_size,
                &masked.mask.keep,
                f.width,
                f.height,
                s.pathology,
            ),
            None => Ok(Vec::new()),
        })
        .collect::<Result<_, _>>()?;
    for q in QUALITIES {
        let frames = chosen
            .iter()
            .zip(&overlays)
            .map(|((p, f, s), png)| {
                Ok(KeyFrameImage {
                    index: p.index as u32,
                    time_ms: if fps > 0.0 {
                        (p.index as f64 * 1000.0 / fps as f64) as u32
                    } else {
                        0
                    },
                    role: p.role,
                    width: f.width as u32,
                    height: f.height as u32,
                    jpeg: jpeg(f, q)?,
                    overlay_png: png.clone(),
                    pathology: s.map_or(0.0, |s| s.pathology),
                })
            })
            .collect::<Result<Vec<_>, MediaError>>()?;
        let preview = Preview {
            source_width: scan.source_width as u32,
            source_height: scan.source_height as u32,
            frames_total: total as u32,
            fps,
            frames,
        };
        if preview.bytes() <= limits.preview_max_bytes {
            return Ok(preview);
        }
        if q == QUALITIES[QUALITIES.len() - 1] {
            return Err(MediaError::TooLarge {
                what: "preview",
                bytes: preview.bytes(),
                limit: limits.preview_max_bytes,
            });
        }
    }
    unreachable!("the last quality returns")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pick {
    index: usize,
    role: KeyRole,
}

/// Key frames: up to `n − 2` of the most pathological frames (at least one), the first
/// and the middle frame, then more pathological frames while places are left; no frame
/// twice.
fn choose(scores: &[FrameScore], total: usize, n: usize) -> Vec<Pick> {
    let mut by_pathology: Vec<&FrameScore> = scores.iter().collect();
    by_pathology.sort_by(|a, b| {
        b.pathology
            .total_cmp(&a.pathology)
            .then(a.index.cmp(&b.index))
    });
    let mut picks: Vec<Pick> = Vec::new();
    let add = |picks: &mut Vec<Pick>, index: usize, role| {
        if picks.len() < n && !picks.iter().any(|p| p.index == index) {
            picks.push(Pick { index, role });
        }
    };
    let first_round = n.saturating_sub(2).max(1);
    for s in by_pathology.iter().take(first_round) {
        add(&mut picks, s.index, KeyRole::Pathological);
    }
    add(&mut picks, 0, KeyRole::First);
    add(&mut picks, total / 2, KeyRole::Middle);
    for s in by_pathology.iter().skip(first_round) {
        add(&mut picks, s.index, KeyRole::Pathological);
    }
    picks
}

fn jpeg(f: &Frame8, quality: u8) -> Result<Vec<u8>, MediaError> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode(
            &f.pixels,
            f.width as u32,
            f.height as u32,
            ExtendedColorType::L8,
        )
        .map_err(|e| MediaError::encode("key frame JPEG", e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(index: usize, pathology: f32) -> FrameScore {
        FrameScore {
            index,
            pathology,
            cam: vec![],
        }
    }

    #[test]
    fn picks_pathological_then_first_and_middle() {
        let s = [
            score(1, 0.2),
            score(10, 0.9),
            score(20, 0.5),
            score(30, 0.8),
        ];
        let p = choose(&s, 40, 4);
        let idx: Vec<(usize, KeyRole)> = p.iter().map(|p| (p.index, p.role)).collect();
        assert_eq!(
            idx,
            vec![
                (10, KeyRole::Pathological),
                (30, KeyRole::Pathological),
                (0, KeyRole::First),
                (20, KeyRole::Middle)
            ]
        );
        // a still: one frame, once
        assert_eq!(choose(&[score(0, 0.7)], 1, 4).len(), 1);
        // the middle frame is also pathological: the next one takes its place
        let p = choose(&[score(5, 0.9), score(3, 0.1), score(4, 0.2)], 10, 4);
        assert_eq!(p.len(), 4);
    }
}
