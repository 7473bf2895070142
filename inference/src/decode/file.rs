//! Reading a scan file from an untrusted folder: never through a symbolic link, never
//! from a FIFO, device or socket (a link to /dev/zero or a FIFO would otherwise grow
//! memory without end or hang), and never more than a configured number of bytes.
//!
//! The type and size are checked with `fstat` on the descriptor that is then read, so a
//! file swapped between listing and opening is judged by what was actually opened.

use std::ffi::{CString, OsStr};
use std::fs::{File, Metadata};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Default for the largest scan read (512 MiB): longer than any clinical clip.
pub const DEFAULT_MAX_SCAN_BYTES: u64 = 512 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReadScanError {
    #[error("is a symbolic link; scans are never read through links")]
    Symlink,
    #[error("is a {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    #[error("is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("grew past the limit of {limit} bytes while being read")]
    Grew { limit: u64 },
    #[error("vanished before it could be read")]
    Vanished,
    #[error("cannot be read: permission denied")]
    PermissionDenied,
    #[error("cannot be read: {0}")]
    Io(std::io::Error),
}

impl ReadScanError {
    fn from_io(e: std::io::Error) -> Self {
        match e.kind() {
            ErrorKind::NotFound => Self::Vanished,
            ErrorKind::PermissionDenied => Self::PermissionDenied,
            // O_NOFOLLOW on a link fails with ELOOP.
            _ if e.raw_os_error() == Some(libc::ELOOP) => Self::Symlink,
            _ => Self::Io(e),
        }
    }
}

/// What kind of non-regular file `meta` describes, for the error message.
pub fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "symbolic link"
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else if t.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

fn check(meta: &Metadata, limit: u64) -> Result<(), ReadScanError> {
    if meta.file_type().is_symlink() {
        return Err(ReadScanError::Symlink);
    }
    if !meta.file_type().is_file() {
        return Err(ReadScanError::NotRegular {
            kind: kind_of(meta),
        });
    }
    if meta.len() > limit {
        return Err(ReadScanError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    Ok(())
}

/// Opens `path` without following a link and without blocking, and checks on the
/// opened descriptor that it is a regular file of at most `limit` bytes. Devices and
/// FIFOs are refused by `lstat` before they are opened (opening some devices has
/// effects), and again by `fstat` after.
pub fn open_scan(path: &Path, limit: u64) -> Result<(File, Metadata), ReadScanError> {
    let pre = std::fs::symlink_metadata(path).map_err(ReadScanError::from_io)?;
    check(&pre, limit)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(ReadScanError::from_io)?;
    let meta = file.metadata().map_err(ReadScanError::Io)?;
    check(&meta, limit)?;
    Ok((file, meta))
}

/// `name` as a C string for the `*at` calls; a name with a NUL byte cannot exist.
fn c_name(name: &OsStr) -> std::io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))
}

/// Opens the directory `name` inside the already-open directory `dir`, never through
/// a link (`O_NOFOLLOW`): a patient folder swapped for a link after the listing fails
/// here (`ENOTDIR` on Linux, `ELOOP` elsewhere) instead of leading outside the inbox.
pub fn open_dir_at(dir: &File, name: &OsStr) -> std::io::Result<File> {
    let c = c_name(name)?;
    // SAFETY: `dir` is an open descriptor and `c` a NUL-terminated string; the
    // returned descriptor is owned by the `File` built from it.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `lstat` of `name` inside `dir` (`fstatat` with `AT_SYMLINK_NOFOLLOW`): the entry
/// itself, never what a link points to.
pub fn lstat_at(dir: &File, name: &OsStr) -> std::io::Result<libc::stat> {
    let c = c_name(name)?;
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, NUL-terminated name, and a writable `stat`.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

fn kind_of_mode(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFLNK => "symbolic link",
        libc::S_IFDIR => "directory",
        libc::S_IFIFO => "FIFO",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFSOCK => "socket",
        libc::S_IFREG => "regular file",
        _ => "special file",
    }
}

/// `open_scan` relative to an open directory: the entry `name` inside `dir` is
/// checked with `fstatat` (no link followed, devices and FIFOs never opened), opened
/// with `openat(O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC)`, and judged again with `fstat` on
/// the descriptor. Nothing here resolves a path, so no component can be a link.
pub fn open_scan_at(
    dir: &File,
    name: &OsStr,
    limit: u64,
) -> Result<(File, Metadata), ReadScanError> {
    let st = lstat_at(dir, name).map_err(ReadScanError::from_io)?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFLNK => return Err(ReadScanError::Symlink),
        libc::S_IFREG => {}
        m => {
            return Err(ReadScanError::NotRegular {
                kind: kind_of_mode(m),
            })
        }
    }
    if st.st_size as u64 > limit {
        return Err(ReadScanError::TooLarge {
            size: st.st_size as u64,
            limit,
        });
    }
    let c = c_name(name).map_err(ReadScanError::Io)?;
    // SAFETY: as in `open_dir_at`.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        return Err(ReadScanError::from_io(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    let meta = file.metadata().map_err(ReadScanError::Io)?;
    check(&meta, limit)?;
    Ok((file, meta))
}

