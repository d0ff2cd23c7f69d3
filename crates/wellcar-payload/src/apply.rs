//! Applying a payload to the inactive slot, streaming and resumable; and verifying one
//! without writing.
//!
//! Contract of [`Installer`]:
//! - It is built only from a [`VerifiedHead`] (signature checked) and checks board, version
//!   and target size before it writes anything.
//! - [`Installer::write_from`] consumes the data section from any `Read` starting at
//!   [`Checkpoint::payload_offset`]. Each blob is buffered (at most [`MAX_BLOB_LEN`]), its
//!   sha256 checked against the manifest, and only then decompressed and written. /usr goes to
//!   a [`UsrTarget`] (block device or pre-sized file); kernel and initramfs go to
//!   `.NAME.wellcar-partial` temp files next to their final paths.
//! - Progress becomes durable in steps: after at least `sync_interval` written bytes the
//!   targets are fsynced and the [`Checkpoint`] advances (and is reported to the caller's
//!   callback, who persists it). On a failed read the installer syncs what it completed and
//!   the checkpoint moves to the end of the last whole operation, so the caller resumes with
//!   an HTTP Range request from `payload_offset` and calls `write_from` again; after a crash
//!   it uses [`Installer::resume`] with the saved checkpoint. A resumed stream never re-reads
//!   earlier bytes, and bytes are trusted only after their blob's hash matched.
//! - [`Installer::finish`] re-reads the whole /usr region from the target (page cache
//!   dropped first) and checks its sha256 and dm-verity root hash, re-reads kernel and
//!   initramfs and checks theirs, and only then renames kernel and initramfs into place.
//!
//! It never reports success on partial or wrong data, and it never touches boot flags: the
//! caller marks the slot bootable after `finish` succeeds, and must keep it unbootable
//! (as it is during an update) on any error.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wellcar_contract::{OsVersion, VersionError};

use crate::format::{
    Destination, FormatError, Manifest, Operation, PayloadHead, Sha256Digest, VerifiedHead,
    MAX_BLOB_LEN,
};
use crate::fsutil::{sync_parent, write_atomic};
use crate::keys::TrustedKeys;
use crate::verity::VerityHasher;

/// Default bytes written between fsyncs (and durable checkpoints).
pub const DEFAULT_SYNC_INTERVAL: u64 = 64 * 1024 * 1024;
const IO_BUF_LEN: usize = 1 << 20;
static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

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
    /// The caller's running version is not an [`OsVersion`].
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
        expected: Sha256Digest,
        /// Computed.
        actual: String,
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
        write_atomic(path, &json, 0o644, true).map_err(|source| ApplyError::CheckpointFile {
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

/// Where the /usr image goes: a USR partition, or a file standing in for one.
pub trait UsrTarget: Read + Write + Seek {
    /// Capacity in bytes.
    fn capacity(&mut self) -> io::Result<u64>;
    /// Writes `len` zero bytes at `offset`. The default writes from a static zero buffer.
    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.seek(SeekFrom::Start(offset))?;
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            self.write_all(&ZEROS[..n])?;
            left -= n as u64;
        }
        Ok(())
    }
    /// Makes written data durable.
    fn sync(&mut self) -> io::Result<()> {
        self.flush()
    }
    /// Drops cached pages so a read-back reads the medium. Default: nothing.
    fn drop_cache(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Name for messages.
    fn describe(&self) -> String;
}

/// A USR partition block device, or a regular file of fixed size standing in for one.
#[derive(Debug)]
pub struct UsrPartition {
    file: File,
    path: PathBuf,
    size: u64,
}

impl UsrPartition {
    /// Opens an existing block device or regular file read-write; never creates or resizes
    /// it. Its size is the capacity (pre-size a file with `truncate -s`).
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let meta = file.metadata()?;
        let size = if meta.file_type().is_block_device() {
            file.seek(SeekFrom::End(0))?
        } else {
            meta.len()
        };
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
        })
    }
}

impl Read for UsrPartition {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for UsrPartition {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for UsrPartition {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

impl UsrTarget for UsrPartition {
    fn capacity(&mut self) -> io::Result<u64> {
        Ok(self.size)
    }

