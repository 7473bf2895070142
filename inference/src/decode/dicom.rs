use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, PixelDecoder};

use super::dicom_bounds::{self, BoundsError};
use super::{DecodeError, Format, FrameSink};
use crate::preprocess::GrayFrame;

const F: Format = Format::Dicom;

#[derive(Debug, thiserror::Error)]
pub enum OpenDicomError {
    #[error(transparent)]
    Bounds(#[from] BoundsError),
    #[error("{0}")]
    Parse(String),
}

thread_local! {
    static PARSES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// DICOM files parsed on this thread so far: lets tests show a scan is parsed once.
pub fn parses_on_this_thread() -> u64 {
    PARSES.with(|p| p.get())
}

/// Parses a whole DICOM file (preamble included) held in memory. Every declared length
/// is checked against the bytes first, so parsing allocates no more than the file holds.
pub fn open(bytes: &[u8]) -> Result<DefaultDicomObject, OpenDicomError> {
    PARSES.with(|p| p.set(p.get() + 1));
    dicom_bounds::check(bytes)?;
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(std::io::Cursor::new(bytes))
        .map_err(|e| OpenDicomError::Parse(e.to_string()))
}

/// Parses the file; the object is both the header and the frames to decode.
pub(super) fn parse(bytes: &[u8]) -> Result<DefaultDicomObject, DecodeError> {
    open(bytes).map_err(|e| DecodeError::corrupt(F, e))
}

/// Frames per second from Frame Time (ms per frame), else Cine Rate, else the
/// Recommended Display Frame Rate.
fn frame_rate(obj: &DefaultDicomObject) -> Option<f64> {
    let num = |tag| {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_float64().ok())
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    num(tags::FRAME_TIME)
        .map(|ms| 1000.0 / ms)
        .or_else(|| num(tags::CINE_RATE))
        .or_else(|| num(tags::RECOMMENDED_DISPLAY_FRAME_RATE))
}

/// DICOM single- or multi-frame (ultrasound multi-frame is the common case), from the
/// parsed file. Colour frames go through the same BT.601 luma as images; monochrome is
/// scaled to 8 bits.
pub(super) fn decode(obj: &DefaultDicomObject, sink: &mut FrameSink) -> Result<(), DecodeError> {
    if obj.element(tags::PIXEL_DATA).is_err() {
        return Err(DecodeError::unsupported(
            F,
            "no pixel data (not an image object)",
        ));
    }
    let int = |tag| obj.element(tag).ok().and_then(|e| e.to_int::<u32>().ok());
    let rows = int(tags::ROWS).ok_or_else(|| DecodeError::corrupt(F, "missing Rows"))? as usize;
    let cols =
        int(tags::COLUMNS).ok_or_else(|| DecodeError::corrupt(F, "missing Columns"))? as usize;
    sink.check_size(cols, rows)?;
    let frames = int(tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1) as usize;
    sink.expect_frames(frames)?;
    if let Some(fps) = frame_rate(obj) {
        sink.set_fps(fps);
    }
    let opts = ConvertOptions::new().force_8bit();
    for i in 0..frames {
        if !sink.wants_next() {
            sink.skip();
            continue;
        }
        // dicom-rs's RLE and JPEG decoders index past the frame on a segment or image that
        // does not fit Rows × Columns instead of failing (fuzzer findings 2 and 6,
        // docs/FUZZING.md): a panic there is a corrupt file, not a dead agent.
        let px = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            obj.decode_pixel_data_frame(i as u32)
        }))
        .map_err(|_| DecodeError::corrupt(F, format!("frame {i}: the pixel decoder failed")))?
        .map_err(|e| DecodeError::unsupported(F, format!("frame {i}: {e}")))?;
        let (w, h) = (px.columns() as usize, px.rows() as usize);
        let data: Vec<u8> = px
            .to_vec_frame_with_options(0, &opts)
            .map_err(|e| DecodeError::unsupported(F, format!("frame {i}: {e}")))?;
        let pi = px.photometric_interpretation().as_str().to_string();
        let frame = match (px.samples_per_pixel(), pi.as_str()) {
            (1, "MONOCHROME1") => {
                let inv: Vec<u8> = data.iter().map(|v| 255 - v).collect();
                GrayFrame::from_plane(w, h, w, &inv)
            }
            (1, _) => GrayFrame::from_plane(w, h, w, &data),
            (3, "RGB") => GrayFrame::from_rgb8(w, h, &data),
            // uncompressed YBR: the first sample is already luma
            (3, p) if p.starts_with("YBR") => {
                let y: Vec<u8> = data.chunks_exact(3).map(|c| c[0]).collect();
                GrayFrame::from_plane(w, h, w, &y)
            }
            (n, p) => {
                return Err(DecodeError::unsupported(
                    F,
                    format!("{n} samples per pixel with {p}"),
                ))
            }
        };
        if frame.pixels.len() != w * h {
            return Err(DecodeError::corrupt(
                F,
                format!(
                    "frame {i} holds {} pixels, expected {}",
                    frame.pixels.len(),
                    w * h
                ),
            ));
        }
        sink.push(frame)?;
    }
    Ok(())
}
