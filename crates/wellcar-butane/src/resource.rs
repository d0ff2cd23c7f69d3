//! Embedding contents in a config: data URLs (Butane picks the shortest of percent-escaped,
//! base64, and gzip+base64) and reading `local` files confined to the `--files-dir`.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use flate2::write::GzEncoder;
use flate2::Compression;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// Characters a data URL keeps literal (RFC 2397's unreserved marks, as Butane's escaper).
const DATA_URL_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// A data URL for `contents` and the `compression` value to set alongside it.
///
/// `may_compress`: the user did not compress the contents already and the field has a
/// `compression` key. The result's compression is `Some("")` or `Some("gzip")` when the
/// compression key should be set (so a child config cannot inherit a parent's compression),
/// `None` when it must be left as the user wrote it.
pub fn data_url(contents: &[u8], may_compress: bool) -> (String, Option<&'static str>) {
    let escaped = format!(
        ",{}",
        percent_encoding::percent_encode(contents, DATA_URL_ESCAPE)
    );
    let b64 = format!(
        ";base64,{}",
        base64::engine::general_purpose::STANDARD.encode(contents)
    );
    let mut opaque = if b64.len() < escaped.len() {
        b64
    } else {
        escaped
    };
    let mut compression = may_compress.then_some("");
    if may_compress {
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        let compressed = gz.write_all(contents).and_then(|()| gz.finish());
        if let Ok(compressed) = compressed {
            let gz = format!(
                ";base64,{}",
                base64::engine::general_purpose::STANDARD.encode(compressed)
            );
            if gz.len() + "gzip".len() < opaque.len() {
                opaque = gz;
                compression = Some("gzip");
            }
        }
    }
    (format!("data:{opaque}"), compression)
}

/// Why a `local` file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// No `--files-dir` was given.
    #[error("local file paths are relative to a files directory that must be specified with -d/--files-dir")]
    NoFilesDir,
    /// The path leaves the files directory (`..`, absolute).
    #[error("local file path traverses outside the files directory")]
    Escape,
    /// Reading failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The path of `relative` inside `files_dir`, refusing any path that leaves it lexically.
pub fn local_path(files_dir: Option<&Path>, relative: &str) -> Result<PathBuf, LocalError> {
    let dir = files_dir.ok_or(LocalError::NoFilesDir)?;
    let mut depth = 0usize;
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth.checked_sub(1).ok_or(LocalError::Escape)?;
            }
            Component::RootDir | Component::Prefix(_) => return Err(LocalError::Escape),
        }
    }
    Ok(dir.join(relative))
}

/// Reads `relative` from the files directory.
pub fn read_local(files_dir: Option<&Path>, relative: &str) -> Result<Vec<u8>, LocalError> {
    let path = local_path(files_dir, relative)?;
    std::fs::read(&path).map_err(|source| LocalError::Read { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_percent_escaped_like_butane() {
        let (url, compression) = data_url(b"Hello, world!", true);
        assert_eq!(url, "data:,Hello%2C%20world!");
        assert_eq!(compression, Some(""));
    }

    #[test]
    fn repetitive_text_is_gzipped_and_binary_is_base64() {
        let (url, compression) = data_url(&[b'a'; 4000], true);
        assert!(url.starts_with("data:;base64,"), "{url}");
        assert_eq!(compression, Some("gzip"));
        let binary: Vec<u8> = (128u8..160).collect();
        let (url, compression) = data_url(&binary, false);
        assert!(url.starts_with("data:;base64,gIG"), "{url}");
        assert_eq!(compression, None);
    }

    #[test]
    fn local_paths_stay_inside_the_files_dir() {
        let dir = Path::new("/files");
        assert_eq!(
            local_path(Some(dir), "a/../b").unwrap(),
            Path::new("/files/a/../b")
        );
        assert!(matches!(
            local_path(Some(dir), "../x"),
            Err(LocalError::Escape)
        ));
        assert!(matches!(
            local_path(Some(dir), "/etc/passwd"),
            Err(LocalError::Escape)
        ));
        assert!(matches!(local_path(None, "x"), Err(LocalError::NoFilesDir)));
    }
}
