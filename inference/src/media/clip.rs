//! The clip: the de-identified scan as H.264 (Constrained Baseline, 4:2:0, which every
//! browser plays) in an MP4, encoded with OpenH264 and muxed with `mp4`.

use std::io::Cursor;

use mp4::{
    AvcConfig, FourCC, MediaConfig, Mp4Config, Mp4Sample, Mp4Writer, TrackConfig, TrackType,
};
use openh264::encoder::{
    Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile, QpRange,
    RateControlMode,
};
use openh264::formats::YUVSlices;
use openh264::OpenH264API;

use super::{decode_masked, Clip, MediaError, MediaLimits, DEFAULT_FPS};
use crate::decode::media_frames::{Frame8, MediaSampling};

/// Track timescale (ticks per second), the usual one for video.
const TIMESCALE: u32 = 90_000;
/// H.264 quantisers tried, best first, until the clip fits its byte limit (then frames
/// are dropped). 30 keeps speckle visibly intact at about a third of a bit per pixel;
/// the rate controller is not used: without frame skipping OpenH264 cannot hold a bit
/// rate, and skipped frames would break the clip's frame count.
const QUANTISERS: [u8; 5] = [30, 34, 38, 42, 46];

/// Builds the clip of a scan: at most `clip_max_frames` uniformly sampled frames over
/// the whole duration, shrunk to `clip_max_side` (even sides), at most `clip_max_bytes`.
/// A still image gives a one-frame clip lasting one second.
pub fn prepare_clip(bytes: &[u8], limits: &MediaLimits) -> Result<Clip, MediaError> {
    let sampling = MediaSampling {
        max_frames: limits.clip_max_frames.max(1),
        max_side: limits.clip_max_side.max(16) as usize,
        frames: Vec::new(),
        first_and_middle: false,
    };
    let masked = decode_masked(bytes, &sampling)?;
    let scan = masked.scan;
    let frames: Vec<Frame8> = scan.frames.into_iter().map(|(_, f)| even(f)).collect();
    let (w, h) = (frames[0].width, frames[0].height);
    if w < 16 || h < 16 {
        return Err(MediaError::encode("clip", format!("{w}x{h} is too small")));
    }
    // Uniform sampling keeps the duration: the kept frames play at a lower rate.
    let duration_s = if scan.frames_total <= 1 {
        1.0
    } else {
        scan.frames_total as f64 / scan.fps.unwrap_or(DEFAULT_FPS) as f64
    };
    let mut frames = frames;
    let mut q = 0;
    loop {
        let fps = frames.len() as f64 / duration_s;
        let mp4 = encode(&frames, fps, QUANTISERS[q])?;
        if mp4.len() <= limits.clip_max_bytes {
            return Ok(Clip {
                mp4,
                width: w as u32,
                height: h as u32,
                frames: frames.len() as u32,
                fps: fps as f32,
            });
        }
        if q + 1 < QUANTISERS.len() {
            q += 1;
        } else if frames.len() > 1 {
            frames = frames.into_iter().step_by(2).collect();
        } else {
            return Err(MediaError::TooLarge {
                what: "clip",
                bytes: mp4.len(),
                limit: limits.clip_max_bytes,
            });
        }
    }
}

/// Drops the last column / row of an odd-sized frame (4:2:0 needs even sides).
pub(super) fn even(f: Frame8) -> Frame8 {
    let (w, h) = (f.width & !1, f.height & !1);
    if (w, h) == (f.width, f.height) {
        return f;
    }
    let mut pixels = Vec::with_capacity(w * h);
    for row in f.pixels.chunks(f.width).take(h) {
        pixels.extend_from_slice(&row[..w]);
    }
    Frame8 {
        width: w,
        height: h,
        pixels,
        text: Vec::new(),
    }
}

/// One encoded picture: AVCC (length-prefixed) NAL units, and whether it is an IDR.
struct Picture {
    avcc: Vec<u8>,
    sync: bool,
}

