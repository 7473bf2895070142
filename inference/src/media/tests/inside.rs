//! Text drawn inside the sector, where neither the border bands nor the static rule can
//! reach it: in colour (pure red, pure blue), in mid-grey over a grey background, in
//! 1-pixel white strokes, and in a video on a few frames only.

use super::burn::{each_pixel, Burned};
use super::*;

const LABEL: &str = "DOE JANE 4471";

fn native() -> MediaSampling {
    MediaSampling {
        max_frames: 100_000,
        max_side: 100_000,
        frames: vec![],
        first_and_middle: false,
    }
}

/// Top-left corner of a `bw`×`bh` box wholly inside the clean scan's mask, nearest the
/// middle of the mask.
fn place(original: &[u8], bw: usize, bh: usize) -> (usize, usize) {
    let m = decode_masked(original, &native()).unwrap();
    let (w, h) = m.scan.size();
    let kept: Vec<usize> = (0..w * h).filter(|&i| m.mask.keep[i]).collect();
    let cx = kept.iter().map(|i| i % w).sum::<usize>() / kept.len();
    let cy = kept.iter().map(|i| i / w).sum::<usize>() / kept.len();
    let mut best: Option<(usize, (usize, usize))> = None;
    let step = 4;
    for y in (0..h.saturating_sub(bh + 4)).step_by(step) {
        for x in (0..w.saturating_sub(bw + 4)).step_by(step) {
            let in_box =
                || (y..y + bh + 4).flat_map(move |yy| (x..x + bw + 4).map(move |xx| yy * w + xx));
            if !in_box().all(|i| m.mask.keep[i]) {
                continue;
            }
            let d = x.abs_diff(cx).pow(2) + y.abs_diff(cy).pow(2);
            if best.is_none_or(|(b, _)| d < b) {
                best = Some((d, (x + 2, y + 2)));
            }
        }
    }
    best.expect("a box inside the sector").1
}

/// `name` (a still) with `LABEL` drawn in `rgb` at `scale` inside the sector, re-encoded
/// as PNG or JPEG in colour; checked like the burned fixtures. `grey`: the scan under
/// the label is first brought into 60..=90 (its texture kept).
fn check_inside(name: &str, rgb: [u8; 3], scale: usize, grey: bool) {
    let original = fixture(&format!("scans/{name}"));
    let mut img = image::load_from_memory(&original).unwrap().to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (bw, bh) = (LABEL.len() * 6 * scale, 7 * scale);
    let (x, y) = place(&original, bw, bh);
    if grey {
        for yy in y - 2..y + bh + 2 {
            for xx in x - 2..x + bw + 2 {
                let p = img.get_pixel_mut(xx as u32, yy as u32);
                let v = 60 + (p.0[0] as u32 * 30 / 255) as u8;
                *p = image::Rgb([v, v, v]);
            }
        }
    }
    let mut text = vec![false; w * h];
    each_pixel(LABEL, x, y, scale, |px, py| {
        if px < w && py < h {
            img.put_pixel(px as u32, py as u32, image::Rgb(rgb));
            text[py * w + px] = true;
        }
    });
    let mut out = Vec::new();
    let jpeg = name.ends_with(".jpg");
    if jpeg {
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
            .encode_image(&img)
            .unwrap();
    } else {
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
    }
    let burned = Burned {
        width: w,
        height: h,
        text,
    };
    let label = format!("{name} {rgb:?} x{scale} at ({x}, {y})");
    check_text(&label, &out, &burned, &original);
}

const STILLS: [&str; 2] = ["pocus_pneu_emdocs1.png", "pocus_cov_oliviera_fig4a.jpg"];

fn scale_of(name: &str) -> usize {
    let img = image::load_from_memory(&fixture(&format!("scans/{name}"))).unwrap();
    (img.width() as usize / 300).max(1)
}

#[test]
fn red_text_inside_the_sector_is_masked() {
    for name in STILLS {
        check_inside(name, [255, 0, 0], scale_of(name), false);
    }
}

#[test]
fn blue_text_inside_the_sector_is_masked() {
    for name in STILLS {
        check_inside(name, [0, 0, 255], scale_of(name), false);
    }
}

#[test]
fn mid_grey_text_on_grey_inside_the_sector_is_masked() {
    for name in STILLS {
        check_inside(name, [110, 110, 110], scale_of(name), true);
    }
}

#[test]
fn one_pixel_white_text_inside_the_sector_is_masked() {
    for name in STILLS {
        check_inside(name, [255, 255, 255], 1, false);
    }
}

/// Light grey text (150: less than the old sharp-edge rule's 96 above most of the
/// speckle) inside the sector on five frames around the middle of a video (the
/// preview's middle frame among them): masked in those frames of the clip and preview.
#[test]
fn text_on_a_few_video_frames_is_masked() {
    let name = "cb_patient29_L2.mp4";
    let original = fixture(&format!("scans/{name}"));
    let mut src = every_frame(&original);
    let fps = src.fps.unwrap_or(DEFAULT_FPS);
    let n = src.frames.len();
    let (w, h) = src.size();
    let scale = (w / 300).max(1);
    let (x, y) = place(&original, LABEL.len() * 6 * scale, 7 * scale);
    let shown = n / 2 - 2..=n / 2 + 2;
    let mut text = vec![false; w * h];
    for (i, f) in src.frames.iter_mut() {
        each_pixel(LABEL, x, y, scale, |px, py| {
            if px < w && py < h {
                text[py * w + px] = true;
                if shown.contains(i) {
                    f.pixels[py * w + px] = 150;
                }
            }
        });
    }
    let frames: Vec<Frame8> = src.frames.into_iter().map(|(_, f)| f).collect();
    let bytes = reencode(Format::Mp4, &frames, fps);
    let burned = Burned {
        width: w,
        height: h,
        text,
    };
    let limits = MediaLimits::default();
    assert!(n <= limits.clip_max_frames, "every frame in the clip");
    for sampling in [clip_sampling(&limits), preview_sampling(&limits)] {
        let masked = decode_masked(&bytes, &sampling).unwrap();
        let (mw, mh) = masked.scan.size();
        let t = burned.at(mw, mh);
        let mut checked = 0;
        for (i, f) in masked.scan.frames.iter().filter(|(i, _)| shown.contains(i)) {
            checked += 1;
            for p in (0..mw * mh).filter(|&p| t[p]) {
                assert_eq!(f.pixels[p], 0, "{name}: text pixel {p} of frame {i}");
            }
        }
        assert!(checked > 0, "{name}: no frame with text kept");
    }
    let clip = prepare_clip(&bytes, &limits).unwrap();
    let back = every_frame(&clip.mp4);
    let (cw, ch) = back.size();
    let t = text_in_clip(&burned, &limits, cw, ch);
    for (i, f) in back.frames.iter().filter(|(i, _)| shown.contains(i)) {
        assert_dark(name, &format!("clip frame {i}"), &f.pixels, &t, 40);
    }
    let preview = prepare_preview(&bytes, &[], 0, &limits).unwrap();
    let middle = preview
        .frames
        .iter()
        .find(|k| shown.contains(&(k.index as usize)))
        .expect("the middle frame is in the preview");
    let img = image::load_from_memory(&middle.jpeg).unwrap().to_luma8();
    let t = burned.at(middle.width as usize, middle.height as usize);
    assert_dark(name, "preview middle frame", img.as_raw(), &t, 40);
}
