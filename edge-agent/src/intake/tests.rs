use super::*;
use pleura_inference::InferencePool;
use std::sync::atomic::Ordering;

#[test]
fn zones_and_ids() {
    assert_eq!(
        zone_from_name(Path::new("in/p7/scan_r2.mp4")).as_deref(),
        Some("R2")
    );
    assert_eq!(zone_from_name(Path::new("in/clip.mp4")), None);
    let p1 = [1u8; 16];
    let a = result_id("c", "d", Some(&p1), Some("R1"), b"scan");
    assert_eq!(a, result_id("c", "d", Some(&p1), Some("R1"), b"scan"));
    assert_ne!(a, result_id("c", "d2", Some(&p1), Some("R1"), b"scan"));
    assert_ne!(a, result_id("c", "d", Some(&p1), Some("R1"), b"scan2"));
    // The same bytes are another result under another patient, zone, or none.
    assert_ne!(
        a,
        result_id("c", "d", Some(&[2u8; 16]), Some("R1"), b"scan")
    );
    assert_ne!(a, result_id("c", "d", Some(&p1), Some("R2"), b"scan"));
    assert_ne!(a, result_id("c", "d", None, Some("R1"), b"scan"));
    assert_ne!(a, result_id("c", "d", Some(&p1), None, b"scan"));
    // Fields cannot run into each other.
    assert_ne!(
        result_id("cd", "", None, None, b""),
        result_id("c", "d", None, None, b"")
    );
}

pub(super) fn intake(dir: &Path, quota: u64) -> (Intake, Arc<crate::outbox::SledOutbox>) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    pleura_inference::backend::init(&pleura_inference::BackendConfig::default()).unwrap();
    let model = pleura_inference::ModelFile::load(&root.join("models/pleura-lite.onnx")).unwrap();
    let pool = InferencePool::start(&model, Default::default()).unwrap();
    let mut cfg: EdgeConfig = toml::from_str(&EdgeConfig::example()).unwrap();
    cfg.inbox = dir.join("inbox");
    cfg.data_dir = dir.join("data");
    cfg.quota_bytes = quota;
    std::fs::create_dir_all(&cfg.inbox).unwrap();
    let outbox = Arc::new(crate::outbox::SledOutbox::open(&cfg.data_dir, quota).unwrap());
    let i = Intake {
        cfg,
        pool: Arc::new(crate::models::LivePool::new(Arc::new(pool), 0)),
        outbox: outbox.clone(),
        key: std::sync::Arc::new(PseudonymKey::generate()),
        status: Arc::default(),
        queued: Arc::default(),
        abandoned: Arc::default(),
        scan_log: None,
        media: None,
    };
    (i, outbox)
}

pub(super) fn place_of(i: &Intake, path: &Path) -> Place {
    let top = open_inbox(&i.cfg.inbox).unwrap();
    match open_place(&top, &i.cfg.inbox, path, None) {
        Ok(p) => p,
        Err(_) => panic!("no place"),
    }
}

