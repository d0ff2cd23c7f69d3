//! The source slot of a delta payload: opened read-only, verified whole against the root hash
//! the delta names before any extent is read, then read extent by extent with each
//! operation's `src_sha256` checked.
//!
//! Contract: [`SourceReader::verify`] recomputes the dm-verity root over the source's
//! `data_blocks` (the salt and block count the signed manifest gives) and fails with
//! [`ApplyError::SourceRootMismatch`] unless it equals `source.verity.root_hash`; the
//! installer calls it before it writes anything, on every start and resume. Reads are bounded
//! by the manifest (validated: extents inside the verity data region).
//!
//! A delta may also copy from the source slot's kernel and initramfs files
//! ([`SourceReader::with_boot_files`]); those are not under dm-verity, so `verify` checks each
//! file the delta describes whole (size and sha256) as well, and fails with
//! [`ApplyError::DeltaNeedsSourceFile`] or [`ApplyError::SourceFileMismatch`].
//!
//! Also here: the installer's per-operation source steps (`check_source` before anything is
//! written, `check_source_bytes` on each read, `decode_patch` with its output hash checked).

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{ApplyError, ApplyPolicy};
use crate::format::{
    Destination, FileImage, Manifest, Sha256Digest, SourceExtent, SourcePatchOp, SourceSlot,
};

const VERIFY_BUF_LEN: usize = 1 << 20;

/// A read-only source /usr slot: the booted USR partition, or an image file standing in.
#[derive(Debug)]
pub struct SourceReader {
    file: File,
    path: PathBuf,
    /// Where the slot starts in `file` (a partition inside a whole disk).
    base: u64,
    size: u64,
    /// The source slot's kernel and initramfs files, if given.
    boot_files: Option<(PathBuf, PathBuf)>,
}

impl SourceReader {
    /// Opens a block device or regular file read-only.
    pub fn open(path: &Path) -> Result<Self, ApplyError> {
        let err = |source| ApplyError::SourceRead {
            source_slot: path.display().to_string(),
            offset: 0,
            source,
        };
        let mut file = File::open(path).map_err(err)?;
        let size = file.seek(SeekFrom::End(0)).map_err(err)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            base: 0,
            size,
            boot_files: None,
        })
    }

    /// The slot at bytes `base..base + size` of `file`, an already opened whole disk (the
    /// booted USR partition found in its GPT). `name` is for messages.
    pub fn window(file: File, name: PathBuf, base: u64, size: u64) -> Self {
        Self {
            file,
            path: name,
            base,
            size,
            boot_files: None,
        }
    }

    /// Also offers the source slot's kernel and initramfs files to a delta that copies from
    /// them.
    pub fn with_boot_files(mut self, kernel: PathBuf, initramfs: PathBuf) -> Self {
        self.boot_files = Some((kernel, initramfs));
        self
    }

    fn boot_file(&self, src: Destination) -> Option<&Path> {
        let (kernel, initramfs) = self.boot_files.as_ref()?;
        match src {
            Destination::Usr => None,
            Destination::Kernel => Some(kernel),
            Destination::Initramfs => Some(initramfs),
        }
    }

    /// Checks the source's kernel or initramfs file whole against what the delta names.
    fn verify_file(&self, src: Destination, wanted: &FileImage) -> Result<(), ApplyError> {
        let file = src.name();
        let path = self
            .boot_file(src)
            .ok_or(ApplyError::DeltaNeedsSourceFile { file })?;
        let mismatch = |actual: String| ApplyError::SourceFileMismatch {
            file,
            path: path.display().to_string(),
            expected: wanted.sha256,
            actual,
        };
        let mut hasher = Sha256::new();
        let unreadable = |e: io::Error| mismatch(format!("cannot be read ({e})"));
        let mut reader = File::open(path).map_err(unreadable)?;
        let len = io::copy(&mut reader, &mut hasher).map_err(unreadable)?;
        let actual = Sha256Digest(hasher.finalize().into());
        if len != wanted.size || actual != wanted.sha256 {
            return Err(mismatch(format!("has sha256 {actual} ({len} bytes)")));
        }
        Ok(())
    }

    /// Name for messages.
    pub fn describe(&self) -> String {
        self.path.display().to_string()
    }

    /// Recomputes the source's dm-verity root over its data blocks and compares it with the
    /// one `slot` names. Reads `data_blocks` × 4096 bytes.
    pub fn verify(&self, slot: &SourceSlot) -> Result<(), ApplyError> {
        let needed = slot.data_len();
        if self.size < needed {
            return Err(ApplyError::SourceTooSmall {
                source_slot: self.describe(),
                size: self.size,
                needed,
            });
        }
        let mut hasher = slot.verity.root_hasher();
        let mut buf = vec![0u8; VERIFY_BUF_LEN];
        let mut pos = 0;
        while pos < needed {
            let n = (needed - pos).min(buf.len() as u64) as usize;
            self.read_at(&mut buf[..n], pos)?;
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        let actual = hasher.finish();
        if actual != Some(slot.verity.root_hash) {
            return Err(ApplyError::SourceRootMismatch {
                source_slot: self.describe(),
                expected: slot.verity.root_hash,
                actual: actual.map_or_else(|| "incomplete".into(), |r| r.to_string()),
            });
        }
        for src in [Destination::Kernel, Destination::Initramfs] {
            if let Some(wanted) = slot.file(src) {
                self.verify_file(src, wanted)?;
            }
        }
        tracing::info!(source = %self.describe(), root_hash = %slot.verity.root_hash, "delta source verified");
        Ok(())
    }

    /// Reads `extents` of `src` (the /usr slot, or its kernel or initramfs file) concatenated
    /// into `out` (resized to their total).
    pub fn read_extents(
        &self,
        src: Destination,
        extents: &[SourceExtent],
        out: &mut Vec<u8>,
    ) -> Result<(), ApplyError> {
        let total: u64 = extents.iter().map(|e| e.length).sum();
        out.resize(total as usize, 0);
        let file = match self.boot_file(src) {
            Some(path) => Some((
                File::open(path).map_err(|source| ApplyError::SourceRead {
                    source_slot: path.display().to_string(),
                    offset: 0,
                    source,
                })?,
                path,
            )),
            None if src.is_usr() => None,
            None => return Err(ApplyError::DeltaNeedsSourceFile { file: src.name() }),
        };
        let mut at = 0usize;
        for extent in extents {
            let buf = &mut out[at..at + extent.length as usize];
            match &file {
                None => self.read_at(buf, extent.offset)?,
                Some((file, path)) => file.read_exact_at(buf, extent.offset).map_err(|source| {
                    ApplyError::SourceRead {
                        source_slot: path.display().to_string(),
                        offset: extent.offset,
                        source,
                    }
                })?,
            }
            at += buf.len();
        }
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ApplyError> {
        let past_end = offset.saturating_add(buf.len() as u64) > self.size;
        let read = if past_end {
            Err(io::Error::from(io::ErrorKind::UnexpectedEof))
        } else {
            self.file.read_exact_at(buf, self.base + offset)
        };
        read.map_err(|source| ApplyError::SourceRead {
            source_slot: self.describe(),
            offset,
            source: if source.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the source ends at byte {}", self.size),
                )
            } else {
                source
            },
        })
    }
}

