//! The inbox is written by another machine: the real `edge-agent` binary is run over
//! inboxes holding links, FIFOs, sockets, link loops, oversized sparse files and a scan
//! in a folder named after a (synthetic) patient. One bad entry must never stop the
//! others, nothing bad is read, the log names no patient, and the data folder is the
//! agent's alone.
//!
//! Not covered here: permission-denied files (the tests run as root, who reads any
//! file; `ReadScanError::PermissionDenied` counts against the file's attempts like any
//! read error, which `stuck_entries_and_an_unreadable_inbox_raise_alarms` exercises).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const PATIENT: &str = "DOE^JANE_MRN123456";

#[allow(dead_code)]
#[path = "intake_hardening/harness.rs"]
mod harness;
use harness::*;

#[test]
fn hostile_inbox_entries_are_set_aside_and_good_scans_still_analysed() {
    let mut a = Agent::new("");
    let inbox = a.inbox();
    loosen_data_folder(&a);

    let patient = inbox.join(PATIENT);
    std::fs::create_dir(&patient).unwrap();
    std::fs::copy(
        fixture("pocus_pneu_emdocs1.png"),
        patient.join("scan_R2.png"),
    )
    .unwrap();
    // Sorted before the good scans, so a stop on the first bad entry would starve them.
    std::os::unix::fs::symlink("/nonexistent/scan.mp4", inbox.join("a_dangling_L1.mp4")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", inbox.join("a_zero_R1.mp4")).unwrap();
    std::os::unix::fs::symlink(fixture("cb_frame.bmp"), patient.join("a_link_L4.bmp")).unwrap();
    // A folder link looping back to the inbox.
    std::os::unix::fs::symlink(&inbox, inbox.join("a_loop")).unwrap();
    std::os::unix::fs::symlink("..", patient.join("a_up")).unwrap();
    mkfifo(&inbox.join("a_fifo_L2.mp4"));
    let _sock = std::os::unix::net::UnixListener::bind(inbox.join("a_sock")).unwrap();
    let device = mknod_zero(&inbox.join("a_dev_L5.mp4"));
    // A 3 GiB sparse file: no disk used, and it must never be read.
    let big = std::fs::File::create(inbox.join("a_big_L3.mp4")).unwrap();
    big.set_len(3 << 30).unwrap();
    drop(big);
    std::fs::copy(fixture("cb_frame.bmp"), inbox.join("z_plain_L6.bmp")).unwrap();
    let bad = 8 + usize::from(device);

    a.start();
    let s = a.wait_for("every entry handled", |s| {
        u(s, "analysed") >= 2 && u(s, "rejected") >= bad as u64
    });
    assert_eq!(u(&s, "analysed"), 2, "{s:#}");
    assert_eq!(u(&s, "rejected"), bad as u64, "{s:#}");

    // Nothing is left in the inbox but the (now empty) patient folder.
    assert_eq!(listing(&inbox), vec![PATIENT.to_string()]);
    let rejected = a.data().join("rejected");
    let reason = |rel: &str| {
        std::fs::read_to_string(rejected.join(format!("{rel}.reason.txt")))
            .unwrap_or_else(|e| panic!("{rel}: {e}; rejected/ holds {:?}", listing(&rejected)))
    };
    for rel in [
        "a_dangling_L1.mp4",
        "a_zero_R1.mp4",
        "a_loop",
        &format!("{PATIENT}/a_link_L4.bmp"),
        &format!("{PATIENT}/a_up"),
    ] {
        assert!(
            reason(rel).contains("symbolic link"),
            "{rel}: {}",
            reason(rel)
        );
        // The link itself was moved, not what it points to.
        assert!(rejected
            .join(rel)
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink());
    }
    assert!(reason("a_fifo_L2.mp4").contains("FIFO"));
    assert!(reason("a_sock").contains("socket"));
    if device {
        assert!(reason("a_dev_L5.mp4").contains("character device"));
    } else {
        eprintln!("mknod refused here: the device-file case is covered by the unit tests only");
    }
    let r = reason("a_big_L3.mp4");
    assert!(r.contains("3221225472 bytes") && r.contains("limit"), "{r}");
    assert!(
        fixture("cb_frame.bmp").exists(),
        "a link's target is left alone"
    );

    let human = a.status_cli(false);
    assert!(human.contains("alarms     none"), "{human}");
    let json: Value = serde_json::from_str(&a.status_cli(true)).unwrap();
    assert_eq!(json["intake"]["rejected"], bad as u64);
    a.stop();

    assert_no_phi_and_private(&a);
}

#[test]
fn the_debug_flag_logs_paths_only_when_set() {
    let mut a = Agent::new("[intake]\nlog_paths = true\n");
    let patient = a.inbox().join(PATIENT);
    std::fs::create_dir(&patient).unwrap();
    std::fs::copy(
        fixture("pocus_pneu_emdocs1.png"),
        patient.join("scan_R2.png"),
    )
    .unwrap();
    a.start();
    a.wait_for("the scan analysed", |s| u(s, "analysed") == 1);
    a.stop();
    assert!(a.log().contains(PATIENT), "opted in: paths are logged");
}

#[test]
fn interrupted_analyses_count_across_restarts_and_end_in_rejected() {
    let mut a = Agent::new("[intake]\nmax_attempts = 3\n");
    let patient = a.inbox().join(PATIENT);
    std::fs::create_dir(&patient).unwrap();
    let scan = patient.join("scan_L1.png");
    std::fs::copy(fixture("pocus_pneu_emdocs1.png"), &scan).unwrap();
    let good = a.inbox().join("other_R1.png");
    std::fs::copy(fixture("pocus_pneu_emdocs1.png"), &good).unwrap();
    // As three earlier runs would have left it had each been killed (OOM) mid-analysis:
    // the attempt is written before the file is read.
    std::fs::create_dir_all(a.data()).unwrap();
    let key = pleura_shared::PseudonymKey::generate();
    std::fs::write(a.data().join("pseudonym.key"), key.as_bytes()).unwrap();
    let r = edge_agent::intake::entry_ref(&key, &a.inbox(), &scan);
    std::fs::write(
        a.data().join("intake-attempts.json"),
        serde_json::json!({ r.clone(): 3 }).to_string(),
    )
    .unwrap();

    a.start();
    let s = a.wait_for("the scan set aside", |s| u(s, "rejected") == 1);
    a.wait_for("the other scan analysed", |s| u(s, "analysed") == 1);
    assert_eq!(u(&s, "rejected_after_attempts"), 1);
    let reason = std::fs::read_to_string(
        a.data()
            .join("rejected")
            .join(PATIENT)
            .join("scan_L1.png.reason.txt"),
    )
    .unwrap();
    assert!(reason.contains("3 times"), "{reason}");
    let human = a.status_cli(false);
    assert!(
        human.contains("ALARM") && human.contains("failed or interrupted"),
        "{human}"
    );
    let json: Value = serde_json::from_str(&a.status_cli(true)).unwrap();
    assert!(
        json["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("failed or interrupted")),
        "{json}"
    );
    // Cleared once the file has left the inbox.
    let attempts = std::fs::read_to_string(a.data().join("intake-attempts.json")).unwrap();
    assert!(!attempts.contains(&r), "{attempts}");
}

#[test]
fn stuck_entries_and_an_unreadable_inbox_raise_alarms() {
    let mut a = Agent::new("[intake]\nmax_attempts = 2\n");
    a.start();
    a.wait_for("the agent running", |s| s["pid"].as_u64().unwrap_or(0) > 0);
    // rejected/ replaced by a file: a FIFO can be neither read nor set aside.
    let rejected = a.data().join("rejected");
    let _ = std::fs::remove_dir(&rejected);
    std::fs::write(&rejected, b"not a folder").unwrap();
    mkfifo(&a.inbox().join("a_fifo_L2.mp4"));
    std::fs::copy(
        fixture("pocus_pneu_emdocs1.png"),
        a.inbox().join("b_R1.png"),
    )
    .unwrap();
    let s = a.wait_for("the stuck entry alarmed", |s| {
        u(s, "failing_entries") == 1 && u(s, "analysed") == 1
    });
    assert!(u(&s, "entry_errors") >= 2, "{s:#}");
    let human = a.status_cli(false);
    assert!(
        human.contains("ALARM      inbox: 1 entry keep failing"),
        "{human}"
    );
    assert!(human.contains("FIFO"), "{human}");

    // Free again: the FIFO is set aside and the alarm clears.
    std::fs::remove_file(&rejected).unwrap();
    a.wait_for("the alarm cleared", |s| {
        u(s, "failing_entries") == 0 && u(s, "rejected") == 1
    });

    // The inbox itself unreadable (replaced by a file): alarmed, not silent.
    let inbox = a.inbox();
    std::fs::remove_dir_all(&inbox).unwrap();
    std::fs::write(&inbox, b"").unwrap();
    let s = a.wait_for("the inbox alarm", |s| {
        s["intake"]["inbox_unreadable"] == true
    });
    let alarms = s["alarms"].to_string();
    assert!(alarms.contains("inbox cannot be read"), "{alarms}");
    let human = a.status_cli(false);
    assert!(human.contains("ALARM      inbox cannot be read"), "{human}");
    std::fs::remove_file(&inbox).unwrap();
    std::fs::create_dir(&inbox).unwrap();
    a.wait_for("the inbox alarm cleared", |s| {
        s["intake"]["inbox_unreadable"] == false
            && !s["alarms"].to_string().contains("inbox cannot be read")
    });
}

/// Item 10: the log names no patient, at debug level too. Item 12: nothing in the data
/// folder is open to group or others (links have no mode of their own).
fn assert_no_phi_and_private(a: &Agent) {
    let log = a.log();
    assert!(log.contains("scan analysed and queued"), "{log}");
    for phi in [PATIENT, "DOE^JANE", "MRN123456", "123456"] {
        assert!(!log.contains(phi), "the log contains {phi:?}:\n{log}");
    }
    let mut checked = 0;
    for rel in std::iter::once(String::new()).chain(listing(&a.data())) {
        let p = a.data().join(&rel);
        let m = p.symlink_metadata().unwrap();
        if m.file_type().is_symlink() {
            continue;
        }
        checked += 1;
        let mode = m.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{rel:?} has mode {mode:o}");
    }
    assert!(checked > 8, "walked {checked} entries");
}

/// A data folder left world-readable (an older version, a loose umask).
fn loosen_data_folder(a: &Agent) {
    std::fs::create_dir_all(a.data().join("processed/old")).unwrap();
    std::fs::write(a.data().join("processed/old/scan.png"), b"old").unwrap();
    // That installation had its key (a data folder with results and no key is refused).
    std::fs::write(a.data().join("pseudonym.key"), [7u8; 32]).unwrap();
    for p in [
        "",
        "processed",
        "processed/old",
        "processed/old/scan.png",
        "pseudonym.key",
    ] {
        let mode = if p.contains('.') { 0o644 } else { 0o755 };
        std::fs::set_permissions(a.data().join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

#[test]
fn the_log_names_no_patient_and_the_data_folder_is_the_agents_alone() {
    let mut a = Agent::new("");
    loosen_data_folder(&a);
    let patient = a.inbox().join(PATIENT);
    std::fs::create_dir(&patient).unwrap();
    let scan = patient.join("scan_R2.png");
    std::fs::copy(fixture("pocus_pneu_emdocs1.png"), &scan).unwrap();
    // Exported world-readable, as devices do: the copy kept in processed/ is not.
    std::fs::set_permissions(&scan, std::fs::Permissions::from_mode(0o644)).unwrap();
    a.start();
    a.wait_for("the scan analysed", |s| u(s, "analysed") == 1);
    a.stop();
    assert_no_phi_and_private(&a);
}

#[test]
fn a_patient_folder_that_is_a_link_leads_nowhere_outside_the_inbox() {
    let mut a = Agent::new("");
    let inbox = a.inbox();
    let outside = a.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    // A readable scan and a decoy key outside the inbox: neither may be read or moved.
    std::fs::copy(
        fixture("pocus_pneu_emdocs1.png"),
        outside.join("scan_R1.png"),
    )
    .unwrap();
    std::fs::write(outside.join("pseudonym.key"), b"not a scan").unwrap();
    std::os::unix::fs::symlink(&outside, inbox.join("aa")).unwrap();
    // A folder link to the agent's own data folder (the key lives there).
    std::os::unix::fs::symlink(a.data(), inbox.join("zz")).unwrap();
    let patient = inbox.join(PATIENT);
    std::fs::create_dir(&patient).unwrap();
    std::fs::copy(
        fixture("pocus_pneu_emdocs1.png"),
        patient.join("scan_R2.png"),
    )
    .unwrap();

    a.start();
    let s = a.wait_for("the good scan and both links handled", |s| {
        u(s, "analysed") >= 1 && u(s, "rejected") >= 2
    });
    assert_eq!(
        u(&s, "analysed"),
        1,
        "only the scan inside the inbox: {s:#}"
    );
    assert_eq!(u(&s, "rejected"), 2, "{s:#}");
    assert_eq!(
        listing(&outside),
        vec!["pseudonym.key".to_string(), "scan_R1.png".to_string()]
    );
    let key = std::fs::read(a.data().join("pseudonym.key")).unwrap();
    assert!(!key.is_empty());
    a.stop();
    // The key is where it was: a restart uses it and does not mint another.
    assert_eq!(std::fs::read(a.data().join("pseudonym.key")).unwrap(), key);
    for l in ["aa", "zz"] {
        let m = a
            .data()
            .join("rejected")
            .join(l)
            .symlink_metadata()
            .unwrap();
        assert!(
            m.file_type().is_symlink(),
            "{l}: the link itself was set aside"
        );
    }
}

#[test]
fn a_lost_pseudonym_key_stops_the_agent_instead_of_minting_a_new_one() {
    let mut a = Agent::new("");
    let patient = a.inbox().join(PATIENT);
    std::fs::create_dir(&patient).unwrap();
    std::fs::copy(
        fixture("pocus_pneu_emdocs1.png"),
        patient.join("scan_R2.png"),
    )
    .unwrap();
    a.start();
    a.wait_for("a scan analysed", |s| u(s, "analysed") >= 1);
    a.stop();
    let key = a.data().join("pseudonym.key");
    std::fs::remove_file(&key).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .current_dir(root())
        .args(["run", "--config", a.config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent started without its pseudonym key");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(64), "{err}");
    assert!(
        err.contains("pseudonym key") && err.contains("missing"),
        "{err}"
    );
    assert!(!key.exists(), "no new key was minted");
}
