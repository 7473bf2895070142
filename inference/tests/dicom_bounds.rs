//! The DICOM length guard: files dicom-rs writes and the shipped fixtures pass; a length
//! beyond the end is refused wherever it sits (meta group, data set, nested items,
//! encapsulated fragments, deflated data); breaks dicom-rs reports itself are left to it.

use std::path::PathBuf;

use dicom_core::value::{DataSetSequence, PixelFragmentSequence};
use dicom_core::{DataElement, Length, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use pleura_inference::decode::dicom_bounds::{check, BoundsError, MAX_DEPTH};

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

/// Explicit VR little endian element, short or long length form chosen by the VR.
fn el(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut v = header(group, elem, vr, value.len() as u32);
    v.extend_from_slice(value);
    v
}

fn header(group: u16, elem: u16, vr: &[u8; 2], len: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(group.to_le_bytes());
    v.extend(elem.to_le_bytes());
    v.extend(vr);
    let long = matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT" | b"OF" | b"UC");
    if long {
        v.extend([0, 0]);
        v.extend(len.to_le_bytes());
    } else {
        v.extend((len as u16).to_le_bytes());
    }
    v
}

/// Item, item-delimiter or sequence-delimiter header (no VR in any syntax).
fn marker(elem: u16, len: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(0xFFFEu16.to_le_bytes());
    v.extend(elem.to_le_bytes());
    v.extend(len.to_le_bytes());
    v
}

fn implicit(group: u16, elem: u16, len: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(group.to_le_bytes());
    v.extend(elem.to_le_bytes());
    v.extend(len.to_le_bytes());
    v
}

fn file(ts: &str, data: &[u8]) -> Vec<u8> {
    let mut uid = ts.as_bytes().to_vec();
    if uid.len() % 2 == 1 {
        uid.push(0);
    }
    let meta = el(0x0002, 0x0010, b"UI", &uid);
    let mut out = vec![0u8; 128];
    out.extend(b"DICM");
    out.extend(el(
        0x0002,
        0x0000,
        b"UL",
        &(meta.len() as u32).to_le_bytes(),
    ));
    out.extend(meta);
    out.extend(data);
    out
}

fn beyond(r: Result<(), BoundsError>) -> (Tag, u32) {
    match r {
        Err(BoundsError::LengthBeyondEnd { tag, len, .. }) => (tag, len),
        other => panic!("expected a length beyond the end, got {other:?}"),
    }
}

#[test]
fn shipped_dicom_fixtures_pass() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut n = 0;
    for dir in ["scans", "phi"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            if bytes.get(128..132) == Some(b"DICM") {
                check(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
    }
    assert!(n >= 3, "only {n} DICOM fixtures found");
}

#[test]
fn the_fuzzer_finding_is_refused_by_name() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/fuzz/decode_scan/oom-dicom-4gib-element-length.dcm");
    let bytes = std::fs::read(p).unwrap();
    let (_, len) = beyond(check(&bytes));
    assert_eq!(len, 0xFFFF_0000);
    let err = pleura_inference::decode_scan(&bytes, 8)
        .unwrap_err()
        .to_string();
    assert!(err.contains("declares 4294901760 bytes"), "{err}");
}

/// An ultrasound image's SOP class and instance UID, as one element list's start.
fn ids(instance: &str) -> [DataElement<InMemDicomObject>; 2] {
    [
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::ULTRASOUND_IMAGE_STORAGE),
        ),
        DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(instance),
        ),
    ]
}

