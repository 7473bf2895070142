//! The append-only audit log: one JSON line per access to a case or the worklist (and
//! per login), each carrying the SHA-256 of the line before it, so that removing or
//! editing a line breaks the chain (`hub-server audit verify`). Written with O_APPEND
//! and fsynced before the data is returned.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use pleura_shared::now_ms;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub at_ms: u64,
    pub user: String,
    pub role: String,
    pub action: String,
    /// The case id, or a description of what was listed.
    pub target: String,
    /// "allowed", or "denied: <why>".
    pub outcome: String,
    /// SHA-256 (hex) of the previous line; 64 zeros for the first.
    pub prev: String,
}

pub struct AuditLog {
    path: PathBuf,
    state: Mutex<(std::fs::File, String)>,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn last_line_hash(f: &mut std::fs::File) -> std::io::Result<String> {
    let len = f.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(GENESIS.into());
    }
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
    let last = body.rsplit(|b| *b == b'\n').next().unwrap_or(body);
    Ok(hex::encode(Sha256::digest(last)))
}

impl AuditLog {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let prev = last_line_hash(&mut f)?;
        Ok(Self {
            path: path.into(),
            state: Mutex::new((f, prev)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends and fsyncs one entry. An access that cannot be logged must not happen:
    /// callers refuse the request when this fails.
    pub fn record(
        &self,
        user: &str,
        role: &str,
        action: &str,
        target: &str,
        outcome: &str,
    ) -> std::io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let e = Entry {
            at_ms: now_ms(),
            user: user.into(),
            role: role.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            prev: st.1.clone(),
        };
        let line = serde_json::to_vec(&e).map_err(std::io::Error::other)?;
        let mut buf = line.clone();
        buf.push(b'\n');
        st.0.write_all(&buf)?;
        st.0.sync_data()?;
        st.1 = hex::encode(Sha256::digest(&line));
        Ok(())
    }
}

/// Reads the whole log and checks every link; returns the entries.
pub fn verify(path: &Path) -> Result<Vec<Entry>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut prev = GENESIS.to_string();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let e: Entry =
            serde_json::from_str(line).map_err(|err| format!("line {}: {err}", i + 1))?;
        if e.prev != prev {
            return Err(format!(
                "line {}: chain broken (a line before it was removed or changed)",
                i + 1
            ));
        }
        prev = hex::encode(Sha256::digest(line.as_bytes()));
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_survives_reopening_and_catches_edits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let log = AuditLog::open(&p).unwrap();
        log.record("ana", "specialist", "get_case", "ab12", "allowed")
            .unwrap();
        drop(log);
        let log = AuditLog::open(&p).unwrap();
        log.record("min", "ministry", "get_case", "ab12", "denied: role")
            .unwrap();
        log.record("ana", "specialist", "list_cases", "3 cases", "allowed")
            .unwrap();
        assert_eq!(verify(&p).unwrap().len(), 3);

        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&p, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        assert!(verify(&p).unwrap_err().contains("line 2"));
        std::fs::write(&p, text.replace("denied: role", "allowed")).unwrap();
        assert!(verify(&p).unwrap_err().contains("line 3"));
    }
}
