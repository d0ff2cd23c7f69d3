//! [`ApplyError`]: every way applying or verifying a payload can fail.
//!
//! Contract: each variant names what failed and where (payload offset, operation index or
//! target), and any of them means the target slot must not be marked bootable.

use std::io;
use std::path::PathBuf;

use wellcar_contract::{RootHash, VersionError};

use crate::format::{FormatError, Sha256Digest};

/// What went wrong applying or verifying a payload. Every variant leaves the target slot in
/// a state the caller must not mark bootable.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The header, manifest or signature is bad (see [`FormatError`]).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The payload is for another board.
    #[error("payload is for board {payload:?}, this system is {expected:?}")]
    WrongBoard {
        /// Board in the payload.
        payload: String,
        /// This system's board.
        expected: String,
    },
    /// The payload's version is not newer than the running one.
    #[error("payload version {payload} is not newer than the running version {current} (force to install anyway)")]
    NotNewer {
        /// Payload version.
        payload: String,
        /// Running version.
        current: String,
    },
    /// The running version is older than the payload's minimum source version.
    #[error("payload requires running version {min} or newer, this system runs {current}")]
    SourceTooOld {
        /// Minimum source version.
        min: String,
        /// Running version.
        current: String,
    },
    /// The caller's running version is not an [`OsVersion`](wellcar_contract::OsVersion).
    #[error("running version {version:?} is invalid: {reason}")]
    InvalidCurrentVersion {
        /// The version.
        version: String,
        /// Why.
        reason: VersionError,
    },
    /// The target cannot hold the /usr image.
    #[error("target {target} has {size} bytes, the /usr image needs {needed}")]
    TargetTooSmall {
        /// The target.
        target: String,
        /// Its size.
        size: u64,
        /// The image size.
        needed: u64,
    },
    /// The data stream ended inside an operation's blob.
    #[error("payload truncated at byte {offset} inside the blob of operation {operation}")]
    Truncated {
        /// Payload offset where data ran out.
        offset: u64,
        /// Operation index.
        operation: usize,
    },
    /// Reading the data stream failed.
    #[error("reading payload at byte {offset} (operation {operation})")]
    Read {
        /// Payload offset.
        offset: u64,
        /// Operation index.
        operation: usize,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A blob's sha256 differs from the manifest's.
    #[error("blob of operation {operation} at payload byte {offset} has sha256 {actual}, manifest says {expected}")]
    BlobHashMismatch {
        /// Operation index.
        operation: usize,
        /// Payload offset of the blob.
        offset: u64,
        /// From the manifest.
        expected: Sha256Digest,
        /// Computed.
        actual: Sha256Digest,
    },
    /// An authentic blob did not decompress to its declared size (a writer bug).
    #[error("blob of operation {operation} at payload byte {offset} does not decompress to {expected} bytes: {reason}")]
    Decompress {
        /// Operation index.
        operation: usize,
        /// Payload offset of the blob.
        offset: u64,
        /// Declared size.
        expected: u64,
        /// Why.
        reason: String,
    },
    /// The stream goes on after the last operation's blob.
    #[error("payload has unexpected data after its last blob, at byte {offset}")]
    TrailingData {
        /// Payload offset.
        offset: u64,
    },
    /// Writing, syncing or reading back a target failed.
    #[error("{action} {target} at byte {offset}")]
    Target {
        /// "writing", "syncing", "reading back", "opening", "renaming".
        action: &'static str,
        /// The target.
        target: String,
        /// Offset in the target.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `finish` was called before all operations were applied.
    #[error("apply is incomplete: {done} of {total} operations applied")]
    Incomplete {
        /// Operations done.
        done: usize,
        /// Operations in the payload.
        total: usize,
    },
    /// A finished image's content is not what the manifest says.
    #[error("{image} on the target has sha256 {actual}, manifest says {expected}")]
    ImageMismatch {
        /// "usr", "kernel" or "initramfs".
        image: &'static str,
        /// From the manifest.
        expected: Sha256Digest,
        /// Read back.
        actual: String,
    },
    /// The /usr data does not hash to the manifest's dm-verity root.
    #[error("/usr on the target has dm-verity root {actual}, manifest says {expected}")]
    VerityMismatch {
        /// From the manifest.
        expected: RootHash,
        /// Computed.
        actual: String,
    },
    /// A delta payload was given no source slot to read from.
    #[error("payload is a delta from version {source_version}; it needs the source slot (--source, or the booted USR partition)")]
    DeltaNeedsSource {
        /// The version the delta was made against.
        source_version: String,
    },
    /// The delta was made against another version than the one running.
    #[error("payload is a delta from version {delta_source}, but this system runs {running}")]
    DeltaSourceVersion {
        /// The source version the delta names.
        delta_source: String,
        /// The running version.
        running: String,
    },
    /// The source slot is smaller than the region the delta's source covers.
    #[error("source slot {source_slot} has {size} bytes, the delta's source covers {needed}")]
    SourceTooSmall {
        /// The source.
        source_slot: String,
        /// Its size.
        size: u64,
        /// Bytes the delta's source verity region covers.
        needed: u64,
    },
    /// The source slot does not hash to the dm-verity root the delta names.
    #[error("source slot {source_slot} has dm-verity root {actual}, the delta needs {expected}: not the slot this delta was made from (or corrupted)")]
    SourceRootMismatch {
        /// The source.
        source_slot: String,
        /// Root hash the delta names.
        expected: RootHash,
        /// Computed.
        actual: String,
    },
    /// A delta copies from the source slot's kernel or initramfs, and that file was not given.
    #[error(
        "payload is a delta that reads the source slot's {file}, and no source {file} was given"
    )]
    DeltaNeedsSourceFile {
        /// `kernel` or `initramfs`.
        file: &'static str,
    },
    /// The source slot's kernel or initramfs is not the file the delta names.
    #[error("source {file} {path} {actual}, the delta needs sha256 {expected}: not the slot this delta was made from")]
    SourceFileMismatch {
        /// `kernel` or `initramfs`.
        file: &'static str,
        /// The file.
        path: String,
        /// sha256 the delta names.
        expected: Sha256Digest,
        /// What it is (`has sha256 … (N bytes)`), or why it cannot be read.
        actual: String,
    },
    /// Reading the source slot failed.
    #[error("reading source slot {source_slot} at byte {offset}")]
    SourceRead {
        /// The source.
        source_slot: String,
        /// Offset in the source.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The source extents of an operation do not have the hash the manifest gives (the source
    /// changed after it was verified).
    #[error(
        "source extents of operation {operation} have sha256 {actual}, manifest says {expected}"
    )]
    SourceHashMismatch {
        /// Operation index.
        operation: usize,
        /// From the manifest.
        expected: Sha256Digest,
        /// Computed.
        actual: Sha256Digest,
    },
    /// An authentic patch did not decode against its source extents.
    #[error("patch of operation {operation} at payload byte {offset} does not decode: {reason}")]
    Patch {
        /// Operation index.
        operation: usize,
        /// Payload offset of the patch.
        offset: u64,
        /// Why.
        reason: String,
    },
    /// A patch's output does not have the hash the manifest gives.
    #[error("output of the patch of operation {operation} has sha256 {actual}, manifest says {expected}")]
    PatchOutputMismatch {
        /// Operation index.
        operation: usize,
        /// From the manifest.
        expected: Sha256Digest,
        /// Computed.
        actual: Sha256Digest,
    },
    /// The hash area a `verity_tree` operation rebuilt is not the one the manifest names.
    #[error("operation {operation} (verity_tree): {reason}")]
    VerityTree {
        /// Operation index.
        operation: usize,
        /// What differs.
        reason: String,
    },
    /// A saved checkpoint does not belong to this payload.
    #[error("checkpoint does not match this payload: {reason}")]
    CheckpointMismatch {
        /// Why.
        reason: String,
    },
    /// Saving or loading a checkpoint file failed.
    #[error("checkpoint file {path}")]
    CheckpointFile {
        /// The file.
        path: PathBuf,
        /// The I/O error (or JSON error, as invalid data).
        #[source]
        source: io::Error,
    },
}
