//! De-identification at the edge, before anything is stored for sync or leaves the
//! clinic.
//!
//! - What the hub receives is a `ScanRecord`: model outputs, a keyed patient pseudonym,
//!   the zone and the scan *day*. It is built from these values only, never from file
//!   names, headers or free text, so no identifier can ride along.
//! - DICOM: `dicom_identity` reads the patient ID (turned into the pseudonym at once)
//!   and the study date (kept to the day). `deidentify_dicom` writes a copy safe to
//!   share, per the Basic Application Level Confidentiality Profile (PS3.15 Annex E):
//!   an allow-list of the attributes the image needs (everything else, private tags
//!   included, is dropped), UIDs replaced by keyed ones, ages coarsened (90+ collapsed),
//!   dates to the day, times removed, Patient Identity Removed = YES with method codes
//!   113100 (+ 113101 when pixels were cleaned), and burned-in text masked.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use hmac::{Hmac, Mac};
use pleura_shared::PseudonymKey;
use sha2::Sha256;

#[derive(Debug, thiserror::Error)]
pub enum DeidError {
    #[error("not a readable DICOM file: {0}")]
    Parse(String),
    #[error(
        "pixel data is compressed ({0}); burned-in text cannot be masked, so no \
         de-identified copy is written"
    )]
    CompressedPixels(String),
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

/// Attributes kept in a de-identified copy: what displaying and analysing the image
/// needs, nothing that identifies a person, place or time of day.
const KEEP: &[Tag] = &[
    tags::SOP_CLASS_UID,
    tags::MODALITY,
    tags::MANUFACTURER,
    tags::MANUFACTURER_MODEL_NAME,
    tags::BODY_PART_EXAMINED,
    tags::STUDY_DATE,
    tags::PATIENT_SEX,
    tags::PATIENT_AGE,
    tags::SAMPLES_PER_PIXEL,
    tags::PHOTOMETRIC_INTERPRETATION,
    tags::PLANAR_CONFIGURATION,
    tags::NUMBER_OF_FRAMES,
    tags::FRAME_INCREMENT_POINTER,
    tags::FRAME_TIME,
    tags::CINE_RATE,
    tags::ROWS,
    tags::COLUMNS,
    tags::BITS_ALLOCATED,
    tags::BITS_STORED,
    tags::HIGH_BIT,
    tags::PIXEL_REPRESENTATION,
    tags::SEQUENCE_OF_ULTRASOUND_REGIONS,
    tags::PIXEL_DATA,
];

