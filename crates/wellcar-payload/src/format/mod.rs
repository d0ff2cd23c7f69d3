//! The on-wire payload format, version 1: header, signed manifest, signature block, data.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "WCAR-UPD"
//! 8       4     u32 LE format version = 1 (a reader rejects any other value)
//! 12      4     u32 LE flags: bit 0 = FLAG_MANIFEST_ZSTD; a reader rejects unknown flags
//! 16      8     u64 LE manifest length M (at most MAX_MANIFEST_LEN)
//! 24      4     u32 LE signature block length S (4 + 96 * n)
//! 28      4     u32 LE reserved, must be 0
//! 32      M     manifest: UTF-8 JSON, see [`Manifest`]; with FLAG_MANIFEST_ZSTD a zstd frame
//!               of that JSON (at most MAX_MANIFEST_LEN bytes decompressed)
//! 32+M    S     signature block: u32 LE count n (1..=MAX_SIGNATURES), then n entries of
//!               32-byte ed25519 public key + 64-byte ed25519 signature
//! 32+M+S  ...   data: the zstd blobs of the `replace` operations, back to back, in operation
//!               order; `data_offset` of an operation is relative to here
//! ```
//!
//! Each signature is ed25519 (RFC 8032, pure) over the 32 header bytes followed by the M
//! manifest bytes (compressed, if they are), so a flipped bit anywhere in the header or manifest fails verification. The
//! signature block carries the signer's public key only as a hint for error messages: a
//! payload is authentic when at least one entry verifies under a key the reader already
//! trusts. Several entries allow signing with an old and a new key during key rotation.
//! Readers verify the signature over the raw bytes first and parse the manifest only after
//! that, so unauthenticated JSON never reaches the parser on the apply path (nor an
//! unauthenticated frame the decompressor).
//!
//! Writers compress the manifest of delta payloads only: most of a small delta is its
//! manifest (an operation and its sha256 per 4 MiB of /usr), while a full payload stays
//! readable by every reader of format 1, flag-less, so it can always be the fallback.
//!
//! Manifest fields (JSON object, unknown fields rejected): `version`, `board`, `build_id`,
//! optional `min_source_version`; `usr` {`size`, `sha256`, `verity` {`root_hash`, `salt`,
//! `hash_offset`, `data_blocks`}}; `kernel` and `initramfs` {`size`, `sha256`}; `data_len`
//! (length of the data section); `operations` (below). Hashes are lowercase hex; versions are
//! OS versions (`wellcar_contract::OsVersion`: `MAJOR.MINOR.PATCH[+build]`). Writers cut
//! images into chunks of at most [`MAX_CHUNK_LEN`] (8 MiB); this crate's writer uses 4 MiB
//! ([`crate::create::CHUNK_LEN`]).
//!
//! The manifest carries the sha256 of every compressed blob, so the reader authenticates each
//! blob as a whole before decompressing it (blobs are at most [`MAX_BLOB_LEN`] bytes, so
//! buffering one is bounded), and the sha256 and size of every finished image (the /usr region,
//! the kernel, the initramfs) plus the dm-verity root hash of /usr, which the reader checks at
//! the end.
//!
//! Operations (`"type"` field of each entry of `operations`):
//! - `replace`: decompress `data_length` bytes of zstd data at `data_offset` into exactly
//!   `dst_length` bytes at `dst_offset` of destination `dst` (`usr`, `kernel`, `initramfs`).
//! - `zero`: `dst_length` zero bytes at `dst_offset`; no data.
//! - `source_copy`, `source_patch`: delta operations reading the source slot the manifest's
//!   `source` names; see `source_ops` (`SourceCopyOp`, `SourcePatchOp`). Patch blobs sit in
//!   the data section like `replace` blobs, in operation order.
//! - `verity_tree`: the /usr hash area, rebuilt by the reader from the data region written
//!   before it (no data); see `verity_tree` ([`VerityTreeOp`]). Only deltas use it.
//!
//! Per destination, operations appear in ascending `dst_offset` order and tile the image
//! exactly (no gap, no overlap), and `data_offset`s are contiguous from 0, so a reader streams
//! the payload front to back once. A reader that does not know a type rejects the payload with
//! [`FormatError::UnsupportedOperation`] before writing anything.
//!
//! This module parses and checks; it never panics on arbitrary input bytes (see the proptest).
//!
//! Layout: this file holds the constants, [`FormatError`] and the fixed [`Header`];
//! `manifest` holds the signed [`Manifest`] and its operations; `signature` holds the
//! signature block and the read-then-authenticate path ([`PayloadHead`], [`VerifiedHead`]).
//! Everything is re-exported here, so callers name it `crate::format::X`.

