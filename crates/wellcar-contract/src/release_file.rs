//! `/usr/share/flatcar/release`: the image's identity in the form Flatcar's update_engine reads.
//!
//! Contract: the image builder writes this file into every image, and the update agent reads it
//! (then `/usr/share/flatcar/update.conf` and `/etc/flatcar/update.conf`, whose keys override
//! it), so scripts written for Flatcar find the same three keys:
//!
//! ```text
//! FLATCAR_RELEASE_VERSION=1.2.3
//! FLATCAR_RELEASE_BOARD=amd64-usr
//! FLATCAR_RELEASE_APPID={66ccd106-e1a0-49f8-92cf-29995de7c384}
//! ```
//!
//! Lines are `KEY=VALUE` (no quoting, as update_engine's key-value store reads them); blank
//! lines and `#` comments are skipped, other keys are kept out of the result and allowed. A line
//! without `=`, a version that is not an [`OsVersion`], an empty board or app id, or a missing
//! key is an error naming the file and the line.

use std::path::{Path, PathBuf};

use crate::version::OsVersion;

/// Where the release file is in an image.
pub const RELEASE_FILE: &str = "/usr/share/flatcar/release";

/// Wellcar's Omaha application id (the `appid` its update agent sends by default).
pub const WELLCAR_APP_ID: &str = "66ccd106-e1a0-49f8-92cf-29995de7c384";

/// Flatcar Container Linux's Omaha application id.
pub const FLATCAR_APP_ID: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";

/// The three keys of the release file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseFile {
    /// `FLATCAR_RELEASE_VERSION`.
    pub version: OsVersion,
    /// `FLATCAR_RELEASE_BOARD` (`amd64-usr`).
    pub board: String,
    /// `FLATCAR_RELEASE_APPID`, as written (with or without braces).
    pub app_id: String,
}

/// Why a release file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {problem}")]
pub struct ReleaseFileError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number (0: the file as a whole, for a missing key).
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

impl ReleaseFile {
    /// The file's text.
    pub fn render(&self) -> String {
        format!(
            "FLATCAR_RELEASE_VERSION={}\nFLATCAR_RELEASE_BOARD={}\nFLATCAR_RELEASE_APPID={}\n",
            self.version, self.board, self.app_id
        )
    }

    /// Parses the text of the file at `path` (named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<ReleaseFile, ReleaseFileError> {
        let fail = |line: usize, problem: String| ReleaseFileError {
            path: path.to_path_buf(),
            line,
            problem,
        };
        let (mut version, mut board, mut app_id) = (None, None, None);
        for (index, raw) in text.lines().enumerate() {
            let number = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| fail(number, format!("`{line}` is not KEY=VALUE")))?;
            let (key, value) = (key.trim(), value.trim());
            let nonempty = |value: &str| {
                if value.is_empty() {
                    Err(fail(number, format!("{key} is empty")))
                } else {
                    Ok(value.to_string())
                }
            };
            match key {
                "FLATCAR_RELEASE_VERSION" => {
                    let parsed =
                        OsVersion::parse(value).map_err(|e| fail(number, format!("{key}: {e}")))?;
                    version = Some(parsed);
                }
                "FLATCAR_RELEASE_BOARD" => board = Some(nonempty(value)?),
                "FLATCAR_RELEASE_APPID" => app_id = Some(nonempty(value)?),
                _ => {}
            }
        }
        let missing = |key: &str| fail(0, format!("{key} is missing"));
        Ok(ReleaseFile {
            version: version.ok_or_else(|| missing("FLATCAR_RELEASE_VERSION"))?,
            board: board.ok_or_else(|| missing("FLATCAR_RELEASE_BOARD"))?,
            app_id: app_id.ok_or_else(|| missing("FLATCAR_RELEASE_APPID"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ReleaseFile {
        ReleaseFile {
            version: OsVersion::parse("3815.2.0").unwrap(),
            board: "amd64-usr".into(),
            app_id: format!("{{{WELLCAR_APP_ID}}}"),
        }
    }

    #[test]
    fn renders_flatcars_three_lines_and_reads_them_back() {
        let text = sample().render();
        assert_eq!(
            text,
            "FLATCAR_RELEASE_VERSION=3815.2.0\nFLATCAR_RELEASE_BOARD=amd64-usr\n\
             FLATCAR_RELEASE_APPID={66ccd106-e1a0-49f8-92cf-29995de7c384}\n"
        );
        assert_eq!(
            ReleaseFile::parse(&text, Path::new(RELEASE_FILE)).unwrap(),
            sample()
        );
    }

    #[test]
    fn comments_blank_lines_and_other_keys_are_skipped() {
        let text = format!(
            "# made by hand\n\nFLATCAR_RELEASE_EXTRA=1\n{}",
            sample().render()
        );
        assert_eq!(ReleaseFile::parse(&text, Path::new("r")).unwrap(), sample());
    }

    #[test]
    fn a_malformed_line_is_named_by_file_and_number() {
        let text = "FLATCAR_RELEASE_VERSION=1.2.3\nFLATCAR_RELEASE_BOARD amd64-usr\n";
        let err = ReleaseFile::parse(text, Path::new("/usr/share/flatcar/release")).unwrap_err();
        assert_eq!(err.line, 2);
        let msg = err.to_string();
        assert!(
            msg.starts_with("/usr/share/flatcar/release:2: ") && msg.contains("KEY=VALUE"),
            "{msg}"
        );
        let err = ReleaseFile::parse("FLATCAR_RELEASE_VERSION=v1\n", Path::new("r")).unwrap_err();
        assert_eq!(
            (err.line, err.problem.contains("FLATCAR_RELEASE_VERSION")),
            (1, true)
        );
        let err = ReleaseFile::parse("FLATCAR_RELEASE_VERSION=1.2.3\n", Path::new("r"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("FLATCAR_RELEASE_BOARD is missing"), "{err}");
    }
}
