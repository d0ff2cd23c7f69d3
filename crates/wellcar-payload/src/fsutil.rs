//! The scratch file `wellcar payload create` compresses blobs into before it knows the
//! manifest. Finished files are written with [`wellcar_contract::atomic_file`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Creates (truncating) a scratch file `.<name>.<tag>-<pid>` next to `path` with `mode`.
pub(crate) fn create_temp(path: &Path, tag: &str, mode: u32) -> io::Result<(File, PathBuf)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{tag}-{}", std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)?;
    Ok((file, temp))
}
