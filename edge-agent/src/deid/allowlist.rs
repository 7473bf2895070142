//! What a de-identified copy may carry: an allow-list, applied recursively. An attribute
//! not named here is dropped, private tags at any depth included; a kept sequence keeps
//! only the item attributes its own list names (nothing else, however deep).

use dicom_core::value::{DataSetSequence, Value};
use dicom_core::{DataElement, Tag};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Top-level attributes copied as they are: what displaying and analysing the image
/// needs, nothing that identifies a person, place or time of day. Identity, dates,
/// UIDs and the Image Pixel module are written by `identity` and `pixels`, not copied.
pub(super) const KEEP: &[Tag] = &[
    tags::SPECIFIC_CHARACTER_SET,
    tags::IMAGE_TYPE,
    tags::SOP_CLASS_UID,
    tags::MODALITY,
    tags::MANUFACTURER,
    tags::BODY_PART_EXAMINED,
    tags::SERIES_NUMBER,
    tags::INSTANCE_NUMBER,
    tags::LATERALITY,
    tags::PATIENT_ORIENTATION,
    tags::NUMBER_OF_FRAMES,
    tags::FRAME_INCREMENT_POINTER,
    tags::FRAME_TIME,
    tags::CINE_RATE,
    tags::LOSSY_IMAGE_COMPRESSION,
    tags::LOSSY_IMAGE_COMPRESSION_RATIO,
    tags::LOSSY_IMAGE_COMPRESSION_METHOD,
    tags::SEQUENCE_OF_ULTRASOUND_REGIONS,
];

/// Items of the Sequence of Ultrasound Regions: geometry and calibration only.
const REGION_ITEM: &[Tag] = &[
    tags::REGION_SPATIAL_FORMAT,
    tags::REGION_DATA_TYPE,
    tags::REGION_FLAGS,
    tags::REGION_LOCATION_MIN_X0,
    tags::REGION_LOCATION_MIN_Y0,
    tags::REGION_LOCATION_MAX_X1,
    tags::REGION_LOCATION_MAX_Y1,
    tags::REFERENCE_PIXEL_X0,
    tags::REFERENCE_PIXEL_Y0,
    tags::PHYSICAL_UNITS_X_DIRECTION,
    tags::PHYSICAL_UNITS_Y_DIRECTION,
    tags::REFERENCE_PIXEL_PHYSICAL_VALUE_X,
    tags::REFERENCE_PIXEL_PHYSICAL_VALUE_Y,
    tags::PHYSICAL_DELTA_X,
    tags::PHYSICAL_DELTA_Y,
    tags::TRANSDUCER_FREQUENCY,
    tags::PULSE_REPETITION_FREQUENCY,
    tags::DOPPLER_CORRECTION_ANGLE,
    tags::STEERING_ANGLE,
    tags::DOPPLER_SAMPLE_VOLUME_X_POSITION,
    tags::DOPPLER_SAMPLE_VOLUME_Y_POSITION,
    tags::TM_LINE_POSITION_X0,
    tags::TM_LINE_POSITION_Y0,
    tags::TM_LINE_POSITION_X1,
    tags::TM_LINE_POSITION_Y1,
    tags::PIXEL_COMPONENT_ORGANIZATION,
    tags::PIXEL_COMPONENT_MASK,
    tags::PIXEL_COMPONENT_RANGE_START,
    tags::PIXEL_COMPONENT_RANGE_STOP,
    tags::PIXEL_COMPONENT_PHYSICAL_UNITS,
    tags::PIXEL_COMPONENT_DATA_TYPE,
    tags::NUMBER_OF_TABLE_BREAK_POINTS,
    tags::TABLE_OF_X_BREAK_POINTS,
    tags::TABLE_OF_Y_BREAK_POINTS,
    tags::NUMBER_OF_TABLE_ENTRIES,
    tags::TABLE_OF_PIXEL_VALUES,
    tags::TABLE_OF_PARAMETER_VALUES,
];

/// The allow-list for the items of a kept sequence; `None`: the sequence is dropped.
fn item_list(sequence: Tag) -> Option<&'static [Tag]> {
    (sequence == tags::SEQUENCE_OF_ULTRASOUND_REGIONS).then_some(REGION_ITEM)
}

/// The elements of `src` that `keep` names, sequences filtered the same way at every
/// depth. Private tags never pass, whatever a list says; neither does a listed
/// attribute that arrives as a sequence without an item list, or as encapsulated
/// fragments.
pub(super) fn filter(src: &InMemDicomObject, keep: &[Tag]) -> Vec<DataElement<InMemDicomObject>> {
    let mut out = Vec::new();
    for e in src.iter() {
        let tag = e.header().tag;
        if tag.group() % 2 == 1 || !keep.contains(&tag) {
            continue;
        }
        match e.value() {
            Value::Primitive(p) => out.push(DataElement::new(tag, e.header().vr, p.clone())),
            Value::Sequence(seq) => {
                let Some(list) = item_list(tag) else { continue };
                let items: Vec<InMemDicomObject> = seq
                    .items()
                    .iter()
                    .map(|item| InMemDicomObject::from_element_iter(filter(item, list)))
                    .collect();
                out.push(DataElement::new(
                    tag,
                    e.header().vr,
                    DataSetSequence::from(items),
                ));
            }
            Value::PixelSequence(_) => {}
        }
    }
    out
}
