//! The adversarial corpus: small synthetic ultrasound images with invented PHI in the
//! header, the file meta, private tags and nested sequences at every depth, and burned
//! into the pixels (header band, and outside the ultrasound region) of every plane and
//! frame, in every layout and transfer syntax the agent must handle. No real person.

use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, FileMetaTableBuilder, InMemDicomObject};
use dicom_pixeldata::Transcode;
use dicom_transfer_syntax_registry::entries;

use crate::codecs;
use crate::header::header;

pub const ROWS: usize = 40;
pub const COLS: usize = 48;
/// The ultrasound region, inclusive corners (x0, y0, x1, y1).
pub const REGION: (usize, usize, usize, usize) = (8, 10, 39, 33);
pub const BAND: usize = ROWS / 10;
/// Burned into the pixels as raw bytes.
pub const PHI_TEXT: &[u8] = b"DOE^JANE^PHITEST MRN-4471-PHI";
const PHI_SHORT: &[u8] = b"MRN-4471";
pub const UID_ROOT: &str = "1.2.826.0.1.3680043.10.5471";

/// Must not appear anywhere in a de-identified copy (case-insensitive).
pub const PHI_STRINGS: &[&str] = &[
    "DOE^JANE",
    "PHITEST",
    "MRN-4471",
    "19470312",
    "Kisumu",
    "ODINGA",
    "PHIOPERATOR",
    "ACC-PHI",
    "STUDY-PHI",
    "LUMIFY-PHI",
    "SN-PHI",
    "coughing",
    "101523",
    "Nairobi",
    "PHI-AE-TITLE",
    "PRIVATE-META-PHI",
    "NESTED^PHI",
    "PRIVATE-NESTED-PHI",
    "DEEP-PHI-ID",
    "DEEPER^PHI",
    "PRIVATE-TOP-PHI",
    UID_ROOT,
];

/// Of those, the ones only the regions sequence carries.
pub const IN_REGIONS_ONLY: &[&str] = &[
    "NESTED^PHI",
    "PRIVATE-NESTED-PHI",
    "DEEP-PHI-ID",
    "DEEPER^PHI",
];

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Syntax {
    ExplicitLe,
    ImplicitLe,
    Rle,
    JpegBaseline,
    JpegLossless,
    EncapsulatedUncompressed,
    DeflatedFrame,
    /// Deflated Explicit VR Little Endian: native pixels in a deflated data set.
    DeflatedLe,
    ExplicitBe,
}

impl Syntax {
    pub fn uid(self) -> &'static str {
        match self {
            Syntax::ExplicitLe => "1.2.840.10008.1.2.1",
            Syntax::ImplicitLe => "1.2.840.10008.1.2",
            Syntax::Rle => "1.2.840.10008.1.2.5",
            Syntax::JpegBaseline => "1.2.840.10008.1.2.4.50",
            Syntax::JpegLossless => "1.2.840.10008.1.2.4.70",
            Syntax::EncapsulatedUncompressed => "1.2.840.10008.1.2.1.98",
            Syntax::DeflatedFrame => "1.2.840.10008.1.2.8.1",
            Syntax::DeflatedLe => "1.2.840.10008.1.2.1.99",
            Syntax::ExplicitBe => "1.2.840.10008.1.2.2",
        }
    }
    pub fn lossy(self) -> bool {
        self == Syntax::JpegBaseline
    }
    /// Whether the file's bytes hide the header text (a deflated data set).
    pub fn hides_text(self) -> bool {
        self == Syntax::DeflatedLe
    }
}

#[derive(Clone, Debug)]
pub struct Case {
    pub pi: &'static str,
    pub planar: u16,
    pub bits: u16,
    pub frames: usize,
    pub syntax: Syntax,
    pub burned: Option<&'static str>,
    pub regions: bool,
}

