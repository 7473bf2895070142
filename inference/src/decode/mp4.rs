use std::io::Cursor;

use openh264::decoder::Decoder;
use openh264_sys2::{dsFramePending, SBufferInfo, DECODER_OPTION_END_OF_STREAM};

use super::{DecodeError, Format, FrameSink};
use crate::preprocess::GrayFrame;

const F: Format = Format::Mp4;

/// MP4/MOV with H.264 video: demux with `mp4`, decode with OpenH264 (compiled from source,
/// no system codec), keep the luma plane as the gray image.
pub(super) fn decode(bytes: &[u8], sink: &mut FrameSink) -> Result<(), DecodeError> {
    super::mp4_bounds::check(bytes).map_err(|e| DecodeError::corrupt(F, e))?;
    let mut reader = mp4::Mp4Reader::read_header(Cursor::new(bytes), bytes.len() as u64)
        .map_err(|e| DecodeError::corrupt(F, e))?;
    let track = reader
        .tracks()
        .values()
        .find(|t| matches!(t.track_type(), Ok(mp4::TrackType::Video)))
        .ok_or_else(|| DecodeError::unsupported(F, "no video track"))?;
    let track_id = track.track_id();
    let avc = match (
        track.media_type(),
        track.trak.mdia.minf.stbl.stsd.avc1.as_ref(),
    ) {
        (Ok(mp4::MediaType::H264), Some(avc1)) => &avc1.avcc,
        (Ok(other), _) => {
            return Err(DecodeError::unsupported(
                F,
                format!("video codec {other}; only H.264 is supported"),
            ))
        }
        (Err(_), _) => {
            return Err(DecodeError::unsupported(
                F,
                "unknown video codec; only H.264 is supported",
            ))
        }
    };
    check_profile(avc.avc_profile_indication)?;
    let length_size = avc.length_size_minus_one as usize + 1;
    let mut header = Vec::new();
    for nal in avc
        .sequence_parameter_sets
        .iter()
        .chain(&avc.picture_parameter_sets)
    {
        header.extend_from_slice(&[0, 0, 0, 1]);
        header.extend_from_slice(&nal.bytes);
    }
    sink.check_size(track.width() as usize, track.height() as usize)?;
    let samples = track.sample_count();
    sink.expect_frames(samples as usize)?;
    let mdhd = &track.trak.mdia.mdhd;
    if mdhd.timescale > 0 && mdhd.duration > 0 {
        sink.set_fps(samples as f64 * mdhd.timescale as f64 / mdhd.duration as f64);
    }

    let mut decoder = Decoder::new().map_err(|e| DecodeError::unsupported(F, e))?;
    decode_access_unit(&mut decoder, &header, sink)
        .map_err(|e| DecodeError::corrupt(F, format!("parameter sets: {e}")))?;
    let mut annexb = Vec::new();
    for id in 1..=samples {
        let sample = reader
            .read_sample(track_id, id)
            .map_err(|e| DecodeError::corrupt(F, format!("sample {id}: {e}")))?
            .ok_or_else(|| DecodeError::corrupt(F, format!("sample {id} missing")))?;
        to_annexb(&sample.bytes, length_size, &mut annexb)
            .map_err(|e| DecodeError::corrupt(F, format!("sample {id}: {e}")))?;
        decode_access_unit(&mut decoder, &annexb, sink)
            .map_err(|e| DecodeError::corrupt(F, format!("sample {id}: {e}")))?;
    }
    flush(&mut decoder, sink).map_err(|e| DecodeError::corrupt(F, format!("end of stream: {e}")))
}

/// Drains the pictures held back for B-frame reordering.
fn flush(decoder: &mut Decoder, sink: &mut FrameSink) -> Result<(), String> {
    let mut eos: i32 = 1;
    // SAFETY: END_OF_STREAM takes a pointer to an int.
    unsafe {
        decoder
            .raw_api()
            .set_option(DECODER_OPTION_END_OF_STREAM, (&raw mut eos).cast())
    };
    // an empty decode call completes the last access unit (as openh264's own console decoder does)
    decode_access_unit(decoder, &[], sink)?;
    for _ in 0..MAX_REORDER {
        let mut dst = [std::ptr::null_mut::<u8>(); 3];
        let mut info = SBufferInfo::default();
        // SAFETY: out-pointers valid for the call.
        unsafe { decoder.raw_api().flush_frame(dst.as_mut_ptr(), &mut info) };
        if info.iBufferStatus != 1 {
            break;
        }
        take_picture(&dst, &info, sink)?;
    }
    Ok(())
}

