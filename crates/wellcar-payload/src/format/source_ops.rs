//! Delta payloads: the source slot a delta reads from and the two operations that read it.
//!
//! A delta's manifest names its source in `source` {`version`, `verity` {`root_hash`, `salt`,
//! `hash_offset`, `data_blocks`}}: the OS version and the dm-verity parameters of the /usr slot
//! it was made against. A reader recomputes that slot's verity root over its `data_blocks`
//! before it reads any source byte and refuses the payload if it differs.
//!
//! Operations (each carries its own hashes):
//! - `source_copy`: copy `src_extents` (byte ranges of the source /usr data region, read in
//!   order and concatenated; their total is `dst_length`) to `dst_offset`. `src_sha256` is the
//!   sha256 of the bytes read, checked before they are written.
//! - `source_patch`: read `src_extents` (at most [`MAX_SOURCE_LEN`] bytes), check them against
//!   `src_sha256`, read the patch blob at `data_offset` (`data_length` bytes, sha256
//!   `data_sha256`, checked before decoding), decode it with the source bytes as the zstd
//!   reference prefix (zstd's `--patch-from`) into exactly `dst_length` bytes, check those
//!   against `dst_sha256`, and only then write them at `dst_offset`. An optional `codec`
//!   (`zstd`, the default, or `bsdiff`: a zstd-compressed bsdiff patch) says how the blob
//!   encodes the output against the source bytes (`crate::patch`).
//!
//! Every extent lies inside the source's verity data region (`data_blocks` × 4096 bytes); a
//! manifest naming bytes past it is invalid. Source operations appear only in a manifest
//! with `source`.
//!
//! A `source_copy` may name `src` `kernel` or `initramfs` (default `usr`): its extents are
//! then byte ranges of the source slot's kernel or initramfs file, which the manifest's
//! `source` describes (`kernel`/`initramfs` {`size`, `sha256`}; present only when operations
//! read it). Those files are not under dm-verity: a reader checks the whole file's sha256
//! against the manifest before it reads any extent, and each extent's `src_sha256` as usual.

use serde::{Deserialize, Serialize};

use super::manifest::{Destination, FileImage, Sha256Digest, VerityParams};

/// Largest total length of the source extents of one `source_patch`.
pub const MAX_SOURCE_LEN: u64 = 16 * 1024 * 1024;
/// Most extents one source operation may list.
pub const MAX_SOURCE_EXTENTS: usize = 4096;

/// The slot a delta payload was made against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSlot {
    /// OS version of the source (`wellcar_contract::OsVersion`).
    pub version: String,
    /// dm-verity parameters of the source /usr slot; `root_hash` is what the source must hash to.
    pub verity: VerityParams,
    /// The source slot's kernel file, when operations copy from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<FileImage>,
    /// The source slot's initramfs file, when operations copy from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<FileImage>,
}

impl SourceSlot {
    /// Bytes of the source covered by verity (the only bytes of /usr source operations may
    /// read).
    pub fn data_len(&self) -> u64 {
        self.verity
            .data_blocks
            .saturating_mul(wellcar_verity::BLOCK_SIZE)
    }

    /// The source file `src` names (`None` for /usr), if the manifest describes it.
    pub fn file(&self, src: Destination) -> Option<&FileImage> {
        match src {
            Destination::Usr => None,
            Destination::Kernel => self.kernel.as_ref(),
            Destination::Initramfs => self.initramfs.as_ref(),
        }
    }

    /// How many bytes of `src` source operations may read: /usr's verity data region, or the
    /// described file's size (`None`: not described).
    pub fn readable_len(&self, src: Destination) -> Option<u64> {
        match src {
            Destination::Usr => Some(self.data_len()),
            other => self.file(other).map(|f| f.size),
        }
    }
}

/// A byte range of the source /usr slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceExtent {
    /// Offset in the source slot.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// `source_copy` operation fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceCopyOp {
    /// Destination image.
    pub dst: Destination,
    /// What the extents are read from: the source /usr slot (default), or its kernel or
    /// initramfs file.
    #[serde(default, skip_serializing_if = "Destination::is_usr")]
    pub src: Destination,
    /// Offset in the destination.
    pub dst_offset: u64,
    /// Length (the extents' total).
    pub dst_length: u64,
    /// Source ranges, concatenated in order.
    pub src_extents: Vec<SourceExtent>,
    /// sha256 of the concatenated source bytes.
    pub src_sha256: Sha256Digest,
}

/// How a `source_patch` blob encodes its output against the source bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchCodec {
    /// zstd with the source as reference prefix (`zstd --patch-from`).
    #[default]
    Zstd,
    /// A bsdiff patch (control triples, byte differences, extra bytes), zstd-compressed.
    Bsdiff,
}

impl PatchCodec {
    /// Whether this is the default codec (not written to JSON).
    pub fn is_zstd(&self) -> bool {
        *self == PatchCodec::Zstd
    }
}

/// `source_patch` operation fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePatchOp {
    /// Destination image.
    pub dst: Destination,
    /// Offset in the destination.
    pub dst_offset: u64,
    /// Length of the patch output.
    pub dst_length: u64,
    /// Source ranges, concatenated in order: the reference the patch is decoded against.
    pub src_extents: Vec<SourceExtent>,
    /// sha256 of the concatenated source bytes.
    pub src_sha256: Sha256Digest,
    /// Offset of the patch blob in the data section.
    pub data_offset: u64,
    /// Length of the patch blob.
    pub data_length: u64,
    /// sha256 of the patch blob.
    pub data_sha256: Sha256Digest,
    /// sha256 of the patch output.
    pub dst_sha256: Sha256Digest,
    /// The blob's encoding (default `zstd`).
    #[serde(default, skip_serializing_if = "PatchCodec::is_zstd")]
    pub codec: PatchCodec,
}

/// Total length of `extents`, or `None` on overflow.
pub fn extents_len(extents: &[SourceExtent]) -> Option<u64> {
    extents
        .iter()
        .try_fold(0u64, |sum, e| sum.checked_add(e.length))
}
