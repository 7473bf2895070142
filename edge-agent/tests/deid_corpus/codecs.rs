//! Encoders the corpus needs that dicom-rs lacks: RLE Lossless (PS3.5 Annex G) and
//! lossless JPEG, process 14, first-order prediction (ITU T.81 H; PS3.5 A.4.1).

fn rle_segment(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let run = data[i..]
            .iter()
            .take(128)
            .take_while(|&&v| v == data[i])
            .count();
        if run >= 3 {
            out.push((257 - run) as u8);
            out.push(data[i]);
            i += run;
        } else {
            let start = i;
            while i < data.len() && i - start < 128 {
                let ahead = data[i..]
                    .iter()
                    .take(3)
                    .take_while(|&&v| v == data[i])
                    .count();
                if ahead >= 3 {
                    break;
                }
                i += 1;
            }
            out.push((i - start - 1) as u8);
            out.extend_from_slice(&data[start..i]);
        }
    }
    if out.len() % 2 == 1 {
        out.push(0x80); // no-op
    }
    out
}

/// PS3.5 Annex G: one segment per byte of every sample, most significant first.
pub fn rle_frame(spp: usize, b: usize, planar: u16, n: usize, native: &[u8]) -> Vec<u8> {
    let mut segments = Vec::new();
    for ch in 0..spp {
        for k in (0..b).rev() {
            let seg: Vec<u8> = (0..n)
                .map(|p| {
                    let s = if planar == 1 {
                        ch * n + p
                    } else {
                        p * spp + ch
                    };
                    native[s * b + k]
                })
                .collect();
            segments.push(rle_segment(&seg));
        }
    }
    let mut header = [0u32; 16];
    header[0] = segments.len() as u32;
    let mut off = 64u32;
    for (i, s) in segments.iter().enumerate() {
        header[i + 1] = off;
        off += s.len() as u32;
    }
    let mut out: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
    segments.iter().for_each(|s| out.extend_from_slice(s));
    out
}

/// One frame as a lossless JPEG (SOF3, predictor 1, one Huffman table whose 17
/// categories all get 5-bit codes). `native` holds `comps` interleaved little-endian
/// samples of `bytes` bytes each; `precision` is the bits stored.
pub fn jpeg_lossless_frame(
    native: &[u8],
    rows: usize,
    cols: usize,
    comps: usize,
    bytes: usize,
    precision: u32,
) -> Vec<u8> {
    let sample = |i: usize| -> i32 {
        if bytes == 1 {
            i32::from(native[i])
        } else {
            i32::from(u16::from_le_bytes([native[2 * i], native[2 * i + 1]]))
        }
    };
    let mut out = vec![0xFF, 0xD8];
    let seg = |out: &mut Vec<u8>, marker: u8, body: &[u8]| {
        out.extend_from_slice(&[0xFF, marker]);
        out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(body);
    };
    let mut sof = vec![precision as u8];
    sof.extend_from_slice(&(rows as u16).to_be_bytes());
    sof.extend_from_slice(&(cols as u16).to_be_bytes());
    sof.push(comps as u8);
    for c in 0..comps {
        sof.extend_from_slice(&[c as u8 + 1, 0x11, 0]);
    }
    seg(&mut out, 0xC3, &sof);
    let mut dht = vec![0x00];
    let mut bits = [0u8; 16];
    bits[4] = 17; // 17 codes of length 5
    dht.extend_from_slice(&bits);
    dht.extend(0u8..=16);
    seg(&mut out, 0xC4, &dht);
    let mut sos = vec![comps as u8];
    for c in 0..comps {
        sos.extend_from_slice(&[c as u8 + 1, 0x00]);
    }
    sos.extend_from_slice(&[1, 0, 0]); // predictor 1, Se 0, Ah/Al 0
    seg(&mut out, 0xDA, &sos);
    let mut w = Bits::default();
    for y in 0..rows {
        for x in 0..cols {
            for c in 0..comps {
                let at = |x: usize, y: usize| sample((y * cols + x) * comps + c);
                let pred = match (x, y) {
                    (0, 0) => 1 << (precision - 1),
                    (0, _) => at(0, y - 1),
                    _ => at(x - 1, y),
                };
                let mut diff = (at(x, y) - pred).rem_euclid(1 << 16);
                if diff > 32768 {
                    diff -= 1 << 16;
                }
                let ssss = 32 - diff.unsigned_abs().leading_zeros();
                w.emit(ssss, 5);
                if ssss > 0 && ssss < 16 {
                    let extra = if diff < 0 { diff - 1 } else { diff };
                    w.emit(extra as u32, ssss);
                }
            }
        }
    }
    w.flush();
    out.extend_from_slice(&w.data);
    out.extend_from_slice(&[0xFF, 0xD9]);
    if out.len() % 2 == 1 {
        out.push(0); // fragments are padded to even length (PS3.5 A.4)
    }
    out
}

/// Entropy-coded bits, most significant first, with 0xFF byte stuffing.
#[derive(Default)]
struct Bits {
    acc: u64,
    n: u32,
    data: Vec<u8>,
}

impl Bits {
    fn emit(&mut self, v: u32, n: u32) {
        self.acc = (self.acc << n) | (u64::from(v) & ((1u64 << n) - 1));
        self.n += n;
        while self.n >= 8 {
            let byte = (self.acc >> (self.n - 8)) as u8;
            self.data.push(byte);
            if byte == 0xFF {
                self.data.push(0);
            }
            self.n -= 8;
        }
    }

    /// Pads the last byte with 1-bits.
    fn flush(&mut self) {
        if self.n > 0 {
            let pad = 8 - self.n;
            self.emit((1 << pad) - 1, pad);
        }
    }
}
