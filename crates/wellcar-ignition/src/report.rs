//! Validation report entries: a severity, the JSON path of the offending field and Ignition's
//! message for it.
//!
//! Paths are dotted, with list indices as numbers (`storage.files.2.path`); the root is `$`.

use std::fmt;

/// How serious a report entry is. Only errors make a config invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The config is rejected.
    Error,
    /// Reported, but the config is still used.
    Warning,
}

/// One finding about a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Error or warning.
    pub severity: Severity,
    /// JSON path of the field, e.g. `storage.files.0.path`; `$` for the whole config.
    pub path: String,
    /// Ignition's message, e.g. `path not absolute`.
    pub message: String,
}

impl Entry {
    /// An error at `path`.
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
        }
    }

    /// A warning at `path`.
    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            path: path.into(),
            message: message.into(),
        }
    }

    /// True for [`Severity::Error`].
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{kind} at {}: {}", self.path, self.message)
    }
}

/// Joins a parent path and a child key or index: `join("storage", "files")` → `storage.files`.
pub(crate) fn join(parent: &str, child: impl fmt::Display) -> String {
    if parent.is_empty() || parent == "$" {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}
