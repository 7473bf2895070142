//! Case data and keys are for the hub's user only: `data_dir` and everything in it are
//! made 0700 (directories) / 0600 (files) at start, which also repairs files left
//! readable by an older version or a restore. `hub-server serve` also runs with umask
//! 0077, so files the store creates later are private from birth.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (0700) if needed, then takes group and other permissions off it and
/// everything below it. Symbolic links are not followed.
pub fn private_tree(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    restrict(dir)
}

fn restrict(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            restrict(&entry?.path())?;
        }
    }
    Ok(())
}

/// Paths under `dir` that group or others may access (for tests and checks).
pub fn exposed(dir: &Path) -> std::io::Result<Vec<(String, u32)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p)?;
        let mode = meta.permissions().mode() & 0o777;
        if !meta.file_type().is_symlink() && mode & 0o077 != 0 {
            out.push((p.display().to_string(), mode));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_readable_files_and_dirs_are_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("cases.sled/blobs")).unwrap();
        std::fs::write(data.join("audit.log"), "x").unwrap();
        std::fs::write(data.join("cases.sled/db"), "x").unwrap();
        for (p, m) in [
            (data.clone(), 0o755),
            (data.join("cases.sled"), 0o755),
            (data.join("audit.log"), 0o644),
            (data.join("cases.sled/db"), 0o664),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        }
        assert_eq!(exposed(&data).unwrap().len(), 5);
        private_tree(&data).unwrap();
        assert_eq!(exposed(&data).unwrap(), vec![]);
        let m = std::fs::metadata(data.join("audit.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o600);

        let fresh = tmp.path().join("a/b");
        private_tree(&fresh).unwrap();
        assert_eq!(exposed(&fresh).unwrap(), vec![]);
    }
}
