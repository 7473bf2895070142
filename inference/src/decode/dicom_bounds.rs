//! A walk over a DICOM file's element headers that refuses any declared length the
//! file cannot hold, before dicom-rs parses it.
//!
//! Why: dicom-parser reserves an element's declared length before reading its bytes, so
//! a 700 KB file declaring a 4 GiB element makes it ask for 4 GiB (found by the
//! `decode_scan` fuzzer, docs/FUZZING.md). Every length here is checked against the bytes
//! that remain, so what dicom-rs then allocates is bounded by the file's size.
//!
//! The walk mirrors dicom-parser's reading (explicit/implicit VR, little/big endian,
//! sequences and items of defined or undefined length, encapsulated pixel fragments,
//! undefined-length non-sequence elements read as sequences). Where the structure is
//! broken in a way dicom-rs reports by itself (a truncated header, a stray tag in a
//! sequence), the walk stops and leaves the error to dicom-rs: it refuses only what would
//! otherwise allocate beyond the input, nest too deep, or inflate without bound.

use std::io::Read;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

/// Sequences nested deeper than this are refused (real ultrasound objects nest 2-3
/// levels); dicom-rs builds nested sequences recursively.
pub const MAX_DEPTH: usize = 32;
/// Largest data set a Deflated Explicit VR Little Endian file may inflate to.
pub const MAX_INFLATED_BYTES: usize = 512 << 20;

const PREAMBLE: usize = 128;
const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    #[error("not a DICOM file: no \"DICM\" after the {PREAMBLE}-byte preamble")]
    NotDicom,
    #[error(
        "element ({:04X},{:04X}) at byte {offset} declares {len} bytes but only {left} remain",
        tag.0, tag.1
    )]
    LengthBeyondEnd {
        tag: Tag,
        offset: usize,
        len: u32,
        left: usize,
    },
    #[error(
        "element ({:04X},{:04X}) at byte {offset}: {len} bytes is not a whole number of \
         {vr:?} values ({size} bytes each)",
        tag.0, tag.1
    )]
    PartialValue {
        tag: Tag,
        offset: usize,
        vr: VR,
        len: u32,
        size: u32,
    },
    #[error("sequences nested deeper than {MAX_DEPTH} levels at byte {offset}")]
    TooDeep { offset: usize },
    #[error("deflated data set inflates to more than {MAX_INFLATED_BYTES} bytes")]
    InflatesTooLarge,
    #[error("deflated data set does not inflate: {0}")]
    Inflate(String),
}

/// Checks every declared length in `bytes` (a whole DICOM file with its preamble).
pub fn check(bytes: &[u8]) -> Result<(), BoundsError> {
    if bytes.len() < PREAMBLE + 4 || &bytes[PREAMBLE..PREAMBLE + 4] != b"DICM" {
        return Err(BoundsError::NotDicom);
    }
    let mut meta = Walker::new(bytes, PREAMBLE + 4, Syntax::EXPLICIT_LE);
    let Some((ts, data_start)) = meta.file_meta()? else {
        return Ok(());
    };
    let rest = &bytes[data_start..];
    match ts.as_str() {
        "1.2.840.10008.1.2" => Walker::new(rest, 0, Syntax::IMPLICIT_LE).data_set(),
        "1.2.840.10008.1.2.2" => Walker::new(rest, 0, Syntax::EXPLICIT_BE).data_set(),
        "1.2.840.10008.1.2.1.99" => {
            let inflated = inflate_bounded(rest)?;
            Walker::new(&inflated, 0, Syntax::EXPLICIT_LE).data_set()
        }
        // Explicit VR Little Endian and every encapsulated (compressed) syntax.
        _ => Walker::new(rest, 0, Syntax::EXPLICIT_LE).data_set(),
    }
}

fn inflate_bounded(compressed: &[u8]) -> Result<Vec<u8>, BoundsError> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(compressed)
        .take(MAX_INFLATED_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BoundsError::Inflate(e.to_string()))?;
    if out.len() > MAX_INFLATED_BYTES {
        return Err(BoundsError::InflatesTooLarge);
    }
    Ok(out)
}

#[derive(Clone, Copy)]
struct Syntax {
    explicit_vr: bool,
    big_endian: bool,
}