fn open(bytes: &[u8]) -> Result<dicom_object::DefaultDicomObject, DeidError> {
    pleura_inference::open_dicom(bytes).map_err(|e| DeidError::Parse(e.to_string()))
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
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

/// "094Y" → "090Y": ages above 89 are one group (PS3.15 E, HIPAA safe harbour).
pub fn coarsen_age(age: &str) -> Option<String> {
    let a = age.trim();
    if !a.is_ascii() {
        return None;
    }
    let (num, unit) = a.split_at(a.len().checked_sub(1)?);
    let n: u32 = num.parse().ok()?;
    match unit {
        "Y" if n >= 90 => Some("090Y".into()),
        "Y" | "M" | "W" | "D" => Some(format!("{n:03}{unit}")),
        _ => None,
    }
}

pub fn dicom_identity(bytes: &[u8], key: &PseudonymKey) -> Result<DicomIdentity, DeidError> {
    let obj = open(bytes)?;
    Ok(DicomIdentity {
        patient_key: text(&obj, tags::PATIENT_ID).map(|id| key.pseudonym(&id)),
        scan_day: text(&obj, tags::STUDY_DATE).and_then(|d| dicom_date_to_day(&d)),
    })
}

/// A keyed replacement UID under the 2.25 (UUID-derived) root: stable for the same
/// input and key, so series still group, unlinkable without the key.
fn keyed_uid(key: &PseudonymKey, uid: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(b"pleura-uid-v1\0");
    mac.update(uid.as_bytes());
    let h = mac.finalize().into_bytes();
    let mut n = [0u8; 16];
    n.copy_from_slice(&h[..16]);
    n[0] &= 0x7f; // fits the 2.25 root's 39-digit limit comfortably
    format!("2.25.{}", u128::from_be_bytes(n))
}

/// Masks burned-in annotations in native 8/16-bit pixel data: the header band at the
/// top of every frame (where ultrasound devices print name, ID and date) and, when
/// the file lists ultrasound regions, every pixel outside them.
fn mask_pixels(obj: &InMemDicomObject, pixels: &mut [u8]) -> Result<(), DeidError> {
    let int = |tag| obj.element(tag).ok().and_then(|e| e.to_int::<u32>().ok());
    let rows = int(tags::ROWS).ok_or(DeidError::Missing("Rows"))? as usize;
    let cols = int(tags::COLUMNS).ok_or(DeidError::Missing("Columns"))? as usize;
    let spp = int(tags::SAMPLES_PER_PIXEL).unwrap_or(1) as usize;
    let bytes_per = (int(tags::BITS_ALLOCATED).unwrap_or(8) as usize).div_ceil(8);
    let px = spp * bytes_per;
    let frame_len = rows * cols * px;
    if frame_len == 0 {
        return Err(DeidError::Missing("a non-empty image size"));
    }
    let regions: Vec<(usize, usize, usize, usize)> = obj
        .element(tags::SEQUENCE_OF_ULTRASOUND_REGIONS)
        .ok()
        .and_then(|e| e.items())
        .map(|items| {
            items
                .iter()
                .filter_map(|it| {
                    let g = |t| it.element(t).ok().and_then(|e| e.to_int::<u32>().ok());
                    Some((
                        g(tags::REGION_LOCATION_MIN_X0)? as usize,
                        g(tags::REGION_LOCATION_MIN_Y0)? as usize,
                        g(tags::REGION_LOCATION_MAX_X1)? as usize,
                        g(tags::REGION_LOCATION_MAX_Y1)? as usize,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let band = (rows / 10).max(1);
    for frame in pixels.chunks_mut(frame_len) {
        for y in 0..rows.min(frame.len() / (cols * px)) {
            let row = &mut frame[y * cols * px..(y + 1) * cols * px];
            if y < band {
                row.fill(0);
                continue;
            }
            if !regions.is_empty() {
                for x in 0..cols {
                    let inside = regions
                        .iter()
                        .any(|&(x0, y0, x1, y1)| x >= x0 && x <= x1 && y >= y0 && y <= y1);
                    if !inside {
                        row[x * px..(x + 1) * px].fill(0);
                    }
                }
            }
        }
    }
    Ok(())
}

fn code_item(value: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        DataElement::new(tags::CODE_VALUE, VR::SH, value),
        DataElement::new(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "DCM"),
        DataElement::new(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

/// A de-identified copy of a DICOM file (see the module docs).
pub fn deidentify_dicom(bytes: &[u8], key: &PseudonymKey) -> Result<Vec<u8>, DeidError> {
    let mut obj = open(bytes)?;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let native = matches!(
        ts.as_str(),
        "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.2"
    );
    // Burned-in annotation YES or absent means the pixels need cleaning.
    let burned = text(&obj, tags::BURNED_IN_ANNOTATION).is_none_or(|v| v != "NO");
    let age = text(&obj, tags::PATIENT_AGE).and_then(|a| coarsen_age(&a));
    let uids: Vec<(Tag, Option<String>)> = [
        tags::STUDY_INSTANCE_UID,
        tags::SERIES_INSTANCE_UID,
        tags::SOP_INSTANCE_UID,
    ]
    .into_iter()
    .map(|t| (t, text(&obj, t).map(|u| keyed_uid(key, &u))))
    .collect();

    let drop: Vec<Tag> = obj.tags().filter(|t| !KEEP.contains(t)).collect();
    for t in drop {
        obj.remove_element(t);
    }
    if burned {
        if !native {
            return Err(DeidError::CompressedPixels(ts));
        }
        let mut px = obj
            .element(tags::PIXEL_DATA)
            .map_err(|_| DeidError::Missing("pixel data"))?
            .to_bytes()
            .map_err(|e| DeidError::Parse(e.to_string()))?
            .into_owned();
        mask_pixels(&obj, &mut px)?;
        let vr = if obj
            .element(tags::BITS_ALLOCATED)
            .ok()
            .and_then(|e| e.to_int::<u32>().ok())
            .unwrap_or(8)
            > 8
        {
            VR::OW
        } else {
            VR::OB
        };
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            vr,
            dicom_core::PrimitiveValue::U8(px.into()),
        ));
    }
    match age {
        Some(a) => {
            obj.put_str(tags::PATIENT_AGE, VR::AS, a);
        }
        None => {
            obj.remove_element(tags::PATIENT_AGE);
        }
    }
    for (t, uid) in &uids {
        if let Some(u) = uid {
            obj.put_str(*t, VR::UI, u.clone());
        }
    }
    obj.put_str(tags::PATIENT_IDENTITY_REMOVED, VR::CS, "YES");
    obj.put_str(tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
    obj.put_str(
        tags::DEIDENTIFICATION_METHOD,
        VR::LO,
        "Pleura edge: PS3.15 E basic profile, allow-list; pixels masked",
    );
    let mut codes = vec![code_item(
        "113100",
        "Basic Application Confidentiality Profile",
    )];
    if burned {
        codes.push(code_item("113101", "Clean Pixel Data Option"));
    }
    obj.put(DataElement::new(
        tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(codes),
    ));
    if let Some(Some(sop)) = uids
        .iter()
        .find(|(t, _)| *t == tags::SOP_INSTANCE_UID)
        .map(|(_, u)| u.clone())
    {
        obj.meta_mut().media_storage_sop_instance_uid = sop;
    }
    let mut out = Vec::new();
    obj.write_all(&mut out)
        .map_err(|e| DeidError::Write(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHI: &[&str] = &[
        "DOE",
        "JANE",
        "MRN-4471",
        "19470312",
        "Kisumu",
        "Odinga",
        "OKELLO",
        "PHIOPERATOR",
        "ACC-PHI",
        "STUDY-PHI",
        "LUMIFY-PHI",
        "SN-PHI",
        "coughing",
        "101523",
    ];

    fn fixture() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/phi/synthetic_phi.dcm"
        ))
        .unwrap()
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
    }

    #[test]
    fn the_deidentified_copy_carries_no_phi_and_says_so() {
        let raw = fixture();
        for p in PHI {
            assert!(contains(&raw, p), "fixture should contain {p}");
        }
        let key = PseudonymKey::new(vec![3; 32]).unwrap();
        let out = deidentify_dicom(&raw, &key).unwrap();
        for p in PHI {
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
        assert_eq!(codes, ["113100", "113101"]);
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
        for f in px.chunks(rows * cols) {
            assert!(f[..cols * 35].iter().all(|&v| v == 0), "header band masked");
            assert!(f[cols * 100..].iter().any(|&v| v > 0), "image content kept");
        }
        // Still a readable image for the model.
        let scan = pleura_inference::decode::decode_scan(&out, 32).unwrap();
        assert_eq!(scan.frames_total, 6);
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
