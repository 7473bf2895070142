use std::sync::atomic::Ordering::Relaxed;

use pleura_shared::record::sample_record;
use pleura_shared::ScanRecord;

use super::*;
use crate::store::integrity::Line;
use crate::store::{CaseFilter, CaseSummary, Retraction};

fn open(dir: &Path) -> (Recovered, Arc<Metrics>) {
    let m = Arc::new(Metrics::default());
    (open_checked(dir, m.clone()).unwrap(), m)
}

/// Commits as ingest does: store, then journal.
fn commit(r: &Recovered, recs: &[ScanRecord]) {
    r.store.commit(recs, 1).unwrap();
    r.integrity
        .committed(&recs.iter().collect::<Vec<_>>())
        .unwrap();
}

/// Deletes cases behind the store's back, as a damaged page would.
fn lose(dir: &Path, ids: &[ResultId]) {
    let db = pleura_shared::sled_open::open_path(dir.join(STORE_DIR)).unwrap();
    let cases = db.open_tree("cases").unwrap();
    for id in ids {
        cases.remove(id.as_bytes()).unwrap();
    }
    db.flush().unwrap();
}

#[test]
fn compare_finds_what_the_journal_has_and_the_store_lacks() {
    let (a, b, c) = (
        sample_record("c1", "d1", 1, false),
        sample_record("c1", "d1", 2, true),
        sample_record("c2", "d2", 0, false),
    );
    let lines: Vec<String> = [&a, &b]
        .iter()
        .map(|r| Line::committed(r).encode())
        .chain(["not a journal line".to_string()])
        .collect();
    let r = Retraction {
        id: a.id,
        clinic: "c1".into(),
        device: "d1".into(),
        reason: "wrong patient, twice over".into(),
        at_ms: 7,
    };
    let mut lines = lines;
    lines.push(Line::Retracted(r.clone()).encode());
    let scan = Scan {
        cases: vec![CaseSummary::of(&a), CaseSummary::of(&c)],
        ..Default::default()
    };
    let cmp = compare(&lines, &scan);
    assert_eq!(
        cmp.missing,
        BTreeMap::from([(("c1".into(), "d1".into()), BTreeSet::from([b.id]))])
    );
    assert_eq!(cmp.backfill, vec![Line::committed(&c)]);
    assert_eq!(cmp.restore, vec![r.clone()]);
    assert_eq!(cmp.unreadable, 1);
    assert_eq!(
        Line::parse(&Line::Retracted(r.clone()).encode()),
        Some(Line::Retracted(r))
    );
}

#[test]
fn a_loss_is_found_at_start_and_counts_until_the_result_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2): (Vec<_>, Vec<_>) = (
        (0..4)
            .map(|_| sample_record("c1", "d1", 1, false))
            .collect(),
        (0..3)
            .map(|_| sample_record("c2", "d2", 1, false))
            .collect(),
    );
    let (r, m) = open(dir.path());
    commit(&r, &d1);
    commit(&r, &d2);
    assert_eq!(m.store_missing.load(Relaxed), 0);
    drop(r);
    lose(dir.path(), &[d1[0].id, d1[3].id, d2[1].id]);
    // A damaged journal line is counted, not fatal.
    let jpath = dir.path().join(JOURNAL_FILE);
    let mut text = std::fs::read(&jpath).unwrap();
    text.extend_from_slice(b"C 00 garbage\t00000000\n");
    std::fs::write(&jpath, text).unwrap();

    let (r, m) = open(dir.path());
    let missing = r.integrity.missing();
    assert_eq!(
        missing[&("c1".into(), "d1".into())],
        BTreeSet::from([d1[0].id, d1[3].id])
    );
    assert_eq!(
        missing[&("c2".into(), "d2".into())],
        BTreeSet::from([d2[1].id])
    );
    assert_eq!(m.store_missing.load(Relaxed), 3);
    assert_eq!(m.journal_damaged.load(Relaxed), 1);
    assert!(m.render(0).contains("pleura_hub_store_missing_results 3"));
    // Their holdings lack them too (what anti-entropy compares).
    assert_eq!(r.holdings.of("c1", "d1").total(), 2);

    commit(&r, &d1[..1]);
    assert_eq!(m.store_missing.load(Relaxed), 2);
    commit(&r, &[d1[3].clone(), d2[1].clone()]);
    assert_eq!(m.store_missing.load(Relaxed), 0);
    assert!(r.integrity.missing().is_empty());
    drop(r);
    let (r, m) = open(dir.path());
    assert_eq!(m.store_missing.load(Relaxed), 0);
    assert_eq!(r.store.count().unwrap(), 7);
}