impl Case {
    pub fn name(&self) -> String {
        format!(
            "{}-pc{}-{}bit-{}f-{:?}-bia_{}-{}",
            self.pi,
            self.planar,
            self.bits,
            self.frames,
            self.syntax,
            self.burned.unwrap_or("absent"),
            if self.regions { "regions" } else { "noregions" }
        )
    }
    pub fn spp(&self) -> usize {
        if self.pi.starts_with("MONO") {
            1
        } else {
            3
        }
    }
    pub fn bits_stored(&self) -> u32 {
        if self.bits == 16 {
            12
        } else {
            8
        }
    }
    /// Gray content where chroma is subsampled or JPEG-coded, so a round trip is exact
    /// (or close); colourful elsewhere.
    fn gray(&self) -> bool {
        self.pi == "YBR_FULL_422" || self.syntax.lossy()
    }
    /// The image content at (x, y) of frame f, in the copy's layout (mono, or RGB).
    pub fn content(&self, x: usize, y: usize, f: usize) -> [u32; 3] {
        let (x, y, f) = (x as u32, y as u32, f as u32);
        if self.bits == 16 {
            let v = 100 + (x * 37 + y * 23 + f * 101) % 3900;
            return [v, (v + 1000) % 4000, (v + 2000) % 4000];
        }
        if self.gray() {
            let v = 40 + x * 2 + y * 2 + f * 3;
            return [v, v, v];
        }
        [
            30 + (x * 3 + y + f * 5) % 200,
            20 + (y * 4 + f * 3) % 200,
            40 + ((x + y) * 2) % 180,
        ]
    }
}

fn rgb_to_ybr([r, g, b]: [u32; 3]) -> [u32; 3] {
    let (r, g, b) = (f64::from(r), f64::from(g), f64::from(b));
    let c = |v: f64| v.round().clamp(0.0, 255.0) as u32;
    [
        c(0.299 * r + 0.587 * g + 0.114 * b),
        c(-0.168_736 * r - 0.331_264 * g + 0.5 * b + 128.0),
        c(0.5 * r - 0.418_688 * g - 0.081_312 * b + 128.0),
    ]
}

fn put(buf: &mut Vec<u8>, bytes: usize, v: u32) {
    if bytes == 1 {
        buf.push(v as u8);
    } else {
        buf.extend_from_slice(&(v as u16).to_le_bytes());
    }
}

/// One native frame as stored (planar configuration, YBR sub-sampling), PHI burned in.
pub fn native_frame(c: &Case, f: usize) -> Vec<u8> {
    let b = usize::from(c.bits / 8);
    let px = |x, y| {
        let v = c.content(x, y, f);
        if c.pi == "YBR_FULL" || c.pi == "YBR_FULL_422" {
            rgb_to_ybr(v)
        } else {
            v
        }
    };
    let mut buf = Vec::new();
    match (c.spp(), c.planar, c.pi) {
        (1, _, _) => (0..ROWS * COLS).for_each(|p| put(&mut buf, b, px(p % COLS, p / COLS)[0])),
        (_, _, "YBR_FULL_422") => {
            for p in (0..ROWS * COLS).step_by(2) {
                let (a, z) = (px(p % COLS, p / COLS), px(p % COLS + 1, p / COLS));
                for v in [a[0], z[0], (a[1] + z[1]) / 2, (a[2] + z[2]) / 2] {
                    put(&mut buf, b, v);
                }
            }
        }
        (_, 1, _) => {
            for ch in 0..3 {
                (0..ROWS * COLS).for_each(|p| put(&mut buf, b, px(p % COLS, p / COLS)[ch]));
            }
        }
        _ => (0..ROWS * COLS).for_each(|p| {
            px(p % COLS, p / COLS)
                .into_iter()
                .for_each(|v| put(&mut buf, b, v))
        }),
    }
    burn(c, &mut buf);
    buf
}

