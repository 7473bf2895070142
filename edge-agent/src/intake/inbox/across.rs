//! Moving an inbox entry to the agent's data folder when the two are on different
//! filesystems (a mounted share as the inbox): rename cannot, so the entry is copied
//! (opened through its folder's descriptor, never following a link) to a temporary
//! name beside its destination, synced, renamed into place, and only then removed
//! from the inbox, and only if it is still the entry that was copied.

use std::ffi::CStr;
use std::fs::File;
use std::io::{Error, ErrorKind, Result};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{Moved, Place, Stamp};

/// Copies the entry at `at` to `dest` (a path on another filesystem), then removes it
/// from the inbox. Regular files are copied byte for byte (mode 0600); a link is made
/// again as a link (never followed); FIFOs, sockets and devices are never opened: an
/// empty placeholder stands for them beside their reason file.
pub(crate) fn copy_across(at: &Place, dest: &Path) -> Result<Moved> {
    let copied = copy_out(at, dest)?;
    remove_if_same(at, &copied)
}

/// Copies the entry to `dest` durably; returns what it was (lstat) when copied.
fn copy_out(at: &Place, dest: &Path) -> Result<libc::stat> {
    let name = at.c_name()?;
    let before = lstat_at(&at.dir, &name)?;
    let dir = dest
        .parent()
        .ok_or_else(|| Error::other("the destination names no folder"))?;
    let tmp = temp_name(dir);
    let made = match before.st_mode & libc::S_IFMT {
        libc::S_IFREG => copy_file(at, &name, &before, &tmp),
        libc::S_IFLNK => {
            read_link_at(&at.dir, &name).and_then(|target| std::os::unix::fs::symlink(target, &tmp))
        }
        _ => create_private(&tmp).map(|f| drop(f.sync_all())),
    };
    let placed = made.and_then(|()| std::fs::rename(&tmp, dest));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()?;
    Ok(before)
}

/// Removes the inbox entry (unlinkat through its folder) only if it is still the one
/// copied (`copied`: its lstat then).
fn remove_if_same(at: &Place, copied: &libc::stat) -> Result<Moved> {
    let name = at.c_name()?;
    match lstat_at(&at.dir, &name) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Moved::Copied),
        Err(e) => return Err(e),
        Ok(now) if (now.st_dev, now.st_ino) != (copied.st_dev, copied.st_ino) => {
            return Ok(Moved::CopiedReplaced)
        }
        Ok(_) => {}
    }
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    let rc = unsafe { libc::unlinkat(at.dir.as_raw_fd(), name.as_ptr(), 0) };
    if rc != 0 {
        let e = Error::last_os_error();
        if e.kind() == ErrorKind::NotFound {
            return Ok(Moved::Copied);
        }
        let meta = metadata_at(&at.dir, &name)?;
        return Ok(Moved::CopiedKept {
            stamp: Stamp::of(&meta),
            error: e.to_string(),
        });
    }
    // The removal is durable before the scan counts as moved (best effort on shares).
    let _ = at.dir.sync_all();
    Ok(Moved::Copied)
}

/// `<dir>/.pleura-copy-<pid>-<nanos>.part`: hidden, and unique to this process.
fn temp_name(dir: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    dir.join(format!(".pleura-copy-{}-{nanos}.part", std::process::id()))
}

fn create_private(p: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(p)
}

fn copy_file(at: &Place, name: &CStr, before: &libc::stat, tmp: &Path) -> Result<()> {
    // SAFETY: a valid directory descriptor and a NUL-terminated name; the result is
    // checked before it is owned. O_NONBLOCK: an entry swapped for a FIFO never blocks.
    let fd = unsafe {
        libc::openat(
            at.dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: a descriptor just opened and owned by nothing else.
    let src = unsafe { File::from_raw_fd(fd) };
    let meta = src.metadata()?;
    if !meta.is_file() || (meta.dev(), meta.ino()) != (before.st_dev, before.st_ino) {
        return Err(Error::other(
            "the inbox entry was replaced while being moved",
        ));
    }
    let mut out = create_private(tmp)?;
    let copied = std::io::copy(&mut &src, &mut out)?;
    out.sync_all()?;
    if src.metadata()?.len() != copied {
        return Err(Error::other(
            "the inbox entry changed size while being copied",
        ));
    }
    Ok(())
}

fn lstat_at(dir: &File, name: &CStr) -> Result<libc::stat> {
    // SAFETY: stat is plain data; fstatat fills it or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid directory descriptor, a NUL-terminated name, a valid out pointer.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(Error::last_os_error());
    }
    Ok(st)
}

/// The entry's metadata, not following a link.
fn metadata_at(dir: &File, name: &CStr) -> Result<std::fs::Metadata> {
    // std offers no fstatat; open the entry as a path descriptor (never reads it).
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: a descriptor just opened and owned by nothing else.
    unsafe { File::from_raw_fd(fd) }.metadata()
}

fn read_link_at(dir: &File, name: &CStr) -> Result<PathBuf> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: a valid directory descriptor, a NUL-terminated name and a buffer of
    // the given length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&buf)))
}