    /// Zeroes without transferring data: `fallocate(PUNCH_HOLE)` on files (the range becomes
    /// a hole), `ZERO_RANGE` (the kernel's zero-out) where punching is unsupported, such as
    /// on some block devices; writes zeros only if neither works.
    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        use rustix::fs::{fallocate, FallocateFlags};
        let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        let zero = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
        for flags in [punch, zero] {
            match fallocate(&self.file, flags, offset, len) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn drop_cache(&mut self) -> io::Result<()> {
        rustix::fs::fadvise(&self.file, 0, None, rustix::fs::Advice::DontNeed)?;
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Where each image of a payload goes.
#[derive(Debug)]
pub struct InstallTargets<T> {
    /// The inactive USR partition.
    pub usr: T,
    /// The inactive slot's kernel path on the ESP.
    pub kernel: PathBuf,
    /// The inactive slot's initramfs path on the ESP.
    pub initramfs: PathBuf,
}

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

/// The outcome of a successful apply.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// Installed version.
    pub version: String,
    /// Key that verified the payload.
    pub signer: String,
    /// sha256 of the /usr region as read back.
    pub usr_sha256: Sha256Digest,
    /// dm-verity root hash of the /usr region as recomputed.
    pub verity_root_hash: Sha256Digest,
    /// Final kernel path.
    pub kernel: PathBuf,
    /// Final initramfs path.
    pub initramfs: PathBuf,
}

/// Reads and authenticates a payload head from `reader`, checks it against `policy` and
/// `targets`, then streams the rest of `reader` into the targets and verifies them.
/// One-shot convenience over [`Installer`].
pub fn apply<T: UsrTarget>(
    reader: &mut impl Read,
    trusted: &TrustedKeys,
    policy: &ApplyPolicy,
    targets: InstallTargets<T>,
) -> Result<InstallReport, ApplyError> {
    let head = PayloadHead::read(reader)?.authenticate(trusted)?;
    let mut installer = Installer::new(head, policy, targets)?;
    installer.write_from(reader)?;
    installer.finish()
}

/// Streams a payload's data into targets; see the module docs.
pub struct Installer<T: UsrTarget> {
    head: VerifiedHead,
    targets: InstallTargets<T>,
    kernel_partial: File,
    initramfs_partial: File,
    sync_interval: u64,
    durable: Checkpoint,
    /// Operations completed (written, maybe not synced) and payload offset after them.
    done_operation: usize,
    done_offset: u64,
    unsynced: u64,
    blob: Vec<u8>,
    decompressor: zstd::bulk::Decompressor<'static>,
    output: Vec<u8>,
}

impl<T: UsrTarget> std::fmt::Debug for Installer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installer")
            .field("version", &self.head.manifest().version)
            .field("usr", &self.targets.usr.describe())
            .field("durable", &self.durable)
            .field("done_operation", &self.done_operation)
            .finish_non_exhaustive()
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

impl<T: UsrTarget> Installer<T> {
    /// Starts a fresh apply: checks policy and target size; writes nothing yet.
    pub fn new(
        head: VerifiedHead,
        policy: &ApplyPolicy,
        targets: InstallTargets<T>,
    ) -> Result<Self, ApplyError> {
        let checkpoint = Checkpoint {
            payload_digest: head.digest(),
            data_start: head.data_start(),
            payload_offset: head.data_start(),
            next_operation: 0,
        };
        Self::start(head, policy, targets, checkpoint, true)
    }

    /// Continues an apply interrupted after `checkpoint` (saved by the caller). `head` must
    /// be the same payload's head, read again and authenticated again.
    pub fn resume(
        head: VerifiedHead,
        policy: &ApplyPolicy,
        targets: InstallTargets<T>,
        checkpoint: Checkpoint,
    ) -> Result<Self, ApplyError> {
        let mismatch = |reason: String| ApplyError::CheckpointMismatch { reason };
        if checkpoint.payload_digest != head.digest() {
            return Err(mismatch(format!(
                "it is for payload {}, this payload is {}",
                checkpoint.payload_digest,
                head.digest()
            )));
        }
        // Recompute the offset from the (authenticated) manifest instead of trusting it.
        let ops = &head.manifest().operations;
        if checkpoint.next_operation > ops.len() {
            return Err(mismatch(format!(
                "next operation {} is past the {} operations",
                checkpoint.next_operation,
                ops.len()
            )));
        }
        let expected_offset = head.data_start() + data_before(ops, checkpoint.next_operation);
        if checkpoint.payload_offset != expected_offset
            || checkpoint.data_start != head.data_start()
        {
            return Err(mismatch(format!(
                "payload offset {} does not match operation {} (expected {expected_offset})",
                checkpoint.payload_offset, checkpoint.next_operation
            )));
        }
        Self::start(head, policy, targets, checkpoint, false)
    }

    fn start(
        head: VerifiedHead,
        policy: &ApplyPolicy,
        mut targets: InstallTargets<T>,
        checkpoint: Checkpoint,
        fresh: bool,
    ) -> Result<Self, ApplyError> {
        let manifest = head.manifest();
        policy.check(manifest)?;
        let describe = targets.usr.describe();
        let size = targets
            .usr
            .capacity()
            .map_err(|source| ApplyError::Target {
                action: "sizing",
                target: describe.clone(),
                offset: 0,
                source,
            })?;
        if size < manifest.usr.size {
            return Err(ApplyError::TargetTooSmall {
                target: describe,
                size,
                needed: manifest.usr.size,
            });
        }
        let open_partial = |final_path: &Path| {
            let path = partial_path(final_path);
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(fresh)
                .open(&path)
                .map_err(|source| ApplyError::Target {
                    action: "opening",
                    target: path.display().to_string(),
                    offset: 0,
                    source,
                })
        };
        let kernel_partial = open_partial(&targets.kernel)?;
        let initramfs_partial = open_partial(&targets.initramfs)?;
        let decompressor =
            zstd::bulk::Decompressor::new().map_err(|source| ApplyError::Target {
                action: "allocating a decompressor for",
                target: describe,
                offset: 0,
                source,
            })?;
        tracing::info!(
            version = %manifest.version,
            signer = head.signer(),
            resume_at = checkpoint.payload_offset,
            next_operation = checkpoint.next_operation,
            "applying update payload"
        );
        Ok(Self {
            done_operation: checkpoint.next_operation,
            done_offset: checkpoint.payload_offset,
            durable: checkpoint,
            head,
            targets,
            kernel_partial,
            initramfs_partial,
            sync_interval: policy.sync_interval.max(1),
            unsynced: 0,
            blob: Vec::new(),
            decompressor,
            output: Vec::new(),
        })
    }

    /// The last durable resume point.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.durable
    }

    /// The authenticated head.
    pub fn head(&self) -> &VerifiedHead {
        &self.head
    }

    /// True when every operation has been applied and synced.
    pub fn is_complete(&self) -> bool {
        self.durable.next_operation == self.head.manifest().operations.len()
    }

    /// Applies operations from `body`, which must start at `checkpoint().payload_offset`.
    pub fn write_from(&mut self, body: &mut impl Read) -> Result<(), ApplyError> {
        self.write_from_with_progress(body, &mut |_| {})
    }

    /// [`Installer::write_from`], calling `on_checkpoint` each time a new checkpoint is
    /// durable (persist it to resume after a crash).
    pub fn write_from_with_progress(
        &mut self,
        body: &mut impl Read,
        on_checkpoint: &mut dyn FnMut(&Checkpoint),
    ) -> Result<(), ApplyError> {
        let result = self.run_operations(body, on_checkpoint);
        if result.is_err() {
            // Keep what was completed: sync it and move the checkpoint there. If syncing
            // fails too, fall back to the last durable checkpoint.
            if self.sync_all().is_ok() {
                self.advance_durable(on_checkpoint);
            } else {
                self.done_operation = self.durable.next_operation;
                self.done_offset = self.durable.payload_offset;
                self.unsynced = 0;
            }
        }
        result
    }

    fn run_operations(
        &mut self,
        body: &mut impl Read,
        on_checkpoint: &mut dyn FnMut(&Checkpoint),
    ) -> Result<(), ApplyError> {
        let total = self.head.manifest().operations.len();
        let data_start = self.head.data_start();
        while self.done_operation < total {
            let index = self.done_operation;
            let op = self.head.manifest().operations[index].clone();
            let written = match &op {
                Operation::Replace(r) => {
                    let offset = data_start + r.data_offset;
                    debug_assert_eq!(offset, self.done_offset);
                    read_blob(body, &mut self.blob, r.data_length, offset, index)?;
                    check_blob(&self.blob, &r.data_sha256, offset, index)?;
                    decompress(
                        &mut self.decompressor,
                        &self.blob,
                        &mut self.output,
                        r.dst_length,
                        offset,
                        index,
                    )?;
                    self.write(r.dst, r.dst_offset, index)?;
                    self.done_offset = offset + r.data_length;
                    r.dst_length
                }
                Operation::Zero(z) => {
                    self.zero(z.dst, z.dst_offset, z.dst_length)?;
                    // Zeroing moves no data; count it lightly towards the sync interval.
                    z.dst_length / 64
                }
                Operation::Unsupported { .. } => unreachable!("rejected by Manifest::validate"),
            };
            self.done_operation = index + 1;
            self.unsynced += written;
            if self.unsynced >= self.sync_interval {
                self.sync_all()?;
                self.advance_durable(on_checkpoint);
            }
        }
        let mut probe = [0u8; 1];
        let trailing = loop {
            match body.read(&mut probe) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ApplyError::Read {
                        offset: self.done_offset,
                        operation: total,
                        source,
                    })
                }
            }
        };
        if trailing != 0 {
            return Err(ApplyError::TrailingData {
                offset: self.done_offset,
            });
        }
        self.sync_all()?;
        self.advance_durable(on_checkpoint);
        Ok(())
    }

