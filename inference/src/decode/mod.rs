//! Decoding untrusted scan files into sampled, resized grayscale frames.
//!
//! The container is recognised from its bytes, never from the file name: a device that
//! exports a JPEG as `.dcm` still gets the right decoder, and anything unknown gets an
//! error that names what was found and what is supported.

pub mod dicom;
pub mod dicom_bounds;
pub mod file;
mod gif;
pub(crate) mod glyphs;
pub mod media_frames;
pub(crate) mod morph;
mod mp4;
pub mod mp4_bounds;
mod still;

use std::fmt;

use crate::preprocess::{resize_area, sample_indices, GrayFrame, DEFAULT_INPUT_SIZE};
use media_frames::{Frame8, MediaFrames, MediaSampling};

/// Largest frame accepted, in pixels (a 4K frame is 8.3 M); guards against decompression bombs.
pub const MAX_FRAME_PIXELS: usize = 4096 * 4096;
/// Longest video accepted, in frames (~11 min at 30 fps).
pub const MAX_VIDEO_FRAMES: usize = 20_000;
/// Most pixels decoded from one scan, kept or not (~11 min of PAL video): bounds the work
/// a small file that declares many large frames can demand.
pub const MAX_DECODED_PIXELS: u64 = 8 << 30;

pub const SUPPORTED: &str = "PNG, JPEG, BMP, GIF, MP4/MOV (H.264), DICOM";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Png,
    Jpeg,
    Bmp,
    Gif,
    Mp4,
    Dicom,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Png => "PNG",
            Format::Jpeg => "JPEG",
            Format::Bmp => "BMP",
            Format::Gif => "GIF",
            Format::Mp4 => "MP4/MOV",
            Format::Dicom => "DICOM",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported file format: {found}; supported formats: {SUPPORTED}")]
    UnsupportedFormat { found: String },
    #[error("{format} file uses something this decoder does not support: {reason}")]
    UnsupportedContent { format: Format, reason: String },
    #[error("corrupt or truncated {format} file: {reason}")]
    Corrupt { format: Format, reason: String },
    #[error("{format} file contains no frames")]
    NoFrames { format: Format },
    #[error("{format} frame of {width}x{height} exceeds the limit of {MAX_FRAME_PIXELS} pixels")]
    TooLarge {
        format: Format,
        width: usize,
        height: usize,
    },
}

impl DecodeError {
    pub(crate) fn corrupt(format: Format, reason: impl fmt::Display) -> Self {
        DecodeError::Corrupt {
            format,
            reason: reason.to_string(),
        }
    }
    pub(crate) fn unsupported(format: Format, reason: impl fmt::Display) -> Self {
        DecodeError::UnsupportedContent {
            format,
            reason: reason.to_string(),
        }
    }
}

/// Frames ready for the model: `frames.len() / side²` frames of 0..255 floats.
#[derive(Debug, Clone)]
pub struct DecodedScan {
    pub format: Format,
    pub width: usize,
    pub height: usize,
    pub frames_total: usize,
    /// Side of each (square) frame in `frames`: the model's input size.
    pub side: usize,
    pub frames: Vec<f32>,
    /// Source frame number (display order) of each frame in `frames`.
    pub indices: Vec<usize>,
}

impl DecodedScan {
    pub fn frames_analysed(&self) -> usize {
        self.frames.len() / (self.side * self.side).max(1)
    }
}