impl Syntax {
    const EXPLICIT_LE: Syntax = Syntax {
        explicit_vr: true,
        big_endian: false,
    };
    const EXPLICIT_BE: Syntax = Syntax {
        explicit_vr: true,
        big_endian: true,
    };
    const IMPLICIT_LE: Syntax = Syntax {
        explicit_vr: false,
        big_endian: false,
    };
}

/// Why the walk stops early: the bytes ended (or broke in a way dicom-rs reports
/// itself), so nothing beyond can be allocated; or a refusal.
enum Halt {
    End,
    Refused(BoundsError),
}

impl From<BoundsError> for Halt {
    fn from(e: BoundsError) -> Self {
        Halt::Refused(e)
    }
}

type Step = Result<(), Halt>;

struct Header {
    tag: Tag,
    vr: VR,
    len: u32,
    /// Where the header starts, for error messages.
    at: usize,
}

struct Walker<'a> {
    b: &'a [u8],
    pos: usize,
    syntax: Syntax,
}

impl<'a> Walker<'a> {
    fn new(b: &'a [u8], pos: usize, syntax: Syntax) -> Self {
        Walker { b, pos, syntax }
    }

    fn left(&self) -> usize {
        self.b.len().saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let s = self.b.get(self.pos..self.pos + N)?.try_into().ok()?;
        self.pos += N;
        Some(s)
    }

    fn u16(&mut self) -> Option<u16> {
        let s = self.bytes()?;
        Some(match self.syntax.big_endian {
            true => u16::from_be_bytes(s),
            false => u16::from_le_bytes(s),
        })
    }

    fn u32(&mut self) -> Option<u32> {
        let s = self.bytes()?;
        Some(match self.syntax.big_endian {
            true => u32::from_be_bytes(s),
            false => u32::from_le_bytes(s),
        })
    }

    fn tag(&mut self) -> Option<Tag> {
        Some(Tag(self.u16()?, self.u16()?))
    }

