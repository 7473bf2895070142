//! Burned-in text removal. Pixel data in any layout the agent can decode (native or
//! compressed) is decoded, brought to one layout — monochrome as it was, colour as RGB
//! interleaved — and masked there, so every sample of every channel, plane and frame in
//! the masked areas is the same constant. The copy is written uncompressed. What cannot
//! be decoded is refused: it is never copied through unmasked.
//!
//! Masked areas: the header band at the top of every frame (where ultrasound devices
//! print name, ID and date) and every pixel outside the ultrasound regions the file
//! lists. A file without regions is refused: nothing else says where the image ends
//! and the annotations begin, and masking the band alone would let text burned
//! anywhere else through. Regions are clamped to the frame, and regions that cover
//! (nearly) all of it are refused too: they say nothing about where the text is.
//! Kept samples keep only their stored bits (anything above Bits Stored is cleared,
//! or the sign for signed data).

use dicom_core::value::Value;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_pixeldata::PixelDecoder;

use super::DeidError;

/// Lossy transfer syntaxes: the copy must keep saying the pixels went through one.
const LOSSY: &[(&str, &str)] = &[
    ("1.2.840.10008.1.2.4.50", "ISO_10918_1"),
    ("1.2.840.10008.1.2.4.51", "ISO_10918_1"),
];
/// Compressed syntaxes whose decoder hands back the samples as they were encoded,
/// colour space included (the JPEG decoder returns RGB).
const KEEPS_COLOUR_SPACE: &[&str] = &[
    "1.2.840.10008.1.2.5",    // RLE Lossless (planes interleaved by the decoder)
    "1.2.840.10008.1.2.1.98", // Encapsulated Uncompressed
    "1.2.840.10008.1.2.8.1",  // Deflated Image Frame Compression
];
const RLE: &str = "1.2.840.10008.1.2.5";

struct Geometry {
    rows: usize,
    cols: usize,
    frames: usize,
    spp: usize,
    bytes: usize,
    bits_stored: u32,
    signed: bool,
}

