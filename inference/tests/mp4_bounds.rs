//! The MP4 box-tree guard: shipped clips pass; an empty, short or overrunning box inside
//! a container the demuxer loops over is refused by name instead of hanging it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pleura_inference::decode::mp4_bounds::{check, BoxError, MAX_DEPTH};

fn bx(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
    v.extend(kind);
    v.extend(payload);
    v
}

/// A box header declaring `size` whatever its payload.
fn header(kind: &[u8; 4], size: u32) -> Vec<u8> {
    let mut v = size.to_be_bytes().to_vec();
    v.extend(kind);
    v
}

fn file(moov_payload: &[u8]) -> Vec<u8> {
    let mut f = bx(b"ftyp", b"isom\0\0\0\x01isomavc1");
    f.extend(bx(b"moov", moov_payload));
    f.extend(bx(b"mdat", &[0u8; 32]));
    f
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

#[test]
fn shipped_clips_pass() {
    let mut n = 0;
    for e in std::fs::read_dir(fixtures().join("scans")).unwrap() {
        let p = e.unwrap().path();
        if matches!(p.extension().and_then(|e| e.to_str()), Some("mp4" | "mov")) {
            check(&std::fs::read(&p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 3, "only {n} clips");
}

#[test]
fn the_fuzzer_hang_is_refused_at_once() {
    let p = fixtures().join("fuzz/decode_scan/hang-mp4-empty-box-in-mdia.mp4");
    let bytes = std::fs::read(p).unwrap();
    let t = Instant::now();
    let err = pleura_inference::decode_scan(&bytes, 8)
        .unwrap_err()
        .to_string();
    assert!(err.contains("declares size 0 inside"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn an_empty_box_inside_a_container_is_refused() {
    let mdia = [bx(b"mdhd", &[0; 24]), header(b"junk", 0), vec![0; 16]].concat();
    let trak = bx(b"trak", &bx(b"mdia", &mdia));
    assert!(matches!(
        check(&file(&trak)),
        Err(BoxError::Empty { ref kind, ref parent, .. }) if kind == "junk" && parent == "mdia"
    ));
    // a 64-bit size of 0 is empty too
    let mut large = header(b"junk", 1);
    large.extend(0u64.to_be_bytes());
    let trak = bx(b"trak", &bx(b"mdia", &[large, vec![0; 8]].concat()));
    assert!(matches!(check(&file(&trak)), Err(BoxError::Empty { .. })));
    // at the top level, size 0 means "to the end of the file"
    let mut f = file(&bx(b"trak", &[]));
    f.extend(header(b"mdat", 0));
    f.extend([0u8; 100]);
    check(&f).unwrap();
}

#[test]
fn short_and_overrunning_boxes_are_refused() {
    let trak = bx(b"trak", &[header(b"tkhd", 4), vec![0; 12]].concat());
    assert!(matches!(
        check(&file(&trak)),
        Err(BoxError::ShorterThanHeader {
            size: 4,
            header: 8,
            ..
        })
    ));
    // a child longer than what is left of its parent
    let trak = bx(b"trak", &[header(b"tkhd", 64), vec![0; 12]].concat());
    assert!(matches!(
        check(&file(&trak)),
        Err(BoxError::BeyondParent {
            size: 64,
            left: 20,
            ..
        })
    ));
    // a child header crossing its parent's end
    let trak = bx(b"trak", &[bx(b"tkhd", &[0; 8]), vec![0, 0, 0]].concat());
    assert!(matches!(
        check(&file(&trak)),
        Err(BoxError::BeyondParent {
            size: 8,
            left: 3,
            ..
        })
    ));
    // a truncated mdat at the top level is the demuxer's to report
    let mut f = file(&bx(b"trak", &[]));
    f.extend(header(b"mdat", 1 << 30));
    f.extend([0u8; 64]);
    check(&f).unwrap();
}

#[test]
fn meta_with_and_without_its_version_word() {
    let hdlr = bx(b"hdlr", &[0; 25]);
    for payload in [[vec![0, 0, 0, 0], hdlr.clone()].concat(), hdlr.clone()] {
        let moov = bx(b"udta", &bx(b"meta", &payload));
        check(&file(&moov)).unwrap();
    }
    let bad = [vec![0, 0, 0, 0], header(b"ilst", 0), vec![0; 8]].concat();
    let moov = bx(b"udta", &bx(b"meta", &bad));
    assert!(matches!(check(&file(&moov)), Err(BoxError::Empty { .. })));
}

#[test]
fn nesting_beyond_the_limit_is_refused() {
    let mut inner = Vec::new();
    for _ in 0..MAX_DEPTH + 1 {
        inner = bx(b"trak", &inner);
    }
    assert!(matches!(
        check(&file(&inner)),
        Err(BoxError::TooDeep { .. })
    ));
}

#[test]
fn truncation_and_garbage_never_panic() {
    let f = std::fs::read(fixtures().join("scans/cb_patient16_R1.mp4")).unwrap();
    for cut in (0..f.len()).step_by(97) {
        let _ = check(&f[..cut]);
    }
    for i in (0..f.len().min(4096)).step_by(3) {
        let mut m = f.clone();
        m[i] ^= 0xFF;
        let _ = check(&m);
    }
}