#[cfg(test)]
mod tests {
    use super::super::open_place;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// An inbox folder and a data folder on two filesystems (/dev/shm is tmpfs), or
    /// None (said loudly) where this machine has no second one.
    pub(crate) fn two_filesystems() -> Option<(tempfile::TempDir, tempfile::TempDir)> {
        let inbox = tempfile::tempdir_in("/dev/shm").ok();
        let data = tempfile::tempdir().unwrap();
        match inbox {
            Some(i)
                if std::fs::metadata(i.path()).unwrap().dev()
                    != std::fs::metadata(data.path()).unwrap().dev() =>
            {
                Some((i, data))
            }
            _ => {
                assert!(
                    std::env::var("PLEURA_REQUIRE_MOUNT").as_deref() != Ok("1"),
                    "PLEURA_REQUIRE_MOUNT=1 but /dev/shm and the temp folder are one filesystem"
                );
                eprintln!("SKIPPED: /dev/shm and the temp folder are one filesystem here");
                None
            }
        }
    }

    fn place(inbox: &Path, name: &str) -> Place {
        let top = File::open(inbox).unwrap();
        match open_place(&top, inbox, &inbox.join(name), None) {
            Ok(p) => p,
            Err(_) => panic!("no place for {name}"),
        }
    }

    #[test]
    fn across_filesystems_an_entry_is_copied_synced_and_removed() {
        let Some((inbox, data)) = two_filesystems() else {
            return;
        };
        let (inbox, data) = (inbox.path(), data.path());
        std::fs::write(inbox.join("scan_R1.png"), b"scan bytes").unwrap();
        std::fs::set_permissions(
            inbox.join("scan_R1.png"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let p = place(inbox, "scan_R1.png");
        let e = p.rename_to(&data.join("x")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{e}");
        assert_eq!(p.move_to(&data.join("scan_R1.png")).unwrap(), Moved::Copied);
        assert!(!inbox.join("scan_R1.png").exists());
        assert_eq!(
            std::fs::read(data.join("scan_R1.png")).unwrap(),
            b"scan bytes"
        );
        let mode = std::fs::metadata(data.join("scan_R1.png"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(data).unwrap().count(), 1);

        // A link is moved as a link, its target untouched.
        std::os::unix::fs::symlink(data.join("scan_R1.png"), inbox.join("l")).unwrap();
        assert_eq!(
            place(inbox, "l").move_to(&data.join("l")).unwrap(),
            Moved::Copied
        );
        assert!(std::fs::symlink_metadata(data.join("l"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(std::fs::symlink_metadata(inbox.join("l")).is_err());
    }

    #[test]
    fn an_entry_replaced_after_the_copy_is_left_for_the_next_round() {
        let Some((inbox, data)) = two_filesystems() else {
            return;
        };
        let (inbox, data) = (inbox.path(), data.path());
        std::fs::write(inbox.join("a.png"), b"first").unwrap();
        let p = place(inbox, "a.png");
        let copied = copy_out(&p, &data.join("a.png")).unwrap();
        // Replaced between the copy and the removal: the new file is not removed.
        std::fs::write(inbox.join("b.png"), b"second").unwrap();
        std::fs::rename(inbox.join("b.png"), inbox.join("a.png")).unwrap();
        assert_eq!(remove_if_same(&p, &copied).unwrap(), Moved::CopiedReplaced);
        assert_eq!(std::fs::read(inbox.join("a.png")).unwrap(), b"second");
        assert_eq!(std::fs::read(data.join("a.png")).unwrap(), b"first");
    }
}