fn int(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<u32> {
    obj.element(tag).ok()?.to_int::<u32>().ok()
}

fn unsupported(what: String) -> DeidError {
    DeidError::UnsupportedImage(what)
}

/// Above this share of the frame, a region says nothing about where the text is.
const MAX_REGION_PERCENT: usize = 85;

/// Which pixels of a frame lie inside the ultrasound regions, coordinates clamped to
/// the frame. The regions are the file's own claim, so they are checked: none at all,
/// or a union that covers more than `MAX_REGION_PERCENT` of the frame or reaches all
/// four of its edges (a region that is the whole frame says nothing about where the
/// text is) is refused.
fn region_mask(obj: &InMemDicomObject, g: &Geometry) -> Result<Vec<bool>, DeidError> {
    let items = obj
        .element(tags::SEQUENCE_OF_ULTRASOUND_REGIONS)
        .ok()
        .and_then(|e| e.items())
        .unwrap_or_default();
    let (w, h) = (g.cols, g.rows);
    let mut mask = vec![false; w * h];
    let mut any = false;
    for it in items {
        let corner = |x, y| Some((int(it, x)? as usize, int(it, y)? as usize));
        let (Some((x0, y0)), Some((x1, y1))) = (
            corner(tags::REGION_LOCATION_MIN_X0, tags::REGION_LOCATION_MIN_Y0),
            corner(tags::REGION_LOCATION_MAX_X1, tags::REGION_LOCATION_MAX_Y1),
        ) else {
            continue;
        };
        if x0 >= w || y0 >= h || x0 > x1 || y0 > y1 {
            continue;
        }
        let (x1, y1) = (x1.min(w - 1), y1.min(h - 1));
        for y in y0..=y1 {
            mask[y * w + x0..=y * w + x1].fill(true);
        }
        any = true;
    }
    if !any {
        return Err(DeidError::NoUltrasoundRegion);
    }
    let covered = mask.iter().filter(|&&m| m).count();
    let percent = covered * 100 / (w * h);
    let all_edges = (0..w).any(|x| mask[x])
        && (0..w).any(|x| mask[(h - 1) * w + x])
        && (0..h).any(|y| mask[y * w])
        && (0..h).any(|y| mask[y * w + w - 1]);
    if covered * 100 > MAX_REGION_PERCENT * w * h || all_edges {
        return Err(DeidError::ImplausibleUltrasoundRegion { percent, all_edges });
    }
    Ok(mask)
}

/// How the decoded samples of a frame are laid out.
struct Decoded {
    /// Every frame, each `frame_len` bytes, back to back.
    data: Vec<u8>,
    pi: String,
    planar: u32,
}

/// The decoded samples, every frame, with the layout they came out in.
///
/// Native or encapsulated is read from the Pixel Data value itself, never from a list
/// of transfer syntax UIDs: a primitive value (any native syntax, deflated or big
/// endian included: the parser has already undone both) is taken as it is, with the
/// header's photometric interpretation and planar configuration; a pixel sequence is
/// decoded frame by frame, and every decoded frame must be exactly the length the
/// header describes — a codec stream whose layout disagrees with the header (three
/// components where the header says one, say) is refused, never re-chunked.
fn decode(
    obj: &DefaultDicomObject,
    ts: &str,
    g: &Geometry,
    frame_len: impl Fn(&str) -> Result<usize, DeidError>,
) -> Result<Decoded, DeidError> {
    let refuse = |reason: String| DeidError::UndecodablePixels {
        ts: ts.to_string(),
        reason,
    };
    let declared = super::text(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let element = obj
        .element(tags::PIXEL_DATA)
        .map_err(|_| DeidError::Missing("pixel data"))?;
    match element.value() {
        Value::Primitive(p) => {
            let planar = int(obj, tags::PLANAR_CONFIGURATION).unwrap_or(0);
            if g.spp == 3 && planar > 1 {
                return Err(unsupported(format!("planar configuration {planar}")));
            }
            let len = frame_len(&declared)?;
            let data = p.to_bytes();
            let needed = len
                .checked_mul(g.frames)
                .ok_or_else(|| refuse(format!("{} frames", g.frames)))?;
            // one byte of padding to an even length, nothing else
            if data.len() != needed && data.len() != needed + 1 {
                return Err(refuse(format!(
                    "{} bytes of native pixels, {needed} expected",
                    data.len()
                )));
            }
            Ok(Decoded {
                data: data[..needed].to_vec(),
                pi: declared,
                planar: if g.spp == 3 { planar } else { 0 },
            })
        }
        Value::PixelSequence(_) => {
            let (pi, planar) = if KEEPS_COLOUR_SPACE.contains(&ts) {
                let planar = if ts == RLE {
                    0
                } else {
                    int(obj, tags::PLANAR_CONFIGURATION).unwrap_or(0)
                };
                (declared, planar)
            } else if g.spp == 3 {
                // the codecs hand colour back as RGB, interleaved
                ("RGB".to_string(), 0)
            } else {
                (declared, 0)
            };
            if g.spp == 3 && planar > 1 {
                return Err(unsupported(format!("planar configuration {planar}")));
            }
            let len = frame_len(&pi)?;
            // no capacity from the header's frame count: it is only a claim
            let mut data = Vec::new();
            for f in 0..g.frames {
                // dicom-rs's RLE and JPEG decoders have panicked on fragments that do
                // not fit the declared image (docs/FUZZING.md): a refusal, not a dead
                // agent.
                let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    obj.decode_pixel_data_frame(f as u32)
                }))
                .map_err(|_| refuse(format!("the pixel decoder failed on frame {f}")))?
                .map_err(|e| refuse(format!("frame {f}: {e}")))?;
                let frame = decoded.data();
                // an odd-length frame comes back with its fragment's padding byte
                let frame = if len % 2 == 1 && frame.len() == len + 1 {
                    &frame[..len]
                } else {
                    frame
                };
                if frame.len() != len {
                    return Err(refuse(format!(
                        "frame {f} decoded to {} bytes, the header describes {len}",
                        frame.len()
                    )));
                }
                data.extend_from_slice(frame);
            }
            if Some(data.len()) != len.checked_mul(g.frames) {
                return Err(refuse(format!(
                    "{} bytes decoded for {} frames of {len}",
                    data.len(),
                    g.frames
                )));
            }
            Ok(Decoded { data, pi, planar })
        }
        Value::Sequence(_) => Err(refuse("Pixel Data is a sequence".into())),
    }
}