/// For a delta: requires a source, the running version to be the delta's source version, and
/// the source slot to hash to the named root. Returns the source to read from (none for a
/// full payload).
pub(super) fn check_source(
    manifest: &Manifest,
    policy: &ApplyPolicy,
    source: Option<SourceReader>,
) -> Result<Option<SourceReader>, ApplyError> {
    let Some(slot) = &manifest.source else {
        return Ok(None);
    };
    if let Some(running) = &policy.current_version {
        if *running != slot.version {
            return Err(ApplyError::DeltaSourceVersion {
                delta_source: slot.version.clone(),
                running: running.clone(),
            });
        }
    }
    let Some(source) = source else {
        return Err(ApplyError::DeltaNeedsSource {
            source_version: slot.version.clone(),
        });
    };
    source.verify(slot)?;
    Ok(Some(source))
}

pub(super) fn check_source_bytes(
    bytes: &[u8],
    expected: &Sha256Digest,
    operation: usize,
) -> Result<(), ApplyError> {
    let actual = Sha256Digest::of(bytes);
    if actual != *expected {
        return Err(ApplyError::SourceHashMismatch {
            operation,
            expected: *expected,
            actual,
        });
    }
    Ok(())
}

/// Decodes an authenticated patch against its verified source bytes and checks the output's
/// hash before anything is written.
pub(super) fn decode_patch(
    reference: &[u8],
    patch: &[u8],
    output: &mut Vec<u8>,
    op: &SourcePatchOp,
    offset: u64,
    operation: usize,
) -> Result<(), ApplyError> {
    crate::patch::decode(op.codec, reference, patch, output, op.dst_length as usize).map_err(
        |reason| ApplyError::Patch {
            operation,
            offset,
            reason,
        },
    )?;
    let actual = Sha256Digest::of(output);
    if actual != op.dst_sha256 {
        return Err(ApplyError::PatchOutputMismatch {
            operation,
            expected: op.dst_sha256,
            actual,
        });
    }
    Ok(())
}
