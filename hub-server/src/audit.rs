//! The append-only audit log: one JSON line per access to a case or the worklist, per
//! login and per refused call, written with O_APPEND and fsynced before the data is
//! returned.
//!
//! Tamper evidence comes from a key the hub holds (`data_dir/audit.key`, 0600), not from
//! the log itself: every entry carries a sequence number, the MAC of the entry before it
//! and its own HMAC-SHA256, so a line cannot be edited, removed or re-chained without the
//! key. The head of the chain (sequence number + MAC, itself MACed) is kept outside the
//! log in `data_dir/audit.checkpoint`, rewritten atomically after every append and shown
//! on `/metrics`, so cutting lines off the end, emptying the file or rolling the log back
//! is caught too.
//!
//! Crash rule: the log is fsynced before the checkpoint is replaced, so a crash between
//! the two leaves the log exactly one entry ahead of the checkpoint; that entry must chain
//! onto the checkpointed head. One entry ahead is accepted (and the checkpoint repaired at
//! the next start); more than one, or any entry missing, is tampering. If a checkpoint
//! write fails the access is refused and the next append first retries the checkpoint, so
//! a running hub never lets the log get two entries ahead.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hmac::{Hmac, Mac};
use pleura_shared::now_ms;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::denials::{Fold, Folder};
use crate::metrics::Metrics;

pub const LOG_FILE: &str = "audit.log";
pub const KEY_FILE: &str = "audit.key";
pub const CHECKPOINT_FILE: &str = "audit.checkpoint";

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const ENTRY_DOMAIN: &[u8] = b"pleura.audit.v2.entry\0";
const CHECKPOINT_DOMAIN: &[u8] = b"pleura.audit.v2.checkpoint\0";

fn one() -> u64 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// 1 for the first entry, then +1 per line.
    pub seq: u64,
    pub at_ms: u64,
    pub user: String,
    pub role: String,
    pub action: String,
    /// The case id, or a description of what was listed.
    pub target: String,
    /// "allowed", or "denied: <why>".
    pub outcome: String,
    /// Peer address of the call, when known.
    #[serde(default)]
    pub source: String,
    /// How many calls this line stands for (repeated denials from one source are folded).
    #[serde(default = "one")]
    pub count: u64,
    /// MAC of the previous entry; 64 zeros for the first.
    pub prev: String,
    /// HMAC-SHA256 (hex) of this entry with `mac` empty, under the audit key.
    pub mac: String,
}

/// The MACed head of the chain, kept outside the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    pub head: String,
    pub at_ms: u64,
    pub mac: String,
}

/// Where the audit files of a hub live.
#[derive(Debug, Clone)]
pub struct AuditPaths {
    pub log: PathBuf,
    pub key: PathBuf,
    pub checkpoint: PathBuf,
}

impl AuditPaths {
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            log: data_dir.join(LOG_FILE),
            key: data_dir.join(KEY_FILE),
            checkpoint: data_dir.join(CHECKPOINT_FILE),
        }
    }
}

/// What `verify` found wrong. Each names the first check that failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Tamper {
    #[error("{0}")]
    Io(String),
    #[error("empty file: the log holds no entries but the checkpoint says it held {checkpoint}")]
    Empty { checkpoint: u64 },
    #[error("truncated: log has {entries} entries but the checkpoint says {checkpoint}")]
    Truncated { entries: u64, checkpoint: u64 },
    #[error(
        "log has {entries} entries but the checkpoint says {checkpoint}: more than the one \
         in-flight append a crash can leave (checkpoint rolled back or entries appended \
         without the hub)"
    )]
    Ahead { entries: u64, checkpoint: u64 },
    #[error("line {line}: not an audit entry ({reason})")]
    Unparsable { line: u64, reason: String },
    #[error("line {line}: bad MAC (edited line, or written without the audit key)")]
    BadMac { line: u64 },
    #[error(
        "line {line}: not byte-for-byte the line the hub wrote (fields added, reordered, \
         re-spaced or re-escaped)"
    )]
    NotCanonical { line: u64 },
    #[error(
        "checkpoint missing: the audit key exists, so the hub wrote a checkpoint (at least \
         the genesis one, seq 0) that has since been removed"
    )]
    NoCheckpoint,
    #[error("line {line}: sequence number {seq}, expected {line} (a line was removed, duplicated or reordered)")]
    Sequence { line: u64, seq: u64 },
    #[error("line {line}: chain broken (its prev is not line {}'s MAC)", .line - 1)]
    Chain { line: u64 },
    #[error("checkpoint: bad MAC (edited, or written without the audit key)")]
    CheckpointMac,
    #[error("line {seq} is not the entry the checkpoint names (the log was rewritten)")]
    CheckpointHead { seq: u64 },
}