    fn advance_durable(&mut self, on_checkpoint: &mut dyn FnMut(&Checkpoint)) {
        self.unsynced = 0;
        if self.durable.next_operation == self.done_operation {
            return;
        }
        self.durable.next_operation = self.done_operation;
        self.durable.payload_offset = self.done_offset;
        tracing::debug!(
            offset = self.durable.payload_offset,
            operation = self.durable.next_operation,
            "checkpoint"
        );
        on_checkpoint(&self.durable);
    }

    fn write(&mut self, dst: Destination, offset: u64, index: usize) -> Result<(), ApplyError> {
        let data = &self.output;
        let result = match dst {
            Destination::Usr => self
                .targets
                .usr
                .seek(SeekFrom::Start(offset))
                .and_then(|_| self.targets.usr.write_all(data)),
            Destination::Kernel => self.kernel_partial.write_all_at(data, offset),
            Destination::Initramfs => self.initramfs_partial.write_all_at(data, offset),
        };
        result.map_err(|source| {
            tracing::debug!(operation = index, "write failed");
            ApplyError::Target {
                action: "writing",
                target: self.target_name(dst),
                offset,
                source,
            }
        })
    }

    fn zero(&mut self, dst: Destination, offset: u64, len: u64) -> Result<(), ApplyError> {
        let result = match dst {
            Destination::Usr => self.targets.usr.write_zeros(offset, len),
            Destination::Kernel => write_zeros_at(&self.kernel_partial, offset, len),
            Destination::Initramfs => write_zeros_at(&self.initramfs_partial, offset, len),
        };
        result.map_err(|source| ApplyError::Target {
            action: "zeroing",
            target: self.target_name(dst),
            offset,
            source,
        })
    }