/// Recognises the container from magic bytes.
pub fn detect(bytes: &[u8]) -> Result<Format, DecodeError> {
    let at = |off: usize, magic: &[u8]| {
        bytes.len() >= off + magic.len() && &bytes[off..off + magic.len()] == magic
    };
    if at(0, b"\x89PNG\r\n\x1a\n") {
        return Ok(Format::Png);
    }
    if at(0, b"\xFF\xD8\xFF") {
        return Ok(Format::Jpeg);
    }
    if at(0, b"GIF87a") || at(0, b"GIF89a") {
        return Ok(Format::Gif);
    }
    if at(128, b"DICM") {
        return Ok(Format::Dicom);
    }
    if [
        &b"ftyp"[..],
        b"moov",
        b"mdat",
        b"wide",
        b"free",
        b"skip",
        b"pnot",
    ]
    .iter()
    .any(|m| at(4, m))
    {
        return Ok(Format::Mp4);
    }
    if at(0, b"BM") && bytes.len() >= 26 {
        return Ok(Format::Bmp);
    }
    let found = if at(0, b"RIFF") && at(8, b"AVI ") {
        "AVI video"
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        "WebP image"
    } else if at(0, b"\x00\x00\x01\xBA") || at(0, b"\x00\x00\x01\xB3") {
        "MPEG-1/2 video"
    } else if at(0, b"\x1A\x45\xDF\xA3") {
        "Matroska/WebM video"
    } else if at(0, b"II*\x00") || at(0, b"MM\x00*") {
        "TIFF image"
    } else if at(0, b"%PDF") {
        "PDF document"
    } else if at(0, b"PK\x03\x04") {
        "ZIP archive"
    } else if bytes.is_empty() {
        "empty file"
    } else {
        "unrecognised data"
    };
    Err(DecodeError::UnsupportedFormat {
        found: found.to_string(),
    })
}

/// Decodes a scan and keeps at most `max_frames` uniformly sampled frames, resized to
/// the default model input ([`DEFAULT_INPUT_SIZE`]).
pub fn decode_scan(bytes: &[u8], max_frames: usize) -> Result<DecodedScan, DecodeError> {
    decode_scan_sized(bytes, max_frames, DEFAULT_INPUT_SIZE)
}

/// `decode_scan` for a model whose input side is `size`.
pub fn decode_scan_sized(
    bytes: &[u8],
    max_frames: usize,
    size: usize,
) -> Result<DecodedScan, DecodeError> {
    decode_scan_with_header(bytes, max_frames, size).map(|d| d.scan)
}

/// A decoded scan and, for DICOM, the file it was decoded from: its header is read from
/// this one parse, never from a second one.
pub struct Decoded {
    pub scan: DecodedScan,
    pub dicom: Option<dicom_object::DefaultDicomObject>,
}

/// `decode_scan_sized`, keeping the parsed DICOM file.
pub fn decode_scan_with_header(
    bytes: &[u8],
    max_frames: usize,
    size: usize,
) -> Result<Decoded, DecodeError> {
    let format = detect(bytes)?;
    let mut sink = FrameSink::new(format, max_frames);
    sink.side = size.max(1);
    let dicom = decode_into(bytes, format, &mut sink)?;
    Ok(Decoded {
        scan: sink.finish()?,
        dicom,
    })
}

/// Decodes a scan at media resolution: the sampled frames (and the ones `sampling` asks
/// for by number) as 8-bit gray, shrunk to fit `sampling.max_side`, with the parsed DICOM
/// file if it is one. The model's path (`decode_scan`) is untouched by this.
pub fn decode_media(
    bytes: &[u8],
    sampling: &MediaSampling,
) -> Result<(MediaFrames, Option<dicom_object::DefaultDicomObject>), DecodeError> {
    let format = detect(bytes)?;
    let mut sink = FrameSink::new(format, sampling.max_frames.max(1));
    sink.media = Some(media_frames::MediaKeep::new(sampling));
    let dicom = decode_into(bytes, format, &mut sink)?;
    Ok((sink.finish_media()?, dicom))
}

fn decode_into(
    bytes: &[u8],
    format: Format,
    sink: &mut FrameSink,
) -> Result<Option<dicom_object::DefaultDicomObject>, DecodeError> {
    match format {
        Format::Png | Format::Jpeg | Format::Bmp => still::decode(bytes, format, sink)?,
        Format::Gif => gif::decode(bytes, sink)?,
        Format::Mp4 => mp4::decode(bytes, sink)?,
        Format::Dicom => {
            let obj = dicom::parse(bytes)?;
            dicom::decode(&obj, sink)?;
            return Ok(Some(obj));
        }
    }
    Ok(None)
}

