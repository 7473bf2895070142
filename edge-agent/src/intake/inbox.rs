//! Listing the inbox without trusting it: links are never followed, and only the
//! inbox folder itself failing to list is an error; every entry below is judged alone.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use pleura_inference::decode::file as scan_file;

mod across;

pub(super) enum Entry {
    File {
        path: PathBuf,
        size: u64,
        mtime: SystemTime,
        /// (device, inode) the listing saw: the opened file must be this one.
        id: FileId,
        /// (device, inode) of its patient folder, if it is in one.
        folder: Option<FileId>,
    },
    /// A link, FIFO, device or socket: never read, set aside.
    Odd {
        path: PathBuf,
        kind: &'static str,
        folder: Option<FileId>,
    },
    /// A patient folder that cannot be listed.
    Unreadable {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl Entry {
    pub(super) fn path(&self) -> &Path {
        match self {
            Entry::File { path, .. } | Entry::Odd { path, .. } | Entry::Unreadable { path, .. } => {
                path
            }
        }
    }
}

/// Entries of the inbox (one level of patient folders), skipping hidden and partial
/// ones and a patient folder's `vitals.json`. Links are never followed. Fails only if the inbox itself cannot be listed;
/// everything below it is judged entry by entry.
pub(super) fn list_inbox(inbox: &Path) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let skip = |p: &Path| {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        n.starts_with('.') || n.ends_with(".part") || n.ends_with(".tmp")
    };
    // Each entry is lstat-ed: `DirEntry::metadata` does not follow links.
    let classify =
        |p: PathBuf, meta: std::fs::Metadata, folder: Option<FileId>, out: &mut Vec<Entry>| {
            if meta.is_file() {
                if let Ok(mtime) = meta.modified() {
                    out.push(Entry::File {
                        path: p,
                        size: meta.len(),
                        mtime,
                        id: (meta.dev(), meta.ino()),
                        folder,
                    });
                }
            } else {
                out.push(Entry::Odd {
                    path: p,
                    kind: scan_file::kind_of(&meta),
                    folder,
                });
            }
        };
    for dir_entry in std::fs::read_dir(inbox)? {
        let Ok(dir_entry) = dir_entry else { continue };
        let p = dir_entry.path();
        if skip(&p) {
            continue;
        }
        // Vanished since the listing: nothing to do.
        let Ok(meta) = dir_entry.metadata() else {
            continue;
        };
        if !meta.is_dir() {
            classify(p, meta, None, &mut out);
            continue;
        }
        let folder = Some((meta.dev(), meta.ino()));
        // Listing by path may be fooled by a folder swapped for a link meanwhile; that
        // is harmless: every open and move goes through `Place`, which checks the ids.
        let sub = match std::fs::read_dir(&p) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                out.push(Entry::Unreadable { path: p, error });
                continue;
            }
        };
        for e in sub {
            let Ok(e) = e else { continue };
            let q = e.path();
            // The clinic's vitals for the patient (`vitals`) are not a scan: left alone.
            if skip(&q) || q.file_name().is_some_and(crate::vitals::is_vitals_file) {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            // Deeper folders are not part of the layout and are left alone, unread.
            if !m.is_dir() {
                classify(q, m, folder, &mut out);
            }
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(out)
}

/// (device, inode).
pub(crate) type FileId = (u64, u64);

/// Where an inbox entry lives, held open: its folder (the inbox or a patient folder,
/// opened without following links and checked to be the one listed) and its name in
/// it. Opening and moving the entry go through the folder's descriptor, never through
/// a path, so a folder swapped for a link cannot lead outside the inbox.
pub(crate) struct Place {
    pub dir: File,
    pub name: OsString,
}

/// Why an entry's place could not be opened.
pub(crate) enum PlaceError {
    /// Changed since the listing (gone, swapped, now a link): looked at again next round.
    Changed,
    Io(std::io::Error),
}

/// Opens the folder holding `path` (below `inbox`, whose descriptor is `top`).
/// `folder` is the (device, inode) the listing saw for the patient folder.
pub(crate) fn open_place(
    top: &File,
    inbox: &Path,
    path: &Path,
    folder: Option<FileId>,
) -> Result<Place, PlaceError> {
    let rel = path.strip_prefix(inbox).map_err(|_| PlaceError::Changed)?;
    let parts: Vec<&OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(PlaceError::Changed),
        })
        .collect::<Result<_, _>>()?;
    match parts.as_slice() {
        [name] => Ok(Place {
            dir: top.try_clone().map_err(PlaceError::Io)?,
            name: name.to_os_string(),
        }),
        [dir, name] => {
            let d = match scan_file::open_dir_at(top, dir) {
                Ok(d) => d,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ELOOP | libc::ENOTDIR | libc::ENOENT)
                    ) =>
                {
                    return Err(PlaceError::Changed)
                }
                Err(e) => return Err(PlaceError::Io(e)),
            };
            let m = d.metadata().map_err(PlaceError::Io)?;
            if folder.is_some_and(|f| f != (m.dev(), m.ino())) {
                return Err(PlaceError::Changed);
            }
            Ok(Place {
                dir: d,
                name: name.to_os_string(),
            })
        }
        _ => Err(PlaceError::Changed),
    }
}

