use super::*;

fn open(dir: &Path) -> AuditLog {
    AuditLog::open(dir, Arc::new(Metrics::default())).unwrap()
}

fn key(dir: &Path) -> [u8; 32] {
    load_key(&dir.join(KEY_FILE), false).unwrap()
}

fn filled(n: usize) -> (tempfile::TempDir, AuditPaths, [u8; 32], String) {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for i in 0..n {
        log.record(
            "ana",
            "specialist",
            "get_case",
            &format!("case{i}"),
            "allowed",
        )
        .unwrap();
    }
    let paths = AuditPaths::in_dir(dir.path());
    let text = std::fs::read_to_string(&paths.log).unwrap();
    let k = key(dir.path());
    (dir, paths, k, text)
}

#[test]
fn the_chain_survives_reopening_and_catches_edits() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.record("ana", "specialist", "get_case", "ab12", "allowed")
        .unwrap();
    drop(log);
    let log = open(dir.path());
    log.record("min", "ministry", "get_case", "ab12", "denied: role")
        .unwrap();
    log.record("ana", "specialist", "list_cases", "3 cases", "allowed")
        .unwrap();
    let paths = AuditPaths::in_dir(dir.path());
    let k = key(dir.path());
    let v = verify(&paths, &k).unwrap();
    assert_eq!(v.entries.len(), 3);
    assert_eq!(v.entries[2].seq, 3);
    assert_eq!(log.head(), (3, v.entries[2].mac.clone()));

    let text = std::fs::read_to_string(&paths.log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&paths.log, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
    assert_eq!(
        verify(&paths, &k).unwrap_err(),
        Tamper::Sequence { line: 2, seq: 3 }
    );
    std::fs::write(&paths.log, text.replace("denied: role", "allowed")).unwrap();
    assert_eq!(verify(&paths, &k).unwrap_err(), Tamper::BadMac { line: 2 });
}

#[test]
fn editing_the_last_line_cutting_the_tail_or_emptying_the_log_is_caught() {
    let (_dir, paths, k, text) = filled(8);
    let lines: Vec<&str> = text.lines().collect();

    // The last line edited.
    let edited = text.replace("case7", "case9");
    std::fs::write(&paths.log, &edited).unwrap();
    assert_eq!(verify(&paths, &k).unwrap_err(), Tamper::BadMac { line: 8 });

    // The last five lines cut.
    std::fs::write(&paths.log, format!("{}\n", lines[..3].join("\n"))).unwrap();
    let e = verify(&paths, &k).unwrap_err();
    assert_eq!(
        e,
        Tamper::Truncated {
            entries: 3,
            checkpoint: 8
        }
    );
    assert!(e
        .to_string()
        .contains("log has 3 entries but the checkpoint says 8"));

    // Emptied.
    std::fs::write(&paths.log, "").unwrap();
    let e = verify(&paths, &k).unwrap_err();
    assert_eq!(e, Tamper::Empty { checkpoint: 8 });
    assert!(e.to_string().contains("empty file"));

    // The checkpoint removed, the log left whole: the key exists, so a checkpoint
    // was written; its absence is named.
    std::fs::write(&paths.log, &text).unwrap();
    std::fs::remove_file(&paths.checkpoint).unwrap();
    assert_eq!(verify(&paths, &k).unwrap_err(), Tamper::NoCheckpoint);
}