mod manifest;
mod signature;
mod source_ops;
mod verity_tree;

use ed25519_dalek::{PUBLIC_KEY_LENGTH, SIGNATURE_LENGTH};

pub use manifest::{
    Destination, FileImage, Manifest, Operation, ReplaceOp, Sha256Digest, UsrImage, VerityParams,
    ZeroOp,
};
pub(crate) use signature::verifying_key_from_bytes;
pub use signature::{
    decode_signature_block, encode_signature_block, key_fingerprint, PayloadHead, SignatureEntry,
    VerifiedHead,
};
pub use source_ops::{
    extents_len, PatchCodec, SourceCopyOp, SourceExtent, SourcePatchOp, SourceSlot,
    MAX_SOURCE_EXTENTS, MAX_SOURCE_LEN,
};
pub use verity_tree::VerityTreeOp;

/// First 8 bytes of every payload.
pub const MAGIC: [u8; 8] = *b"WCAR-UPD";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Largest manifest a reader accepts, compressed or not (a 1 GiB image needs about 100 KiB).
pub const MAX_MANIFEST_LEN: u64 = 16 * 1024 * 1024;
/// Header flag: the manifest section is a zstd frame of the manifest JSON.
pub const FLAG_MANIFEST_ZSTD: u32 = 1;
/// zstd level of a compressed manifest section.
const MANIFEST_ZSTD_LEVEL: i32 = 19;
/// Most signatures a payload may carry.
pub const MAX_SIGNATURES: u32 = 16;
/// Bytes per signature block entry: public key then signature.
pub const SIGNATURE_ENTRY_LEN: usize = PUBLIC_KEY_LENGTH + SIGNATURE_LENGTH;
/// Largest uncompressed size of one `replace` operation.
pub const MAX_CHUNK_LEN: u64 = 8 * 1024 * 1024;
/// Largest compressed blob a reader buffers (zstd's worst-case bound of `MAX_CHUNK_LEN`).
pub const MAX_BLOB_LEN: u64 = MAX_CHUNK_LEN + MAX_CHUNK_LEN / 128 + 1024;

