use image::AnimationDecoder;

use super::{DecodeError, Format, FrameSink, MAX_VIDEO_FRAMES};
use crate::preprocess::GrayFrame;

/// Animated GIF: frames composited onto the canvas (disposal methods applied), as a
/// viewer shows them.
pub(super) fn decode(bytes: &[u8], sink: &mut FrameSink) -> Result<(), DecodeError> {
    // Count the frames first (LZW data skipped, no pixels decoded) so only the sampled
    // frames are kept: without a count every frame would be held until the end.
    let (frames, delay_cs) = count_frames(bytes)?;
    sink.expect_frames(frames)?;
    if delay_cs > 0 {
        sink.set_fps(frames as f64 * 100.0 / delay_cs as f64);
    }
    let dec = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(bytes))
        .map_err(|e| DecodeError::corrupt(Format::Gif, e))?;
    let (w, h) = image::ImageDecoder::dimensions(&dec);
    sink.check_size(w as usize, h as usize)?;
    for frame in dec.into_frames() {
        let frame = frame.map_err(|e| DecodeError::corrupt(Format::Gif, e))?;
        let buf = frame.into_buffer();
        if !sink.wants_next() {
            sink.skip_sized(buf.width() as usize, buf.height() as usize)?;
            continue;
        }
        if let Some(m) = sink.media.as_mut() {
            m.colour(buf.as_raw(), 4);
        }
        sink.push(GrayFrame::from_rgba8(
            buf.width() as usize,
            buf.height() as usize,
            buf.as_raw(),
        ))?;
    }
    Ok(())
}

/// Frames in the file and their total delay in hundredths of a second.
fn count_frames(bytes: &[u8]) -> Result<(usize, u64), DecodeError> {
    let mut opts = ::gif::DecodeOptions::new();
    opts.skip_frame_decoding(true);
    let mut d = opts
        .read_info(std::io::Cursor::new(bytes))
        .map_err(|e| DecodeError::corrupt(Format::Gif, e))?;
    let mut n = 0;
    let mut delay = 0u64;
    while let Some(frame) = d
        .read_next_frame()
        .map_err(|e| DecodeError::corrupt(Format::Gif, e))?
    {
        delay += u64::from(frame.delay);
        n += 1;
        if n > MAX_VIDEO_FRAMES {
            break;
        }
    }
    Ok((n, delay))
}