fn sample(d: &[u8], i: usize, bytes: usize) -> u32 {
    match bytes {
        1 => u32::from(d[i]),
        _ => u32::from(u16::from_le_bytes([d[2 * i], d[2 * i + 1]])),
    }
}

fn put(out: &mut [u8], i: usize, bytes: usize, v: u32) {
    match bytes {
        1 => out[i] = v as u8,
        _ => out[2 * i..2 * i + 2].copy_from_slice(&(v as u16).to_le_bytes()),
    }
}

/// Full-range YCbCr (PS3.3 C.7.6.3.1.2) to RGB, clamped to the stored range.
fn ybr_to_rgb(y: u32, cb: u32, cr: u32, max: u32) -> [u32; 3] {
    let mid = f64::from(max / 2 + 1);
    let (y, cb, cr) = (f64::from(y), f64::from(cb) - mid, f64::from(cr) - mid);
    let c = |v: f64| v.round().clamp(0.0, f64::from(max)) as u32;
    [
        c(y + 1.402 * cr),
        c(y - 0.344_136 * cb - 0.714_136 * cr),
        c(y + 1.772 * cb),
    ]
}

/// One frame in the output layout: monochrome as it is, colour as RGB interleaved.
fn canonical_frame(src: &[u8], g: &Geometry, pi: &str, planar: u32, out: &mut [u8]) {
    let (n, b) = (g.rows * g.cols, g.bytes);
    let max = if g.bits_stored >= 32 {
        u32::MAX
    } else {
        (1u32 << g.bits_stored) - 1
    };
    if g.spp == 1 {
        out.copy_from_slice(src);
        return;
    }
    for p in 0..n {
        let s = |c: usize| {
            if planar == 1 {
                sample(src, c * n + p, b)
            } else {
                sample(src, 3 * p + c, b)
            }
        };
        let rgb = if pi == "RGB" {
            [s(0), s(1), s(2)]
        } else {
            ybr_to_rgb(s(0), s(1), s(2), max)
        };
        for (c, v) in rgb.into_iter().enumerate() {
            put(out, 3 * p + c, b, v);
        }
    }
}

/// YBR_FULL_422 as stored natively: Y1 Y2 Cb Cr for each horizontal pair of pixels.
fn canonical_frame_422(src: &[u8], g: &Geometry, out: &mut [u8]) {
    let max = (1u32 << g.bits_stored.min(16)) - 1;
    for p in 0..g.rows * g.cols {
        let pair = p / 2;
        let y = sample(src, 4 * pair + p % 2, g.bytes);
        let cb = sample(src, 4 * pair + 2, g.bytes);
        let cr = sample(src, 4 * pair + 3, g.bytes);
        for (c, v) in ybr_to_rgb(y, cb, cr, max).into_iter().enumerate() {
            put(out, 3 * p + c, g.bytes, v);
        }
    }
}