/// Writes the PHI text as raw bytes into the header band of every plane, below the
/// region and in its left margin.
fn burn(c: &Case, buf: &mut [u8]) {
    let planes = if c.spp() == 3 && c.planar == 1 { 3 } else { 1 };
    let plane_len = buf.len() / planes;
    let row = plane_len / ROWS;
    let mut write = |plane: usize, y: usize, text: &[u8]| {
        let at = plane * plane_len + y * row;
        let n = text.len().min(row);
        buf[at..at + n].copy_from_slice(&text[..n]);
    };
    for plane in 0..planes {
        for y in 1..BAND {
            write(plane, y, PHI_TEXT);
        }
        // outside the region whether or not the file declares it: a file without
        // regions must be refused, not copied with this text in it
        write(plane, REGION.3 + 2, PHI_TEXT);
        for y in (REGION.1..=REGION.3).step_by(4) {
            write(plane, y, PHI_SHORT); // <= 8 pixels: the margin left of the region
        }
    }
}

/// The case as a DICOM file.
pub fn generate(c: &Case) -> Vec<u8> {
    let mut obj = header(c);
    let frames: Vec<Vec<u8>> = (0..c.frames).map(|f| native_frame(c, f)).collect();
    let native_ts = match c.syntax {
        s @ (Syntax::ImplicitLe | Syntax::DeflatedLe | Syntax::ExplicitBe) => s,
        _ => Syntax::ExplicitLe,
    };
    let pixel_vr = if c.bits == 16 { VR::OW } else { VR::OB };
    let encapsulated = match c.syntax {
        Syntax::Rle => Some(
            frames
                .iter()
                .map(|f| {
                    codecs::rle_frame(c.spp(), usize::from(c.bits / 8), c.planar, ROWS * COLS, f)
                })
                .collect(),
        ),
        Syntax::JpegLossless => Some(
            frames
                .iter()
                .map(|f| {
                    codecs::jpeg_lossless_frame(
                        f,
                        ROWS,
                        COLS,
                        c.spp(),
                        usize::from(c.bits / 8),
                        c.bits_stored(),
                    )
                })
                .collect(),
        ),
        // one fragment per frame, as stored natively (PS3.5 A.4.11)
        Syntax::EncapsulatedUncompressed => Some(frames.clone()),
        // raw deflate of each native frame (PS3.5 A.4.13)
        Syntax::DeflatedFrame => Some(frames.iter().map(|f| deflate(f)).collect()),
        _ => None,
    };
    match encapsulated {
        Some(frags) => {
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PixelFragmentSequence::new(Vec::<u32>::new(), frags),
            ));
        }
        _ => {
            let mut all = frames.concat();
            if all.len() % 2 == 1 {
                all.push(0);
            }
            // 16-bit samples as words, so a big-endian file stores them big-endian
            let value = if c.bits == 16 {
                let words: Vec<u16> = all
                    .chunks_exact(2)
                    .map(|w| u16::from_le_bytes([w[0], w[1]]))
                    .collect();
                PrimitiveValue::U16(words.into())
            } else {
                PrimitiveValue::U8(all.into())
            };
            obj.put(DataElement::new(tags::PIXEL_DATA, pixel_vr, value));
        }
    }
    let ts = if encapsulated_syntax(c.syntax) {
        c.syntax
    } else {
        native_ts
    };
    let m = meta(&obj, ts.uid());
    let mut file = obj.with_exact_meta(m);
    let target = match c.syntax {
        Syntax::JpegBaseline => Some(entries::JPEG_BASELINE.erased()),
        _ => None,
    };
    if let Some(ts) = target {
        file.transcode(&ts).expect("transcode");
        if c.frames == 1 {
            // the encoder adds Number of Frames, which a single-frame US image lacks
            file.remove_element(tags::NUMBER_OF_FRAMES);
        }
    }
    write(&file)
}

