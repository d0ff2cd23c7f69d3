//! [`ApplyPolicy`]: which payloads this system accepts (board, version order, minimum
//! source version) and how often an apply syncs.
//!
//! Contract: [`ApplyPolicy::check`] runs on the authenticated manifest before anything is
//! written, and refuses a payload for another board, one not newer than the running version
//! (unless forced), or one that needs a newer running version.

use wellcar_contract::OsVersion;

use super::{ApplyError, DEFAULT_SYNC_INTERVAL};
use crate::format::{FormatError, Manifest};

/// What this system accepts.
#[derive(Debug, Clone)]
pub struct ApplyPolicy {
    /// This system's board; the payload's must be equal.
    pub board: String,
    /// The running version; `None` skips version checks (fresh install, tests).
    pub current_version: Option<String>,
    /// Install even when the payload is not newer.
    pub force: bool,
    /// Bytes written between fsyncs / durable checkpoints.
    pub sync_interval: u64,
}

impl ApplyPolicy {
    /// A policy for `board` and `current_version`, not forced, default sync interval.
    pub fn new(board: impl Into<String>, current_version: Option<String>) -> Self {
        Self {
            board: board.into(),
            current_version,
            force: false,
            sync_interval: DEFAULT_SYNC_INTERVAL,
        }
    }

    /// Checks a manifest against this policy.
    pub fn check(&self, manifest: &Manifest) -> Result<(), ApplyError> {
        if manifest.board != self.board {
            return Err(ApplyError::WrongBoard {
                payload: manifest.board.clone(),
                expected: self.board.clone(),
            });
        }
        let Some(current_text) = &self.current_version else {
            return Ok(());
        };
        let current =
            OsVersion::parse(current_text).map_err(|reason| ApplyError::InvalidCurrentVersion {
                version: current_text.clone(),
                reason,
            })?;
        // Validated by Manifest::parse.
        let target =
            OsVersion::parse(&manifest.version).map_err(|e| FormatError::InvalidManifest {
                field: "version".into(),
                reason: e.to_string(),
            })?;
        if let Some(min_text) = &manifest.min_source_version {
            let min = OsVersion::parse(min_text).map_err(|e| FormatError::InvalidManifest {
                field: "min_source_version".into(),
                reason: e.to_string(),
            })?;
            if current < min {
                return Err(ApplyError::SourceTooOld {
                    min: min_text.clone(),
                    current: current_text.clone(),
                });
            }
        }
        if target <= current && !self.force {
            return Err(ApplyError::NotNewer {
                payload: manifest.version.clone(),
                current: current_text.clone(),
            });
        }
        Ok(())
    }
}
