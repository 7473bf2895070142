//! `status.json`, kept current even on a full disk and never seen half-written.
//!
//! The writer fills a preallocated spare file (`status.json.spare`, padded with spaces
//! to a fixed size, so rewriting it in place needs no new disk blocks) and swaps it
//! with `status.json` in one atomic `renameat2(RENAME_EXCHANGE)`: a reader opening
//! `status.json` always finds a whole document, and the old file becomes the next
//! spare. The padding is JSON whitespace, so the file stays plain JSON. Filesystems
//! without the exchange get a plain rename (and a new spare next round).

use std::ffi::CString;
use std::io::{Error, ErrorKind, Result};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Status;

/// Smallest size of the status file and its spare; larger documents round up to 4 KiB.
const SLOT_BYTES: usize = 64 * 1024;

pub struct StatusFile {
    path: PathBuf,
    spare: PathBuf,
}

impl StatusFile {
    pub fn new(path: &Path) -> Self {
        let mut spare = path.as_os_str().to_owned();
        spare.push(".spare");
        Self {
            path: path.to_path_buf(),
            spare: spare.into(),
        }
    }

    pub fn write(&self, status: &Status) -> Result<()> {
        let mut doc = serde_json::to_vec_pretty(status)?;
        doc.push(b'\n');
        let size = doc.len().max(SLOT_BYTES).next_multiple_of(4096);
        doc.resize(size, b' ');
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&self.spare)?;
        if f.metadata()?.len() > size as u64 {
            f.set_len(size as u64)?;
        }
        // Over blocks already allocated (the spare was a whole status file before).
        f.write_all_at(&doc, 0)?;
        drop(f);
        match exchange(&self.spare, &self.path) {
            Ok(()) => Ok(()),
            Err(e)
                if e.kind() == ErrorKind::NotFound
                    || matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) =>
            {
                std::fs::rename(&self.spare, &self.path)
            }
            Err(e) => Err(e),
        }
    }
}

/// Swaps two names atomically.
fn exchange(a: &Path, b: &Path) -> Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::from(ErrorKind::InvalidInput))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths relative to the working directory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

/// Reads `status.json`. A document that does not parse (a reader that held an old
/// file while it was reused as the spare) is read again; never shown half-written.
pub fn read(path: &Path) -> Result<Status> {
    let mut last = None;
    for _ in 0..5 {
        let bytes = std::fs::read(path)?;
        match serde_json::from_slice(&bytes) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    Err(Error::new(
        ErrorKind::InvalidData,
        format!(
            "{} is not a valid status document: {}",
            path.display(),
            last.map(|e| e.to_string()).unwrap_or_default()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_plain_json_padded_and_reuses_its_spare() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("status.json");
        let f = StatusFile::new(&p);
        let mut s = Status::default();
        for n in 0..3u64 {
            s.intake.analysed = n;
            f.write(&s).unwrap();
            assert_eq!(read(&p).unwrap().intake.analysed, n);
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            assert_eq!(v["intake"]["analysed"], n);
        }
        assert_eq!(std::fs::metadata(&p).unwrap().len(), SLOT_BYTES as u64);
        // The previous document is the spare now, the same size: no new blocks needed.
        let spare = dir.path().join("status.json.spare");
        assert_eq!(std::fs::metadata(&spare).unwrap().len(), SLOT_BYTES as u64);
        std::fs::write(&p, b"{\"intake\": {\"analys").unwrap();
        assert!(read(&p)
            .unwrap_err()
            .to_string()
            .contains("not a valid status"));
    }
}