/// Receives decoded frames in display order and keeps only the sampled ones, resized, so
/// a long clip never holds more than `max_frames` small frames in memory.
pub(crate) struct FrameSink {
    format: Format,
    max_frames: usize,
    /// Set when the frame count is known before decoding (MP4, DICOM).
    wanted: Option<Vec<usize>>,
    seen: usize,
    kept: Vec<(usize, Vec<f32>)>,
    size: (usize, usize),
    /// Pixels decoded so far, against MAX_DECODED_PIXELS.
    decoded_pixels: u64,
    /// Set when decoding for media (previews, clips) instead of the model.
    media: Option<media_frames::MediaKeep>,
    /// Frames per second, where the container says.
    fps: Option<f32>,
    /// Side the kept frames are resized to (the model's input).
    side: usize,
}

impl FrameSink {
    fn new(format: Format, max_frames: usize) -> Self {
        Self {
            format,
            max_frames,
            wanted: None,
            seen: 0,
            kept: Vec::new(),
            size: (0, 0),
            decoded_pixels: 0,
            media: None,
            fps: None,
            side: DEFAULT_INPUT_SIZE,
        }
    }

    /// Records the frame rate the container declares (ignored unless finite and positive).
    pub(crate) fn set_fps(&mut self, fps: f64) {
        if fps.is_finite() && fps > 0.0 {
            self.fps = Some(fps as f32);
        }
    }

    /// Declares the number of frames up front; only sampled frames will be resized.
    pub(crate) fn expect_frames(&mut self, n: usize) -> Result<(), DecodeError> {
        if n > MAX_VIDEO_FRAMES {
            return Err(DecodeError::unsupported(
                self.format,
                format!("{n} frames, limit {MAX_VIDEO_FRAMES}"),
            ));
        }
        let mut wanted = sample_indices(n, self.max_frames);
        if let Some(m) = &self.media {
            m.add_wanted(n, &mut wanted);
        }
        self.wanted = Some(wanted);
        Ok(())
    }

    pub(crate) fn check_size(&self, width: usize, height: usize) -> Result<(), DecodeError> {
        if width == 0 || height == 0 {
            return Err(DecodeError::corrupt(
                self.format,
                format!("frame of {width}x{height}"),
            ));
        }
        if width.saturating_mul(height) > MAX_FRAME_PIXELS {
            return Err(DecodeError::TooLarge {
                format: self.format,
                width,
                height,
            });
        }
        Ok(())
    }

    /// Whether the next frame will be kept (lets decoders skip colour conversion).
    pub(crate) fn wants_next(&self) -> bool {
        match &self.wanted {
            Some(w) => w.binary_search(&self.seen).is_ok(),
            None => true,
        }
    }

    pub(crate) fn push(&mut self, frame: GrayFrame) -> Result<(), DecodeError> {
        self.check_size(frame.width, frame.height)?;
        self.count_frame(frame.width, frame.height)?;
        if self.wants_next() {
            self.size = (frame.width, frame.height);
            match &mut self.media {
                None => self.kept.push((self.seen, resize_area(&frame, self.side))),
                Some(m) => m.keep(self.seen, &frame),
            }
        }
        self.seen += 1;
        Ok(())
    }

    /// Charges one decoded frame against the frame and pixel limits.
    fn count_frame(&mut self, width: usize, height: usize) -> Result<(), DecodeError> {
        if self.seen >= MAX_VIDEO_FRAMES {
            return Err(DecodeError::unsupported(
                self.format,
                format!("more than {MAX_VIDEO_FRAMES} frames"),
            ));
        }
        self.decoded_pixels = self
            .decoded_pixels
            .saturating_add((width as u64).saturating_mul(height as u64));
        if self.decoded_pixels > MAX_DECODED_PIXELS {
            return Err(DecodeError::unsupported(
                self.format,
                format!("more than {MAX_DECODED_PIXELS} pixels in all frames"),
            ));
        }
        Ok(())
    }

