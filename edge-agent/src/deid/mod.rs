//! De-identification at the edge, before anything is stored for sync or leaves the
//! clinic.
//!
//! - What the hub receives is a `ScanRecord`: model outputs, a keyed patient pseudonym,
//!   the zone and the scan *day*. It is built from these values only, never from file
//!   names, headers or free text, so no identifier can ride along.
//! - DICOM: `identity_of` reads the patient ID (turned into the pseudonym at once)
//!   and the study date (kept to the day). `deidentify_dicom` writes a copy safe to
//!   share, per the Basic Application Level Confidentiality Profile (PS3.15 Annex E)
//!   with the options it declares (`identity::PROFILE_CODES`): an allow-list applied at
//!   every depth (`allowlist`; private tags never pass), Type 2 attributes emptied and
//!   UIDs replaced by keyed ones, file meta rebuilt from scratch (`identity`), and the
//!   pixels decoded, masked whatever BurnedInAnnotation claims, and written uncompressed
//!   (`pixels`). The copy is a valid DICOM object (checked with dciodvfy in
//!   `tests/deid_corpus.rs`).

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use pleura_shared::PseudonymKey;

mod allowlist;
mod identity;
mod pixels;

pub use identity::{IMPLEMENTATION_CLASS_UID, PROFILE_CODES};

#[derive(Debug, thiserror::Error)]
pub enum DeidError {
    #[error("not a readable DICOM file: {0}")]
    Parse(String),
    #[error(
        "pixel data in transfer syntax {ts} cannot be decoded ({reason}); burned-in text \
         cannot be masked, so no de-identified copy is written"
    )]
    UndecodablePixels { ts: String, reason: String },
    #[error(
        "unsupported image layout: {0}; burned-in text cannot be masked, so no \
         de-identified copy is written"
    )]
    UnsupportedImage(String),
    #[error(
        "no usable ultrasound region (SequenceOfUltrasoundRegions): without it the image \
         cannot be told from burned-in text outside the header band, so no de-identified \
         copy is written"
    )]
    NoUltrasoundRegion,
    #[error(
        "implausible ultrasound regions (they cover {percent}% of the frame{}): a region \
         that is the whole frame says nothing about where burned-in text is, so no \
         de-identified copy is written",
        if *all_edges { " and reach all four edges" } else { "" }
    )]
    ImplausibleUltrasoundRegion { percent: usize, all_edges: bool },
    #[error("DICOM image lacks {0}")]
    Missing(&'static str),
    #[error("writing the de-identified DICOM: {0}")]
    Write(String),
}

/// What the agent keeps from a DICOM header: the pseudonym and the day.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DicomIdentity {
    pub patient_key: Option<[u8; 16]>,
    /// Study date as days since 1970-01-01.
    pub scan_day: Option<u32>,
}

fn open(bytes: &[u8]) -> Result<dicom_object::DefaultDicomObject, DeidError> {
    pleura_inference::open_dicom(bytes).map_err(|e| DeidError::Parse(e.to_string()))
}

pub(crate) fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.element(tag).ok()?.to_str().ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// YYYYMMDD → days since 1970-01-01 (proleptic Gregorian).
pub fn dicom_date_to_day(d: &str) -> Option<u32> {
    let d = d.trim();
    if d.len() < 8 || !d.as_bytes()[..8].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let y: i64 = d[0..4].parse().ok()?;
    let m: i64 = d[4..6].parse().ok()?;
    let day: i64 = d[6..8].parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u32::try_from(era * 146_097 + doe - 719_468).ok()
}

/// An Age String (PS3.5 6.2, `nnnD|W|M|Y`) kept as it is, except that any age of 90
/// years or more — in whatever unit ("1100M", "4800W", "33000D") — becomes "090Y":
/// ages above 89 are one group (PS3.15 E, HIPAA safe harbour). Anything that is not
/// a valid four-character age (and not a 90+ age in another spelling) is dropped.
pub fn coarsen_age(age: &str) -> Option<String> {
    let a = age.trim();
    if !a.is_ascii() || a.len() < 2 {
        return None;
    }
    let (num, unit) = a.split_at(a.len() - 1);
    if num.len() > 9 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    // whole years, rounded down; days per year and week as PS3.15 would count them
    let years = match unit {
        "Y" => n,
        "M" => n / 12,
        "W" => n * 7 * 100 / 36_525,
        "D" => n * 100 / 36_525,
        _ => return None,
    };
    if years >= 90 {
        Some("090Y".into())
    } else if num.len() == 3 {
        Some(a.to_string())
    } else {
        None
    }
}

