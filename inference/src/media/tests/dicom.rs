//! DICOM: the PHI fixture's burned-in header band, and ultrasound regions.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::burn::Burned;
use super::*;

#[test]
fn the_phi_fixtures_burned_band_is_masked() {
    let phi = fixture("phi/synthetic_phi.dcm");
    let original = fixture("scans/cb_multiframe.dcm");
    let (a, b) = (every_frame(&phi), every_frame(&original));
    let (w, h) = a.size();
    // The text: bright pixels where the PHI copy differs from the scan it was made from.
    let mut text = vec![false; w * h];
    for ((_, fa), (_, fb)) in a.frames.iter().zip(&b.frames) {
        for (t, (&pa, &pb)) in text.iter_mut().zip(fa.pixels.iter().zip(&fb.pixels)) {
            *t |= pa != pb && pa > 40;
        }
    }
    assert!(
        text.iter().filter(|&&t| t).count() > 200,
        "the fixture has burned text"
    );
    let burned = Burned {
        width: w,
        height: h,
        text,
    };
    check_text("synthetic_phi.dcm", &phi, &burned, &original);
}

/// `raw` with these ultrasound regions (x0, y0, x1, y1).
fn with_regions(raw: &[u8], regions: &[(u32, u32, u32, u32)]) -> Vec<u8> {
    let mut obj = crate::open_dicom(raw).unwrap();
    let ul = |t, v: u32| DataElement::new(t, VR::UL, PrimitiveValue::from(v));
    let item = |&(x0, y0, x1, y1): &(u32, u32, u32, u32)| {
        InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::REGION_SPATIAL_FORMAT,
                VR::US,
                PrimitiveValue::from(1u16),
            ),
            ul(tags::REGION_LOCATION_MIN_X0, x0),
            ul(tags::REGION_LOCATION_MIN_Y0, y0),
            ul(tags::REGION_LOCATION_MAX_X1, x1),
            ul(tags::REGION_LOCATION_MAX_Y1, y1),
        ])
    };
    obj.put(DataElement::new(
        tags::SEQUENCE_OF_ULTRASOUND_REGIONS,
        VR::SQ,
        DataSetSequence::from(regions.iter().map(item).collect::<Vec<_>>()),
    ));
    let mut out = Vec::new();
    obj.write_all(&mut out).unwrap();
    out
}

#[test]
fn nothing_outside_the_ultrasound_regions_is_kept() {
    // Two regions: the scan area of the 350×350 fixture split in two columns.
    let raw = with_regions(
        &fixture("scans/cb_multiframe.dcm"),
        &[(20, 40, 170, 339), (171, 60, 329, 300)],
    );
    let limits = MediaLimits::default();
    for sampling in [clip_sampling(&limits), preview_sampling(&limits)] {
        let masked = decode_masked(&raw, &sampling).unwrap();
        let (w, h) = masked.scan.size();
        let s = w as f64 / 350.0;
        let inside = |x: usize, y: usize| {
            let (x, y) = (x as f64 / s, y as f64 / s);
            (20.0..171.0).contains(&x) && (40.0..340.0).contains(&y)
                || (171.0..330.0).contains(&x) && (60.0..301.0).contains(&y)
        };
        let mut kept_inside = 0;
        for (_, f) in &masked.scan.frames {
            for y in 0..h {
                for x in 0..w {
                    let keep = masked.mask.keep[y * w + x];
                    if !inside(x, y) {
                        assert!(!keep, "kept ({x}, {y}) outside the regions at {w}x{h}");
                        assert_eq!(f.pixels[y * w + x], 0);
                    } else {
                        kept_inside += keep as usize;
                    }
                }
            }
        }
        assert!(kept_inside > 0);
    }
    // Without regions, the same file keeps pixels above y = 40 (the sector reaches there).
    let masked =
        decode_masked(&fixture("scans/cb_multiframe.dcm"), &clip_sampling(&limits)).unwrap();
    assert!(masked.mask.keep[..30 * 350].iter().any(|&k| k));
}
