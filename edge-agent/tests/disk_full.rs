//! A full disk under the data folder, mid-write and at start (the outside chaos test
//! lost a result this way: the failed flush left the id in sled's memory, the next
//! poll said "already queued", the scan moved to processed/, and a restart lost it).
//! The real `edge-agent` binary on a small real tmpfs, killed with SIGKILL.

use std::path::Path;
use std::time::{Duration, Instant};

// Shared helpers; not every one is used here.
#[allow(dead_code)]
#[path = "intake_hardening/harness.rs"]
mod harness;
#[path = "support/mount.rs"]
mod mount;
use harness::*;

fn scan_bytes(i: usize) -> Vec<u8> {
    let mut b = std::fs::read(fixture("pocus_pneu_emdocs1.png")).unwrap();
    b.extend_from_slice(format!("copy {i}").as_bytes());
    b
}

/// Fills the filesystem of `dir` to the last byte.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    for n in [4096, 512, 64, 1] {
        while f.write_all(&chunk[..n]).is_ok() {}
    }
    let _ = f.sync_all();
    p
}

fn kill9(a: &mut Agent) {
    if let Some(mut c) = a.child.take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

fn pending(a: &Agent) -> u64 {
    let out = agent(&["status", "--json", "--config", a.config.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["outbox"]["pending"].as_u64().unwrap_or(0)
}

#[test]
fn a_full_disk_loses_no_result_and_does_not_stop_the_agent() {
    let mut a = Agent::new("");
    let Some(_m) = mount::Mount::tmpfs(&a.data(), "16m") else {
        return;
    };
    a.start();
    std::fs::write(a.inbox().join("first_R1.png"), scan_bytes(0)).unwrap();
    a.wait_for("the first scan", |s| u(s, "analysed") == 1);

    // The disk fills; three scans arrive.
    let filler = fill(&a.data());
    for i in 1..=3 {
        std::fs::write(a.inbox().join(format!("s{i}_L2.png")), scan_bytes(i)).unwrap();
    }
    std::thread::sleep(Duration::from_secs(4));
    // None of them may have left the inbox without its result on disk.
    kill9(&mut a);
    let left = std::fs::read_dir(a.inbox()).unwrap().count();

    // Started again on the still-full disk: it runs (degraded), it does not exit.
    a.start();
    std::thread::sleep(Duration::from_secs(5));
    let c = a.child.as_mut().unwrap();
    assert!(
        c.try_wait().unwrap().is_none(),
        "the agent must start on a full disk:\n{}",
        a.log()
    );
    assert!(
        a.log().to_lowercase().contains("disk full"),
        "the full disk is named:\n{}",
        a.log()
    );

    // Room again: everything is taken in and queued.
    std::fs::remove_file(&filler).unwrap();
    let end = Instant::now() + Duration::from_secs(90);
    while std::fs::read_dir(a.inbox()).unwrap().count() > 0 {
        assert!(
            Instant::now() < end,
            "scans stuck in the inbox:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    kill9(&mut a);
    assert_eq!(
        pending(&a),
        4,
        "every result survives the full disk and a SIGKILL ({left} were still in the inbox when the disk was full):\n{}",
        a.log()
    );
}