/// `identity_of` a DICOM file's bytes (parses them: the intake uses the parse that
/// decoded the frames instead).
pub fn dicom_identity(bytes: &[u8], key: &PseudonymKey) -> Result<DicomIdentity, DeidError> {
    let obj = open(bytes)?;
    Ok(identity_of(&obj, key))
}

/// The pseudonym and the study day of a parsed DICOM file; nothing else is read.
pub fn identity_of(obj: &InMemDicomObject, key: &PseudonymKey) -> DicomIdentity {
    DicomIdentity {
        patient_key: text(obj, tags::PATIENT_ID).map(|id| key.pseudonym(&id)),
        scan_day: text(obj, tags::STUDY_DATE).and_then(|d| dicom_date_to_day(&d)),
    }
}

/// A de-identified copy of a DICOM file (see the module docs).
pub fn deidentify_dicom(bytes: &[u8], key: &PseudonymKey) -> Result<Vec<u8>, DeidError> {
    let src = open(bytes)?;
    let ts = src
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    // Never trust BurnedInAnnotation: every image is decoded and masked.
    let pixels = pixels::clean(&src, &ts)?;
    let mut obj = InMemDicomObject::from_element_iter(allowlist::filter(&src, allowlist::KEEP));
    if obj.element(tags::SOP_CLASS_UID).is_err() {
        let class = src
            .meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0');
        if !class.is_empty() {
            obj.put_str(tags::SOP_CLASS_UID, dicom_core::VR::UI, class);
        }
    }
    for e in identity::attributes(&src, key, bytes)
        .into_iter()
        .chain(pixels)
    {
        obj.put(e);
    }
    identity::fill_type2(&mut obj);
    let meta = identity::file_meta(&obj)?;
    let mut out = Vec::new();
    obj.with_exact_meta(meta)
        .write_all(&mut out)
        .map_err(|e| DeidError::Write(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The synthetic PHI the fixture carries, one string a line.
    const PHI: &str = include_str!("../../../fixtures/phi/phi_strings.txt");

    fn fixture() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/phi/synthetic_phi.dcm"
        ))
        .unwrap()
    }

    /// The fixture with these ultrasound regions (x0, y0, x1, y1), none for an empty
    /// slice.
    fn with_regions(raw: &[u8], regions: &[(u32, u32, u32, u32)]) -> Vec<u8> {
        use dicom_core::value::DataSetSequence;
        use dicom_core::{DataElement, PrimitiveValue, VR};
        let mut obj = open(raw).unwrap();
        obj.remove_element(tags::SEQUENCE_OF_ULTRASOUND_REGIONS);
        if !regions.is_empty() {
            let ul = |t, v: u32| DataElement::new(t, VR::UL, PrimitiveValue::from(v));
            let item = |&(x0, y0, x1, y1): &(u32, u32, u32, u32)| {
                InMemDicomObject::from_element_iter([
                    DataElement::new(
                        tags::REGION_SPATIAL_FORMAT,
                        VR::US,
                        PrimitiveValue::from(1u16),
                    ),
                    DataElement::new(tags::REGION_DATA_TYPE, VR::US, PrimitiveValue::from(1u16)),
                    ul(tags::REGION_FLAGS, 0),
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
        }
        let mut out = Vec::new();
        obj.write_all(&mut out).unwrap();
        out
    }

    /// The 350 × 350 fixture's scan area, below the header band.
    const FIXTURE_REGION: (u32, u32, u32, u32) = (20, 40, 329, 339);

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
    }

    #[test]
    fn the_deidentified_copy_carries_no_phi_and_says_so() {
        let raw = fixture();
        for p in PHI.lines() {
            assert!(contains(&raw, p), "fixture should contain {p}");
        }
        let key = PseudonymKey::new(vec![3; 32]).unwrap();
        let raw = with_regions(&raw, &[FIXTURE_REGION]);
        let out = deidentify_dicom(&raw, &key).unwrap();
        for p in PHI.lines() {
            assert!(!contains(&out, p), "{p} survived de-identification");
        }
        let obj = open(&out).unwrap();
        assert_eq!(
            text(&obj, tags::PATIENT_IDENTITY_REMOVED).as_deref(),
            Some("YES")
        );
        assert_eq!(text(&obj, tags::PATIENT_AGE).as_deref(), Some("090Y"));
        assert_eq!(text(&obj, tags::STUDY_DATE).as_deref(), Some("20261102"));
        let codes: Vec<String> = obj
            .element(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()
            .iter()
            .filter_map(|i| text(i, tags::CODE_VALUE))
            .collect();
        let declared: Vec<&str> = PROFILE_CODES.iter().map(|(v, _)| *v).collect();
        assert_eq!(codes, declared);
        assert!(text(&obj, tags::SOP_INSTANCE_UID)
            .unwrap()
            .starts_with("2.25."));

        // The burned-in header band is black in every frame; the image below is kept.
        let px = obj
            .element(tags::PIXEL_DATA)
            .unwrap()
            .to_bytes()
            .unwrap()
            .into_owned();
        let (rows, cols) = (350usize, 350usize);
        let (x0, y0, x1, y1) = FIXTURE_REGION;
        let inside = |x: usize, y: usize| {
            (x0 as usize..=x1 as usize).contains(&x) && (y0 as usize..=y1 as usize).contains(&y)
        };
        for f in px.chunks(rows * cols) {
            assert!(f[..cols * 35].iter().all(|&v| v == 0), "header band masked");
            assert!(f[cols * 100..].iter().any(|&v| v > 0), "image content kept");
            for (i, &v) in f.iter().enumerate() {
                if !inside(i % cols, i / cols) {
                    assert_eq!(v, 0, "outside the region at {i}");
                }
            }
        }
        // Still a readable image for the model.
        let scan = pleura_inference::decode::decode_scan(&out, 32).unwrap();
        assert_eq!(scan.frames_total, 6);
    }

    #[test]
    fn files_without_a_plausible_region_are_refused() {
        let key = PseudonymKey::new(vec![3; 32]).unwrap();
        let raw = fixture();
        assert!(matches!(
            deidentify_dicom(&with_regions(&raw, &[]), &key),
            Err(DeidError::NoUltrasoundRegion)
        ));
        // a region wholly outside the frame is no region
        assert!(matches!(
            deidentify_dicom(&with_regions(&raw, &[(400, 400, 500, 500)]), &key),
            Err(DeidError::NoUltrasoundRegion)
        ));
        // the whole frame, or more than it: says nothing about where the text is
        for r in [
            &[(0, 0, 349, 349)][..],
            &[(0, 0, u32::MAX, u32::MAX)],
            &[(10, 36, u32::MAX, u32::MAX)],
            &[(0, 36, 349, 349)],
            // under 85 % together, but reaching every edge of the frame
            &[(0, 0, 100, 349), (250, 0, 349, 349)],
        ] {
            assert!(
                matches!(
                    deidentify_dicom(&with_regions(&raw, r), &key),
                    Err(DeidError::ImplausibleUltrasoundRegion { .. })
                ),
                "{r:?} accepted"
            );
        }
    }

    #[test]
    fn identity_is_pseudonymous_and_dates_keep_only_the_day() {
        let key = PseudonymKey::new(vec![3; 32]).unwrap();
        let id = dicom_identity(&fixture(), &key).unwrap();
        assert_eq!(id.patient_key, Some(key.pseudonym("MRN-4471-PHI")));
        assert_eq!(id.scan_day, dicom_date_to_day("20261102"));
        assert_eq!(dicom_date_to_day("19700101"), Some(0));
        assert_eq!(dicom_date_to_day("20000301"), Some(11_017));
        assert_eq!(dicom_date_to_day("2026-11"), None);
        assert_eq!(coarsen_age("094Y").as_deref(), Some("090Y"));
        assert_eq!(coarsen_age("045Y").as_deref(), Some("045Y"));
        assert_eq!(coarsen_age("x"), None);
        // 90 years or more in any unit is one group
        for a in [
            "1100M", "1080M", "4800W", "4697W", "33000D", "32873D", "090Y", "120Y",
        ] {
            assert_eq!(coarsen_age(a).as_deref(), Some("090Y"), "{a}");
        }
        for a in ["006M", "999M", "999W", "999D", "089Y", "000D"] {
            assert_eq!(coarsen_age(a).as_deref(), Some(a), "{a}");
        }
        // not a four-character age string: dropped
        for a in [
            "45Y", "0045Y", "1079M", "4696W", "-01Y", "4 5Y", "045y", "45", "Y", "",
        ] {
            assert_eq!(coarsen_age(a), None, "{a}");
        }
        // a multi-byte last character (fuzzer finding) is not an age, not a panic
        assert_eq!(coarsen_age("09ÿ"), None);
    }

    #[test]
    fn garbage_is_a_named_error() {
        let key = PseudonymKey::new(vec![3; 32]).unwrap();
        assert!(matches!(
            deidentify_dicom(b"not dicom", &key),
            Err(DeidError::Parse(_))
        ));
    }
}
