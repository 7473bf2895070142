//! What the operator sees: the agent's default log (one info line per scan, at start
//! and stop, no patient names or paths), and `edge-agent status` that is persistent
//! (counters since installation), current (a full disk is named while the agent keeps
//! running and keeps its status fresh) and specific (a stopped agent says so and why
//! its outbox cannot be opened). The real binary on real files.

use std::io::Write;
use std::process::{Command, Stdio};
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

/// Starts the agent as an operator would: no RUST_LOG.
fn start_default_logging(a: &mut Agent) {
    let log = |n: &str| std::fs::File::create(a.dir.path().join(n)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .current_dir(root())
        .args(["run", "--config", a.config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(log("stdout.log")))
        .stderr(Stdio::from(log("stderr.log")))
        .spawn()
        .unwrap();
    a.child = Some(child);
}

/// A scan with its own bytes (its own result id).
fn drop_scan(dir: &std::path::Path, name: &str, tag: u32) {
    let mut png = std::fs::read(fixture("pocus_pneu_emdocs1.png")).unwrap();
    png.extend_from_slice(format!("tag {tag}").as_bytes());
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

/// The key made in advance, as an installation has it (its creation is logged with
/// its path, which is not what this test looks at).
fn with_key(a: &Agent) {
    std::fs::create_dir_all(a.data()).unwrap();
    std::fs::write(a.data().join("pseudonym.key"), [7u8; 32]).unwrap();
}

fn info_lines(log: &str, target: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(" INFO ") && l.contains(target))
        .count()
}

#[test]
fn by_default_the_daemon_logs_each_scan_at_info_without_names_or_paths() {
    let mut a = Agent::new("");
    with_key(&a);
    let patient = a.inbox().join(PATIENT);
    drop_scan(&patient, "scan_R2.png", 1);
    drop_scan(&patient, "scan_L1.png", 2);
    start_default_logging(&mut a);
    a.wait_for("both scans analysed", |s| u(s, "analysed") == 2);
    // Idle: no intake or daemon line in a loop.
    std::thread::sleep(Duration::from_millis(300));
    let before = a.log();
    std::thread::sleep(Duration::from_secs(3));
    let idle = a.log();
    for t in [
        "edge_agent::intake",
        "edge_agent::daemon",
        "edge_agent::status",
    ] {
        assert_eq!(
            info_lines(&before, t),
            info_lines(&idle, t),
            "{t} logs while idle:\n{idle}"
        );
    }
    a.stop();
    let log = a.log();
    assert_eq!(
        log.matches("scan analysed and queued").count(),
        2,
        "one info line per scan by default:\n{log}"
    );
    assert!(log.contains("agent running"), "{log}");
    assert!(log.contains("agent stopped"), "{log}");
    let inbox = a.inbox().display().to_string();
    for phi in [
        PATIENT,
        "DOE^JANE",
        "MRN123456",
        "scan_R2",
        "scan_L1",
        &inbox,
    ] {
        assert!(!log.contains(phi), "the log names {phi:?}:\n{log}");
    }
    // RUST_LOG still decides when set.
    a.start();
    a.wait_for("restarted", |s| s["pid"].as_u64() != Some(0));
    a.stop();
}

#[test]
fn counters_count_since_installation_across_restarts() {
    let mut a = Agent::new("");
    drop_scan(&a.inbox(), "first_R1.png", 1);
    a.start();
    let s = a.wait_for("the first scan analysed", |s| u(s, "analysed") == 1);
    let pid = s["pid"].clone();
    a.stop();
    drop_scan(&a.inbox(), "second_R1.png", 2);
    a.start();
    // The second scan has left the inbox: analysed by the new process.
    let end = Instant::now() + Duration::from_secs(90);
    while a.inbox().join("second_R1.png").exists() {
        assert!(Instant::now() < end, "second scan not taken:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = a.wait_for("the new process's status", |s| {
        s["pid"] != pid && s["outbox"]["pending"].as_u64() == Some(2)
    });
    assert_eq!(u(&s, "analysed"), 2, "counted since installation: {s:#}");
    let human = a.status_cli(false);
    assert!(human.contains("2 analysed"), "{human}");
    assert!(human.contains("since installation"), "{human}");
    a.stop();
    // Stopped: the counters are still the installation's.
    let human = a.status_cli(false);
    assert!(human.contains("2 analysed"), "{human}");
}

#[test]
fn a_stopped_agent_says_not_running_and_why_its_outbox_cannot_open() {
    let mut a = Agent::new("");
    drop_scan(&a.inbox(), "first_R1.png", 1);
    a.start();
    a.wait_for("a scan analysed", |s| u(s, "analysed") == 1);
    a.stop();
    // Its last status, as a crash could leave it: live state that is no longer true.
    let path = a.data().join("status.json");
    let mut st: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    st["sync"]["mqtt_connected"] = true.into();
    st["sync"]["state"] = "sending".into();
    st["intake"]["analysing"] = "0123abcd for 3 s".into();
    st["alarms"] = serde_json::json!([]);
    std::fs::write(&path, serde_json::to_vec(&st).unwrap()).unwrap();
    let human = a.status_cli(false);
    assert!(human.contains("NOT RUNNING"), "{human}");
    assert!(!human.contains("alarms     none"), "{human}");
    assert!(
        !human.contains("analysing"),
        "stale live state shown: {human}"
    );
    assert!(
        !human.contains("reachable via") || human.contains("unreachable"),
        "{human}"
    );
    // The outbox damaged so that it cannot be opened.
    let store = a.data().join("outbox.sled");
    assert!(store.is_dir(), "the outbox store is {}", store.display());
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::write(&store, b"not a store").unwrap();
    let human = a.status_cli(false);
    assert!(human.contains("NOT RUNNING"), "{human}");
    assert!(
        human.contains("ALARM") && human.contains("outbox cannot be opened"),
        "the failure is shown: {human}"
    );
    let json: Value = serde_json::from_str(&a.status_cli(true)).unwrap();
    assert_eq!(json["running"], false);
    assert_eq!(json["sync"]["mqtt_connected"], false);
    assert!(json["intake"]["analysing"].is_null(), "{json}");
    assert!(
        json["alarms"]
            .to_string()
            .contains("outbox cannot be opened"),
        "{json}"
    );
}

/// Fills the filesystem holding `dir` to the last byte; returns the filler's path.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0xa5u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    // The last partial block.
    while f.write_all(&[0xa5]).is_ok() {}
    let _ = f.sync_all();
    p
}

#[test]
fn a_full_data_disk_is_named_while_the_agent_keeps_running() {
    let mut a = Agent::new("");
    let Some(m) = mount::Mount::tmpfs(&a.data(), "8m") else {
        return;
    };
    // The inbox on the same small filesystem (inside the data folder), so that only
    // the full disk is new here.
    let inbox = a.data().join("inbox");
    let cfg = std::fs::read_to_string(&a.config).unwrap();
    let old = format!("inbox = \"{}\"", a.inbox().display());
    assert!(cfg.contains(&old));
    std::fs::write(
        &a.config,
        cfg.replace(&old, &format!("inbox = \"{}\"", inbox.display())),
    )
    .unwrap();
    drop_scan(&inbox, "first_R1.png", 1);
    a.start();
    a.wait_for("a scan analysed", |s| u(s, "analysed") == 1);
    let human = a.status_cli(false);
    assert!(!human.contains("disk full"), "{human}");
    let filler = fill(&a.data());
    // Named by the agent and by the command, while the agent keeps running.
    let s = a.wait_for("the disk full alarm in status.json", |s| {
        s["alarms"].to_string().contains("disk full")
    });
    assert_eq!(s["disk"]["full"], true, "{s:#}");
    let human = a.status_cli(false);
    assert!(human.contains("ALARM      disk full"), "{human}");
    assert!(human.contains("running, pid"), "{human}");
    assert!(
        !human.contains("has not updated"),
        "status stays current: {human}"
    );
    // Still current seconds later.
    let t0 = s["updated_ms"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let later = a.status();
    assert!(
        later["updated_ms"].as_u64().unwrap() >= t0 + 1000,
        "{later:#}"
    );
    let json: Value = serde_json::from_str(&a.status_cli(true)).unwrap();
    assert_eq!(json["running"], true);
    assert!(json["alarms"].to_string().contains("disk full"), "{json}");
    assert!(
        a.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the agent keeps running:\n{}",
        a.log()
    );
    // Space again: the alarm clears.
    std::fs::remove_file(filler).unwrap();
    a.wait_for("the alarm cleared", |s| {
        !s["alarms"].to_string().contains("disk full")
    });
    a.stop();
    drop(m);
}