pub(super) fn encode(frames: &[Frame8], fps: f64, qp: u8) -> Result<Vec<u8>, MediaError> {
    let (w, h) = (frames[0].width, frames[0].height);
    let config = EncoderConfig::new()
        .profile(Profile::Baseline)
        .rate_control_mode(RateControlMode::Off)
        .qp(QpRange::new(qp, qp))
        .max_frame_rate(FrameRate::from_hz(fps.max(1.0) as f32))
        .skip_frames(false)
        .background_detection(false)
        .intra_frame_period(IntraFramePeriod::from_num_frames(
            (fps * 2.0).ceil().max(1.0) as u32,
        ))
        .num_threads(1);
    let mut enc = Encoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| MediaError::encode("clip", e))?;
    let chroma = vec![128u8; (w / 2) * (h / 2)];
    let (mut sps, mut pps) = (None, None);
    let mut pictures = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let yuv = YUVSlices::new((&f.pixels, &chroma, &chroma), (w, h), (w, w / 2, w / 2));
        let ts = openh264::Timestamp::from_millis((i as f64 * 1000.0 / fps) as u64);
        let out = enc
            .encode_at(&yuv, ts)
            .map_err(|e| MediaError::encode("clip", e))?;
        let mut avcc = Vec::new();
        let mut sync = out.frame_type() == FrameType::IDR;
        for nal in split_annexb(&out.to_vec()) {
            match nal.first().map(|b| b & 0x1f) {
                Some(7) => sps = sps.or_else(|| Some(nal.to_vec())),
                Some(8) => pps = pps.or_else(|| Some(nal.to_vec())),
                Some(t) => {
                    sync |= t == 5;
                    avcc.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                    avcc.extend_from_slice(nal);
                }
                None => {}
            }
        }
        pictures.push(Picture { avcc, sync });
    }
    let (Some(sps), Some(pps)) = (sps, pps) else {
        return Err(MediaError::encode("clip", "the encoder gave no SPS/PPS"));
    };
    mux(&pictures, w, h, fps, sps, pps)
}

/// NAL units of an Annex B stream (start codes removed).
fn split_annexb(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push((i, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (k, &(_, body)) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |&(s, _)| s);
        // a 4-byte start code's leading zero belongs to no NAL
        while end > body && data[end - 1] == 0 {
            end -= 1;
        }
        if end > body {
            out.push(&data[body..end]);
        }
    }
    out
}

fn mux(
    pictures: &[Picture],
    w: usize,
    h: usize,
    fps: f64,
    sps: Vec<u8>,
    pps: Vec<u8>,
) -> Result<Vec<u8>, MediaError> {
    let err = |e: mp4::Error| MediaError::encode("clip MP4", e);
    let config = Mp4Config {
        major_brand: FourCC::from(*b"isom"),
        minor_version: 512,
        compatible_brands: [*b"isom", *b"iso2", *b"avc1", *b"mp41"]
            .into_iter()
            .map(FourCC::from)
            .collect(),
        timescale: 1000,
    };
    let mut writer = Mp4Writer::write_start(Cursor::new(Vec::new()), &config).map_err(err)?;
    writer
        .add_track(&TrackConfig {
            track_type: TrackType::Video,
            timescale: TIMESCALE,
            language: "und".into(),
            media_conf: MediaConfig::AvcConfig(AvcConfig {
                width: w as u16,
                height: h as u16,
                seq_param_set: sps,
                pic_param_set: pps,
            }),
        })
        .map_err(err)?;
    let tick = |i: usize| (i as f64 * TIMESCALE as f64 / fps).round() as u64;
    for (i, p) in pictures.iter().enumerate() {
        let start = tick(i);
        let duration = if pictures.len() == 1 {
            TIMESCALE
        } else {
            (tick(i + 1) - start).max(1) as u32
        };
        writer
            .write_sample(
                1,
                &Mp4Sample {
                    start_time: start,
                    duration,
                    rendering_offset: 0,
                    is_sync: p.sync,
                    bytes: bytes::Bytes::copy_from_slice(&p.avcc),
                },
            )
            .map_err(err)?;
    }
    writer.write_end().map_err(err)?;
    Ok(writer.into_writer().into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annexb_split_handles_both_start_codes() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 0,
        ];
        let nals = split_annexb(&data);
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3], &[0x65, 4]]);
    }
}
