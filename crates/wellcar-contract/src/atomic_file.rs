//! Crash-safe file writes: the one implementation every Wellcar crate uses.
//!
//! Contract: after [`write()`] (or [`write_new`], [`write_with`]) returns, the file holds exactly
//! the new bytes, durably; if it fails, or the machine loses power half way, a reader sees the
//! old file (or none) and never a partial one. How: a temporary file
//! `.<name>.wellcar-tmp-<pid>-<n>` in the same directory, created exclusively with the final
//! mode (so a secret is never readable by others, not even for a moment), filled, fsynced,
//! then renamed over the final name — a rename replaces a symlink there, it never follows it —
//! and the directory fsynced so the rename itself survives a power cut. [`write_new`] links
//! instead of renaming, so an existing file is kept and the call fails with `AlreadyExists`.
//! On any error the temporary file is removed.
//!
//! Errors are plain [`std::io::Error`]s; callers wrap them in their own error type naming the
//! path and what was being written.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` with `mode`, replacing what was there.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_with(path, mode, |file| file.write_all(bytes)).map(drop)
}

/// Writes `bytes` to `path` with `mode` only if nothing is there: an existing file (or
/// symlink) is kept and the error is `AlreadyExists`.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (mut file, temp) = create_temp(path, mode)?;
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        // link() fails if the target exists: no window where another writer's file is replaced.
        .and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    result?;
    sync_parent(path)
}

/// Writes `path` with `mode` from `fill`, which writes the whole content into the (empty)
/// file, replacing what was there. Returns the new file's size.
pub fn write_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<u64> {
    let (mut file, temp) = create_temp(path, mode)?;
    let result = (|| {
        fill(&mut file)?;
        file.sync_all()?;
        let size = file.metadata()?.len();
        std::fs::rename(&temp, path)?;
        Ok(size)
    })();
    match result {
        Ok(size) => {
            sync_parent(path)?;
            Ok(size)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// fsyncs the directory holding `path`, which makes a rename or link of it durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    File::open(parent_dir(path))?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates a new temporary file next to `path`, exclusively and with `mode`.
fn create_temp(path: &Path, mode: u32) -> io::Result<(File, PathBuf)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = parent_dir(path);
    let mut attempt = 0u32;
    loop {
        let temp = dir.join(format!(
            ".{name}.wellcar-tmp-{}-{attempt}",
            std::process::id()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
        {
            Ok(file) => {
                // The umask may have narrowed `mode`; the contract is the mode asked for.
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(std::fs::Permissions::from_mode(mode))?;
                return Ok((file, temp));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("wellcar-tmp"))
            .collect()
    }

    #[test]
    fn replaces_with_the_mode_asked_for_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, b"one", 0o600).unwrap();
        assert_eq!(
            (std::fs::read(&path).unwrap(), mode(&path)),
            (b"one".to_vec(), 0o600)
        );
        write(&path, b"two", 0o644).unwrap();
        assert_eq!(
            (std::fs::read(&path).unwrap(), mode(&path)),
            (b"two".to_vec(), 0o644)
        );
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn write_new_keeps_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_new(&path, b"first", 0o600).unwrap();
        let err = write_new(&path, b"second", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn replaces_a_symlink_instead_of_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        write(&link, b"new", 0o644).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read(&link).unwrap(), b"new");
    }

    #[test]
    fn a_failing_fill_keeps_the_old_file_and_removes_the_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write(&path, b"old", 0o644).unwrap();
        let err = write_with(&path, 0o644, |file| {
            file.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
        assert_eq!(
            write_with(&path, 0o644, |f| f.write_all(b"12345")).unwrap(),
            5
        );
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/f");
        assert_eq!(
            write(&path, b"x", 0o644).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
