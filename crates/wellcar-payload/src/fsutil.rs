//! Crash-safe file writes: temp file in the same directory, fsync, rename (or link), fsync
//! the directory. A reader sees the old file or the complete new one, never a partial one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Temp path next to `path`, unique to this process.
pub(crate) fn temp_path(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Creates (truncating) a temp file next to `path` with `mode`.
pub(crate) fn create_temp(path: &Path, tag: &str, mode: u32) -> io::Result<(File, PathBuf)> {
    let temp = temp_path(path, tag);
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)?;
    Ok((file, temp))
}

/// fsyncs the directory holding `path`, making a rename durable.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Writes `bytes` to `path` atomically with `mode`. With `replace == false`, fails with
/// `AlreadyExists` (leaving the existing file alone) instead of replacing it.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> io::Result<()> {
    let (mut file, temp) = create_temp(path, "tmp", mode)?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        if replace {
            std::fs::rename(&temp, path)
        } else {
            // link() fails if the target exists: no window where another writer's file is
            // replaced.
            std::fs::hard_link(&temp, path)
        }
    })();
    if result.is_err() || !replace {
        let _ = std::fs::remove_file(&temp);
    }
    result?;
    sync_parent(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_with_mode_and_refuses_to_replace_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one", 0o600, false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = write_atomic(&path, b"two", 0o600, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        write_atomic(&path, b"three", 0o644, true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp files left behind");
    }
}
