//! The outside chaos test's finding: one flipped byte in `outbox.sled` and 39 of 100
//! queued results never arrived; the agent started normally and said "0 corrupt".
//! Here the real agent queues scans (its hub unreachable), is killed with SIGKILL, its
//! store is damaged, and it is started again: it must say so, and rebuild every lost
//! result from its scan in processed/.

use std::path::{Path, PathBuf};

// Shared helpers; not every one is used here.
#[allow(dead_code)]
#[path = "intake_hardening/harness.rs"]
mod harness;
use harness::*;

fn scan_bytes(i: usize) -> Vec<u8> {
    let mut b = std::fs::read(fixture("pocus_pneu_emdocs1.png")).unwrap();
    b.extend_from_slice(format!("copy {i}").as_bytes());
    b
}

fn kill9(a: &mut Agent) {
    if let Some(mut c) = a.child.take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

fn largest_file(dir: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if best.as_ref().is_none_or(|(n, _)| m.len() > *n) {
                best = Some((m.len(), e.path()));
            }
        }
    }
    best.unwrap().1
}

fn damage_and_restart(truncate: bool) {
    const N: usize = 8;
    let mut a = Agent::new("");
    a.start();
    for i in 0..N {
        std::fs::write(
            a.inbox().join(format!("s{i}_R{}.png", 1 + i % 6)),
            scan_bytes(i),
        )
        .unwrap();
    }
    a.wait_for("every scan analysed", |s| u(s, "analysed") == N as u64);
    kill9(&mut a);

    let db = largest_file(&a.data().join("outbox.sled"));
    let mut bytes = std::fs::read(&db).unwrap();
    // sled's segments are preallocated: damage the part in use.
    let used = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
    if truncate {
        bytes.truncate(used * 6 / 10);
    } else {
        // Mid-log: sled drops everything after the first bad checksum.
        bytes[used / 2] ^= 0x5a;
    }
    std::fs::write(&db, &bytes).unwrap();

    a.start();
    let pid = u64::from(a.child.as_ref().unwrap().id());
    let s = a.wait_for("every result queued again", |s| {
        s["pid"].as_u64() == Some(pid)
            && s["outbox"]["pending"].as_u64() == Some(N as u64)
            && s["outbox"]["lost_pending"] == 0
    });
    let alarms = s["alarms"].to_string();
    let damaged = s["outbox"]["damage"].as_str().map(str::to_string);
    eprintln!("damage reported: {damaged:?}");
    a.stop();
    let shown = a.status_cli(false);
    // What the chaos test saw go unnoticed is said: in the log, status.json, `status`.
    let d = damaged.expect("the loss is reported");
    assert!(d.contains("queued result(s) lost"), "{d}");
    assert!(alarms.contains("outbox store damaged"), "{alarms}");
    assert!(
        a.log()
            .contains("the outbox store holds less than its journal"),
        "{d}"
    );
    assert!(shown.contains("damaged"), "{shown}");
    // Nothing lost at the edge: every scan's result is queued (ids match processed/).
    let processed = listing(&a.data().join("processed"));
    assert_eq!(processed.iter().filter(|p| p.ends_with(".png")).count(), N);
}

#[test]
fn flipped_bytes_in_the_outbox_are_detected_and_rebuilt() {
    damage_and_restart(false);
}

#[test]
fn a_truncated_outbox_is_detected_and_rebuilt() {
    damage_and_restart(true);
}
