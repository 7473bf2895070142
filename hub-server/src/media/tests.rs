//! The media store and receiver against a real case store (sled) and real files.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use pleura_proto::v1::{MediaChunk, MediaKind, MediaQuery};
use pleura_shared::record::sample_record;
use pleura_shared::ResultId;
use sha2::Digest;

use super::*;
use crate::metrics::Metrics;
use crate::store::{HubStore, Retraction, SledStore};

struct Hub {
    dir: tempfile::TempDir,
    cases: Arc<SledStore>,
    rx: MediaReceiver,
    result: ResultId,
}

fn hub() -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let cases = Arc::new(SledStore::open(dir.path()).unwrap());
    let rec = sample_record("c1", "d1", 3, true);
    cases.commit(std::slice::from_ref(&rec), 1).unwrap();
    let rx = receiver(dir.path(), cases.clone());
    Hub {
        result: rec.id,
        dir,
        cases,
        rx,
    }
}

fn receiver(dir: &std::path::Path, cases: Arc<SledStore>) -> MediaReceiver {
    MediaReceiver::new(
        Arc::new(FsMediaStore::open(dir).unwrap()),
        cases,
        Arc::new(Metrics::default()),
    )
}

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn sha(b: &[u8]) -> Vec<u8> {
    sha2::Sha256::digest(b).to_vec()
}

fn chunk(item: &[u8], kind: MediaKind, result: &ResultId, offset: usize, len: usize) -> MediaChunk {
    let end = (offset + len).min(item.len());
    MediaChunk {
        sha256: sha(item),
        kind: kind as i32,
        result_id: result.0.to_vec(),
        total: item.len() as u64,
        offset: offset as u64,
        data: item[offset..end].to_vec(),
    }
}

/// Sends `item` whole in `step`-byte chunks, each at the offset the last ack named.
fn upload(rx: &MediaReceiver, item: &[u8], kind: MediaKind, result: &ResultId, step: usize) -> u64 {
    let mut held = 0u64;
    for _ in 0..10_000 {
        let ack = rx.chunk("c1", "d1", chunk(item, kind, result, held as usize, step));
        assert!(ack.refused.is_empty(), "{}", ack.refused);
        held = ack.held;
        if ack.complete {
            return held;
        }
    }
    panic!("upload did not complete");
}

