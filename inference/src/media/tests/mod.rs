//! De-identification on real fixtures with synthetic PHI burned in (`burn`): every text
//! pixel is 0 in every masked frame, stays near 0 through the lossy JPEG and H.264
//! encodings, and most of the moving sector is kept.

mod burn;
mod dicom;
mod inside;

use std::path::PathBuf;

use super::*;
use crate::decode::media_frames::{fit, MediaFrames};
use crate::decode::Format;

fn fixture(rel: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn every_frame(bytes: &[u8]) -> MediaFrames {
    let s = MediaSampling {
        max_frames: 100_000,
        max_side: 100_000,
        frames: vec![],
        first_and_middle: false,
    };
    decode_media(bytes, &s).unwrap().0
}

fn clip_sampling(l: &MediaLimits) -> MediaSampling {
    MediaSampling {
        max_frames: l.clip_max_frames,
        max_side: l.clip_max_side as usize,
        frames: vec![],
        first_and_middle: false,
    }
}

fn preview_sampling(l: &MediaLimits) -> MediaSampling {
    MediaSampling {
        max_frames: 48,
        max_side: l.preview_max_side as usize,
        frames: vec![],
        first_and_middle: true,
    }
}

/// The scan re-encoded in its own kind of container: H.264 MP4 (our encoder, high
/// quality), GIF, or PNG / JPEG for stills.
fn reencode(format: Format, frames: &[Frame8], fps: f32) -> Vec<u8> {
    let mut out = Vec::new();
    match format {
        Format::Mp4 => return clip::encode(frames, fps as f64, 18).unwrap(),
        Format::Gif => {
            let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
            for f in frames {
                let rgba: Vec<u8> = f.pixels.iter().flat_map(|&v| [v, v, v, 255]).collect();
                let buf =
                    image::RgbaImage::from_raw(f.width as u32, f.height as u32, rgba).unwrap();
                let delay = image::Delay::from_numer_denom_ms(1000, fps.max(1.0) as u32);
                enc.encode_frame(image::Frame::from_parts(buf, 0, 0, delay))
                    .unwrap();
            }
        }
        Format::Jpeg => {
            let f = &frames[0];
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
                .encode(
                    &f.pixels,
                    f.width as u32,
                    f.height as u32,
                    image::ExtendedColorType::L8,
                )
                .unwrap();
        }
        _ => {
            let f = &frames[0];
            image::GrayImage::from_raw(f.width as u32, f.height as u32, f.pixels.clone())
                .unwrap()
                .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
                .unwrap();
        }
    }
    out
}

/// Pixels that carry the scan: varying over time (video) or above the background
/// (still), in `scan` at its size.
fn content(scan: &MediaFrames) -> Vec<bool> {
    let frames: Vec<&Frame8> = scan.frames.iter().map(|(_, f)| f).collect();
    let n = frames[0].pixels.len();
    let mut lo = vec![255u8; n];
    let mut hi = vec![0u8; n];
    for f in &frames {
        for i in 0..n {
            lo[i] = lo[i].min(f.pixels[i]);
            hi[i] = hi[i].max(f.pixels[i]);
        }
    }
    if frames.len() >= 3 {
        (0..n).map(|i| hi[i] - lo[i] > 16).collect()
    } else {
        let mut sorted = hi.clone();
        sorted.sort_unstable();
        let bg = sorted[n / 20];
        hi.iter().map(|&v| v > bg.saturating_add(8)).collect()
    }
}

/// Source text map cropped to an even-sided clip of `w`×`h`.
fn text_in_clip(b: &burn::Burned, limits: &MediaLimits, w: usize, h: usize) -> Vec<bool> {
    let (fw, fh) = fit(b.width, b.height, limits.clip_max_side as usize);
    let full = b.at(fw, fh);
    (0..h)
        .flat_map(|y| full[y * fw..y * fw + w].to_vec())
        .collect()
}

fn assert_dark(name: &str, what: &str, px: &[u8], text: &[bool], max_allowed: u8) {
    let vals: Vec<u8> = px
        .iter()
        .zip(text)
        .filter(|(_, &t)| t)
        .map(|(&v, _)| v)
        .collect();
    assert!(!vals.is_empty(), "{name} {what}: no text pixels to check");
    let max = *vals.iter().max().unwrap();
    let mean = vals.iter().map(|&v| v as f64).sum::<f64>() / vals.len() as f64;
    assert!(
        max <= max_allowed && mean <= 3.0,
        "{name} {what}: text pixels max {max} mean {mean:.2}"
    );
}

fn check_burned(name: &str) {
    let original = fixture(&format!("scans/{name}"));
    let mut src = every_frame(&original);
    let fps = src.fps.unwrap_or(DEFAULT_FPS);
    let mut frames: Vec<Frame8> = src.frames.drain(..).map(|(_, f)| f).collect();
    let burned = burn::burn(&mut frames);
    let bytes = reencode(src.format, &frames, fps);
    check_text(name, &bytes, &burned, &original);
}

/// `bytes` has text where `burned` says; `original` is the same scan without it.
fn check_text(name: &str, bytes: &[u8], burned: &burn::Burned, original: &[u8]) {
    let limits = MediaLimits::default();
    for sampling in [clip_sampling(&limits), preview_sampling(&limits)] {
        let masked = decode_masked(bytes, &sampling).unwrap();
        let (w, h) = masked.scan.size();
        let text = burned.at(w, h);
        for (i, f) in &masked.scan.frames {
            for (p, _) in text.iter().enumerate().filter(|(_, &t)| t) {
                assert_eq!(
                    f.pixels[p], 0,
                    "{name}: text pixel {p} of frame {i} at {w}x{h}"
                );
            }
        }
        let clean = decode_media(original, &sampling).unwrap().0;
        let before = content(&clean);
        let relevant: Vec<usize> = (0..w * h).filter(|&i| before[i] && !text[i]).collect();
        let kept = relevant.iter().filter(|&&i| masked.mask.keep[i]).count();
        let share = kept as f64 / relevant.len() as f64;
        eprintln!(
            "{name} at {w}x{h}: {:.0}% of the sector kept",
            share * 100.0
        );
        assert!(
            share >= 0.5,
            "{name}: only {:.0}% of the sector kept",
            share * 100.0
        );
        // Text found frame by frame takes little more of the sector.
        let unmasked = decode_media(bytes, &sampling).unwrap().0;
        let (mut lost, mut all) = (0usize, 0usize);
        for ((_, m), (_, u)) in masked.scan.frames.iter().zip(&unmasked.frames) {
            for &i in relevant
                .iter()
                .filter(|&&i| masked.mask.keep[i] && u.pixels[i] > 0)
            {
                all += 1;
                lost += (m.pixels[i] == 0) as usize;
            }
        }
        let lost = lost as f64 / all.max(1) as f64;
        let total = share * (1.0 - lost);
        eprintln!(
            "{name} at {w}x{h}: {:.1}% more lost frame by frame, {:.0}% kept in all",
            lost * 100.0,
            total * 100.0
        );
        assert!(
            total >= 0.5,
            "{name}: only {:.0}% kept in all",
            total * 100.0
        );
    }

    let clip = prepare_clip(bytes, &limits).unwrap();
    let back = every_frame(&clip.mp4);
    let (w, h) = back.size();
    let text = text_in_clip(burned, &limits, w, h);
    for (i, f) in &back.frames {
        assert_dark(name, &format!("clip frame {i}"), &f.pixels, &text, 40);
    }

    let preview = prepare_preview(bytes, &[], 0, &limits).unwrap();
    for k in &preview.frames {
        let img = image::load_from_memory(&k.jpeg).unwrap().to_luma8();
        let text = burned.at(k.width as usize, k.height as usize);
        assert_dark(
            name,
            &format!("preview frame {}", k.index),
            img.as_raw(),
            &text,
            40,
        );
    }
}

#[test]
fn burned_text_is_masked_in_mp4() {
    check_burned("cb_patient29_L2.mp4");
}

#[test]
fn burned_text_is_masked_in_mov() {
    check_burned("pocus_reg_alines.mov");
}

#[test]
fn burned_text_is_masked_in_gif() {
    check_burned("pocus_cov_atlas45.gif");
}

#[test]
fn burned_text_is_masked_in_png() {
    check_burned("pocus_pneu_emdocs1.png");
}

#[test]
fn burned_text_is_masked_in_jpeg() {
    check_burned("pocus_cov_oliviera_fig4a.jpg");
}

#[test]
fn burned_text_is_masked_in_bmp_frame() {
    check_burned("cb_frame.bmp");
}

#[test]
fn h264_round_trip_is_close() {
    let src = every_frame(&fixture("scans/cb_patient29_L2.mp4"));
    let frames: Vec<Frame8> = src.frames.iter().map(|(_, f)| f.clone()).collect();
    let mp4 = clip::encode(&frames, 25.0, 18).unwrap();
    let back = every_frame(&mp4);
    assert_eq!(back.frames.len(), frames.len());
    for ((_, b), a) in back.frames.iter().zip(&frames) {
        let mad = a
            .pixels
            .iter()
            .zip(&b.pixels)
            .map(|(&x, &y)| (x as f64 - y as f64).abs())
            .sum::<f64>()
            / a.pixels.len() as f64;
        eprintln!("mad {mad:.2}");
        assert!(mad < 3.0, "mean abs difference {mad}");
    }
}

#[test]
fn previews_and_clips_shrink_to_their_byte_limits() {
    let bytes = fixture("scans/pocus_reg_alines.mov");
    let roomy = prepare_preview(&bytes, &[], 0, &MediaLimits::default()).unwrap();
    let tight = MediaLimits {
        preview_max_bytes: roomy.bytes() / 2,
        clip_max_bytes: 40_000,
        ..MediaLimits::default()
    };
    let small = prepare_preview(&bytes, &[], 0, &tight).unwrap();
    assert!(small.bytes() <= tight.preview_max_bytes);
    assert_eq!(small.frames.len(), roomy.frames.len());
    let impossible = MediaLimits {
        preview_max_bytes: 300,
        ..MediaLimits::default()
    };
    assert!(matches!(
        prepare_preview(&bytes, &[], 0, &impossible),
        Err(MediaError::TooLarge { .. })
    ));
    let clip = prepare_clip(&bytes, &tight).unwrap();
    assert!(clip.mp4.len() <= 40_000, "{}", clip.mp4.len());
    assert!(
        (clip.frames as f32 / clip.fps - 10.0).abs() < 0.2,
        "duration kept"
    );
    assert_eq!(every_frame(&clip.mp4).frames.len(), clip.frames as usize);
}
