use image::ImageFormat;

use super::{DecodeError, Format, FrameSink};
use crate::preprocess::GrayFrame;

pub(super) fn decode(
    bytes: &[u8],
    format: Format,
    sink: &mut FrameSink,
) -> Result<(), DecodeError> {
    let fmt = match format {
        Format::Png => ImageFormat::Png,
        Format::Jpeg => ImageFormat::Jpeg,
        _ => ImageFormat::Bmp,
    };
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), fmt);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(512 * 1024 * 1024);
    reader.limits(limits);
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| DecodeError::corrupt(format, e))?;
    sink.check_size(w as usize, h as usize)?;
    let img = image::load_from_memory_with_format(bytes, fmt)
        .map_err(|e| DecodeError::corrupt(format, e))?;
    let rgb = img.to_rgb8();
    if let Some(m) = sink.media.as_mut() {
        m.colour(rgb.as_raw(), 3);
    }
    sink.push(GrayFrame::from_rgb8(w as usize, h as usize, rgb.as_raw()))
}
