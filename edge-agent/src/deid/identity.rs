//! The identifying attributes of a de-identified copy, per PS3.15 Annex E: Type 2
//! attributes present but empty (action Z), UIDs replaced by keyed ones (U), the
//! retained dates and patient characteristics, the profile codes that say so, and a
//! file meta group built from scratch.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTable, FileMetaTableBuilder, InMemDicomObject};
use hmac::{Hmac, Mac};
use pleura_shared::PseudonymKey;
use sha2::{Digest, Sha256};

use super::{coarsen_age, dicom_date_to_day, text, DeidError};

/// Pleura's implementation class UID (a UUID-derived root, PS3.5 B.2).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.206917378450513920316046935174662431873";
pub const IMPLEMENTATION_VERSION_NAME: &str = "PLEURA_DEID_2";

/// Type 2 attributes of the image IODs the agent handles: present, empty unless a kept
/// value fills them.
const TYPE2: &[(Tag, VR)] = &[
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
    (tags::SERIES_NUMBER, VR::IS),
    (tags::MANUFACTURER, VR::LO),
    (tags::INSTANCE_NUMBER, VR::IS),
    (tags::PATIENT_ORIENTATION, VR::CS),
    (tags::IMAGE_TYPE, VR::CS),
];

const UID_TAGS: [Tag; 3] = [
    tags::STUDY_INSTANCE_UID,
    tags::SERIES_INSTANCE_UID,
    tags::SOP_INSTANCE_UID,
];

/// A keyed replacement UID under the 2.25 (UUID-derived) root: stable for the same
/// input and key, so series still group, unlinkable without the key.
pub(super) fn keyed_uid(key: &PseudonymKey, uid: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(b"pleura-uid-v1\0");
    mac.update(uid.as_bytes());
    let h = mac.finalize().into_bytes();
    let mut n = [0u8; 16];
    n.copy_from_slice(&h[..16]);
    n[0] &= 0x7f; // fits the 2.25 root's 39-digit limit comfortably
    format!("2.25.{}", u128::from_be_bytes(n))
}

fn code_item(value: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        DataElement::new(tags::CODE_VALUE, VR::SH, value),
        DataElement::new(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "DCM"),
        DataElement::new(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

/// The profile and options applied (PS3.16 CID 7050). Study dates are kept to the day
/// (113106); sex and age (90+ collapsed) are kept (113108); pixels are always masked
/// (113101). Everything else the basic profile covers is removed or emptied.
pub const PROFILE_CODES: &[(&str, &str)] = &[
    ("113100", "Basic Application Confidentiality Profile"),
    ("113101", "Clean Pixel Data Option"),
    (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    ("113108", "Retain Patient Characteristics Option"),
];

/// Identity, UIDs and de-identification attributes of the copy, to be put over the
/// allow-listed ones. `digest` stands in for a UID the input lacks, so that UID is new
/// but stable for the same file.
pub(super) fn attributes(
    src: &InMemDicomObject,
    key: &PseudonymKey,
    input: &[u8],
) -> Vec<DataElement<InMemDicomObject>> {
    let mut out: Vec<DataElement<InMemDicomObject>> = Vec::new();
    let digest = hex::encode(Sha256::digest(input));
    for t in UID_TAGS {
        let uid = match text(src, t) {
            Some(u) => keyed_uid(key, &u),
            None => keyed_uid(key, &format!("absent {t} of {digest}")),
        };
        out.push(DataElement::new(t, VR::UI, uid));
    }
    if let Some(d) = text(src, tags::STUDY_DATE).filter(|d| dicom_date_to_day(d).is_some()) {
        out.push(DataElement::new(tags::STUDY_DATE, VR::DA, &d[..8]));
    }
    if let Some(s) = text(src, tags::PATIENT_SEX).filter(|s| matches!(s.as_str(), "M" | "F" | "O"))
    {
        out.push(DataElement::new(tags::PATIENT_SEX, VR::CS, s));
    }
    if let Some(a) = text(src, tags::PATIENT_AGE).and_then(|a| coarsen_age(&a)) {
        out.push(DataElement::new(tags::PATIENT_AGE, VR::AS, a));
    }
    out.push(DataElement::new(
        tags::PATIENT_IDENTITY_REMOVED,
        VR::CS,
        "YES",
    ));
    out.push(DataElement::new(tags::BURNED_IN_ANNOTATION, VR::CS, "NO"));
    out.push(DataElement::new(
        tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
        VR::CS,
        "UNMODIFIED",
    ));
    out.push(DataElement::new(
        tags::DEIDENTIFICATION_METHOD,
        VR::LO,
        "PS3.15 E basic; dates, sex, age kept; pixels masked",
    ));
    let codes: Vec<InMemDicomObject> = PROFILE_CODES.iter().map(|(v, m)| code_item(v, m)).collect();
    out.push(DataElement::new(
        tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(codes),
    ));
    out
}

/// Type 2 attributes still missing after everything else was put: present, empty.
pub(super) fn fill_type2(obj: &mut InMemDicomObject) {
    for &(t, vr) in TYPE2 {
        if obj.element(t).is_err() {
            obj.put(DataElement::new(t, vr, PrimitiveValue::Empty));
        }
    }
}

/// A file meta group with the required elements only; nothing of the input's group 2
/// (source AE title, private information) is carried over.
pub(super) fn file_meta(obj: &InMemDicomObject) -> Result<FileMetaTable, DeidError> {
    let sop_class = text(obj, tags::SOP_CLASS_UID).ok_or(DeidError::Missing("SOP Class UID"))?;
    let sop_instance =
        text(obj, tags::SOP_INSTANCE_UID).ok_or(DeidError::Missing("SOP Instance UID"))?;
    FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .build()
        .map_err(|e| DeidError::Write(e.to_string()))
}
