//! What every de-identified copy is held to (pixels, PHI, profile, identity, dciodvfy),
//! and the small builders the tests share.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use edge_agent::deid::{deidentify_dicom, IMPLEMENTATION_CLASS_UID};
use pleura_shared::PseudonymKey;

use super::gen::{self, Case, Syntax, BAND, COLS, PHI_STRINGS, REGION, ROWS};

pub fn key() -> PseudonymKey {
    PseudonymKey::new(vec![5; 32]).unwrap()
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

pub fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    Some(obj.element(tag).ok()?.to_str().ok()?.trim().to_string())
}

/// Every tag at every depth, for the private-tag check.
pub fn all_tags(obj: &InMemDicomObject, out: &mut Vec<dicom_core::Tag>) {
    for e in obj.iter() {
        out.push(e.header().tag);
        if let Value::Sequence(s) = e.value() {
            s.items().iter().for_each(|i| all_tags(i, out));
        }
    }
}

pub fn masked(c: &Case, x: usize, y: usize) -> bool {
    let (x0, y0, x1, y1) = REGION;
    y < BAND || (c.regions && !((x0..=x1).contains(&x) && (y0..=y1).contains(&y)))
}

pub fn open(name: &str, out: &[u8]) -> dicom_object::DefaultDicomObject {
    pleura_inference::open_dicom(out).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Item 3 of issue #10: no PHI string anywhere (file meta, private tags, nested
/// sequences at any depth included); file meta rebuilt; kept sequences filtered.
pub fn check_no_phi(c: &Case, input: &[u8], out: &[u8]) {
    let name = c.name();
    for p in PHI_STRINGS {
        let present = c.regions || !gen::IN_REGIONS_ONLY.contains(p);
        if !c.syntax.hides_text() {
            assert_eq!(contains(input, p), present, "{name}: corpus and {p}");
        }
        assert!(!contains(out, p), "{name}: {p} survived de-identification");
    }
    let obj = open(&name, out);
    let meta = obj.meta();
    assert_eq!(
        meta.transfer_syntax().trim_end_matches('\0'),
        "1.2.840.10008.1.2.1",
        "{name}"
    );
    assert_eq!(
        meta.implementation_class_uid().trim_end_matches('\0'),
        IMPLEMENTATION_CLASS_UID
    );
    assert!(
        meta.source_application_entity_title().is_none(),
        "{name}: source AE kept"
    );
    assert!(
        meta.private_information_creator_uid().is_none(),
        "{name}: private meta kept"
    );
    let mut seen = Vec::new();
    all_tags(&obj, &mut seen);
    assert!(
        seen.iter().all(|t| t.group() % 2 == 0),
        "{name}: private tag kept"
    );
    if c.regions {
        let regions = obj.element(tags::SEQUENCE_OF_ULTRASOUND_REGIONS).unwrap();
        for it in regions.items().unwrap() {
            assert!(
                it.element(tags::PATIENT_NAME).is_err(),
                "{name}: nested name"
            );
            assert!(
                it.iter().all(|e| !matches!(e.value(), Value::Sequence(_))),
                "{name}: nested sequence kept"
            );
            assert!(
                it.element(tags::REGION_LOCATION_MAX_Y1).is_ok(),
                "{name}: geometry lost"
            );
        }
    }
}

/// Item 4: the declared profile and options match what is kept.
pub fn check_profile(name: &str, out: &[u8]) {
    let obj = open(name, out);
    assert_eq!(
        text(&obj, tags::BURNED_IN_ANNOTATION).as_deref(),
        Some("NO")
    );
    assert_eq!(
        text(&obj, tags::PATIENT_IDENTITY_REMOVED).as_deref(),
        Some("YES")
    );
    let codes: Vec<String> = obj
        .element(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()
        .iter()
        .filter_map(|i| text(i, tags::CODE_VALUE))
        .collect();
    assert_eq!(codes, ["113100", "113101", "113106", "113108"], "{name}");
    // what the declared options retain (113106 dates, 113108 sex and age), and only that
    assert_eq!(text(&obj, tags::STUDY_DATE).as_deref(), Some("20261102"));
    assert_eq!(text(&obj, tags::PATIENT_SEX).as_deref(), Some("F"));
    assert_eq!(text(&obj, tags::PATIENT_AGE).as_deref(), Some("090Y"));
    assert_eq!(
        text(&obj, tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED).as_deref(),
        Some("UNMODIFIED")
    );
}

/// Item 5 (the part without dciodvfy): Type 2 present and empty, Type 1 UIDs replaced.
pub fn check_identity(name: &str, out: &[u8]) {
    let obj = open(name, out);
    for t in [
        tags::PATIENT_NAME,
        tags::PATIENT_ID,
        tags::PATIENT_BIRTH_DATE,
        tags::STUDY_TIME,
        tags::ACCESSION_NUMBER,
        tags::STUDY_ID,
        tags::REFERRING_PHYSICIAN_NAME,
    ] {
        assert_eq!(
            text(&obj, t).as_deref(),
            Some(""),
            "{name}: {t} not emptied"
        );
    }
    for t in [
        tags::STUDY_INSTANCE_UID,
        tags::SERIES_INSTANCE_UID,
        tags::SOP_INSTANCE_UID,
    ] {
        assert!(
            text(&obj, t).unwrap_or_default().starts_with("2.25."),
            "{name}: {t}"
        );
    }
}

pub fn check_copy(c: &Case, input: &[u8], out: &[u8]) {
    check_no_phi(c, input, out);
    check_profile(&c.name(), out);
    check_identity(&c.name(), out);
    check_pixels(c, &open(&c.name(), out), &c.name());
}

pub fn check_pixels(c: &Case, obj: &InMemDicomObject, name: &str) {
    let spp = c.spp();
    let pi = text(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap();
    assert_eq!(pi, if spp == 1 { c.pi } else { "RGB" }, "{name}");
    if spp == 3 {
        assert_eq!(
            text(obj, tags::PLANAR_CONFIGURATION).as_deref(),
            Some("0"),
            "{name}"
        );
    }
    let b = usize::from(c.bits / 8);
    let px = obj
        .element(tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .into_owned();
    let frame_len = ROWS * COLS * spp * b;
    assert!(
        px.len() >= frame_len * c.frames,
        "{name}: {} pixel bytes",
        px.len()
    );
    let fill = if c.pi == "MONOCHROME1" {
        (1u32 << c.bits_stored()) - 1
    } else {
        0
    };
    let (mut err, mut n, mut worst) = (0u64, 0u64, 0u32);
    for f in 0..c.frames {
        let frame = &px[f * frame_len..(f + 1) * frame_len];
        for y in 0..ROWS {
            for x in 0..COLS {
                for ch in 0..spp {
                    let i = ((y * COLS + x) * spp + ch) * b;
                    let v = if b == 1 {
                        u32::from(frame[i])
                    } else {
                        u32::from(u16::from_le_bytes([frame[i], frame[i + 1]]))
                    };
                    if masked(c, x, y) {
                        assert_eq!(
                            v, fill,
                            "{name}: frame {f} ({x},{y}) channel {ch} not masked"
                        );
                    } else {
                        let d = v.abs_diff(c.content(x, y, f)[ch]);
                        err += u64::from(d);
                        n += 1;
                        worst = worst.max(d);
                    }
                }
            }
        }
    }
    // the image itself survives: exactly, within YBR rounding, or within JPEG loss
    let mean = err as f64 / n as f64;
    let (max_worst, max_mean) = match (c.syntax.lossy(), c.pi) {
        (true, _) => (u32::MAX, 4.0),
        (false, "YBR_FULL" | "YBR_FULL_422") => (2, 1.0),
        _ => (0, 0.0),
    };
    assert!(
        worst <= max_worst && mean <= max_mean,
        "{name}: image changed (worst {worst}, mean {mean:.2})"
    );
}

/// `dciodvfy`'s error lines, values left out so the same problem compares equal.
pub fn dciodvfy_errors(path: &Path) -> Option<BTreeSet<String>> {
    let out = Command::new("dciodvfy").arg(path).output().ok()?;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        all.lines()
            .filter(|l| l.starts_with("Error"))
            .map(|l| {
                let l = l.split(" = ").next().unwrap_or(l);
                l.split(" - Length invalid").next().unwrap_or(l).to_string()
            })
            .collect(),
    )
}

pub fn dciodvfy_required() -> bool {
    std::env::var("PLEURA_REQUIRE_DCIODVFY").as_deref() == Ok("1")
}

/// Validates `out` against `input`; false when dciodvfy is not installed (and allowed
/// to be missing).
pub fn validate(dir: &Path, label: &str, input: &[u8], out: &[u8]) -> bool {
    let (i, o) = (
        dir.join(format!("{label}.in.dcm")),
        dir.join(format!("{label}.out.dcm")),
    );
    std::fs::write(&i, input).unwrap();
    std::fs::write(&o, out).unwrap();
    let (Some(before), Some(after)) = (dciodvfy_errors(&i), dciodvfy_errors(&o)) else {
        assert!(
            !dciodvfy_required(),
            "PLEURA_REQUIRE_DCIODVFY=1 but dciodvfy cannot run"
        );
        return false;
    };
    let new: Vec<_> = after.difference(&before).collect();
    assert!(
        new.is_empty(),
        "{label}: dciodvfy errors the input did not have: {new:#?}"
    );
    true
}

pub fn case(pi: &'static str, planar: u16, syntax: Syntax, burned: Option<&'static str>) -> Case {
    Case {
        pi,
        planar,
        bits: 8,
        frames: 2,
        syntax,
        burned,
        regions: true,
    }
}

/// One case through `deidentify_dicom`: (input, copy).
pub fn run(c: &Case) -> (Vec<u8>, Vec<u8>) {
    let input = gen::generate(c);
    let out = deidentify_dicom(&input, &key()).unwrap_or_else(|e| panic!("{}: {e}", c.name()));
    (input, out)
}

/// A corpus case, changed after it was generated.
pub fn patched(
    c: &Case,
    f: impl FnOnce(&mut dicom_object::FileDicomObject<InMemDicomObject>),
) -> Vec<u8> {
    let mut obj = pleura_inference::open_dicom(&gen::generate(c)).unwrap();
    f(&mut obj);
    gen::write(&obj)
}

pub fn sized(c: Case, bits: u16, frames: usize, syntax: Syntax) -> Case {
    Case {
        bits,
        frames,
        syntax,
        ..c
    }
}

pub fn with_regions(obj: &mut InMemDicomObject, regions: &[(u32, u32, u32, u32)]) {
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    let ul = |t, v: u32| DataElement::new(t, VR::UL, PrimitiveValue::from(v));
    let items: Vec<InMemDicomObject> = regions
        .iter()
        .map(|&(x0, y0, x1, y1)| {
            InMemDicomObject::from_element_iter([
                ul(tags::REGION_LOCATION_MIN_X0, x0),
                ul(tags::REGION_LOCATION_MIN_Y0, y0),
                ul(tags::REGION_LOCATION_MAX_X1, x1),
                ul(tags::REGION_LOCATION_MAX_Y1, y1),
            ])
        })
        .collect();
    obj.put(DataElement::new(
        tags::SEQUENCE_OF_ULTRASOUND_REGIONS,
        VR::SQ,
        DataSetSequence::from(items),
    ));
}