    /// Counts a frame that was decoded but is not sampled (charged at the size of the
    /// last kept frame; decoders that know the size call `skip_sized`).
    pub(crate) fn skip(&mut self) {
        let (w, h) = self.size;
        // The limit is enforced at the next push or sized skip.
        self.decoded_pixels = self
            .decoded_pixels
            .saturating_add((w as u64).saturating_mul(h as u64));
        self.seen += 1;
    }

    /// Counts a decoded, unsampled frame of `width`×`height` against the limits.
    pub(crate) fn skip_sized(&mut self, width: usize, height: usize) -> Result<(), DecodeError> {
        self.count_frame(width, height)?;
        self.seen += 1;
        Ok(())
    }

    fn finish_media(self) -> Result<MediaFrames, DecodeError> {
        let Some(m) = self.media else {
            return Err(DecodeError::NoFrames {
                format: self.format,
            });
        };
        let frames: Vec<(usize, Frame8)> =
            m.finish(self.wanted.is_none(), self.seen, self.max_frames);
        if frames.is_empty() {
            return Err(DecodeError::NoFrames {
                format: self.format,
            });
        }
        Ok(MediaFrames {
            format: self.format,
            source_width: self.size.0,
            source_height: self.size.1,
            frames_total: self.seen,
            fps: self.fps,
            frames,
        })
    }

    fn finish(self) -> Result<DecodedScan, DecodeError> {
        if self.kept.is_empty() {
            return Err(DecodeError::NoFrames {
                format: self.format,
            });
        }
        // Without a known count every frame was kept; sample now. With one, `kept` already
        // holds just the sampled frames (fewer if the container over-promised).
        let keep = self
            .wanted
            .is_none()
            .then(|| sample_indices(self.seen, self.max_frames));
        let mut frames = Vec::new();
        let mut indices = Vec::new();
        for (idx, f) in &self.kept {
            if keep.as_ref().is_none_or(|k| k.binary_search(idx).is_ok()) {
                frames.extend_from_slice(f);
                indices.push(*idx);
            }
        }
        Ok(DecodedScan {
            format: self.format,
            width: self.size.0,
            height: self.size.1,
            frames_total: self.seen,
            side: self.side,
            frames,
            indices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_formats_are_named() {
        let mut avi = b"RIFF\0\0\0\0AVI LIST".to_vec();
        avi.resize(64, 0);
        let err = decode_scan(&avi, 32).unwrap_err().to_string();
        assert!(
            err.contains("AVI video") && err.contains("supported formats: PNG"),
            "{err}"
        );
        let err = decode_scan(b"hello world, not a scan", 32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unrecognised data"), "{err}");
        assert!(decode_scan(b"", 32)
            .unwrap_err()
            .to_string()
            .contains("empty file"));
    }

    #[test]
    fn decoded_pixels_are_bounded_across_frames() {
        // 4096² frames pass the per-frame limit, but not 600 of them.
        let mut sink = FrameSink::new(Format::Mp4, 4);
        sink.expect_frames(600).unwrap();
        let mut err = None;
        for _ in 0..600 {
            if let Err(e) = sink.skip_sized(4096, 4096) {
                err = Some(e);
                break;
            }
        }
        let err = err.expect("the pixel budget stops the clip").to_string();
        assert!(err.contains("pixels in all frames"), "{err}");
        assert!(sink.seen < 600);
    }

    #[test]
    fn truncated_files_are_corrupt_not_panics() {
        for magic in [
            &b"\x89PNG\r\n\x1a\n"[..],
            b"\xFF\xD8\xFF\xE0",
            b"GIF89a",
            b"\0\0\0\x18ftypisom",
        ] {
            let err = decode_scan(magic, 32).unwrap_err();
            assert!(
                matches!(
                    err,
                    DecodeError::Corrupt { .. } | DecodeError::NoFrames { .. }
                ),
                "{err:?}"
            );
        }
    }
}