/// What went wrong reading, checking or authenticating a payload's header and manifest.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The stream ended early.
    #[error("payload truncated at byte {offset} while reading {what}")]
    Truncated {
        /// Payload offset where data ran out.
        offset: u64,
        /// The part being read.
        what: &'static str,
    },
    /// Reading the payload stream failed.
    #[error("reading payload at byte {offset}")]
    Read {
        /// Payload offset of the failed read.
        offset: u64,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The first 8 bytes are not [`MAGIC`].
    #[error("not a wellcar update payload: magic is {found:?}, expected \"WCAR-UPD\"")]
    BadMagic {
        /// The bytes found (escaped).
        found: String,
    },
    /// A format version this reader does not implement.
    #[error(
        "unsupported payload format version {version} (this reader supports {FORMAT_VERSION})"
    )]
    UnsupportedFormat {
        /// The version in the header.
        version: u32,
    },
    /// A header field has a value this reader does not accept.
    #[error("invalid header field {field}: {reason}")]
    InvalidHeader {
        /// The header field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A compressed manifest section is not a zstd frame of at most [`MAX_MANIFEST_LEN`] bytes.
    #[error("manifest section does not decompress: {reason}")]
    ManifestDecompress {
        /// The decoder's message.
        reason: String,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("manifest is not valid: {source}")]
    ManifestSyntax {
        /// The JSON error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest field has an impossible value.
    #[error("invalid manifest field {field}: {reason}")]
    InvalidManifest {
        /// The field (JSON path).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An operation type this reader does not implement (a newer writer's delta operation).
    #[error("operation {index} has type {kind:?}, which this reader does not support (it knows \"replace\", \"zero\", \"source_copy\", \"source_patch\" and \"verity_tree\")")]
    UnsupportedOperation {
        /// Index in the operation list.
        index: usize,
        /// The operation's `type`.
        kind: String,
    },
    /// The signature block is malformed.
    #[error("invalid signature block: {reason}")]
    InvalidSignatureBlock {
        /// What is wrong with it.
        reason: String,
    },
    /// No signature was made by a trusted key.
    #[error("payload is not signed by a trusted key (signed by {signers}; trusted: {trusted})")]
    UntrustedSigner {
        /// Fingerprints of the keys in the signature block.
        signers: String,
        /// Names and fingerprints of the trusted keys.
        trusted: String,
    },
    /// A trusted key signed, but the signature does not match the header and manifest.
    #[error("signature by trusted key {key} does not match the payload header and manifest (tampered or corrupted)")]
    BadSignature {
        /// Name and fingerprint of the key.
        key: String,
    },
}

/// The fixed 32-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Length of the manifest JSON.
    pub manifest_len: u64,
    /// Length of the signature block.
    pub signature_block_len: u32,
    /// The manifest section is zstd-compressed ([`FLAG_MANIFEST_ZSTD`]).
    pub manifest_zstd: bool,
}

impl Header {
    /// Serializes the header.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = if self.manifest_zstd {
            FLAG_MANIFEST_ZSTD
        } else {
            0
        };
        out[12..16].copy_from_slice(&flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.manifest_len.to_le_bytes());
        out[24..28].copy_from_slice(&self.signature_block_len.to_le_bytes());
        out
    }

    /// Parses and checks a header.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, FormatError> {
        if bytes[0..8] != MAGIC {
            return Err(FormatError::BadMagic {
                found: bytes[0..8].escape_ascii().to_string(),
            });
        }
        let version = u32::from_le_bytes(le4(&bytes[8..12]));
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedFormat { version });
        }
        let flags = u32::from_le_bytes(le4(&bytes[12..16]));
        if flags & !FLAG_MANIFEST_ZSTD != 0 {
            return Err(FormatError::InvalidHeader {
                field: "flags",
                reason: format!("unknown flags {:#x}", flags & !FLAG_MANIFEST_ZSTD),
            });
        }
        let manifest_len = u64::from_le_bytes(le8(&bytes[16..24]));
        if manifest_len == 0 || manifest_len > MAX_MANIFEST_LEN {
            return Err(FormatError::InvalidHeader {
                field: "manifest length",
                reason: format!("{manifest_len} is outside 1..={MAX_MANIFEST_LEN}"),
            });
        }
        let signature_block_len = u32::from_le_bytes(le4(&bytes[24..28]));
        let entries = (signature_block_len as usize).checked_sub(4);
        let valid_sig_len = entries.is_some_and(|e| {
            e % SIGNATURE_ENTRY_LEN == 0
                && (1..=MAX_SIGNATURES as usize).contains(&(e / SIGNATURE_ENTRY_LEN))
        });
        if !valid_sig_len {
            return Err(FormatError::InvalidHeader {
                field: "signature block length",
                reason: format!(
                    "{signature_block_len} is not 4 + {SIGNATURE_ENTRY_LEN} * n for n in 1..={MAX_SIGNATURES}"
                ),
            });
        }
        let reserved = u32::from_le_bytes(le4(&bytes[28..32]));
        if reserved != 0 {
            return Err(FormatError::InvalidHeader {
                field: "reserved",
                reason: format!("must be 0, found {reserved:#x}"),
            });
        }
        Ok(Self {
            manifest_len,
            signature_block_len,
            manifest_zstd: flags & FLAG_MANIFEST_ZSTD != 0,
        })
    }

    /// Offset of the first data byte.
    pub fn data_start(&self) -> u64 {
        HEADER_LEN as u64 + self.manifest_len + u64::from(self.signature_block_len)
    }
}

/// The manifest section for manifest `json`: the JSON itself, or with `zstd` a zstd frame of
/// it (then set [`Header::manifest_zstd`]).
pub fn encode_manifest_section(json: &[u8], zstd: bool) -> std::io::Result<Vec<u8>> {
    match zstd {
        true => zstd::bulk::compress(json, MANIFEST_ZSTD_LEVEL),
        false => Ok(json.to_vec()),
    }
}

/// The manifest JSON in a manifest `section`, decompressed (at most [`MAX_MANIFEST_LEN`]
/// bytes) when `zstd`.
pub fn decode_manifest_section(
    section: &[u8],
    zstd: bool,
) -> Result<std::borrow::Cow<'_, [u8]>, FormatError> {
    if !zstd {
        return Ok(std::borrow::Cow::Borrowed(section));
    }
    zstd::bulk::decompress(section, MAX_MANIFEST_LEN as usize)
        .map(std::borrow::Cow::Owned)
        .map_err(|e| FormatError::ManifestDecompress {
            reason: e.to_string(),
        })
}

fn le4(s: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    a
}

fn le8(s: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    a
}

#[cfg(test)]
mod tests;