/// Objects with nested sequences and encapsulated pixel data, written by dicom-rs in
/// every syntax it writes, pass the guard and parse back.
#[test]
fn files_written_by_dicom_rs_pass_in_every_syntax() {
    let inner = InMemDicomObject::from_element_iter([
        DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from("113100")),
        DataElement::new(
            tags::CODE_MEANING,
            VR::LO,
            PrimitiveValue::from("Basic profile"),
        ),
    ]);
    let nested = InMemDicomObject::from_element_iter([DataElement::new(
        tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(vec![inner.clone(), inner], Length::UNDEFINED),
    )]);
    for ts in [
        EXPLICIT_LE,
        IMPLICIT_LE,
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
    ] {
        let obj = InMemDicomObject::from_element_iter(ids("2.25.1").into_iter().chain([
            DataElement::new(tags::PATIENT_NAME, VR::PN, PrimitiveValue::from("Doe^J")),
            DataElement::new(
                tags::REFERENCED_IMAGE_SEQUENCE,
                VR::SQ,
                DataSetSequence::new(vec![nested.clone(), nested.clone()], Length::UNDEFINED),
            ),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(2u16)),
            DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(2u16)),
            DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(vec![7u8; 4])),
        ]));
        let obj = obj
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
            .unwrap();
        let mut bytes = Vec::new();
        obj.write_all(&mut bytes).unwrap();
        check(&bytes).unwrap_or_else(|e| panic!("{ts}: {e}"));
        let back = pleura_inference::open_dicom(&bytes).unwrap_or_else(|e| panic!("{ts}: {e}"));
        let seq = back.element(tags::REFERENCED_IMAGE_SEQUENCE).unwrap();
        assert_eq!(seq.items().map(|i| i.len()), Some(2), "{ts}");
    }

    // encapsulated pixel data (offset table + two fragments)
    let obj =
        InMemDicomObject::from_element_iter(ids("2.25.2").into_iter().chain([DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PixelFragmentSequence::new(vec![0u32], vec![vec![1u8; 10], vec![2u8; 6]]),
        )]))
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::JPEG_BASELINE8_BIT))
        .unwrap();
    let mut bytes = Vec::new();
    obj.write_all(&mut bytes).unwrap();
    check(&bytes).unwrap();
}

#[test]
fn a_long_element_in_the_data_set_is_refused() {
    let mut data = el(0x0010, 0x0010, b"PN", b"Doe^J ");
    data.extend(header(0x0009, 0x1010, b"OB", 1 << 30));
    data.extend([0u8; 64]);
    let (tag, len) = beyond(check(&file(EXPLICIT_LE, &data)));
    assert_eq!((tag, len), (Tag(0x0009, 0x1010), 1 << 30));

    // an element that just fits passes
    let mut data = header(0x0009, 0x1010, b"OB", 64);
    data.extend([0u8; 64]);
    check(&file(EXPLICIT_LE, &data)).unwrap();
}

#[test]
fn a_long_meta_element_is_refused() {
    let mut out = vec![0u8; 128];
    out.extend(b"DICM");
    out.extend(el(0x0002, 0x0000, b"UL", &100u32.to_le_bytes()));
    out.extend(header(0x0002, 0x0102, b"OB", 0x7FFF_0000));
    out.extend([0u8; 88]);
    assert_eq!(beyond(check(&out)).0, Tag(0x0002, 0x0102));
}

#[test]
fn long_elements_nested_in_sequences_are_refused() {
    // explicit VR: undefined-length SQ > undefined-length item > long element
    let mut data = header(0x0008, 0x1140, b"SQ", 0xFFFF_FFFF);
    data.extend(marker(0xE000, 0xFFFF_FFFF));
    data.extend(header(0x0008, 0x1150, b"UN", 0x8000_0000));
    data.extend([0u8; 16]);
    assert_eq!(
        beyond(check(&file(EXPLICIT_LE, &data))).0,
        Tag(0x0008, 0x1150)
    );

    // implicit VR: a defined-length SQ known only from the dictionary, a defined-length
    // item, then an element declaring more than the file holds
    let mut item_body = implicit(0x0008, 0x0100, 8);
    item_body.extend(b"113100  ");
    item_body.extend(implicit(0x0008, 0x0104, 0x4000_0000));
    let mut item = marker(0xE000, item_body.len() as u32);
    item.extend(&item_body);
    let mut data = implicit(0x0012, 0x0064, item.len() as u32);
    data.extend(&item);
    assert_eq!(
        beyond(check(&file(IMPLICIT_LE, &data))).0,
        Tag(0x0008, 0x0104)
    );

    // a defined-length item longer than the file
    let mut data = header(0x0008, 0x1140, b"SQ", 0xFFFF_FFFF);
    data.extend(marker(0xE000, 0x1000_0000));
    assert_eq!(
        beyond(check(&file(EXPLICIT_LE, &data))).0,
        Tag(0xFFFE, 0xE000)
    );

    // an undefined-length non-SQ element is read as a sequence too
    let mut data = header(0x0009, 0x1001, b"UN", 0xFFFF_FFFF);
    data.extend(marker(0xE000, 0xFFFF_FFFF));
    data.extend(header(0x0009, 0x1002, b"OB", 0x1000_0000));
    assert_eq!(
        beyond(check(&file(EXPLICIT_LE, &data))).0,
        Tag(0x0009, 0x1002)
    );
}