#[test]
fn chunks_in_order_make_a_whole_hash_checked_item() {
    let h = hub();
    let item = bytes(40_000);
    assert_eq!(
        upload(&h.rx, &item, MediaKind::Preview, &h.result, 16 * 1024),
        40_000
    );
    let s: Sha256 = sha(&item).try_into().unwrap();
    assert_eq!(h.rx.media.read(&s, None).unwrap().unwrap(), item);
    assert_eq!(
        h.rx.media.read(&s, Some(10..20)).unwrap().unwrap(),
        item[10..20]
    );
    let items = h.rx.media.items_for(&h.result).unwrap();
    assert_eq!(items.len(), 1);
    assert!(items[0].complete && items[0].completed_at_ms.is_some());
    assert_eq!(
        (items[0].clinic.as_str(), items[0].device.as_str()),
        ("c1", "d1")
    );
    // Named by its hash, private.
    let obj = h.dir.path().join("media/objects").join(hex::encode(s));
    assert_eq!(std::fs::read(&obj).unwrap(), item);
    assert_eq!(
        std::fs::metadata(&obj).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let d = std::fs::metadata(h.dir.path().join("media")).unwrap();
    assert_eq!(d.permissions().mode() & 0o777, 0o700);
    assert_eq!(h.rx.metrics.media_chunks("complete"), 1);
    assert_eq!(h.rx.metrics.media_chunks("written"), 2);
    // A repeat of a chunk of a complete item is answered "complete", nothing written.
    let again = h.rx.chunk(
        "c1",
        "d1",
        chunk(&item, MediaKind::Preview, &h.result, 0, 100),
    );
    assert!(again.complete && again.held == 40_000 && again.refused.is_empty());
}

#[test]
fn a_chunk_at_another_offset_is_answered_with_what_is_held() {
    let h = hub();
    let item = bytes(50_000);
    let ack = h.rx.chunk(
        "c1",
        "d1",
        chunk(&item, MediaKind::Preview, &h.result, 16_384, 16_384),
    );
    assert_eq!(
        (ack.held, ack.complete, ack.refused.as_str()),
        (0, false, "")
    );
    let ack = h.rx.chunk(
        "c1",
        "d1",
        chunk(&item, MediaKind::Preview, &h.result, 0, 16_384),
    );
    assert_eq!(ack.held, 16_384);
    // A repeated chunk (its ack was lost) is not written twice.
    let ack = h.rx.chunk(
        "c1",
        "d1",
        chunk(&item, MediaKind::Preview, &h.result, 0, 16_384),
    );
    assert_eq!(ack.held, 16_384);
    let ack = h.rx.chunk(
        "c1",
        "d1",
        chunk(&item, MediaKind::Preview, &h.result, 40_000, 10_000),
    );
    assert_eq!(ack.held, 16_384);
    let q = h.rx.query("c1", "d1", MediaQuery { sha256: sha(&item) });
    assert_eq!((q.held, q.complete), (16_384, false));
    assert_eq!(h.rx.metrics.media_chunks("out_of_order"), 3);
    assert_eq!(
        upload(&h.rx, &item, MediaKind::Preview, &h.result, 16_384),
        50_000
    );
}

#[test]
fn bytes_that_do_not_match_the_hash_are_discarded_and_refused() {
    let h = hub();
    let item = bytes(30_000);
    let mut forged = item.clone();
    forged[29_999] ^= 1;
    let mut c = chunk(&forged, MediaKind::Preview, &h.result, 0, 30_000);
    c.sha256 = sha(&item);
    let ack = h.rx.chunk("c1", "d1", c);
    assert!(!ack.refused.is_empty() && !ack.complete);
    let s: Sha256 = sha(&item).try_into().unwrap();
    assert_eq!(h.rx.media.item(&s).unwrap(), None);
    assert_eq!(h.rx.media.read(&s, None).unwrap(), None);
    assert_eq!(
        std::fs::read_dir(h.dir.path().join("media/partial"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(h.rx.metrics.media_chunks("refused_hash"), 1);
    // The right bytes are taken afterwards.
    assert_eq!(
        upload(&h.rx, &item, MediaKind::Preview, &h.result, 30_000),
        30_000
    );
}

#[test]
fn limits_and_malformed_chunks_are_refused() {
    let h = hub();
    let big = bytes(PREVIEW_MAX_BYTES as usize + 1);
    let refused = |c: MediaChunk| {
        let a = h.rx.chunk("c1", "d1", c);
        assert!(!a.refused.is_empty());
        a.refused
    };
    refused(chunk(&big, MediaKind::Preview, &h.result, 0, 1000));
    // The same size is fine as a clip.
    let a =
        h.rx.chunk("c1", "d1", chunk(&big, MediaKind::Clip, &h.result, 0, 1000));
    assert_eq!((a.held, a.refused.as_str()), (1000, ""));
    let mut c = chunk(&big, MediaKind::Clip, &h.result, 0, 1000);
    c.total = CLIP_MAX_BYTES + 1;
    refused(c);
    refused(chunk(&big, MediaKind::Unspecified, &h.result, 0, 1000));
    let mut c = chunk(&big, MediaKind::Clip, &h.result, 1000, MAX_CHUNK_BYTES + 1);
    assert!(refused(c.clone()).contains("chunk over"));
    c.data.truncate(10);
    c.sha256 = vec![1; 31];
    refused(c);
    let mut c = chunk(&big, MediaKind::Clip, &h.result, 1000, 10);
    c.result_id = vec![1; 3];
    refused(c);
    let small = bytes(100);
    let mut c = chunk(&small, MediaKind::Preview, &h.result, 90, 10);
    c.data = vec![0; 20];
    assert!(refused(c).contains("overruns"));
    let mut c = chunk(&small, MediaKind::Preview, &h.result, 0, 0);
    c.total = 0;
    refused(c);
    // Same bytes claimed with another size or kind or result: refused.
    let mut c = chunk(&big, MediaKind::Clip, &h.result, 1000, 10);
    c.total += 5;
    assert!(refused(c).contains("another size"));
    // (As a preview the size is over the limit: refused before the store is asked.)
    let mut c = chunk(&big, MediaKind::Preview, &h.result, 1000, 10);
    c.total = 1010;
    c.kind = MediaKind::Preview as i32;
    assert!(refused(c).contains("another"));
}

#[test]
fn the_same_bytes_for_another_result_of_the_device_are_kept_once_listed_under_both() {
    let h = hub();
    let other = sample_record("c1", "d1", 1, true);
    h.cases.commit(std::slice::from_ref(&other), 1).unwrap();
    let item = bytes(30_000);
    upload(&h.rx, &item, MediaKind::Preview, &h.result, 16_384);
    // The device's claim for its other result (an empty chunk at the end).
    let ack = h.rx.chunk(
        "c1",
        "d1",
        chunk(&item, MediaKind::Preview, &other.id, 30_000, 0),
    );
    assert!(ack.complete && ack.refused.is_empty());
    let s: Sha256 = sha(&item).try_into().unwrap();
    for r in [h.result, other.id] {
        let v = h.rx.media.items_for(&r).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].sha256, v[0].result_id, v[0].complete), (s, r, true));
    }
    // Kept across a restart; another device's claim is still refused.
    let rx = receiver(h.dir.path(), h.cases.clone());
    assert_eq!(rx.media.items_for(&other.id).unwrap().len(), 1);
    let other_dev = sample_record("c1", "d2", 1, true);
    h.cases.commit(std::slice::from_ref(&other_dev), 1).unwrap();
    let a = rx.chunk(
        "c1",
        "d2",
        chunk(&item, MediaKind::Preview, &other_dev.id, 30_000, 0),
    );
    assert!(a.refused.contains("another device"));
}

#[test]
fn only_the_device_that_sent_the_result_may_upload_its_media() {
    let h = hub();
    let item = bytes(1000);
    let c = chunk(&item, MediaKind::Preview, &h.result, 0, 1000);
    assert!(h
        .rx
        .chunk("c1", "d2", c.clone())
        .refused
        .contains("another device"));
    assert!(h
        .rx
        .chunk("c2", "d1", c.clone())
        .refused
        .contains("another device"));
    let unknown = ResultId::random();
    let c2 = chunk(&item, MediaKind::Preview, &unknown, 0, 1000);
    assert!(h.rx.chunk("c1", "d1", c2).refused.contains("unknown"));
    assert_eq!(h.rx.metrics.media_chunks("refused_device"), 2);
    // A half-sent item of d1 is not revealed to, nor continued by, another device.
    let item = bytes(5000);
    h.rx.chunk(
        "c1",
        "d1",
        chunk(&item, MediaKind::Preview, &h.result, 0, 1000),
    );
    let q = h.rx.query("c1", "d2", MediaQuery { sha256: sha(&item) });
    assert!(!q.refused.is_empty() && q.held == 0);
    // A retracted result takes no media.
    h.cases
        .retract(&[Retraction {
            id: h.result,
            clinic: "c1".into(),
            device: "d1".into(),
            reason: "mistake".into(),
            at_ms: 2,
        }])
        .unwrap();
    let c = chunk(&item, MediaKind::Preview, &h.result, 1000, 1000);
    assert!(h.rx.chunk("c1", "d1", c).refused.contains("retracted"));
}

#[test]
fn a_restart_mid_item_keeps_what_was_acknowledged_and_continues() {
    let h = hub();
    let item = bytes(100_000);
    let s: Sha256 = sha(&item).try_into().unwrap();
    let ack = h.rx.chunk(
        "c1",
        "d1",
        chunk(&item, MediaKind::Clip, &h.result, 0, 16_384),
    );
    assert_eq!(ack.held, 16_384);
    // Bytes written after the last ack (a crash mid-chunk) are cut back at open.
    let partial = h.dir.path().join("media/partial").join(hex::encode(s));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&partial)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0xEE; 700]).unwrap();
    drop(f);
    let Hub {
        dir,
        cases,
        rx,
        result,
    } = h;
    drop(rx);
    let rx = receiver(dir.path(), cases.clone());
    let q = rx.query("c1", "d1", MediaQuery { sha256: sha(&item) });
    assert_eq!((q.held, q.complete), (16_384, false));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), 16_384);
    assert_eq!(
        upload(&rx, &item, MediaKind::Clip, &result, 16_384),
        100_000
    );
    drop(rx);
    // Complete items survive a restart too.
    let rx = receiver(dir.path(), cases);
    assert_eq!(rx.media.read(&s, None).unwrap().unwrap(), item);
    let items = rx.media.items_for(&result).unwrap();
    assert!(items[0].complete && items[0].kind == MediaKind::Clip);
}