/// The cleaned Image Pixel module (and lossy-compression note) of the copy.
pub(super) fn clean(
    obj: &DefaultDicomObject,
    ts: &str,
) -> Result<Vec<DataElement<InMemDicomObject>>, DeidError> {
    if obj.element(tags::PIXEL_DATA).is_err() {
        return Err(DeidError::Missing("pixel data"));
    }
    let bits = int(obj, tags::BITS_ALLOCATED).ok_or(DeidError::Missing("Bits Allocated"))?;
    let g = Geometry {
        rows: int(obj, tags::ROWS).ok_or(DeidError::Missing("Rows"))? as usize,
        cols: int(obj, tags::COLUMNS).ok_or(DeidError::Missing("Columns"))? as usize,
        frames: int(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1) as usize,
        spp: int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as usize,
        bytes: match bits {
            8 => 1,
            16 => 2,
            b => return Err(unsupported(format!("{b} bits allocated"))),
        },
        bits_stored: int(obj, tags::BITS_STORED).unwrap_or(bits).clamp(1, bits),
        signed: int(obj, tags::PIXEL_REPRESENTATION) == Some(1),
    };
    if g.rows == 0 || g.cols == 0 {
        return Err(DeidError::Missing("a non-empty image size"));
    }
    // Rows and Columns are US; one or three samples: every product below then fits
    if g.rows > 0xFFFF || g.cols > 0xFFFF || !matches!(g.spp, 1 | 3) {
        return Err(unsupported(format!(
            "{} × {} pixels of {} samples",
            g.cols, g.rows, g.spp
        )));
    }
    let frame_px = g.rows * g.cols;
    let out_len = frame_px * g.spp * g.bytes;
    // as stored natively, YBR_FULL_422 is Y1 Y2 Cb Cr per horizontal pair of pixels
    let frame_len = |pi: &str| match (g.spp, pi) {
        (1, "MONOCHROME1" | "MONOCHROME2") => Ok(out_len),
        (3, "YBR_FULL_422") if g.cols % 2 == 1 => Err(unsupported(format!(
            "YBR_FULL_422 with an odd width ({} columns)",
            g.cols
        ))),
        (3, "YBR_FULL_422") => Ok(frame_px * 2 * g.bytes),
        (3, "RGB" | "YBR_FULL") => Ok(out_len),
        (n, p) => Err(unsupported(format!("{n} samples per pixel with {p:?}"))),
    };
    let Decoded { data, pi, planar } = decode(obj, ts, &g, frame_len)?;
    let in_len = frame_len(&pi)?;
    let inside = region_mask(obj, &g)?;
    let band = (g.rows / 10).max(1);
    // black: 0, or the largest stored value where MONOCHROME1 makes that black
    let fill = if pi == "MONOCHROME1" && !g.signed {
        (1u32 << g.bits_stored.min(16)) - 1
    } else {
        0
    };
    // only the stored bits are kept: anything above them (text hidden in the high
    // bits, say) is cleared, or set to the sign for signed samples
    let stored = g.bits_stored.min(16);
    let keep_mask = if stored >= 16 {
        0xFFFF
    } else {
        (1u32 << stored) - 1
    };
    let sign_bit = 1u32 << (stored - 1);
    let full = if g.bytes == 1 { 0xFF } else { 0xFFFF };
    let keep = |v: u32| {
        let v = v & keep_mask;
        if g.signed && v & sign_bit != 0 {
            (v | !keep_mask) & full
        } else {
            v
        }
    };
    let px = g.spp;
    let mut pixels = vec![0u8; out_len * g.frames];
    for (src, out) in data
        .chunks_exact(in_len)
        .zip(pixels.chunks_exact_mut(out_len))
    {
        if in_len != out_len {
            canonical_frame_422(src, &g, out);
        } else {
            canonical_frame(src, &g, &pi, planar, out);
        }
        for y in 0..g.rows {
            for x in 0..g.cols {
                let p = y * g.cols + x;
                for c in 0..px {
                    let v = if y < band || !inside[p] {
                        fill
                    } else {
                        keep(sample(out, p * px + c, g.bytes))
                    };
                    put(out, p * px + c, g.bytes, v);
                }
            }
        }
    }
    let out_pi = if g.spp == 1 { pi } else { "RGB".to_string() };
    let us = |t, v: u32| DataElement::new(t, VR::US, PrimitiveValue::from(v as u16));
    let mut els = vec![
        us(tags::SAMPLES_PER_PIXEL, g.spp as u32),
        DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, out_pi),
        us(tags::ROWS, g.rows as u32),
        us(tags::COLUMNS, g.cols as u32),
        us(tags::BITS_ALLOCATED, bits),
        us(tags::BITS_STORED, g.bits_stored),
        us(tags::HIGH_BIT, g.bits_stored - 1),
        us(tags::PIXEL_REPRESENTATION, u32::from(g.signed)),
    ];
    if g.spp == 3 {
        els.push(us(tags::PLANAR_CONFIGURATION, 0));
    }
    let value = if g.bytes == 2 {
        let words: Vec<u16> = pixels
            .chunks_exact(2)
            .map(|w| u16::from_le_bytes([w[0], w[1]]))
            .collect();
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(words.into()))
    } else {
        if pixels.len() % 2 == 1 {
            pixels.push(0);
        }
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(pixels.into()))
    };
    els.push(value);
    if let Some((_, method)) = LOSSY.iter().find(|(uid, _)| *uid == ts) {
        els.push(DataElement::new(
            tags::LOSSY_IMAGE_COMPRESSION,
            VR::CS,
            "01",
        ));
        els.push(DataElement::new(
            tags::LOSSY_IMAGE_COMPRESSION_METHOD,
            VR::CS,
            *method,
        ));
    }
    Ok(els)
}
