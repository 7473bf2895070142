use std::path::Path;

use pleura_shared::record::sample_record;

use super::*;

#[test]
fn sled_outbox_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    super::super::suite::run(|quota| SledOutbox::open(dir.path(), quota).unwrap());
}

#[test]
fn a_corrupt_entry_is_set_aside_and_the_rest_still_flows() {
    let dir = tempfile::tempdir().unwrap();
    let ob = SledOutbox::open(dir.path(), 1 << 20).unwrap();
    let good = sample_record("c", "d", 1, false);
    ob.put(&good).unwrap();
    let lost = ResultId::random();
    let mut bad_key = [0u8; 25];
    bad_key[9..].copy_from_slice(lost.as_bytes()); // sorts first
    ob.queue
        .insert(bad_key, &b"\xff\xfenot a record"[..])
        .unwrap();
    let batch = ob.next_batch(10, &|_| false).unwrap();
    assert_eq!(batch, vec![good]);
    let s = ob.stats().unwrap();
    assert_eq!((s.pending, s.corrupt), (1, 1));
    // Its result is to be rebuilt from its scan.
    assert_eq!(ob.held(&lost).unwrap(), Some(Held::Lost));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            files(&e.path(), out);
        } else if e.metadata().unwrap().len() > 0 {
            out.push(e.path());
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The outside chaos test's finding: a flipped byte or a truncation made sled drop
/// most of the queue at recovery, silently. Every queued result must come back either
/// intact or named as lost (to be rebuilt from its scan); nothing panics.
#[test]
fn damaged_copies_never_panic_and_every_loss_is_detected() {
    let clean = tempfile::tempdir().unwrap();
    let mut queued = Vec::new();
    let mut acked = Vec::new();
    let mut all = Vec::new();
    {
        let ob = SledOutbox::open(clean.path(), 1 << 24).unwrap();
        for i in 0..130u64 {
            let mut r = sample_record("c", "d", (i % 4) as u8, i % 3 == 0);
            r.analysed_at_ms = 1_700_000_000_000 + i * 3_600_000;
            ob.put(&r).unwrap();
            all.push(r.clone());
            if i < 30 {
                acked.push(r.id);
            } else {
                queued.push(r);
            }
        }
        ob.remove(&acked).unwrap();
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut detected_runs = 0;
    for seed in 0..100u64 {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(clean.path(), dir.path());
        let mut store_files = Vec::new();
        files(&dir.path().join("outbox.sled"), &mut store_files);
        store_files.sort();
        let f = &store_files[(rng.next() % store_files.len() as u64) as usize];
        let mut bytes = std::fs::read(f).unwrap();
        if seed < 50 {
            for _ in 0..=(seed % 8) {
                let i = (rng.next() % bytes.len() as u64) as usize;
                bytes[i] ^= 1 << (rng.next() % 8);
            }
        } else {
            bytes.truncate((rng.next() % bytes.len() as u64) as usize);
        }
        std::fs::write(f, &bytes).unwrap();

        let ob = SledOutbox::open(dir.path(), 1 << 24)
            .unwrap_or_else(|e| panic!("seed {seed}: the agent must start: {e}"));
        let batch = ob.next_batch(1000, &|_| false).unwrap();
        let lost: HashSet<ResultId> = ob.lost().into_iter().collect();
        for r in &queued {
            let intact = batch.iter().find(|b| b.id == r.id);
            assert!(
                intact == Some(r) || lost.contains(&r.id),
                "seed {seed}: result {} neither intact nor reported lost",
                r.id
            );
        }
        // A store rolled back to an earlier state may queue acknowledged results again
        // (the hub deduplicates them); it must never hand back an altered one.
        assert!(
            batch.iter().all(|b| all.contains(b)),
            "seed {seed}: altered record"
        );
        let s = ob.stats().unwrap();
        let acked_gone = acked.iter().any(|id| ob.held(id).unwrap().is_none());
        if !lost.is_empty() || acked_gone {
            assert!(s.damage.is_some(), "seed {seed}: loss not reported");
            detected_runs += 1;
        }
    }
    eprintln!("{detected_runs} of 100 damaged copies lost results; every loss was reported");
}

#[test]
fn a_failed_write_leaves_nothing_claiming_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let ob = SledOutbox::open(dir.path(), 1 << 20).unwrap();
    let r = sample_record("c", "d", 1, false);
    // Every journal write fails with ENOSPC, as on a full disk.
    let good = std::mem::replace(&mut *ob.ledger.lock().unwrap(), Ledger::on_full_disk());
    let err = ob.put(&r).unwrap_err();
    assert!(matches!(err, OutboxError::DiskFull(_)), "{err}");
    assert_eq!(ob.held(&r.id).unwrap(), None, "nothing claims it");
    assert_eq!(ob.stats().unwrap().pending, 0);
    assert_eq!(
        ob.put(&r).unwrap_err().to_string(),
        err.to_string(),
        "not 'already queued'"
    );
    *ob.ledger.lock().unwrap() = good;
    assert_eq!(
        ob.put(&r).unwrap(),
        Put::Stored,
        "stored once there is room"
    );
    drop(ob);
    let ob = SledOutbox::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(ob.held(&r.id).unwrap(), Some(Held::Queued));
}