fn encapsulated_syntax(s: Syntax) -> bool {
    matches!(
        s,
        Syntax::Rle
            | Syntax::JpegLossless
            | Syntax::EncapsulatedUncompressed
            | Syntax::DeflatedFrame
    )
}

fn deflate(frame: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(frame).expect("deflate");
    let mut out = e.finish().expect("deflate");
    if out.len() % 2 == 1 {
        out.push(0);
    }
    out
}

pub fn meta(obj: &InMemDicomObject, ts: &str) -> dicom_object::FileMetaTable {
    let class = obj
        .element(tags::SOP_CLASS_UID)
        .expect("class")
        .to_str()
        .expect("class");
    FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class.trim_end_matches('\0'))
        .media_storage_sop_instance_uid(format!("{UID_ROOT}.3.1"))
        .transfer_syntax(ts)
        .implementation_class_uid(format!("{UID_ROOT}.100"))
        .source_application_entity_title("PHI-AE-TITLE")
        .private_information_creator_uid(format!("{UID_ROOT}.101"))
        .private_information(b"PRIVATE-META-PHI".to_vec())
        .build()
        .expect("meta")
}

pub fn write(file: &FileDicomObject<InMemDicomObject>) -> Vec<u8> {
    let mut out = Vec::new();
    file.write_all(&mut out).expect("write");
    out
}

/// A file whose pixels are in a syntax nothing here decodes: must be refused.
pub fn undecodable(ts: &str) -> Vec<u8> {
    let c = Case {
        pi: "MONOCHROME2",
        planar: 0,
        bits: 8,
        frames: 1,
        syntax: Syntax::ExplicitLe,
        burned: Some("NO"),
        regions: true,
    };
    let mut obj = header(&c);
    let frame = native_frame(&c, 0);
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new(Vec::<u32>::new(), vec![frame]),
    ));
    let mut m = meta(&obj, ts);
    m.transfer_syntax = ts.to_string();
    write(&obj.with_exact_meta(m))
}

/// Every layout × syntax the agent decodes, with BurnedInAnnotation YES, NO and absent.
pub fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    let layouts: &[(&str, u16, u16)] = &[
        ("MONOCHROME2", 0, 8),
        ("MONOCHROME2", 0, 16),
        ("MONOCHROME1", 0, 8),
        ("MONOCHROME1", 0, 16),
        ("RGB", 0, 8),
        ("RGB", 1, 8),
        ("RGB", 0, 16),
        ("RGB", 1, 16),
        ("YBR_FULL", 0, 8),
        ("YBR_FULL", 1, 8),
        ("YBR_FULL_422", 0, 8),
    ];
    let bia = [Some("YES"), Some("NO"), None];
    let mut i = 0;
    for &(pi, planar, bits) in layouts {
        for syntax in [
            Syntax::ExplicitLe,
            Syntax::ImplicitLe,
            Syntax::DeflatedLe,
            Syntax::ExplicitBe,
            Syntax::Rle,
            Syntax::EncapsulatedUncompressed,
            Syntax::DeflatedFrame,
            Syntax::JpegBaseline,
            Syntax::JpegLossless,
        ] {
            // RLE cannot hold sub-sampled YBR; JPEG baseline is 8-bit, MONOCHROME2 or
            // RGB in (the encoder writes YBR_FULL_422)
            if (syntax == Syntax::Rle && pi == "YBR_FULL_422")
                || (syntax == Syntax::JpegLossless
                    && (planar != 0 || !matches!(pi, "MONOCHROME2" | "RGB")))
                || (syntax == Syntax::JpegBaseline
                    && (bits != 8 || planar != 0 || !matches!(pi, "MONOCHROME2" | "RGB")))
            {
                continue;
            }
            for frames in [1, 3] {
                i += 1;
                cases.push(Case {
                    pi,
                    planar,
                    bits,
                    frames,
                    syntax,
                    burned: bia[i % 3],
                    regions: i % 7 != 0,
                });
            }
        }
    }
    cases
}