#[test]
fn a_long_pixel_fragment_is_refused() {
    let mut data = header(0x7FE0, 0x0010, b"OB", 0xFFFF_FFFF);
    data.extend(marker(0xE000, 0)); // empty offset table
    data.extend(marker(0xE000, 4));
    data.extend([1, 2, 3, 4]);
    data.extend(marker(0xE000, 0xFFFF_0000));
    data.extend([0u8; 32]);
    let (tag, len) = beyond(check(&file(uids::JPEG_BASELINE8_BIT, &data)));
    assert_eq!((tag, len), (Tag(0xFFFE, 0xE000), 0xFFFF_0000));
}

#[test]
fn nesting_beyond_the_limit_is_refused() {
    let open = |data: &mut Vec<u8>| {
        data.extend(header(0x0008, 0x1140, b"SQ", 0xFFFF_FFFF));
        data.extend(marker(0xE000, 0xFFFF_FFFF));
    };
    let mut ok = Vec::new();
    for _ in 0..MAX_DEPTH {
        open(&mut ok);
    }
    check(&file(EXPLICIT_LE, &ok)).unwrap();
    let mut deep = ok.clone();
    open(&mut deep);
    assert!(matches!(
        check(&file(EXPLICIT_LE, &deep)),
        Err(BoundsError::TooDeep { .. })
    ));
}

#[test]
fn big_endian_lengths_are_read_big_endian() {
    // explicit VR big endian: (0009,1010) OB with length 0x00000010 (BE) holds 16 bytes
    let mut data = vec![0x00, 0x09, 0x10, 0x10, b'O', b'B', 0, 0, 0, 0, 0, 0x10];
    data.extend([0u8; 16]);
    check(&file("1.2.840.10008.1.2.2", &data)).unwrap();
    // the same bytes read little endian would declare 0x10000000
    assert_eq!(
        beyond(check(&file(EXPLICIT_LE, &data))).0,
        Tag(0x0900, 0x1010)
    );
}

#[test]
fn a_deflate_bomb_is_refused_and_corrupt_deflate_named() {
    use std::io::Write;
    // 600 MiB of zero-filled OB value compresses to well under a megabyte
    let body = header(0x0009, 0x1010, b"OB", 600 << 20);
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&body).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..600 {
        z.write_all(&chunk).unwrap();
    }
    let compressed = z.finish().unwrap();
    assert!(compressed.len() < 4 << 20);
    assert_eq!(
        check(&file("1.2.840.10008.1.2.1.99", &compressed)),
        Err(BoundsError::InflatesTooLarge)
    );
    assert!(matches!(
        check(&file("1.2.840.10008.1.2.1.99", &[0xFF; 64])),
        Err(BoundsError::Inflate(_))
    ));
}

#[test]
fn truncation_and_garbage_never_panic_and_breaks_are_left_to_dicom_rs() {
    let mut data = header(0x0008, 0x1140, b"SQ", 0xFFFF_FFFF);
    data.extend(marker(0xE000, 0xFFFF_FFFF));
    data.extend(el(0x0008, 0x1150, b"UI", b"1.2.3\0"));
    data.extend(marker(0xE00D, 0));
    data.extend(marker(0xE0DD, 0));
    data.extend(el(0x0028, 0x0010, b"US", &[2, 0]));
    let whole = file(EXPLICIT_LE, &data);
    check(&whole).unwrap();
    // a header cut short is dicom-rs's to report, not a length beyond the end
    check(&whole[..whole.len() - 3]).unwrap();
    for cut in 0..whole.len() {
        let _ = check(&whole[..cut]);
    }
    for i in 0..whole.len() {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut m = whole.clone();
            m[i] ^= flip;
            let _ = check(&m);
        }
    }
    assert_eq!(check(b"not dicom"), Err(BoundsError::NotDicom));
}