    fn target_name(&self, dst: Destination) -> String {
        match dst {
            Destination::Usr => self.targets.usr.describe(),
            Destination::Kernel => partial_path(&self.targets.kernel).display().to_string(),
            Destination::Initramfs => partial_path(&self.targets.initramfs).display().to_string(),
        }
    }

    fn sync_all(&mut self) -> Result<(), ApplyError> {
        let err = |target: String| {
            move |source| ApplyError::Target {
                action: "syncing",
                target,
                offset: 0,
                source,
            }
        };
        self.targets
            .usr
            .sync()
            .map_err(err(self.targets.usr.describe()))?;
        self.kernel_partial
            .sync_data()
            .map_err(err(self.target_name(Destination::Kernel)))?;
        self.initramfs_partial
            .sync_data()
            .map_err(err(self.target_name(Destination::Initramfs)))?;
        Ok(())
    }

    /// Verifies everything written by reading it back, then moves kernel and initramfs into
    /// place. Success means the slot holds exactly the signed images.
    pub fn finish(mut self) -> Result<InstallReport, ApplyError> {
        let manifest = self.head.manifest().clone();
        if !self.is_complete() {
            return Err(ApplyError::Incomplete {
                done: self.durable.next_operation,
                total: manifest.operations.len(),
            });
        }
        let (usr_sha256, verity_root_hash) = self.read_back_usr(&manifest)?;
        for (dst, file, final_path) in [
            (
                Destination::Kernel,
                &mut self.kernel_partial,
                &self.targets.kernel,
            ),
            (
                Destination::Initramfs,
                &mut self.initramfs_partial,
                &self.targets.initramfs,
            ),
        ] {
            let partial = partial_path(final_path);
            let target_err = |action, source| ApplyError::Target {
                action,
                target: partial.display().to_string(),
                offset: 0,
                source,
            };
            file.set_len(manifest.image_size(dst))
                .map_err(|e| target_err("truncating", e))?;
            let actual = hash_file(file, manifest.image_size(dst))
                .map_err(|e| target_err("reading back", e))?;
            if actual != manifest.image_sha256(dst) {
                return Err(ApplyError::ImageMismatch {
                    image: dst.name(),
                    expected: manifest.image_sha256(dst),
                    actual: actual.to_string(),
                });
            }
            file.sync_all().map_err(|e| target_err("syncing", e))?;
        }
        for final_path in [&self.targets.kernel, &self.targets.initramfs] {
            let partial = partial_path(final_path);
            std::fs::rename(&partial, final_path)
                .and_then(|()| sync_parent(final_path))
                .map_err(|source| ApplyError::Target {
                    action: "renaming",
                    target: format!("{} to {}", partial.display(), final_path.display()),
                    offset: 0,
                    source,
                })?;
        }
        tracing::info!(version = %manifest.version, "update payload applied and verified");
        Ok(InstallReport {
            version: manifest.version.clone(),
            signer: self.head.signer().to_owned(),
            usr_sha256,
            verity_root_hash,
            kernel: self.targets.kernel.clone(),
            initramfs: self.targets.initramfs.clone(),
        })
    }