#[test]
fn a_crash_between_the_object_rename_and_the_index_update_keeps_the_item() {
    let h = hub();
    let item = bytes(20_000);
    let s: Sha256 = sha(&item).try_into().unwrap();
    h.rx.chunk(
        "c1",
        "d1",
        chunk(&item, MediaKind::Preview, &h.result, 0, 10_000),
    );
    // As if the process died right after the rename to objects/.
    let root = h.dir.path().join("media");
    std::fs::write(root.join("objects").join(hex::encode(s)), &item).unwrap();
    std::fs::remove_file(root.join("partial").join(hex::encode(s))).unwrap();
    let store = FsMediaStore::open(h.dir.path()).unwrap();
    let i = store.item(&s).unwrap().unwrap();
    assert!(i.complete && i.held == 20_000);
    assert_eq!(store.read(&s, None).unwrap().unwrap(), item);
}

#[test]
fn a_damaged_index_entry_is_set_aside_not_fatal() {
    let h = hub();
    let item = bytes(2000);
    h.rx.chunk(
        "c1",
        "d1",
        chunk(&item, MediaKind::Preview, &h.result, 0, 1000),
    );
    let idx = h.dir.path().join("media/index");
    let entry = std::fs::read_dir(&idx)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&entry, b"{not json").unwrap();
    let store = FsMediaStore::open(h.dir.path()).unwrap();
    assert!(store.items_for(&h.result).unwrap().is_empty());
    assert!(std::fs::read_dir(&idx).unwrap().any(|e| e
        .unwrap()
        .path()
        .to_string_lossy()
        .ends_with(".damaged")));
}

