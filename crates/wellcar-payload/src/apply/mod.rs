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
//!
//! Layout: this file holds [`Installer`] and the one-shot [`apply()`]; `error` holds
//! [`ApplyError`]; `checkpoint` the durable resume point; `target` where images are written;
//! `policy` what this system accepts; `blob` the per-operation read, hash-check and decompress
//! steps shared with `verify`, which checks a payload without writing; `verity_tree` rebuilds
//! a delta's hash area from the data written. Everything public is
//! re-exported here, so callers name it `crate::apply::X`.
//!
//! [`MAX_BLOB_LEN`]: crate::format::MAX_BLOB_LEN

mod blob;
mod checkpoint;
mod error;
mod policy;
mod source;
mod target;
mod verify;
mod verity_tree;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wellcar_contract::RootHash;

use crate::format::{Destination, Manifest, Operation, PayloadHead, Sha256Digest, VerifiedHead};
use crate::keys::TrustedKeys;
use blob::{check_blob, data_before, decompress, hash_file, read_blob, write_zeros_at};
use wellcar_contract::atomic_file::sync_parent;

pub use checkpoint::{partial_path, Checkpoint};
pub use error::ApplyError;
pub use policy::ApplyPolicy;
pub use source::SourceReader;
use source::{check_source, check_source_bytes, decode_patch};
pub use target::{InstallTargets, UsrPartition, UsrTarget};
pub use verify::{verify_payload, VerifyReport};

/// Default bytes written between fsyncs (and durable checkpoints).
pub const DEFAULT_SYNC_INTERVAL: u64 = 64 * 1024 * 1024;
const IO_BUF_LEN: usize = 1 << 20;
static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

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
    pub verity_root_hash: RootHash,
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

/// The error for a failed read-back of `target` at an offset.
fn read_back_error(target: &str) -> impl Fn(u64, io::Error) -> ApplyError + '_ {
    move |offset, source| ApplyError::Target {
        action: "reading back",
        target: target.to_owned(),
        offset,
        source,
    }
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
    /// The verified source slot of a delta.
    source: Option<SourceReader>,
    reference: Vec<u8>,
    /// The /usr data region's digests as written, for a `verity_tree` operation.
    written: verity_tree::WrittenRegion,
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

impl<T: UsrTarget> Installer<T> {
    /// Starts a fresh apply: checks policy and target size; writes nothing yet.
    pub fn new(
        head: VerifiedHead,
        policy: &ApplyPolicy,
        targets: InstallTargets<T>,
    ) -> Result<Self, ApplyError> {
        Self::new_with_source(head, policy, targets, None)
    }

    /// [`Installer::new`] for a payload that may be a delta: `source` is the slot it reads
    /// from (the booted USR partition). For a delta it is verified against the root hash the
    /// manifest names before anything is written; a full payload ignores it.
    pub fn new_with_source(
        head: VerifiedHead,
        policy: &ApplyPolicy,
        targets: InstallTargets<T>,
        source: Option<SourceReader>,
    ) -> Result<Self, ApplyError> {
        let checkpoint = Checkpoint {
            payload_digest: head.digest(),
            data_start: head.data_start(),
            payload_offset: head.data_start(),
            next_operation: 0,
        };
        Self::start(head, policy, targets, checkpoint, true, source)
    }

    /// Continues an apply interrupted after `checkpoint` (saved by the caller). `head` must
    /// be the same payload's head, read again and authenticated again.
    pub fn resume(
        head: VerifiedHead,
        policy: &ApplyPolicy,
        targets: InstallTargets<T>,
        checkpoint: Checkpoint,
    ) -> Result<Self, ApplyError> {
        Self::resume_with_source(head, policy, targets, checkpoint, None)
    }

    /// [`Installer::resume`] with a source slot for a delta (verified again before anything
    /// is written).
    pub fn resume_with_source(
        head: VerifiedHead,
        policy: &ApplyPolicy,
        targets: InstallTargets<T>,
        checkpoint: Checkpoint,
        source: Option<SourceReader>,
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
        Self::start(head, policy, targets, checkpoint, false, source)
    }

    fn start(
        head: VerifiedHead,
        policy: &ApplyPolicy,
        mut targets: InstallTargets<T>,
        checkpoint: Checkpoint,
        fresh: bool,
        source: Option<SourceReader>,
    ) -> Result<Self, ApplyError> {
        let manifest = head.manifest();
        policy.check(manifest)?;
        let source = check_source(manifest, policy, source)?;
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
        let written = verity_tree::WrittenRegion::new(manifest, fresh);
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
            source,
            reference: Vec::new(),
            written,
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
                self.written.forget();
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
                Operation::SourceCopy(c) => {
                    let source = self.source.as_ref().expect("checked by check_source");
                    source.read_extents(c.src, &c.src_extents, &mut self.output)?;
                    check_source_bytes(&self.output, &c.src_sha256, index)?;
                    self.write(c.dst, c.dst_offset, index)?;
                    c.dst_length
                }
                Operation::SourcePatch(p) => {
                    let offset = data_start + p.data_offset;
                    debug_assert_eq!(offset, self.done_offset);
                    let source = self.source.as_ref().expect("checked by check_source");
                    source.read_extents(Destination::Usr, &p.src_extents, &mut self.reference)?;
                    check_source_bytes(&self.reference, &p.src_sha256, index)?;
                    read_blob(body, &mut self.blob, p.data_length, offset, index)?;
                    check_blob(&self.blob, &p.data_sha256, offset, index)?;
                    decode_patch(
                        &self.reference,
                        &self.blob,
                        &mut self.output,
                        p,
                        offset,
                        index,
                    )?;
                    self.write(p.dst, p.dst_offset, index)?;
                    self.done_offset = offset + p.data_length;
                    p.dst_length
                }
                Operation::VerityTree(v) => {
                    self.output = verity_tree::rebuild_hash_area(
                        &mut self.targets.usr,
                        &mut self.written,
                        self.head.manifest(),
                        v,
                        index,
                    )?;
                    self.write(v.dst, v.dst_offset, index)?;
                    v.dst_length
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
            Destination::Usr => {
                let result = self
                    .targets
                    .usr
                    .seek(SeekFrom::Start(offset))
                    .and_then(|_| self.targets.usr.write_all(data));
                match result {
                    Ok(()) => self.written.wrote(offset, data),
                    Err(_) => self.written.forget(),
                }
                result
            }
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
            Destination::Usr => {
                let result = self.targets.usr.write_zeros(offset, len);
                match result {
                    Ok(()) => self.written.zeroed(offset, len),
                    Err(_) => self.written.forget(),
                }
                result
            }
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
    ) -> Result<(Sha256Digest, RootHash), ApplyError> {
        let usr = &mut self.targets.usr;
        let target = usr.describe();
        let read_err = read_back_error(&target);
        usr.sync()
            .and_then(|()| usr.drop_cache())
            .map_err(|e| read_err(0, e))?;
        usr.seek(SeekFrom::Start(0)).map_err(|e| read_err(0, e))?;
        let verity = &manifest.usr.verity;
        let mut verity_hasher = verity.root_hasher();
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
