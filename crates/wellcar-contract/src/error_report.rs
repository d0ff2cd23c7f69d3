//! How a failure is reported: the one error type for "an operation on a path failed", and the
//! one-line form of an error with its causes.
//!
//! Contract:
//! - An I/O failure names what was being done and the path it was done to, and keeps the OS
//!   error as its source: [`PathIoError`] displays as `reading /boot/wellcar/state-a`, and its
//!   [`source`](std::error::Error::source) is the `io::Error`. Each crate's error enum wraps it
//!   as `#[error(transparent)] Io(#[from] PathIoError)` rather than declaring its own copy, so
//!   the wording and the fields are the same in every crate.
//! - [`error_chain`] writes an error and each of its causes on one line, separated by `: `
//!   (`reading /x: No such file or directory (os error 2)`): the form logs and test failures
//!   show. A message never repeats its source itself, so the chain names each cause once.

use std::io;
use std::path::{Path, PathBuf};

/// An I/O operation on a path failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}", path.display())]
pub struct PathIoError {
    /// What was being done, as a verb: `reading`, `creating directory`, `syncing`.
    pub action: &'static str,
    /// The file, directory or device.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl PathIoError {
    /// The failure of `action` on `path`.
    pub fn new(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Naming the action and path of an `io::Result`'s error.
pub trait IoResultExt<T> {
    /// This result, its error as a [`PathIoError`] of `action` on `path`.
    fn at_path(self, action: &'static str, path: impl AsRef<Path>) -> Result<T, PathIoError>;
}

impl<T> IoResultExt<T> for io::Result<T> {
    fn at_path(self, action: &'static str, path: impl AsRef<Path>) -> Result<T, PathIoError> {
        self.map_err(|source| PathIoError::new(action, path.as_ref(), source))
    }
}

/// `e` and its causes on one line, separated by `: `.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_action_and_path_and_keeps_the_os_error_as_source() {
        let err =
            std::fs::read("/nonexistent/wellcar-x").at_path("reading", "/nonexistent/wellcar-x");
        let err = err.unwrap_err();
        assert_eq!(err.to_string(), "reading /nonexistent/wellcar-x");
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
        assert_eq!(err.path, Path::new("/nonexistent/wellcar-x"));
        assert_eq!(
            error_chain(&err),
            format!("reading /nonexistent/wellcar-x: {}", err.source)
        );
    }

    #[test]
    fn chain_names_each_cause_once_in_order() {
        #[derive(Debug, thiserror::Error)]
        #[error("loading the state")]
        struct Outer(#[source] PathIoError);
        let inner = PathIoError::new("reading", "/x", io::Error::other("boom"));
        assert_eq!(
            error_chain(&Outer(inner)),
            "loading the state: reading /x: boom"
        );
    }
}
