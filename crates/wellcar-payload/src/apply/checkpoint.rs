//! The durable resume point of an apply, and where partial kernel and initramfs files live.
//!
//! Contract: a [`Checkpoint`] names the payload (digest of header and manifest) and the
//! first operation not yet durable; it is saved atomically (temp + fsync + rename), and
//! [`super::Installer::resume`] re-derives its offset from the authenticated manifest
//! instead of trusting the file.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ApplyError;
use crate::format::Sha256Digest;
use wellcar_contract::atomic_file;

/// A durable resume point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// sha256 of the payload's header and manifest; resume refuses another payload.
    pub payload_digest: Sha256Digest,
    /// Offset of the first data byte (the head is `0..data_start`).
    pub data_start: u64,
    /// Payload bytes consumed, verified, written and synced: resume the download here.
    pub payload_offset: u64,
    /// Index of the next operation to apply.
    pub next_operation: usize,
}

impl Checkpoint {
    /// Writes the checkpoint as JSON, temp + fsync + rename.
    pub fn save(&self, path: &Path) -> Result<(), ApplyError> {
        let json = serde_json::to_vec(self).expect("a checkpoint always serializes");
        atomic_file::write(path, &json, 0o644).map_err(|source| ApplyError::CheckpointFile {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads a checkpoint saved by [`Checkpoint::save`].
    pub fn load(path: &Path) -> Result<Self, ApplyError> {
        let err = |source| ApplyError::CheckpointFile {
            path: path.to_owned(),
            source,
        };
        let bytes = std::fs::read(path).map_err(err)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e)))
    }
}

/// Temp path where a kernel or initramfs is assembled.
pub fn partial_path(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!(".{name}.wellcar-partial"))
}