/// Reads an opened scan, at most `limit` bytes whatever it grows to meanwhile.
pub fn read_opened(file: File, meta: &Metadata, limit: u64) -> Result<Vec<u8>, ReadScanError> {
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(meta.len() as usize)
        .map_err(|e| ReadScanError::Io(std::io::Error::other(e)))?;
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadScanError::from_io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadScanError::Grew { limit });
    }
    Ok(bytes)
}

/// `open_scan` then `read_opened`.
pub fn read_scan(path: &Path, limit: u64) -> Result<Vec<u8>, ReadScanError> {
    let (file, meta) = open_scan(path, limit)?;
    read_opened(file, &meta, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_fifos_devices_and_oversize_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("ok.bin"), b"0123456789").unwrap();
        assert_eq!(read_scan(&d.join("ok.bin"), 10).unwrap(), b"0123456789");
        assert!(matches!(
            read_scan(&d.join("ok.bin"), 9),
            Err(ReadScanError::TooLarge { size: 10, limit: 9 })
        ));
        std::os::unix::fs::symlink("/dev/zero", d.join("zero")).unwrap();
        assert!(matches!(
            read_scan(&d.join("zero"), 1 << 20),
            Err(ReadScanError::Symlink)
        ));
        std::os::unix::fs::symlink(d.join("ok.bin"), d.join("good-link")).unwrap();
        assert!(matches!(
            read_scan(&d.join("good-link"), 1 << 20),
            Err(ReadScanError::Symlink)
        ));
        assert!(matches!(
            read_scan(Path::new("/dev/zero"), 1 << 20),
            Err(ReadScanError::NotRegular {
                kind: "character device"
            })
        ));
        assert!(matches!(
            read_scan(d, 1 << 20),
            Err(ReadScanError::NotRegular { kind: "directory" })
        ));
        assert!(matches!(
            read_scan(&d.join("gone"), 1 << 20),
            Err(ReadScanError::Vanished)
        ));
        let sock = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
        assert!(read_scan(&d.join("sock"), 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("socket"));
        drop(sock);
    }

    #[test]
    fn a_file_that_grows_after_the_check_is_cut_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("growing");
        std::fs::write(&p, vec![1u8; 100]).unwrap();
        let (file, meta) = open_scan(&p, 150).unwrap();
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(&[2u8; 100])
            .unwrap();
        assert!(matches!(
            read_opened(file, &meta, 150),
            Err(ReadScanError::Grew { limit: 150 })
        ));
    }
    #[test]
    fn the_at_helpers_never_follow_a_link_in_any_component() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let outside = d.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret.key"), b"secret").unwrap();
        let inbox = d.join("inbox");
        std::fs::create_dir(&inbox).unwrap();
        std::fs::create_dir(inbox.join("real")).unwrap();
        std::fs::write(inbox.join("real/scan.png"), b"scan").unwrap();
        std::os::unix::fs::symlink(&outside, inbox.join("swapped")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.key"), inbox.join("real/link")).unwrap();
        let top = File::open(&inbox).unwrap();
        // A folder that is a link is refused (Linux: ENOTDIR with O_DIRECTORY, else
        // ELOOP), never entered.
        let e = open_dir_at(&top, OsStr::new("swapped")).unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
            "{e}"
        );
        let real = open_dir_at(&top, OsStr::new("real")).unwrap();
        let (f, meta) = open_scan_at(&real, OsStr::new("scan.png"), 100).unwrap();
        assert_eq!(read_opened(f, &meta, 100).unwrap(), b"scan");
        assert!(matches!(
            open_scan_at(&real, OsStr::new("link"), 100),
            Err(ReadScanError::Symlink)
        ));
        assert!(matches!(
            open_scan_at(&top, OsStr::new("real"), 100),
            Err(ReadScanError::NotRegular { kind: "directory" })
        ));
        assert!(matches!(
            open_scan_at(&real, OsStr::new("gone"), 100),
            Err(ReadScanError::Vanished)
        ));
        assert!(matches!(
            open_scan_at(&real, OsStr::new("scan.png"), 3),
            Err(ReadScanError::TooLarge { size: 4, limit: 3 })
        ));
        assert_eq!(
            lstat_at(&top, OsStr::new("swapped")).unwrap().st_mode & libc::S_IFMT,
            libc::S_IFLNK
        );
        assert_eq!(
            std::fs::read(outside.join("secret.key")).unwrap(),
            b"secret"
        );
    }
}