/// One access unit through `DecodeFrame2`, which reorders B-frames into display order
/// (the crate's `decode` uses the no-delay call, which fails on B-frames: openh264-rs #50).
fn decode_access_unit(
    decoder: &mut Decoder,
    au: &[u8],
    sink: &mut FrameSink,
) -> Result<(), String> {
    let mut dst = [std::ptr::null_mut::<u8>(); 3];
    let mut info = SBufferInfo::default();
    let len = i32::try_from(au.len()).map_err(|_| "access unit larger than 2 GiB".to_string())?;
    // SAFETY: `au` outlives the call; `dst` and `info` are valid out-pointers.
    let state = unsafe {
        decoder
            .raw_api()
            .decode_frame2(au.as_ptr(), len, dst.as_mut_ptr(), &mut info)
    };
    if state & !dsFramePending != 0 {
        return Err(format!("H.264 decoding failed (state {state:#x})"));
    }
    if info.iBufferStatus == 1 {
        take_picture(&dst, &info, sink)?;
    }
    Ok(())
}

/// H.264 allows at most 16 pictures in the decoded picture buffer.
const MAX_REORDER: usize = 16;

fn take_picture(
    dst: &[*mut u8; 3],
    info: &SBufferInfo,
    sink: &mut FrameSink,
) -> Result<(), String> {
    if dst[0].is_null() {
        return Ok(());
    }
    {
        // SAFETY: on iBufferStatus 1 the decoder owns a picture whose luma plane is
        // `height × stride` bytes at dst[0], valid until the next decode call.
        let (w, h, stride) = unsafe {
            let b = info.UsrData.sSystemBuffer;
            (b.iWidth as usize, b.iHeight as usize, b.iStride[0] as usize)
        };
        if !sink.wants_next() {
            return sink.skip_sized(w, h).map_err(|e| e.to_string());
        }
        if w == 0 || h == 0 || stride < w {
            return Err(format!(
                "decoder returned a {w}x{h} picture with stride {stride}"
            ));
        }
        let plane = unsafe { std::slice::from_raw_parts(dst[0], stride * h) };
        sink.push(GrayFrame::from_plane(w, h, stride, plane))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn check_profile(profile_idc: u8) -> Result<(), DecodeError> {
    let name = match profile_idc {
        66 | 77 | 88 | 100 => return Ok(()),
        110 => "High 10",
        122 => "High 4:2:2",
        244 => "High 4:4:4 Predictive",
        44 => "CAVLC 4:4:4 Intra",
        _ => "unknown",
    };
    Err(DecodeError::unsupported(
        F,
        format!("H.264 profile {name} ({profile_idc}); supported: Baseline, Main, Extended, High (8-bit 4:2:0)"),
    ))
}

/// Length-prefixed NAL units (ISO 14496-15) to an Annex B byte stream.
fn to_annexb(sample: &[u8], length_size: usize, out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    let mut rest = sample;
    while !rest.is_empty() {
        if rest.len() < length_size {
            return Err("truncated NAL length".into());
        }
        let len = rest[..length_size]
            .iter()
            .fold(0usize, |a, &b| (a << 8) | b as usize);
        rest = &rest[length_size..];
        if len > rest.len() {
            return Err(format!("NAL of {len} bytes overruns the sample"));
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(&rest[..len]);
        rest = &rest[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annexb_conversion_and_overrun() {
        let mut out = Vec::new();
        to_annexb(&[0, 0, 0, 2, 0xAA, 0xBB, 0, 0, 0, 1, 0xCC], 4, &mut out).unwrap();
        assert_eq!(out, vec![0, 0, 0, 1, 0xAA, 0xBB, 0, 0, 0, 1, 0xCC]);
        assert!(to_annexb(&[0, 0, 0, 9, 1], 4, &mut out).is_err());
        assert!(to_annexb(&[0, 0], 4, &mut out).is_err());
    }

    #[test]
    fn high_444_is_refused_by_name() {
        assert!(check_profile(244)
            .unwrap_err()
            .to_string()
            .contains("High 4:4:4"));
        assert!(check_profile(100).is_ok());
    }
}