impl Place {
    /// Moves the entry itself (a link is moved, never followed) to `dest`, a path in
    /// the agent's own data folder.
    pub(crate) fn rename_to(&self, dest: &Path) -> std::io::Result<()> {
        let from = CString::new(self.name.as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let to = CString::new(dest.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid directory descriptor and two NUL-terminated strings.
        let rc = unsafe {
            libc::renameat(
                self.dir.as_raw_fd(),
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Moves the entry to `dest`; across filesystems (a mounted share as the inbox:
    /// rename fails with EXDEV) by copying it and removing the inbox entry.
    pub(crate) fn move_to(&self, dest: &Path) -> std::io::Result<Moved> {
        match self.rename_to(dest) {
            Ok(()) => Ok(Moved::Renamed),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => across::copy_across(self, dest),
            Err(e) => Err(e),
        }
    }

    /// The entry's stamp now (the entry itself, not what a link points to).
    pub(crate) fn stamp(&self) -> std::io::Result<Stamp> {
        let name = self.c_name()?;
        // SAFETY: an all-zero `stat` is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid directory descriptor, a NUL-terminated name, a valid buffer.
        let rc = unsafe {
            libc::fstatat(
                self.dir.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Stamp {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: st.st_size as u64,
            mtime_ns: (st.st_mtime.max(0) as u128) * 1_000_000_000 + st.st_mtime_nsec as u128,
        })
    }

    pub(crate) fn c_name(&self) -> std::io::Result<CString> {
        CString::new(self.name.as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    }
}

/// How an entry left (or did not leave) the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Moved {
    /// Renamed within one filesystem.
    Renamed,
    /// Copied to another filesystem, and the inbox entry removed.
    Copied,
    /// Copied, but the inbox entry was replaced meanwhile: the new one was left alone.
    CopiedReplaced,
    /// Copied, but the inbox entry cannot be removed (a read-only share): it must be
    /// skipped from now on.
    CopiedKept { stamp: Stamp, error: String },
}

/// What identifies an inbox entry's content without reading it: (device, inode),
/// size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: u128,
}

impl Stamp {
    pub(crate) fn new(id: FileId, size: u64, mtime: SystemTime) -> Self {
        let mtime_ns = mtime
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Self {
            dev: id.0,
            ino: id.1,
            size,
            mtime_ns,
        }
    }

    pub(crate) fn of(meta: &std::fs::Metadata) -> Self {
        let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        Self::new((meta.dev(), meta.ino()), meta.len(), mtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_never_follows_links_and_never_fails_for_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path();
        std::fs::create_dir(inbox.join("p1")).unwrap();
        std::fs::write(inbox.join("p1/scan_L1.png"), b"x").unwrap();
        std::fs::create_dir(inbox.join("p1/deeper")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", inbox.join("dangling")).unwrap();
        std::os::unix::fs::symlink(inbox, inbox.join("p1/loop")).unwrap();
        std::fs::write(inbox.join(".hidden"), b"x").unwrap();
        std::fs::write(inbox.join("late.part"), b"x").unwrap();
        // a patient's vitals are not a scan; at the top level the name means nothing
        std::fs::write(inbox.join("p1/vitals.json"), b"{}").unwrap();
        std::fs::write(inbox.join("vitals.json"), b"{}").unwrap();
        let got: Vec<(String, String)> = list_inbox(inbox)
            .unwrap()
            .iter()
            .map(|e| {
                let rel = e.path().strip_prefix(inbox).unwrap().display().to_string();
                let what = match e {
                    Entry::File { size, .. } => format!("file {size}"),
                    Entry::Odd { kind, .. } => kind.to_string(),
                    Entry::Unreadable { .. } => "unreadable".into(),
                };
                (rel, what)
            })
            .collect();
        let want = [
            ("dangling", "symbolic link"),
            ("p1/loop", "symbolic link"),
            ("p1/scan_L1.png", "file 1"),
            ("vitals.json", "file 2"),
        ];
        assert_eq!(
            got,
            want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
        );
        assert!(list_inbox(&inbox.join("missing")).is_err());
    }

    #[test]
    fn a_place_never_leads_through_a_swapped_folder_and_moves_only_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        let outside = dir.path().join("data");
        std::fs::create_dir_all(inbox.join("zz")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(inbox.join("zz/pseudonym.key"), b"decoy").unwrap();
        std::fs::write(outside.join("pseudonym.key"), b"real").unwrap();
        let listed = list_inbox(&inbox).unwrap();
        let Some(Entry::File { path, folder, .. }) = listed.first() else {
            panic!("listed")
        };
        // The swap, after the listing (the old folder kept, so its inode is not reused).
        std::fs::rename(inbox.join("zz"), dir.path().join("zz-old")).unwrap();
        std::os::unix::fs::symlink(&outside, inbox.join("zz")).unwrap();
        let top = File::open(&inbox).unwrap();
        assert!(matches!(
            open_place(&top, &inbox, path, *folder),
            Err(PlaceError::Changed)
        ));
        // A real folder that is not the listed one is refused too.
        std::fs::remove_file(inbox.join("zz")).unwrap();
        std::fs::create_dir(inbox.join("zz")).unwrap();
        assert!(matches!(
            open_place(&top, &inbox, path, *folder),
            Err(PlaceError::Changed)
        ));
        // A link as the entry itself is moved as a link.
        std::os::unix::fs::symlink(outside.join("pseudonym.key"), inbox.join("zz/l")).unwrap();
        let p = open_place(&top, &inbox, &inbox.join("zz/l"), None)
            .ok()
            .unwrap();
        p.rename_to(&dir.path().join("moved")).unwrap();
        assert!(std::fs::symlink_metadata(dir.path().join("moved"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read(outside.join("pseudonym.key")).unwrap(),
            b"real"
        );
    }
}
