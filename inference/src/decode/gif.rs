use image::AnimationDecoder;

use super::{DecodeError, Format, FrameSink};
use crate::preprocess::GrayFrame;

/// Animated GIF: frames composited onto the canvas (disposal methods applied), as a
/// viewer shows them.
pub(super) fn decode(bytes: &[u8], sink: &mut FrameSink) -> Result<(), DecodeError> {
    let dec = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(bytes))
        .map_err(|e| DecodeError::corrupt(Format::Gif, e))?;
    let (w, h) = image::ImageDecoder::dimensions(&dec);
    sink.check_size(w as usize, h as usize)?;
    for frame in dec.into_frames() {
        let frame = frame.map_err(|e| DecodeError::corrupt(Format::Gif, e))?;
        let buf = frame.into_buffer();
        sink.push(GrayFrame::from_rgba8(
            buf.width() as usize,
            buf.height() as usize,
            buf.as_raw(),
        ))?;
    }
    Ok(())
}