/// Drops a copy of a PNG scan at `rel` below the inbox (its folder made) and takes it
/// in as the intake would.
pub(super) async fn take_in(i: &Arc<Intake>, rel: &str) -> Outcome {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let scan = i.cfg.inbox.join(rel);
    std::fs::create_dir_all(scan.parent().unwrap()).unwrap();
    std::fs::copy(root.join("fixtures/scans/pocus_pneu_emdocs1.png"), &scan).unwrap();
    let r = i.scan_ref(&scan);
    let attempts = Attempts::load(i.cfg.attempts_file());
    let at = place_of(i, &scan);
    i.process(at, &scan, None, &r, SystemTime::now(), &attempts)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_never_uses_up_a_good_scans_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let (i, outbox) = intake(dir.path(), 64 * 1024);
    let i = Arc::new(i);
    let mut n = 0u64;
    loop {
        let mut r = pleura_shared::record::sample_record("clinic-a", "pi-1", 1, false);
        r.analysed_at_ms = n;
        n += 1;
        if outbox.put(&r).is_err() {
            break;
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let scan = i.cfg.inbox.join("scan_R1.png");
    std::fs::copy(root.join("fixtures/scans/pocus_pneu_emdocs1.png"), &scan).unwrap();
    let r = i.scan_ref(&scan);
    let attempts = Attempts::load(i.cfg.attempts_file());
    for _ in 0..2 * i.cfg.intake.max_attempts {
        let at = place_of(&i, &scan);
        let o = i
            .process(at, &scan, None, &r, SystemTime::now(), &attempts)
            .await;
        assert!(matches!(o, Outcome::Quota));
        assert_eq!(attempts.get(&r), 0);
    }
    assert!(scan.exists(), "the scan waits in the inbox");
    assert_eq!(i.status.snapshot().intake.rejected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_keeps_failing_goes_to_rejected_after_its_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let (i, _outbox) = intake(dir.path(), 1 << 20);
    let i = Arc::new(i);
    let scan = i.cfg.inbox.join("scan_R1.png");
    std::fs::write(&scan, b"x").unwrap();
    let r = i.scan_ref(&scan);
    let attempts = Attempts::load(i.cfg.attempts_file());
    // Attempts left by runs that died while analysing it.
    for _ in 0..i.cfg.intake.max_attempts {
        attempts.begin(&r).unwrap();
    }
    let at = place_of(&i, &scan);
    let o = i
        .process(at, &scan, None, &r, SystemTime::now(), &attempts)
        .await;
    assert!(matches!(o, Outcome::Done));
    assert!(!scan.exists());
    let reason =
        std::fs::read_to_string(i.cfg.rejected_dir().join("scan_R1.png.reason.txt")).unwrap();
    assert!(reason.contains("interrupted"), "{reason}");
    assert_eq!(Attempts::load(i.cfg.attempts_file()).get(&r), 0);
    assert_eq!(i.status.snapshot().intake.rejected_after_attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_folder_swapped_for_a_link_is_never_followed_read_or_moved() {
    let dir = tempfile::tempdir().unwrap();
    let (i, _outbox) = intake(dir.path(), 1 << 20);
    let i = Arc::new(i);
    // The real target: the agent's own key in its data folder.
    let key_file = i.cfg.data_dir.join("pseudonym.key");
    std::fs::write(&key_file, b"the real key").unwrap();
    let zz = i.cfg.inbox.join("zz");
    std::fs::create_dir(&zz).unwrap();
    std::fs::write(zz.join("pseudonym.key"), b"decoy").unwrap();
    let attempts = Attempts::load(i.cfg.attempts_file());
    let (entries, top) = i.list().await.unwrap();
    // Seen twice: stable, so this pass would read and move it.
    let mut seen = HashMap::new();
    for l in &entries {
        if let Entry::File {
            path, size, mtime, ..
        } = &l.entry
        {
            seen.insert(path.clone(), (*size, *mtime));
        }
    }
    assert_eq!(seen.len(), 1);
    // The swap, between the listing and the open.
    std::fs::remove_dir_all(&zz).unwrap();
    std::os::unix::fs::symlink(&i.cfg.data_dir, &zz).unwrap();
    for l in entries {
        let o = i.take(&top, l, &seen, &mut HashMap::new(), &attempts).await;
        assert!(matches!(o, Some(Outcome::Gone)), "judged afresh next round");
    }
    assert_eq!(std::fs::read(&key_file).unwrap(), b"the real key");
    // The next pass sees the link itself and sets the link (not its target) aside.
    let (entries, top) = i.list().await.unwrap();
    for l in entries {
        let o = i
            .take(&top, l, &HashMap::new(), &mut HashMap::new(), &attempts)
            .await;
        assert!(matches!(o, Some(Outcome::Done)));
    }
    assert_eq!(std::fs::read(&key_file).unwrap(), b"the real key");
    let moved = std::fs::symlink_metadata(i.cfg.rejected_dir().join("zz")).unwrap();
    assert!(moved.file_type().is_symlink());
    assert!(zz.symlink_metadata().is_err());
    assert_eq!(i.status.snapshot().intake.analysed, 0);
}

#[tokio::test]
async fn the_analysis_deadline_stops_waiting_and_reports_while_it_waits() {
    // An injected job that never ends stands for a scan that decodes for minutes.
    let mut ticks = Vec::new();
    let w = wait_with_deadline(
        Box::pin(std::future::pending::<u32>()),
        Duration::from_millis(60),
        Duration::from_millis(10),
        |e| ticks.push(e),
    )
    .await;
    assert!(matches!(w, Waited::TimedOut(_)));
    assert!(!ticks.is_empty(), "status is refreshed during the wait");
    let w = wait_with_deadline(
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            7u32
        }),
        Duration::from_secs(600),
        Duration::from_millis(5),
        |_| {},
    )
    .await;
    assert!(matches!(w, Waited::Done(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_scan_raises_an_alarm_and_a_held_pool_never_costs_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let (mut i, _outbox) = intake(dir.path(), 1 << 20);
    i.cfg.intake.max_analysis_s = 1;
    i.show_analysing("abcd", Some(Duration::from_secs(2)));
    let s = i.status.snapshot();
    assert!(
        s.alarms
            .iter()
            .any(|a| a.starts_with("scan abcd in analysis for 2 s")),
        "{:?}",
        s.alarms
    );
    assert_eq!(s.intake.analysing.as_deref(), Some("abcd for 2 s"));
    i.show_analysing("abcd", None);
    let s = i.status.snapshot();
    assert!(s.alarms.is_empty() && s.intake.analysing.is_none());
    // Every worker held by a given-up analysis: the next scan waits, uncharged.
    i.abandoned.store(i.cfg.inference.workers, Ordering::SeqCst);
    let i = Arc::new(i);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let scan = i.cfg.inbox.join("scan_R1.png");
    std::fs::copy(root.join("fixtures/scans/pocus_pneu_emdocs1.png"), &scan).unwrap();
    let r = i.scan_ref(&scan);
    let attempts = Attempts::load(i.cfg.attempts_file());
    let at = place_of(&i, &scan);
    let o = i
        .process(at, &scan, None, &r, SystemTime::now(), &attempts)
        .await;
    assert!(matches!(o, Outcome::Busy));
    assert_eq!(attempts.get(&r), 0);
    assert!(scan.exists());
}

/// An inbox on another filesystem than the data folder (/dev/shm is tmpfs), or None.
fn inbox_elsewhere() -> Option<tempfile::TempDir> {
    let shm = tempfile::tempdir_in("/dev/shm").ok();
    let here = std::fs::metadata(std::env::temp_dir()).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.dev()
    });
    match shm {
        Some(s)
            if std::fs::metadata(s.path()).ok().map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.dev()
            }) != here =>
        {
            Some(s)
        }
        _ => {
            assert!(
                std::env::var("PLEURA_REQUIRE_MOUNT").as_deref() != Ok("1"),
                "PLEURA_REQUIRE_MOUNT=1 but /dev/shm and the temp folder are one filesystem"
            );
            eprintln!("SKIPPED: /dev/shm and the temp folder are one filesystem here");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_on_another_filesystem_is_moved_once_and_a_kept_one_skipped() {
    let Some(shm) = inbox_elsewhere() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (mut i, outbox) = intake(dir.path(), 1 << 20);
    i.cfg.inbox = shm.path().join("inbox");
    std::fs::create_dir_all(i.cfg.inbox.join("p1")).unwrap();
    let i = Arc::new(i);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let scan = i.cfg.inbox.join("p1/scan_R1.png");
    std::fs::copy(root.join("fixtures/scans/pocus_pneu_emdocs1.png"), &scan).unwrap();
    let r = i.scan_ref(&scan);
    let attempts = Attempts::load(i.cfg.attempts_file());
    let at = place_of(&i, &scan);
    let o = i
        .process(at, &scan, None, &r, SystemTime::now(), &attempts)
        .await;
    assert!(
        matches!(o, Outcome::Done),
        "rename fails with EXDEV: copied"
    );
    assert!(!scan.exists(), "removed from the inbox");
    let moved: Vec<_> = std::fs::read_dir(i.cfg.processed_dir().join("p1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(moved[0].to_string_lossy().ends_with("scan_R1.png"));
    assert_eq!(
        std::fs::read(&moved[0]).unwrap(),
        std::fs::read(root.join("fixtures/scans/pocus_pneu_emdocs1.png")).unwrap()
    );
    assert_eq!(i.status.snapshot().intake.analysed, 1);
    assert_eq!(outbox.stats().unwrap().pending, 1);

    // One that could not be removed (a read-only share) is listed and then skipped.
    let kept = i.cfg.inbox.join("p1/scan_L2.png");
    std::fs::copy(root.join("fixtures/scans/pocus_pneu_emdocs1.png"), &kept).unwrap();
    let stamp = inbox::Stamp::of(&std::fs::symlink_metadata(&kept).unwrap());
    i.keep_in_inbox(&kept, stamp, "Read-only file system (os error 30)")
        .unwrap();
    let (entries, top) = i.list().await.unwrap();
    assert_eq!(entries.len(), 1);
    let seen: HashMap<PathBuf, (u64, SystemTime)> = entries
        .iter()
        .filter_map(|l| match &l.entry {
            Entry::File {
                path, size, mtime, ..
            } => Some((path.clone(), (*size, *mtime))),
            _ => None,
        })
        .collect();
    for l in entries {
        let o = i.take(&top, l, &seen, &mut HashMap::new(), &attempts).await;
        assert!(o.is_none(), "skipped, though stable");
    }
    let s = i.status.snapshot();
    assert_eq!(s.intake.analysed, 1, "not analysed again");
    assert!(
        s.alarms
            .iter()
            .any(|a| a.contains("cannot be removed") && a.contains("read-only share?")),
        "{:?}",
        s.alarms
    );
    // New content under the same name is a new scan.
    std::fs::write(&kept, b"new").unwrap();
    let e = list_inbox(&i.cfg.inbox).unwrap().remove(0);
    assert!(!i.left_in_inbox(&i.scan_ref(e.path()), &e));
}