    fn read_back_usr(
        &mut self,
        manifest: &Manifest,
    ) -> Result<(Sha256Digest, Sha256Digest), ApplyError> {
        let usr = &mut self.targets.usr;
        let target = usr.describe();
        let read_err = |offset, source| ApplyError::Target {
            action: "reading back",
            target: target.clone(),
            offset,
            source,
        };
        usr.sync()
            .and_then(|()| usr.drop_cache())
            .map_err(|e| read_err(0, e))?;
        usr.seek(SeekFrom::Start(0)).map_err(|e| read_err(0, e))?;
        let verity = &manifest.usr.verity;
        let salt = hex::decode(&verity.salt).expect("salt validated by Manifest::validate");
        let mut verity_hasher = VerityHasher::new(&salt, verity.data_blocks);
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; IO_BUF_LEN];
        let mut pos = 0u64;
        while pos < manifest.usr.size {
            let want = (manifest.usr.size - pos).min(buf.len() as u64) as usize;
            usr.read_exact(&mut buf[..want])
                .map_err(|e| read_err(pos, e))?;
            sha.update(&buf[..want]);
            verity_hasher.update(&buf[..want]);
            pos += want as u64;
        }
        let usr_sha = Sha256Digest(sha.finalize().into());
        if usr_sha != manifest.usr.sha256 {
            return Err(ApplyError::ImageMismatch {
                image: "usr",
                expected: manifest.usr.sha256,
                actual: usr_sha.to_string(),
            });
        }
        let root = verity_hasher.finish();
        if root != Some(verity.root_hash) {
            return Err(ApplyError::VerityMismatch {
                expected: verity.root_hash,
                actual: root.map_or_else(|| "incomplete".into(), |r| r.to_string()),
            });
        }
        Ok((usr_sha, verity.root_hash))
    }
}

/// Data bytes used by the first `count` operations.
fn data_before(operations: &[Operation], count: usize) -> u64 {
    operations[..count]
        .iter()
        .map(|op| match op {
            Operation::Replace(r) => r.data_length,
            _ => 0,
        })
        .sum()
}

fn read_blob(
    body: &mut impl Read,
    blob: &mut Vec<u8>,
    len: u64,
    offset: u64,
    operation: usize,
) -> Result<(), ApplyError> {
    debug_assert!(len <= MAX_BLOB_LEN, "bounded by Manifest::validate");
    blob.resize(len as usize, 0);
    let mut filled = 0;
    while filled < blob.len() {
        match body.read(&mut blob[filled..]) {
            Ok(0) => {
                return Err(ApplyError::Truncated {
                    offset: offset + filled as u64,
                    operation,
                })
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(ApplyError::Read {
                    offset: offset + filled as u64,
                    operation,
                    source,
                })
            }
        }
    }
    Ok(())
}

fn check_blob(
    blob: &[u8],
    expected: &Sha256Digest,
    offset: u64,
    operation: usize,
) -> Result<(), ApplyError> {
    let actual = Sha256Digest::of(blob);
    if actual != *expected {
        return Err(ApplyError::BlobHashMismatch {
            operation,
            offset,
            expected: *expected,
            actual,
        });
    }
    Ok(())
}

