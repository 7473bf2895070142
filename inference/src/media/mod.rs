//! De-identified media for the specialist: a preview (a few key frames as grayscale JPEG
//! with a class-activation overlay each) and a clip (the scan as H.264 MP4).
//!
//! Every pixel outside the ultrasound sector and every static overlay is set to 0 in
//! every frame before anything is encoded (`mask`). Both functions are CPU-heavy: run
//! them on the inference pool (`InferencePool::run`).

mod clip;
mod keyframes;
pub mod mask;
mod overlay;
#[cfg(test)]
mod tests;

use dicom_dictionary_std::tags;

use crate::decode::media_frames::{Frame8, MediaFrames, MediaSampling};
use crate::decode::{decode_media, DecodeError};
use mask::{Mask, Region};

pub use clip::prepare_clip;
pub use keyframes::prepare_preview;

/// Fallback frame rate of a video whose container does not say.
pub const DEFAULT_FPS: f32 = 25.0;

#[derive(Debug, Clone, PartialEq)]
pub struct MediaLimits {
    /// Whole preview (JPEGs and overlays), bytes.
    pub preview_max_bytes: usize,
    /// Key frames in a preview, at most.
    pub key_frames: usize,
    /// Longest side of a preview frame, pixels.
    pub preview_max_side: u32,
    /// Longest side of the clip, pixels.
    pub clip_max_side: u32,
    /// Frames in the clip, at most (uniformly sampled, duration kept).
    pub clip_max_frames: usize,
    /// MP4 size, bytes.
    pub clip_max_bytes: usize,
}

impl Default for MediaLimits {
    fn default() -> Self {
        Self {
            preview_max_bytes: 60_000,
            key_frames: 4,
            preview_max_side: 256,
            clip_max_side: 480,
            clip_max_frames: 300,
            clip_max_bytes: 4 << 20,
        }
    }
}

/// The model's reading of one analysed frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameScore {
    /// Source frame number (0-based, display order).
    pub index: usize,
    /// 1 − P(normal).
    pub pathology: f32,
    /// `cam_size²` map of the pathological classes, 0..1.
    pub cam: Vec<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    Pathological,
    First,
    Middle,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyFrameImage {
    pub index: u32,
    pub time_ms: u32,
    pub role: KeyRole,
    pub width: u32,
    pub height: u32,
    /// Grayscale JPEG, de-identified.
    pub jpeg: Vec<u8>,
    /// RGBA PNG heat map of the same size; empty when the frame has no map.
    pub overlay_png: Vec<u8>,
    /// 1 − P(normal) of this frame (of the nearest analysed frame for first/middle).
    pub pathology: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    pub source_width: u32,
    pub source_height: u32,
    pub frames_total: u32,
    /// Frames per second of the source (0 for a still image).
    pub fps: f32,
    pub frames: Vec<KeyFrameImage>,
}

impl Preview {
    /// Bytes of all images together.
    pub fn bytes(&self) -> usize {
        self.frames
            .iter()
            .map(|f| f.jpeg.len() + f.overlay_png.len())
            .sum()
    }
}

/// An H.264 (Constrained Baseline, 4:2:0) MP4 of the de-identified scan. A still image
/// gives a one-frame clip lasting one second.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    pub mp4: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub fps: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("the de-identification mask keeps no pixel of this scan")]
    NothingKept,
    #[error("encoding the {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error("the {what} cannot be made smaller than {bytes} bytes (limit {limit})")]
    TooLarge {
        what: &'static str,
        bytes: usize,
        limit: usize,
    },
}

impl MediaError {
    fn encode(what: &'static str, reason: impl std::fmt::Display) -> Self {
        MediaError::Encode {
            what,
            reason: reason.to_string(),
        }
    }
}

/// Frames decoded at media size with the de-identification mask applied to each.
pub(crate) struct MaskedScan {
    pub scan: MediaFrames,
    pub mask: Mask,
}

/// Decodes `bytes` as `sampling` asks and masks every kept frame.
pub(crate) fn decode_masked(
    bytes: &[u8],
    sampling: &MediaSampling,
) -> Result<MaskedScan, MediaError> {
    let (mut scan, dicom) = decode_media(bytes, sampling)?;
    let (w, h) = scan.size();
    let regions = dicom
        .as_ref()
        .and_then(|obj| ultrasound_regions(obj, (scan.source_width, scan.source_height), (w, h)));
    let refs: Vec<&Frame8> = scan.frames.iter().map(|(_, f)| f).collect();
    let mask = mask::compute(&refs, regions.as_deref());
    if mask.kept() == 0 {
        return Err(MediaError::NothingKept);
    }
    // Text that shows on some frames only: every kept frame is searched.
    let mut refs: Vec<&mut Frame8> = scan.frames.iter_mut().map(|(_, f)| f).collect();
    crate::decode::glyphs::mask_text_per_frame(&mut refs);
    for f in refs {
        mask.apply(f);
    }
    Ok(MaskedScan { scan, mask })
}

/// The DICOM file's ultrasound regions (RegionLocationMinX0 … MaxY1), scaled from
/// `source` to `size` pixels and rounded inwards; None when it lists none.
fn ultrasound_regions(
    obj: &dicom_object::DefaultDicomObject,
    source: (usize, usize),
    size: (usize, usize),
) -> Option<Vec<Region>> {
    let items = obj
        .element(tags::SEQUENCE_OF_ULTRASOUND_REGIONS)
        .ok()?
        .items()?;
    let sx = size.0 as f64 / source.0.max(1) as f64;
    let sy = size.1 as f64 / source.1.max(1) as f64;
    let mut out = Vec::new();
    for it in items {
        let int = |tag| it.element(tag).ok()?.to_int::<u32>().ok().map(|v| v as f64);
        let (Some(x0), Some(y0), Some(x1), Some(y1)) = (
            int(tags::REGION_LOCATION_MIN_X0),
            int(tags::REGION_LOCATION_MIN_Y0),
            int(tags::REGION_LOCATION_MAX_X1),
            int(tags::REGION_LOCATION_MAX_Y1),
        ) else {
            continue;
        };
        if x1 < x0 || y1 < y0 {
            continue;
        }
        let (a, b) = ((x0 * sx).ceil(), (y0 * sy).ceil());
        let (c, d) = (
            ((x1 + 1.0) * sx).floor() - 1.0,
            ((y1 + 1.0) * sy).floor() - 1.0,
        );
        if c < a || d < b {
            continue;
        }
        out.push(Region {
            x0: a as usize,
            y0: b as usize,
            x1: c as usize,
            y1: d as usize,
        });
    }
    (!out.is_empty()).then_some(out)
}
