//! The corpus header: a valid US (multi-frame) image full of synthetic PHI — in plain
//! attributes, private tags, and sequences nested inside the kept regions sequence.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::gen::{Case, COLS, REGION, ROWS, UID_ROOT};

fn lo(tag: Tag, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::LO, v)
}

fn regions_sequence() -> DataElement<InMemDicomObject> {
    let us = |t, v: u16| DataElement::new(t, VR::US, PrimitiveValue::from(v));
    let ul = |t, v: u32| DataElement::new(t, VR::UL, PrimitiveValue::from(v));
    let deeper = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.6.1",
        ),
        DataElement::new(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            format!("{UID_ROOT}.9.9"),
        ),
        DataElement::new(tags::PATIENT_NAME, VR::PN, "DEEPER^PHI"),
    ]);
    let private_item = InMemDicomObject::from_element_iter([
        lo(tags::PATIENT_ID, "DEEP-PHI-ID"),
        DataElement::new(
            tags::REFERENCED_IMAGE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![deeper.clone()]),
        ),
    ]);
    let item = InMemDicomObject::from_element_iter([
        us(tags::REGION_SPATIAL_FORMAT, 1),
        us(tags::REGION_DATA_TYPE, 1),
        ul(tags::REGION_FLAGS, 0),
        ul(tags::REGION_LOCATION_MIN_X0, REGION.0 as u32),
        ul(tags::REGION_LOCATION_MIN_Y0, REGION.1 as u32),
        ul(tags::REGION_LOCATION_MAX_X1, REGION.2 as u32),
        ul(tags::REGION_LOCATION_MAX_Y1, REGION.3 as u32),
        us(tags::PHYSICAL_UNITS_X_DIRECTION, 3),
        us(tags::PHYSICAL_UNITS_Y_DIRECTION, 3),
        DataElement::new(
            tags::PHYSICAL_DELTA_X,
            VR::FD,
            PrimitiveValue::from(0.02f64),
        ),
        DataElement::new(
            tags::PHYSICAL_DELTA_Y,
            VR::FD,
            PrimitiveValue::from(0.02f64),
        ),
        DataElement::new(tags::PATIENT_NAME, VR::PN, "NESTED^PHI^NAME"),
        lo(Tag(0x0009, 0x0010), "PLEURA PHI TEST"),
        lo(Tag(0x0009, 0x1001), "PRIVATE-NESTED-PHI"),
        DataElement::new(
            Tag(0x0009, 0x1002),
            VR::SQ,
            DataSetSequence::from(vec![private_item]),
        ),
        DataElement::new(
            tags::REFERENCED_IMAGE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![deeper]),
        ),
    ]);
    DataElement::new(
        tags::SEQUENCE_OF_ULTRASOUND_REGIONS,
        VR::SQ,
        DataSetSequence::from(vec![item]),
    )
}

/// The header: a valid US (multi-frame) image, full of synthetic PHI.
pub fn header(c: &Case) -> InMemDicomObject {
    let class = if c.frames > 1 {
        "1.2.840.10008.5.1.4.1.1.3.1"
    } else {
        "1.2.840.10008.5.1.4.1.1.6.1"
    };
    let s = |t, vr, v: &str| DataElement::new(t, vr, v);
    let us = |t, v: u16| DataElement::new(t, VR::US, PrimitiveValue::from(v));
    let mut obj = InMemDicomObject::from_element_iter([
        s(tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY"),
        s(tags::SOP_CLASS_UID, VR::UI, class),
        s(tags::SOP_INSTANCE_UID, VR::UI, &format!("{UID_ROOT}.3.1")),
        s(tags::STUDY_DATE, VR::DA, "20261102"),
        s(tags::STUDY_TIME, VR::TM, "101523"),
        s(tags::ACCESSION_NUMBER, VR::SH, "ACC-PHI-0042"),
        s(tags::MODALITY, VR::CS, "US"),
        s(tags::MANUFACTURER, VR::LO, "Pleura Test Devices"),
        s(tags::INSTITUTION_NAME, VR::LO, "Kisumu PHI Hospital"),
        s(tags::INSTITUTION_ADDRESS, VR::ST, "12 PHI Street, Nairobi"),
        s(tags::REFERRING_PHYSICIAN_NAME, VR::PN, "ODINGA^PHIDOC"),
        s(tags::STATION_NAME, VR::SH, "LUMIFY-PHI-STN"),
        s(tags::STUDY_DESCRIPTION, VR::LO, "coughing for weeks"),
        s(tags::OPERATORS_NAME, VR::PN, "PHIOPERATOR"),
        s(tags::PATIENT_NAME, VR::PN, "DOE^JANE^PHITEST"),
        s(tags::PATIENT_ID, VR::LO, "MRN-4471-PHI"),
        s(tags::PATIENT_BIRTH_DATE, VR::DA, "19470312"),
        s(tags::PATIENT_SEX, VR::CS, "F"),
        s(tags::PATIENT_AGE, VR::AS, "094Y"),
        s(tags::BODY_PART_EXAMINED, VR::CS, "CHEST"),
        s(tags::DEVICE_SERIAL_NUMBER, VR::LO, "SN-PHI-7"),
        s(tags::STUDY_INSTANCE_UID, VR::UI, &format!("{UID_ROOT}.1")),
        s(tags::SERIES_INSTANCE_UID, VR::UI, &format!("{UID_ROOT}.2")),
        s(tags::STUDY_ID, VR::SH, "STUDY-PHI"),
        s(tags::SERIES_NUMBER, VR::IS, "1"),
        s(tags::INSTANCE_NUMBER, VR::IS, "1"),
        DataElement::new(tags::PATIENT_ORIENTATION, VR::CS, PrimitiveValue::Empty),
        us(tags::SAMPLES_PER_PIXEL, c.spp() as u16),
        s(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, c.pi),
        us(tags::ROWS, ROWS as u16),
        us(tags::COLUMNS, COLS as u16),
        us(tags::BITS_ALLOCATED, c.bits),
        us(tags::BITS_STORED, c.bits_stored() as u16),
        us(tags::HIGH_BIT, c.bits_stored() as u16 - 1),
        us(tags::PIXEL_REPRESENTATION, 0),
        lo(Tag(0x0011, 0x0010), "PLEURA PHI TEST"),
        lo(Tag(0x0011, 0x1010), "PRIVATE-TOP-PHI"),
    ]);
    if c.spp() == 3 {
        obj.put(us(tags::PLANAR_CONFIGURATION, c.planar));
    }
    if let Some(v) = c.burned {
        obj.put(s(tags::BURNED_IN_ANNOTATION, VR::CS, v));
    }
    if c.frames > 1 {
        obj.put(s(tags::NUMBER_OF_FRAMES, VR::IS, &c.frames.to_string()));
        obj.put(DataElement::new(
            tags::FRAME_INCREMENT_POINTER,
            VR::AT,
            PrimitiveValue::Tags(vec![tags::FRAME_TIME].into()),
        ));
        obj.put(s(tags::FRAME_TIME, VR::DS, "33.3"));
    }
    if c.regions {
        obj.put(regions_sequence());
    }
    obj
}