fn decompress(
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    blob: &[u8],
    output: &mut Vec<u8>,
    expected: u64,
    offset: u64,
    operation: usize,
) -> Result<(), ApplyError> {
    output.clear();
    output.reserve(expected as usize);
    let err = |reason: String| ApplyError::Decompress {
        operation,
        offset,
        expected,
        reason,
    };
    let n = decompressor
        .decompress_to_buffer(blob, output)
        .map_err(|e| err(e.to_string()))?;
    if n as u64 != expected {
        return Err(err(format!("got {n} bytes")));
    }
    Ok(())
}

fn write_zeros_at(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

fn hash_file(file: &mut File, len: u64) -> io::Result<Sha256Digest> {
    file.seek(SeekFrom::Start(0))?;
    let mut sha = Sha256::new();
    let copied = io::copy(&mut (&*file).take(len), &mut HashWriter(&mut sha))?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{copied} of {len} bytes"),
        ));
    }
    Ok(Sha256Digest(sha.finalize().into()))
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What [`verify_payload`] found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Version inside.
    pub version: String,
    /// Board.
    pub board: String,
    /// The trusted key that verified.
    pub signer: String,
    /// Payload bytes read.
    pub payload_len: u64,
}

/// Checks a whole payload without writing anything: signature, every blob's hash, and the
/// sha256 of every image and the dm-verity root as they would be written. Succeeds only for
/// an authentic, intact, complete payload.
pub fn verify_payload(
    reader: &mut impl Read,
    trusted: &TrustedKeys,
) -> Result<VerifyReport, ApplyError> {
    let head = PayloadHead::read(reader)?.authenticate(trusted)?;
    let manifest = head.manifest();
    let verity = &manifest.usr.verity;
    let salt = hex::decode(&verity.salt).expect("salt validated by Manifest::validate");
    let mut verity_hasher = VerityHasher::new(&salt, verity.data_blocks);
    let mut hashers = [Sha256::new(), Sha256::new(), Sha256::new()];
    let mut decompressor = zstd::bulk::Decompressor::new().map_err(|e| ApplyError::Decompress {
        operation: 0,
        offset: 0,
        expected: 0,
        reason: e.to_string(),
    })?;
    let (mut blob, mut output) = (Vec::new(), Vec::new());
    let mut offset = head.data_start();
    for (index, op) in manifest.operations.iter().enumerate() {
        match op {
            Operation::Replace(r) => {
                read_blob(reader, &mut blob, r.data_length, offset, index)?;
                check_blob(&blob, &r.data_sha256, offset, index)?;
                decompress(
                    &mut decompressor,
                    &blob,
                    &mut output,
                    r.dst_length,
                    offset,
                    index,
                )?;
                hashers[r.dst as usize].update(&output);
                if r.dst == Destination::Usr {
                    verity_hasher.update(&output);
                }
                offset += r.data_length;
            }
            Operation::Zero(z) => {
                if z.dst == Destination::Usr {
                    verity_hasher.update_zeros(z.dst_length);
                }
                let mut left = z.dst_length;
                while left > 0 {
                    let n = left.min(ZEROS.len() as u64) as usize;
                    hashers[z.dst as usize].update(&ZEROS[..n]);
                    left -= n as u64;
                }
            }
            Operation::Unsupported { .. } => unreachable!("rejected by Manifest::validate"),
        }
    }
    let mut probe = [0u8; 1];
    if reader.read(&mut probe).map_err(|source| ApplyError::Read {
        offset,
        operation: manifest.operations.len(),
        source,
    })? != 0
    {
        return Err(ApplyError::TrailingData { offset });
    }
    for (dst, hasher) in Destination::ALL.into_iter().zip(hashers) {
        let actual = Sha256Digest(hasher.finalize().into());
        if actual != manifest.image_sha256(dst) {
            return Err(ApplyError::ImageMismatch {
                image: dst.name(),
                expected: manifest.image_sha256(dst),
                actual: actual.to_string(),
            });
        }
    }
    let root = verity_hasher.finish();
    if root != Some(verity.root_hash) {
        return Err(ApplyError::VerityMismatch {
            expected: verity.root_hash,
            actual: root.map_or_else(|| "incomplete".into(), |r| r.to_string()),
        });
    }
    Ok(VerifyReport {
        version: manifest.version.clone(),
        board: manifest.board.clone(),
        signer: head.signer().to_owned(),
        payload_len: offset,
    })
}
