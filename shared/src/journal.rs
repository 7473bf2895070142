//! An append-only journal of short text lines, each with its own CRC-32, kept beside a
//! store (never inside it) so that whatever the store does to itself — sled drops
//! everything after the first bad checksum when it recovers — each side still knows
//! what it should hold. A damaged line is counted and skipped, never fatal: the lines
//! after it still count. A last line without its newline is a write cut short by a
//! crash (the caller was never told it succeeded) and is ignored.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What reading a journal found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Intact lines, in order, without their checksums.
    pub lines: Vec<String>,
    /// Lines whose checksum or shape is wrong (the file was damaged).
    pub damaged: u64,
    /// A last line cut short by a crash mid-append.
    pub torn_tail: bool,
}

pub struct Journal {
    path: PathBuf,
    file: File,
}

fn frame(payload: &str) -> String {
    debug_assert!(!payload.contains(['\n', '\t']));
    format!("{payload}\t{:08x}\n", crc32fast::hash(payload.as_bytes()))
}

fn unframe(line: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(line).ok()?;
    let (payload, crc) = s.rsplit_once('\t')?;
    let crc = u32::from_str_radix(crc, 16)
        .ok()
        .filter(|_| crc.len() == 8)?;
    (crc32fast::hash(payload.as_bytes()) == crc).then(|| payload.to_string())
}

/// Reads the journal at `path` (an absent file is an empty journal).
pub fn read(path: &Path) -> std::io::Result<Replay> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Replay::default()),
        Err(e) => return Err(e),
    };
    let mut r = BufReader::new(f);
    let mut out = Replay::default();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Bounded: a damaged file without newlines must not be read into one line.
        let n = r.by_ref().take(64 * 1024).read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            if n < 64 * 1024 {
                out.torn_tail = true;
                break;
            }
            out.damaged += 1;
            continue;
        }
        match unframe(&buf[..buf.len() - 1]) {
            Some(p) => out.lines.push(p),
            None => out.damaged += 1,
        }
    }
    Ok(out)
}

impl Journal {
    /// Opens `path` for appending (created 0600 if absent). Read it first with `read`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends `payloads` (one line each) and syncs them to disk. On an error nothing
    /// may be assumed written; a partial last line reads back as a torn tail.
    pub fn append<S: AsRef<str>>(&mut self, payloads: &[S]) -> std::io::Result<()> {
        if payloads.is_empty() {
            return Ok(());
        }
        let mut out = String::new();
        for p in payloads {
            out.push_str(&frame(p.as_ref()));
        }
        let before = self.file.metadata()?.len();
        let written = self
            .file
            .write_all(out.as_bytes())
            .and_then(|_| self.file.sync_data());
        if written.is_err() {
            // A cut-short line would glue onto the next append and damage it too.
            let _ = self.file.set_len(before);
        }
        written
    }

    /// Replaces the whole journal with `payloads` (compaction), atomically.
    pub fn rewrite<S: AsRef<str>>(&mut self, payloads: &[S]) -> std::io::Result<()> {
        let mut out = String::new();
        for p in payloads {
            out.push_str(&frame(p.as_ref()));
        }
        crate::fsutil::write_atomic(&self.path, out.as_bytes(), 0o600)?;
        *self = Self::open(&self.path)?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_lines_are_counted_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let mut j = Journal::open(&p).unwrap();
        j.append(&["Q aa", "Q bb", "A aa"]).unwrap();
        assert_eq!(read(&p).unwrap().lines, vec!["Q aa", "Q bb", "A aa"]);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[1] ^= 0x20; // inside the first line
        bytes.extend_from_slice(b"Q cc\t0000"); // torn
        std::fs::write(&p, &bytes).unwrap();
        let r = read(&p).unwrap();
        assert_eq!(r.lines, vec!["Q bb", "A aa"]);
        assert_eq!((r.damaged, r.torn_tail), (1, true));
    }

    #[test]
    fn rewrite_replaces_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let mut j = Journal::open(&p).unwrap();
        j.append(&["1", "2"]).unwrap();
        j.rewrite(&["3"]).unwrap();
        j.append(&["4"]).unwrap();
        assert_eq!(read(&p).unwrap().lines, vec!["3", "4"]);
        assert_eq!(read(&dir.path().join("absent")).unwrap(), Replay::default());
    }

    #[test]
    fn random_damage_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let mut j = Journal::open(&p).unwrap();
        let lines: Vec<String> = (0..200).map(|i| format!("Q {i:032x}")).collect();
        j.append(&lines).unwrap();
        let clean = std::fs::read(&p).unwrap();
        for seed in 0..50u64 {
            let mut b = clean.clone();
            let mut x = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % b.len() as u64) as usize;
                b[i] ^= 1 << (x % 8);
            }
            std::fs::write(&p, &b).unwrap();
            let r = read(&p).unwrap();
            assert!(r.lines.len() as u64 + r.damaged + u64::from(r.torn_tail) >= 192);
            assert!(r.lines.iter().all(|l| lines.contains(l)));
        }
    }
}