/// A log that verified.
#[derive(Debug)]
pub struct Verified {
    pub entries: Vec<Entry>,
    /// The checkpoint it was checked against.
    pub checkpoint: Checkpoint,
    /// True when the last entry is the one in-flight append a crash can leave.
    pub in_flight: bool,
}

type HmacSha256 = Hmac<Sha256>;

fn mac_hex(key: &[u8; 32], domain: &[u8], body: &[u8]) -> String {
    let mut m = HmacSha256::new_from_slice(key).expect("any key length");
    m.update(domain);
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

fn mac_ok(key: &[u8; 32], domain: &[u8], body: &[u8], mac: &str) -> bool {
    let Ok(tag) = hex::decode(mac) else {
        return false;
    };
    let mut m = HmacSha256::new_from_slice(key).expect("any key length");
    m.update(domain);
    m.update(body);
    m.verify_slice(&tag).is_ok()
}

fn entry_mac(key: &[u8; 32], e: &Entry) -> String {
    mac_hex(key, ENTRY_DOMAIN, &unsigned_body(e))
}

fn checkpoint_body(seq: u64, head: &str, at_ms: u64) -> Vec<u8> {
    format!("{seq}\0{head}\0{at_ms}").into_bytes()
}

impl Checkpoint {
    fn new(key: &[u8; 32], seq: u64, head: &str) -> Self {
        let at_ms = now_ms();
        Self {
            seq,
            head: head.into(),
            at_ms,
            mac: mac_hex(key, CHECKPOINT_DOMAIN, &checkpoint_body(seq, head, at_ms)),
        }
    }

    fn verify(&self, key: &[u8; 32]) -> bool {
        mac_ok(
            key,
            CHECKPOINT_DOMAIN,
            &checkpoint_body(self.seq, &self.head, self.at_ms),
            &self.mac,
        )
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Tamper {
    Tamper::Io(format!("{}: {e}", path.display()))
}

/// Reads the audit key (32 bytes). `create`: make a fresh one (0600) if missing.
pub fn load_key(path: &Path, create: bool) -> std::io::Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(k) => k.try_into().map_err(|k: Vec<u8>| {
            std::io::Error::other(format!(
                "{} is not a 32-byte key ({} bytes)",
                path.display(),
                k.len()
            ))
        }),
        Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => {
            let k: [u8; 32] = rand::random();
            write_durably(path, &k)?;
            Ok(k)
        }
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        )),
    }
}

/// The checkpoint, if one was written; its MAC is checked.
pub fn read_checkpoint(path: &Path, key: &[u8; 32]) -> Result<Option<Checkpoint>, Tamper> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    let cp: Checkpoint = serde_json::from_slice(&bytes).map_err(|_| Tamper::CheckpointMac)?;
    if !cp.verify(key) {
        return Err(Tamper::CheckpointMac);
    }
    Ok(Some(cp))
}

/// Checks every entry's MAC, sequence number and link, then the log's length and head
/// against the checkpoint (see the crash rule in the module docs).
///
/// Safe to run beside a live hub: the checkpoint is read before and after the log, and a
/// result that a concurrent append can cause (log ahead, a half-written last line) is
/// re-checked a few times before it is reported; real tampering persists.
pub fn verify(paths: &AuditPaths, key: &[u8; 32]) -> Result<Verified, Tamper> {
    let mut tries = 0;
    loop {
        match verify_once(paths, key) {
            Err(Tamper::Ahead { .. } | Tamper::Unparsable { .. }) if tries < 5 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

fn verify_once(paths: &AuditPaths, key: &[u8; 32]) -> Result<Verified, Tamper> {
    // A key is always written with a genesis checkpoint, and the checkpoint is only ever
    // replaced by rename: a missing one was removed.
    let before = read_checkpoint(&paths.checkpoint, key)?.ok_or(Tamper::NoCheckpoint)?;
    let text = match std::fs::read_to_string(&paths.log) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(&paths.log, e)),
    };
    let mut prev = GENESIS.to_string();
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        let e: Entry = serde_json::from_str(line).map_err(|err| Tamper::Unparsable {
            line: n,
            reason: err.to_string(),
        })?;
        if !mac_ok(key, ENTRY_DOMAIN, &unsigned_body(&e), &e.mac) {
            return Err(Tamper::BadMac { line: n });
        }
        // The MAC covers the fields; the line must also be exactly the hub's serialisation
        // of them, so nothing (an extra field, spacing, an escape) rides along unMACed.
        if serde_json::to_string(&e).map_err(|err| io_err(&paths.log, err))? != line {
            return Err(Tamper::NotCanonical { line: n });
        }
        if e.seq != n {
            return Err(Tamper::Sequence {
                line: n,
                seq: e.seq,
            });
        }
        if e.prev != prev {
            return Err(Tamper::Chain { line: n });
        }
        prev = e.mac.clone();
        entries.push(e);
    }
    let have = entries.len() as u64;
    // The log only grows: `before` cannot be past it. `after` is the closer bound unless
    // the hub appended again after the log was read.
    let after = read_checkpoint(&paths.checkpoint, key)?.ok_or(Tamper::NoCheckpoint)?;
    let checkpoint = if after.seq <= have { after } else { before };
    let said = checkpoint.seq;
    if have < said {
        return Err(if have == 0 {
            Tamper::Empty { checkpoint: said }
        } else {
            Tamper::Truncated {
                entries: have,
                checkpoint: said,
            }
        });
    }
    if have > said + 1 {
        return Err(Tamper::Ahead {
            entries: have,
            checkpoint: said,
        });
    }
    let cp = &checkpoint;
    if cp.seq > 0 && entries[cp.seq as usize - 1].mac != cp.head {
        return Err(Tamper::CheckpointHead { seq: cp.seq });
    }
    Ok(Verified {
        entries,
        checkpoint,
        in_flight: have == said + 1,
    })
}