#[test]
fn removing_the_log_and_the_checkpoint_together_is_caught_and_the_hub_will_not_start() {
    let (dir, paths, k, _) = filled(5);
    std::fs::remove_file(&paths.log).unwrap();
    std::fs::remove_file(&paths.checkpoint).unwrap();
    assert_eq!(verify(&paths, &k).unwrap_err(), Tamper::NoCheckpoint);
    let e = AuditLog::open(dir.path(), Arc::new(Metrics::default()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("checkpoint missing"), "{e}");
    // Nothing was started in their place.
    assert!(!paths.log.exists() && !paths.checkpoint.exists());

    // A legacy-looking first line plus a removed checkpoint is not a migration once
    // a key exists.
    std::fs::write(
        &paths.log,
        "{\"at_ms\":1,\"user\":\"a\",\"role\":\"r\",\"action\":\"x\",\"target\":\"\",\"outcome\":\"allowed\",\"prev\":\"00\"}\n",
    )
    .unwrap();
    let e = AuditLog::open(dir.path(), Arc::new(Metrics::default()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("checkpoint missing"), "{e}");
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains("unkeyed"));
    assert!(!aside, "set aside although a key exists");
    assert_eq!(verify(&paths, &k).unwrap_err(), Tamper::NoCheckpoint);

    // The checkpoint kept but the log removed or emptied: caught against seq 5.
    let (dir, paths, _k, _) = filled(5);
    std::fs::remove_file(&paths.log).unwrap();
    let e = AuditLog::open(dir.path(), Arc::new(Metrics::default()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("empty file"), "{e}");
}

#[test]
fn a_new_key_comes_with_a_genesis_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    drop(log);
    let paths = AuditPaths::in_dir(dir.path());
    let cp = read_checkpoint(&paths.checkpoint, &key(dir.path()))
        .unwrap()
        .unwrap();
    assert_eq!((cp.seq, cp.head.as_str()), (0, GENESIS));
    // Reopening an empty log with its genesis checkpoint is fine.
    open(dir.path());
}

#[test]
fn a_line_that_is_not_byte_for_byte_as_written_is_caught() {
    let (_dir, paths, k, text) = filled(3);
    let lines: Vec<&str> = text.lines().collect();
    let with = |i: usize, l: String| {
        let mut v: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        v[i] = l;
        std::fs::write(&paths.log, format!("{}\n", v.join("\n"))).unwrap();
        verify(&paths, &k)
    };
    // An extra field.
    let extra = lines[1].replacen('{', "{\"note\":\"hello\",", 1);
    assert!(matches!(
        with(1, extra).unwrap_err(),
        Tamper::Unparsable { line: 2, .. }
    ));
    // Whitespace.
    let spaced = lines[1].replacen("\"seq\":", "\"seq\": ", 1);
    assert_eq!(
        with(1, spaced).unwrap_err(),
        Tamper::NotCanonical { line: 2 }
    );
    // A re-escaped character.
    let escaped = lines[1].replacen("ana", "\\u0061na", 1);
    assert_ne!(escaped, lines[1]);
    assert_eq!(
        with(1, escaped).unwrap_err(),
        Tamper::NotCanonical { line: 2 }
    );
    // Reordered fields.
    let v: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    let mut m: Vec<(String, serde_json::Value)> =
        v.as_object().unwrap().clone().into_iter().collect();
    m.reverse();
    let reordered = format!(
        "{{{}}}",
        m.iter()
            .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(
        with(2, reordered).unwrap_err(),
        Tamper::NotCanonical { line: 3 }
    );
    // Untouched, it verifies.
    assert_eq!(with(1, lines[1].to_string()).unwrap().entries.len(), 3);
}

#[test]
fn a_deleted_line_with_recomputed_hashes_is_caught_without_the_key() {
    let (_dir, paths, k, text) = filled(6);
    // The attacker removes line 3 and re-chains the rest with plain SHA-256, as the
    // unkeyed log allowed; they cannot compute MACs.
    use sha2::Digest;
    let mut out = Vec::new();
    let mut prev = GENESIS.to_string();
    for (i, line) in text.lines().enumerate().filter(|(i, _)| *i != 2) {
        let mut e: Entry = serde_json::from_str(line).unwrap();
        e.seq = out.len() as u64 + 1;
        e.prev = prev.clone();
        e.mac = hex::encode(sha2::Sha256::digest(format!("{i}{line}")));
        prev = e.mac.clone();
        out.push(serde_json::to_string(&e).unwrap());
    }
    std::fs::write(&paths.log, format!("{}\n", out.join("\n"))).unwrap();
    assert_eq!(verify(&paths, &k).unwrap_err(), Tamper::BadMac { line: 1 });

    // Deleting a line and keeping the others' MACs breaks the sequence.
    let kept: Vec<&str> = text.lines().filter(|l| !l.contains("case2")).collect();
    std::fs::write(&paths.log, format!("{}\n", kept.join("\n"))).unwrap();
    assert_eq!(
        verify(&paths, &k).unwrap_err(),
        Tamper::Sequence { line: 3, seq: 4 }
    );

    // Another key (another hub's, or a guessed one) verifies nothing.
    std::fs::write(&paths.log, &text).unwrap();
    assert_eq!(verify(&paths, &[7; 32]).unwrap_err(), Tamper::CheckpointMac);
}

#[test]
fn a_crash_between_append_and_checkpoint_is_not_tampering() {
    let (dir, paths, k, _) = filled(3);
    let old_cp = std::fs::read(&paths.checkpoint).unwrap();
    let log = open(dir.path());
    log.record("ana", "specialist", "get_case", "x", "allowed")
        .unwrap();
    drop(log);
    // As if the hub died after fsyncing line 4 and before replacing the checkpoint.
    std::fs::write(&paths.checkpoint, &old_cp).unwrap();
    let v = verify(&paths, &k).unwrap();
    assert!(v.in_flight);
    assert_eq!(v.entries.len(), 4);
    // The next start repairs the checkpoint and goes on.
    let log = open(dir.path());
    assert_eq!(log.head().0, 4);
    log.record("ana", "specialist", "get_case", "y", "allowed")
        .unwrap();
    drop(log);
    assert!(!verify(&paths, &k).unwrap().in_flight);

    // Two entries past the checkpoint is not a crash: refused, at start too.
    std::fs::write(&paths.checkpoint, &old_cp).unwrap();
    assert_eq!(
        verify(&paths, &k).unwrap_err(),
        Tamper::Ahead {
            entries: 5,
            checkpoint: 3
        }
    );
    assert!(matches!(
        AuditLog::open(dir.path(), Arc::new(Metrics::default())),
        Err(OpenError::Tampered { .. })
    ));
}

#[test]
fn a_rolled_back_log_with_its_old_checkpoint_verifies_but_the_hub_will_not_reopen_a_cut_one() {
    let (dir, paths, k, text) = filled(3);
    let old_cp = std::fs::read(&paths.checkpoint).unwrap();
    let log = open(dir.path());
    log.record("ana", "specialist", "get_case", "later", "allowed")
        .unwrap();
    drop(log);
    // A consistent old pair copied back is, by itself, indistinguishable from the
    // past: only the sequence number scraped from /metrics can tell (SECURITY.md).
    std::fs::write(&paths.log, &text).unwrap();
    std::fs::write(&paths.checkpoint, &old_cp).unwrap();
    assert_eq!(verify(&paths, &k).unwrap().entries.len(), 3);
    // A cut log: the hub refuses to start rather than re-checkpoint over it.
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&paths.log, format!("{}\n", lines[0])).unwrap();
    let e = AuditLog::open(dir.path(), Arc::new(Metrics::default()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn files_are_private_and_a_legacy_log_is_set_aside() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(LOG_FILE),
        "{\"at_ms\":1,\"user\":\"a\",\"role\":\"r\",\"action\":\"x\",\"target\":\"\",\"outcome\":\"allowed\",\"prev\":\"00\"}\n",
    )
    .unwrap();
    let log = open(dir.path());
    log.record("a", "operator", "login", "", "allowed").unwrap();
    for f in [LOG_FILE, KEY_FILE, CHECKPOINT_FILE] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is {mode:o}");
    }
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains("unkeyed"));
    assert!(aside);
}
