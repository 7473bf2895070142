//! An inbox on another filesystem than the data folder (a clinic mounting the
//! device's export share): rename fails with EXDEV, so each scan must be copied,
//! synced and removed, analysed exactly once, never looped on. And on a read-only
//! share, where the copy cannot be removed, taken in once and then skipped, with an
//! alarm that says so. The real `edge-agent` binary, real filesystems.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

// Shared helpers; not every one is used here.
#[allow(dead_code)]
#[path = "intake_hardening/harness.rs"]
mod harness;
#[path = "support/mount.rs"]
mod mount;
use harness::*;

const PATIENT: &str = "DOE^JANE_MRN123456";

/// `n` distinct scans (the same PNG with different trailing bytes: other ids, same
/// picture), half in a patient folder.
fn drop_scans(inbox: &Path, n: usize) -> Vec<PathBuf> {
    let png = std::fs::read(fixture("pocus_pneu_emdocs1.png")).unwrap();
    std::fs::create_dir_all(inbox.join(PATIENT)).unwrap();
    (0..n)
        .map(|i| {
            let mut bytes = png.clone();
            bytes.extend_from_slice(format!("copy {i}").as_bytes());
            let p = if i % 2 == 0 {
                inbox.join(PATIENT).join(format!("scan{i}_L1.png"))
            } else {
                inbox.join(format!("scan{i}_R1.png"))
            };
            std::fs::write(&p, bytes).unwrap();
            p
        })
        .collect()
}

/// Points the agent's configuration at another inbox.
fn use_inbox(a: &Agent, inbox: &Path) {
    let cfg = std::fs::read_to_string(&a.config).unwrap();
    let old = format!("inbox = \"{}\"", a.inbox().display());
    assert!(cfg.contains(&old));
    let cfg = cfg.replace(&old, &format!("inbox = \"{}\"", inbox.display()));
    std::fs::write(&a.config, cfg).unwrap();
}

/// Waits for `cond` on the status file, at most `secs`.
fn wait(a: &mut Agent, secs: u64, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = a.status();
        if cond(&s) {
            return s;
        }
        if let Some(code) = a.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("agent exited ({code}) waiting for {what}:\n{}", a.log());
        }
        if Instant::now() > end {
            let log = a.log();
            a.stop();
            panic!("timed out waiting for {what}; status {s:#}\nlog:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    listing(dir)
        .into_iter()
        .filter(|p| dir.join(p).is_file())
        .collect()
}

#[test]
fn scans_on_another_filesystem_are_analysed_exactly_once_and_leave_the_inbox() {
    let mut a = Agent::new("");
    std::fs::create_dir_all(a.data()).unwrap();
    // /dev/shm (tmpfs) when the temp folder is another filesystem, else a mount.
    let shm = tempfile::tempdir_in("/dev/shm").ok();
    let mut _mounted = None;
    let inbox = match &shm {
        Some(s) if !mount::same_fs(s.path(), &a.data()) => {
            let i = s.path().join("inbox");
            std::fs::create_dir(&i).unwrap();
            use_inbox(&a, &i);
            i
        }
        _ => match mount::Mount::tmpfs(&a.inbox(), "64m") {
            Some(m) => {
                _mounted = Some(m);
                a.inbox()
            }
            None => return,
        },
    };
    assert!(!mount::same_fs(&inbox, &a.data()), "two filesystems");
    let n = 10;
    drop_scans(&inbox, n);

    a.start();
    let s = wait(&mut a, 90, "every scan analysed", |s| {
        u(s, "analysed") >= n as u64
    });
    assert_eq!(u(&s, "rejected"), 0, "{s:#}");
    // Thirty polls later: nothing analysed again, nothing left behind.
    std::thread::sleep(Duration::from_secs(3));
    let s = a.status();
    assert_eq!(u(&s, "analysed"), n as u64, "analysed exactly once: {s:#}");
    assert_eq!(s["outbox"]["pending"], n as u64, "{s:#}");
    assert_eq!(
        listing(&inbox),
        vec![PATIENT.to_string()],
        "the inbox ends empty"
    );
    let processed = files_under(&a.data().join("processed"));
    assert_eq!(processed.len(), n, "{processed:?}");
    assert!(processed.iter().all(|p| !p.contains(".pleura-copy")));
    a.stop();
    let log = a.log();
    assert_eq!(
        log.matches("scan analysed and queued").count(),
        n,
        "one analysis per scan:\n{log}"
    );
    assert!(!log.contains(PATIENT), "{log}");
}

#[test]
fn a_read_only_share_is_taken_in_once_then_skipped_with_an_alarm() {
    let mut a = Agent::new("");
    let share = a.dir.path().join("share");
    let Some(m) = mount::Mount::tmpfs(&share, "16m") else {
        return;
    };
    let n = 3;
    drop_scans(&share, n);
    if !m.read_only() {
        mount::skip("remounting the tmpfs read-only failed");
        return;
    }
    use_inbox(&a, &share);
    a.start();
    wait(&mut a, 90, "every scan analysed", |s| {
        u(s, "analysed") >= n as u64
    });
    let s = wait(&mut a, 20, "the read-only alarm", |s| {
        s["alarms"].to_string().contains("read-only share?")
    });
    std::thread::sleep(Duration::from_secs(3));
    let s2 = a.status();
    assert_eq!(u(&s2, "analysed"), n as u64, "taken in once: {s2:#}");
    assert_eq!(s2["outbox"]["pending"], n as u64);
    assert_eq!(files_under(&a.data().join("processed")).len(), n);
    assert_eq!(files_under(&share).len(), n, "still on the share");
    let human = a.status_cli(false);
    assert!(
        human.contains("ALARM")
            && human.contains("cannot be removed")
            && human.contains("read-only share?"),
        "{human}\n{s:#}"
    );
    a.stop();
    assert_eq!(a.log().matches("scan analysed and queued").count(), n);

    // After a restart they are still skipped, and the alarm comes back.
    let old_pid = s2["pid"].clone();
    a.start();
    wait(&mut a, 60, "the alarm after a restart", |s| {
        s["pid"] != old_pid && s["alarms"].to_string().contains("read-only share?")
    });
    std::thread::sleep(Duration::from_secs(2));
    a.stop();
    assert_eq!(
        a.log().matches("scan analysed and queued").count(),
        0,
        "{}",
        a.log()
    );
    drop(m);
}