fn unsigned_body(e: &Entry) -> Vec<u8> {
    let mut unsigned = e.clone();
    unsigned.mac.clear();
    serde_json::to_vec(&unsigned).expect("an entry serialises")
}

/// Audit files are the hub's alone.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    pleura_shared::fsutil::write_atomic(path, bytes, 0o600)
}

struct State {
    file: std::fs::File,
    len: u64,
    seq: u64,
    head: String,
    /// The last append is not yet in the checkpoint (its write failed).
    checkpoint_stale: bool,
}

pub struct AuditLog {
    paths: AuditPaths,
    key: [u8; 32],
    state: Mutex<State>,
    denials: Mutex<Folder>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the audit log in {dir} fails verification: {tamper}. Investigate (`hub-server audit \
         verify {dir}`), then move audit.log, audit.checkpoint and audit.key aside (all \
         three) to start a new log"
    )]
    Tampered { dir: String, tamper: Tamper },
}

impl AuditLog {
    /// Opens (or starts) the log in `data_dir`, creating the key if needed. The whole
    /// log is verified first: a hub does not append to (and so re-checkpoint) a log that
    /// was cut or rolled back, which would hide it.
    pub fn open(data_dir: &Path, metrics: Arc<Metrics>) -> Result<Self, OpenError> {
        use std::os::unix::fs::OpenOptionsExt;
        let paths = AuditPaths::in_dir(data_dir);
        let existed = paths.key.exists();
        if !existed {
            // Only before any key exists can a log be the old unkeyed kind: once a key
            // exists every line is keyed, and anything else is tampering.
            set_aside_unkeyed_log(&paths.log)?;
            if paths.checkpoint.exists() || non_empty(&paths.log) {
                return Err(OpenError::Io(std::io::Error::other(format!(
                    "{} is missing but an audit log or checkpoint exists: restore the key",
                    paths.key.display()
                ))));
            }
            // The key and the genesis checkpoint (seq 0) come together: from here on a
            // missing checkpoint means a removed one. (A crash between the two leaves a
            // key without a checkpoint, which the hub refuses like a removal: delete
            // the fresh key by hand if nothing was ever logged.)
            let key = load_key(&paths.key, true)?;
            write_durably(
                &paths.checkpoint,
                &serde_json::to_vec(&Checkpoint::new(&key, 0, GENESIS))
                    .map_err(std::io::Error::other)?,
            )?;
        }
        let key = load_key(&paths.key, false)?;
        let tampered = |tamper| OpenError::Tampered {
            dir: data_dir.display().to_string(),
            tamper,
        };
        let v = verify(&paths, &key).map_err(tampered)?;
        let (seq, head) = v
            .entries
            .last()
            .map_or((0, GENESIS.to_string()), |e| (e.seq, e.mac.clone()));
        if v.in_flight {
            tracing::warn!(
                seq,
                "audit checkpoint lagged the log by the one in-flight entry; repaired"
            );
        }
        if v.in_flight {
            write_durably(
                &paths.checkpoint,
                &serde_json::to_vec(&Checkpoint::new(&key, seq, &head))
                    .map_err(std::io::Error::other)?,
            )?;
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&paths.log)?;
        let len = file.metadata()?.len();
        metrics.set_audit_head(seq, &head);
        Ok(Self {
            paths,
            key,
            state: Mutex::new(State {
                file,
                len,
                seq,
                head,
                checkpoint_stale: false,
            }),
            denials: Mutex::new(Folder::new()),
            metrics,
        })
    }