#[test]
fn a_store_from_before_the_journal_is_journaled_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let recs: Vec<_> = (0..5)
        .map(|_| sample_record("c1", "d1", 1, false))
        .collect();
    {
        let s = SledStore::open(dir.path()).unwrap();
        s.commit(&recs, 1).unwrap();
    }
    let (r, m) = open(dir.path());
    assert_eq!(m.store_missing.load(Relaxed), 0);
    drop(r);
    assert_eq!(
        journal::read(&dir.path().join(JOURNAL_FILE))
            .unwrap()
            .lines
            .len(),
        5
    );
    lose(dir.path(), &[recs[2].id]);
    let (_r, m) = open(dir.path());
    assert_eq!(m.store_missing.load(Relaxed), 1);
}

#[test]
fn an_unopenable_store_is_set_aside_and_everything_it_held_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let recs: Vec<_> = (0..3)
        .map(|_| sample_record("c1", "d1", 1, false))
        .collect();
    let (r, _) = open(dir.path());
    commit(&r, &recs);
    r.store
        .retract(&[Retraction {
            id: recs[0].id,
            clinic: "c1".into(),
            device: "d1".into(),
            reason: "wrong patient".into(),
            at_ms: 3,
        }])
        .unwrap();
    r.integrity
        .retracted(&r.store.scan().unwrap().retractions)
        .unwrap();
    drop(r);
    // Not even a folder any more.
    let store = dir.path().join(STORE_DIR);
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::write(&store, b"garbage").unwrap();

    let (r, m) = open(dir.path());
    let aside = r.integrity.report.set_aside.clone().unwrap();
    assert!(aside
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("cases.sled.damaged-"));
    assert_eq!(std::fs::read(&aside).unwrap(), b"garbage");
    assert_eq!(m.store_set_aside.load(Relaxed), 1);
    assert_eq!(m.store_missing.load(Relaxed), 3);
    assert_eq!(r.store.count().unwrap(), 0);
    // The retraction is restored from the journal and applies when the result is back.
    commit(&r, &recs);
    assert_eq!(m.store_missing.load(Relaxed), 0);
    let listed = r.store.list(&CaseFilter::everything()).unwrap().cases;
    assert_eq!(listed.iter().filter(|c| c.retraction.is_some()).count(), 1);
}

#[test]
fn a_line_torn_by_a_crash_does_not_swallow_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let recs: Vec<_> = (0..3)
        .map(|_| sample_record("c1", "d1", 1, false))
        .collect();
    let (r, _) = open(dir.path());
    commit(&r, &recs[..2]);
    drop(r);
    let jpath = dir.path().join(JOURNAL_FILE);
    let mut text = std::fs::read(&jpath).unwrap();
    text.extend_from_slice(b"C 0011");
    std::fs::write(&jpath, text).unwrap();

    let (r, m) = open(dir.path());
    assert!(r.integrity.report.journal_torn_tail);
    commit(&r, &recs[2..]);
    drop(r);
    lose(dir.path(), &[recs[2].id]);
    let (r, m2) = open(dir.path());
    assert_eq!(m.journal_damaged.load(Relaxed), 0);
    assert_eq!(m2.journal_damaged.load(Relaxed), 0);
    assert_eq!(
        r.integrity
            .missing()
            .into_values()
            .flatten()
            .collect::<Vec<_>>(),
        vec![recs[2].id]
    );
}

#[test]
fn a_retraction_that_no_longer_decodes_neither_stops_the_start_nor_listings() {
    let dir = tempfile::tempdir().unwrap();
    let recs: Vec<_> = (0..2)
        .map(|_| sample_record("c1", "d1", 1, false))
        .collect();
    let (r, _) = open(dir.path());
    commit(&r, &recs);
    let retraction = Retraction {
        id: recs[0].id,
        clinic: "c1".into(),
        device: "d1".into(),
        reason: "wrong patient".into(),
        at_ms: 3,
    };
    r.store.retract(std::slice::from_ref(&retraction)).unwrap();
    r.integrity
        .retracted(std::slice::from_ref(&retraction))
        .unwrap();
    drop(r);
    {
        let db = pleura_shared::sled_open::open_path(dir.path().join(STORE_DIR)).unwrap();
        let t = db.open_tree("retractions").unwrap();
        let (k, _) = t.iter().next().unwrap().unwrap();
        t.insert(k, b"\xff not json".to_vec()).unwrap();
        db.flush().unwrap();
    }

    // The hub starts, counts the damaged value and restores it from the journal.
    let (r, m) = open(dir.path());
    assert_eq!(m.corrupt_cases.load(Relaxed), 1);
    assert_eq!(m.store_missing.load(Relaxed), 0);
    let listing = r.store.list(&CaseFilter::everything()).unwrap();
    assert_eq!(listing.cases.len(), 2);
    assert_eq!(
        r.store.retraction(&recs[0].id, "c1", "d1").unwrap(),
        Some(retraction)
    );
    assert_eq!(
        listing
            .cases
            .iter()
            .filter(|c| c.retraction.is_some())
            .count(),
        1
    );
}