    /// An element header as dicom-encoding reads it; `None` when the bytes end inside it.
    fn header(&mut self) -> Option<Header> {
        let at = self.pos;
        let tag = self.tag()?;
        if tag.0 == 0xFFFE {
            // items and delimiters carry no VR in either syntax
            return Some(Header {
                tag,
                vr: VR::UN,
                len: self.u32()?,
                at,
            });
        }
        let (vr, len) = if self.syntax.explicit_vr {
            let vr = VR::from_binary(self.bytes()?).unwrap_or(VR::UN);
            let len = if short_length(vr) {
                u32::from(self.u16()?)
            } else {
                self.pos += 2; // reserved
                self.u32()?
            };
            (vr, len)
        } else {
            let len = self.u32()?;
            let vr = if tag == PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) {
                VR::OW
            } else {
                StandardDataDictionary
                    .by_tag(tag)
                    .map(|e| e.vr().relaxed())
                    .unwrap_or(VR::UN)
            };
            (vr, len)
        };
        Some(Header { tag, vr, len, at })
    }

    /// Skips a value of defined length, refusing one longer than what remains.
    fn skip(&mut self, h: &Header) -> Result<(), BoundsError> {
        self.fits(h)?;
        self.pos += h.len as usize;
        Ok(())
    }

    fn fits(&self, h: &Header) -> Result<(), BoundsError> {
        if h.len as usize > self.left() {
            return Err(BoundsError::LengthBeyondEnd {
                tag: h.tag,
                offset: h.at,
                len: h.len,
                left: self.left(),
            });
        }
        Ok(())
    }

    /// The file meta group (always explicit VR little endian): checks its lengths and
    /// returns the transfer syntax and where the data set starts, or `None` where
    /// dicom-rs will refuse the group itself.
    fn file_meta(&mut self) -> Result<Option<(String, usize)>, BoundsError> {
        let Some(h) = self.header() else {
            return Ok(None);
        };
        if h.tag != Tag(0x0002, 0x0000) || h.len != 4 {
            return Ok(None);
        }
        let Some(group_len) = self.u32() else {
            return Ok(None);
        };
        let start = self.pos;
        let mut ts = String::new();
        while self.pos - start < group_len as usize {
            let Some(h) = self.header() else {
                return Ok(None);
            };
            if h.len == UNDEFINED {
                return Ok(None);
            }
            self.fits(&h)?;
            if h.tag == Tag(0x0002, 0x0010) {
                let v = &self.b[self.pos..self.pos + h.len as usize];
                ts = String::from_utf8_lossy(v)
                    .trim_end_matches(['\0', ' '])
                    .to_string();
            }
            self.pos += h.len as usize;
        }
        Ok(Some((ts, self.pos)))
    }

    fn data_set(&mut self) -> Result<(), BoundsError> {
        match self.elements(None, 0) {
            Ok(()) | Err(Halt::End) => Ok(()),
            Err(Halt::Refused(e)) => Err(e),
        }
    }

    /// Elements up to `end` (a defined-length item), an item delimiter (an
    /// undefined-length item) or the end of the bytes (the top level).
    fn elements(&mut self, end: Option<usize>, depth: usize) -> Step {
        loop {
            if end.is_some_and(|e| self.pos >= e) {
                return Ok(());
            }
            let h = self.header().ok_or(Halt::End)?;
            if h.tag == ITEM_END {
                if depth == 0 {
                    continue; // dicom-rs ignores a stray one at the top level
                }
                return Ok(());
            }
            if h.len == UNDEFINED {
                if h.tag == PIXEL_DATA {
                    self.fragments()?;
                } else {
                    // SQ, or any other undefined-length element: read as a sequence
                    self.items(None, depth + 1)?;
                }
            } else if h.vr == VR::SQ {
                self.fits(&h)?;
                self.items(Some(self.pos + h.len as usize), depth + 1)?;
            } else {
                whole_values(&h)?;
                self.skip(&h)?;
            }
        }
    }

    /// The items of a sequence, up to `end` or a sequence delimiter.
    fn items(&mut self, end: Option<usize>, depth: usize) -> Step {
        if depth > MAX_DEPTH {
            return Err(BoundsError::TooDeep { offset: self.pos }.into());
        }
        loop {
            if end.is_some_and(|e| self.pos >= e) {
                return Ok(());
            }
            let h = self.header().ok_or(Halt::End)?;
            match h.tag {
                SEQUENCE_END => return Ok(()),
                ITEM_END => continue,
                ITEM if h.len == UNDEFINED => self.elements(None, depth)?,
                ITEM => {
                    self.fits(&h)?;
                    self.elements(Some(self.pos + h.len as usize), depth)?;
                }
                _ => return Err(Halt::End), // dicom-rs refuses a non-item here
            }
        }
    }

    /// Encapsulated pixel data: the offset table and the fragments, each an item of
    /// defined length, up to a sequence delimiter.
    fn fragments(&mut self) -> Step {
        loop {
            let h = self.header().ok_or(Halt::End)?;
            match h.tag {
                SEQUENCE_END => return Ok(()),
                ITEM if h.len != UNDEFINED => self.skip(&h)?,
                _ => return Err(Halt::End),
            }
        }
    }
}

/// dicom-parser reads a binary VR as `len / size` values but counts `len` bytes as read,
/// so a partial value leaves its count and the stream apart and the rest of the file is
/// parsed from a place the walk never saw. PS3.5 6.2 requires whole values anyway.
fn whole_values(h: &Header) -> Result<(), BoundsError> {
    use VR::*;
    let size = match h.vr {
        US | OW | SS => 2,
        AT | FL | OF | SL | OL | UL => 4,
        FD | OD | SV | OV | UV => 8,
        _ => return Ok(()),
    };
    if !h.len.is_multiple_of(size) {
        return Err(BoundsError::PartialValue {
            tag: h.tag,
            offset: h.at,
            vr: h.vr,
            len: h.len,
            size,
        });
    }
    Ok(())
}

/// Explicit VRs whose length field is 16 bits (PS3.5 7.1.2), as dicom-encoding reads them.
fn short_length(vr: VR) -> bool {
    use VR::*;
    matches!(
        vr,
        AE | AS
            | AT
            | CS
            | DA
            | DS
            | DT
            | FL
            | FD
            | IS
            | LO
            | LT
            | PN
            | SH
            | SL
            | SS
            | ST
            | TM
            | UI
            | UL
            | US
    )
}