#[test]
fn items_are_found_by_result_and_readers_never_wait_on_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FsMediaStore::open(dir.path()).unwrap());
    let results: Vec<ResultId> = (0..50).map(|_| ResultId::random()).collect();
    let claim = |i: usize, b: &[u8], total: u64| ItemClaim {
        sha256: sha(b).try_into().unwrap(),
        kind: MediaKind::Preview,
        result_id: results[i % 50],
        clinic: "c1".into(),
        device: "d1".into(),
        total,
    };
    for i in 0..200 {
        let b = format!("item {i}").into_bytes();
        store
            .write_chunk(&claim(i, &b, b.len() as u64), 0, &b, 1)
            .unwrap();
    }
    // A partial item, then one whose bytes do not match its hash (forgotten).
    let p = b"partial item".to_vec();
    store.write_chunk(&claim(0, &p, 100), 0, &p, 1).unwrap();
    let mut bad = claim(1, b"claimed", 3);
    bad.result_id = results[1];
    assert_eq!(
        store.write_chunk(&bad, 0, b"xyz", 1).unwrap(),
        Written::BadHash
    );
    let check = |s: &FsMediaStore| {
        assert_eq!(
            s.items_for(&results[0]).unwrap().len(),
            5,
            "4 whole, 1 partial"
        );
        assert_eq!(s.items_for(&results[1]).unwrap().len(), 4);
        assert!(s.items_for(&ResultId::random()).unwrap().is_empty());
    };
    check(&store);
    check(&FsMediaStore::open(dir.path()).unwrap());
    // A writer mid-fsync or mid-hash holds only the writers' lock.
    let writing = store.writer.lock().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let s = store.clone();
    let r = results[2];
    std::thread::spawn(move || {
        let _ = tx.send(s.items_for(&r).map(|v| v.len()).unwrap_or(0));
    });
    let got = rx.recv_timeout(std::time::Duration::from_secs(5));
    drop(writing);
    assert_eq!(got, Ok(4), "items_for did not wait for the writer");
}