    pub fn path(&self) -> &Path {
        &self.paths.log
    }

    /// Sequence number and MAC of the last entry.
    pub fn head(&self) -> (u64, String) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (st.seq, st.head.clone())
    }

    fn write_checkpoint(&self, seq: u64, head: &str) -> std::io::Result<()> {
        let cp = Checkpoint::new(&self.key, seq, head);
        write_durably(
            &self.paths.checkpoint,
            &serde_json::to_vec(&cp).map_err(std::io::Error::other)?,
        )
    }

    /// Appends and fsyncs one entry, then the checkpoint. An access that cannot be
    /// logged must not happen: callers refuse the request when this fails.
    pub fn record(
        &self,
        user: &str,
        role: &str,
        action: &str,
        target: &str,
        outcome: &str,
    ) -> std::io::Result<()> {
        self.append(user, role, action, target, outcome, "", 1)
    }

    /// `record` with the caller's address and the number of calls the line stands for.
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &self,
        user: &str,
        role: &str,
        action: &str,
        target: &str,
        outcome: &str,
        source: &str,
        count: u64,
    ) -> std::io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checkpoint_stale {
            self.write_checkpoint(st.seq, &st.head)?;
            st.checkpoint_stale = false;
        }
        let mut e = Entry {
            seq: st.seq + 1,
            at_ms: now_ms(),
            user: user.into(),
            role: role.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            source: source.into(),
            count,
            prev: st.head.clone(),
            mac: String::new(),
        };
        e.mac = entry_mac(&self.key, &e);
        let mut buf = serde_json::to_vec(&e).map_err(std::io::Error::other)?;
        buf.push(b'\n');
        if let Err(err) = st.file.write_all(&buf).and_then(|()| st.file.sync_data()) {
            // Leave no half line behind for the next entry to follow.
            let len = st.len;
            let _ = st.file.set_len(len);
            return Err(err);
        }
        st.len += buf.len() as u64;
        st.seq = e.seq;
        st.head = e.mac;
        st.checkpoint_stale = true;
        self.write_checkpoint(st.seq, &st.head)?;
        st.checkpoint_stale = false;
        self.metrics.set_audit_head(st.seq, &st.head);
        Ok(())
    }

    /// Records a refused call that carried no valid identity. The first from a source in
    /// a window is written at once; repeats are counted and written as one line when the
    /// window closes (`flush_denials`), so a flood is recorded in full without filling
    /// the disk.
    pub fn deny_call(&self, source: &str, user: &str, action: &str, reason: &str) {
        Metrics::inc(&self.metrics.denied_calls, 1);
        let folds = self.denials.lock().unwrap_or_else(|e| e.into_inner()).note(
            source,
            user,
            action,
            reason,
            Instant::now(),
        );
        self.write_folds(folds);
    }

    /// Writes the counts of every window that has closed (all of them if `all`).
    pub fn flush_denials(&self, all: bool) {
        let folds = self
            .denials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush(Instant::now(), all);
        self.write_folds(folds);
    }

    fn write_folds(&self, folds: Vec<Fold>) {
        for f in folds {
            let target = if f.count == 1 && f.user != "-" {
                String::new()
            } else {
                format!(
                    "{} denied calls from {} in {} s, {} distinct user names",
                    f.count,
                    f.source,
                    f.window.as_secs().max(1),
                    f.users
                )
            };
            if let Err(e) = self.append(
                &f.user,
                "-",
                &f.action,
                &target,
                &format!("denied: {}", f.reason),
                &f.source,
                f.count,
            ) {
                tracing::error!(error = %e, count = f.count, source = %f.source, "could not write refused calls to the audit log");
            }
        }
    }
}

fn non_empty(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
}

/// A log from before keyed entries (no `seq`/`mac`) cannot be verified with a key; it is
/// renamed, kept for the record, and a new keyed log starts.
fn set_aside_unkeyed_log(log: &Path) -> std::io::Result<()> {
    let mut f = match std::fs::File::open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut head = vec![0u8; 4096];
    let n = f.read(&mut head)?;
    let first = head[..n].split(|b| *b == b'\n').next().unwrap_or(&[]);
    let legacy = serde_json::from_slice::<serde_json::Value>(first)
        .is_ok_and(|v| v.get("prev").is_some() && v.get("mac").is_none());
    if legacy {
        let aside = log.with_extension(format!("log.unkeyed-{}", now_ms()));
        std::fs::rename(log, &aside)?;
        tracing::warn!(kept = %aside.display(), "audit log without MACs set aside; a keyed log starts");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
