//! Store damage at the hub (issue #11 item 1): random byte flips and truncations of a
//! copy of a real cases.sled, 50 seeds each, opened through the hub's start-up path
//! (`recovery::open_checked`, what `hub-server serve` runs): never a panic, and
//! exactly the results the damaged store can no longer return are reported missing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hub_server::metrics::Metrics;
use hub_server::recovery::open_checked;
use hub_server::store::HubStore;
use pleura_shared::record::sample_record;
use pleura_shared::{ResultId, ScanRecord};

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(
            seed.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                | 1,
        )
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A hub data directory holding 150 results of 3 devices over 5 days, committed in 15
/// batches as ingest commits them (store, then journal), then closed; and in `killed`,
/// a copy taken while it was still open (what a SIGKILLed hub leaves: sled has not
/// written its snapshot, and replays its log at the next start).
fn template(dir: &Path, killed: &Path) -> Vec<ScanRecord> {
    let r = open_checked(dir, Arc::new(Metrics::default())).unwrap();
    let mut all = Vec::new();
    for batch in 0..15u64 {
        let recs: Vec<ScanRecord> = (0..10u64)
            .map(|i| {
                let mut rec =
                    sample_record("c1", &format!("d{}", i % 3), (i % 4) as u8, i % 2 == 0);
                rec.analysed_at_ms = (20_000 + (batch + i) % 5) * 86_400_000 + i;
                rec
            })
            .collect();
        r.store.commit(&recs, 1_000 + batch).unwrap();
        r.integrity
            .committed(&recs.iter().collect::<Vec<_>>())
            .unwrap();
        all.extend(recs);
    }
    copy_dir(dir, killed);
    all
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Every file of the store, largest first, with the length of what was written (sled
/// pre-sizes its log file; damage to the zeros after the last write shows nothing).
fn store_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("cases.sled")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                let bytes = std::fs::read(e.path()).unwrap();
                let used = bytes
                    .iter()
                    .rposition(|b| *b != 0)
                    .map_or(0, |i| i as u64 + 1);
                if used > 0 {
                    out.push((e.path(), used));
                }
            }
        }
    }
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// Opens the damaged copy as the hub does and checks what it reports.
/// Returns how many results were lost, and whether the store had to be set aside.
fn check(dir: &Path, all: &[ScanRecord], what: &str) -> (usize, bool) {
    let metrics = Arc::new(Metrics::default());
    let r = open_checked(dir, metrics.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let returned: BTreeSet<ResultId> = all
        .iter()
        .filter(|rec| matches!(r.store.get(&rec.id), Ok(Some(c)) if c.record == **rec))
        .map(|rec| rec.id)
        .collect();
    let expected: BTreeSet<ResultId> = all
        .iter()
        .map(|rec| rec.id)
        .filter(|id| !returned.contains(id))
        .collect();
    let reported: BTreeSet<ResultId> = r.integrity.missing().into_values().flatten().collect();
    assert_eq!(
        reported, expected,
        "{what}: missing set differs from the loss"
    );
    assert_eq!(
        metrics
            .store_missing
            .load(std::sync::atomic::Ordering::Relaxed),
        expected.len() as u64,
        "{what}"
    );
    // Listing never fails on what is left, and shows exactly what get returns.
    let listed = r
        .store
        .list(&hub_server::store::CaseFilter::everything())
        .unwrap();
    assert_eq!(listed.cases.len(), returned.len(), "{what}");
    (expected.len(), r.integrity.report.set_aside.is_some())
}

#[test]
fn random_flips_and_truncations_of_the_store_are_all_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let (closed, killed) = (tmp.path().join("closed"), tmp.path().join("killed"));
    let all = template(&closed, &killed);
    for t in [&closed, &killed] {
        let dir = tmp.path().join("undamaged");
        copy_dir(t, &dir);
        assert_eq!(check(&dir, &all, "undamaged"), (0, false));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let (mut lossy_flips, mut lossy_cuts, mut lost, mut set_aside) = (0, 0, 0, 0);

    for seed in 0..50u64 {
        let mut rng = Rng::new(seed);
        let dir = tmp.path().join(format!("flip-{seed}"));
        let clean = if seed % 2 == 0 { &closed } else { &killed };
        copy_dir(clean, &dir);
        let files = store_files(clean);
        let total: u64 = files.iter().map(|f| f.1).sum();
        let flips = 1 + seed % 8;
        for _ in 0..flips {
            // A byte anywhere in the store's files, each file by its size.
            let mut at = rng.below(total);
            let (path, _) = files
                .iter()
                .find(|(_, len)| {
                    let hit = at < *len;
                    if !hit {
                        at -= len;
                    }
                    hit
                })
                .unwrap();
            let path = dir.join(path.strip_prefix(clean).unwrap());
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[at as usize] ^= 1 << rng.below(8);
            std::fs::write(&path, bytes).unwrap();
        }
        let (n, aside) = check(&dir, &all, &format!("seed {seed}, {flips} flips"));
        lossy_flips += usize::from(n > 0);
        lost += n;
        set_aside += usize::from(aside);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    for seed in 0..50u64 {
        let mut rng = Rng::new(1000 + seed);
        let dir = tmp.path().join(format!("cut-{seed}"));
        let clean = if seed % 2 == 0 { &closed } else { &killed };
        copy_dir(clean, &dir);
        let files = store_files(clean);
        let (path, len) = &files[rng.below(files.len().min(2) as u64) as usize];
        let keep = rng.below(*len);
        let path = dir.join(path.strip_prefix(clean).unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(keep)
            .unwrap();
        let (n, aside) = check(
            &dir,
            &all,
            &format!("seed {seed}, {} cut to {keep} of {len}", path.display()),
        );
        lossy_cuts += usize::from(n > 0);
        lost += n;
        set_aside += usize::from(aside);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    println!(
        "seeds with a loss: {lossy_flips}/50 flips, {lossy_cuts}/50 \
         truncations; {lost} lost results, every one reported; {set_aside} stores set aside"
    );
    assert!(
        lossy_flips + lossy_cuts > 0,
        "the damage never cost a result: a weak test"
    );
}
