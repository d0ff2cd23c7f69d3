//! The on-wire payload format, version 1: header, signed manifest, signature block, data.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "WCAR-UPD"
//! 8       4     u32 LE format version = 1 (a reader rejects any other value)
//! 12      4     u32 LE flags, must be 0 (reserved; a reader rejects unknown flags)
//! 16      8     u64 LE manifest length M (at most MAX_MANIFEST_LEN)
//! 24      4     u32 LE signature block length S (4 + 96 * n)
//! 28      4     u32 LE reserved, must be 0
//! 32      M     manifest: UTF-8 JSON, see [`Manifest`]
//! 32+M    S     signature block: u32 LE count n (1..=MAX_SIGNATURES), then n entries of
//!               32-byte ed25519 public key + 64-byte ed25519 signature
//! 32+M+S  ...   data: the zstd blobs of the `replace` operations, back to back, in operation
//!               order; `data_offset` of an operation is relative to here
//! ```
//!
//! Each signature is ed25519 (RFC 8032, pure) over the 32 header bytes followed by the M
//! manifest bytes, so a flipped bit anywhere in the header or manifest fails verification. The
//! signature block carries the signer's public key only as a hint for error messages: a
//! payload is authentic when at least one entry verifies under a key the reader already
//! trusts. Several entries allow signing with an old and a new key during key rotation.
//! Readers verify the signature over the raw bytes first and parse the manifest only after
//! that, so unauthenticated JSON never reaches the parser on the apply path.
//!
//! Manifest fields (JSON object, unknown fields rejected): `version`, `board`, `build_id`,
//! optional `min_source_version`; `usr` {`size`, `sha256`, `verity` {`root_hash`, `salt`,
//! `hash_offset`, `data_blocks`}}; `kernel` and `initramfs` {`size`, `sha256`}; `data_len`
//! (length of the data section); `operations` (below). Hashes are lowercase hex; versions are
//! OS versions (`wellcar_contract::OsVersion`: `MAJOR.MINOR.PATCH[+build]`). Writers cut images into chunks of at most [`MAX_CHUNK_LEN`] (4 MiB today).
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
//!
//! Per destination, operations appear in ascending `dst_offset` order and tile the image
//! exactly (no gap, no overlap), and `data_offset`s are contiguous from 0, so a reader streams
//! the payload front to back once. Delta operations (copy or patch from the source slot) will
//! be new `type` values; a reader that does not know a type rejects the payload with
//! [`FormatError::UnsupportedOperation`] before writing anything.
//!
//! This module parses and checks; it never panics on arbitrary input bytes (see the proptest).

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;

use ed25519_dalek::{Signature, VerifyingKey, PUBLIC_KEY_LENGTH, SIGNATURE_LENGTH};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::TrustedKeys;
use wellcar_contract::OsVersion;

/// First 8 bytes of every payload.
pub const MAGIC: [u8; 8] = *b"WCAR-UPD";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Largest manifest a reader accepts (a 1 GiB image needs about 100 KiB).
pub const MAX_MANIFEST_LEN: u64 = 16 * 1024 * 1024;
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
    #[error("operation {index} has type {kind:?}, which this reader does not support (it knows \"replace\" and \"zero\")")]
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
}

impl Header {
    /// Serializes the header.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
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
        if flags != 0 {
            return Err(FormatError::InvalidHeader {
                field: "flags",
                reason: format!("unknown flags {flags:#x}"),
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
        })
    }

    /// Offset of the first data byte.
    pub fn data_start(&self) -> u64 {
        HEADER_LEN as u64 + self.manifest_len + u64::from(self.signature_block_len)
    }
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

/// A sha256 digest, written as lowercase hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not 64 hex digits")))
    }
}

/// The signed description of an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// OS version this payload installs ([`OsVersion`]: `3815.2.0`, `4799.0.0+nightly-…`).
    pub version: String,
    /// Board the image is built for (`amd64-usr`).
    pub board: String,
    /// The build's identifier, informational.
    pub build_id: String,
    /// Oldest running version that may install this payload ([`OsVersion`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_source_version: Option<String>,
    /// The /usr region written into the USR slot.
    pub usr: UsrImage,
    /// The kernel for the slot.
    pub kernel: FileImage,
    /// The initramfs for the slot.
    pub initramfs: FileImage,
    /// Total length of the data section.
    pub data_len: u64,
    /// How to build each image, in stream order.
    pub operations: Vec<Operation>,
}

/// The /usr region: size, hash and dm-verity parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsrImage {
    /// Bytes written into the slot.
    pub size: u64,
    /// sha256 of those bytes.
    pub sha256: Sha256Digest,
    /// dm-verity parameters of the region.
    pub verity: VerityParams,
}

/// dm-verity (format 1, sha256) parameters as given to `veritysetup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityParams {
    /// Root hash, hex.
    pub root_hash: Sha256Digest,
    /// Salt, hex (any length up to 256 bytes).
    pub salt: String,
    /// Byte offset of the hash area (superblock first).
    pub hash_offset: u64,
    /// Number of 4096-byte data blocks covered.
    pub data_blocks: u64,
}

/// A file-backed image (kernel, initramfs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileImage {
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the contents.
    pub sha256: Sha256Digest,
}

/// Where an operation writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Destination {
    /// The USR partition.
    Usr,
    /// The slot's kernel file.
    Kernel,
    /// The slot's initramfs file.
    Initramfs,
}

impl Destination {
    /// All destinations, in the order their operations appear.
    pub const ALL: [Destination; 3] = [
        Destination::Usr,
        Destination::Kernel,
        Destination::Initramfs,
    ];

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Destination::Usr => "usr",
            Destination::Kernel => "kernel",
            Destination::Initramfs => "initramfs",
        }
    }
}

/// One step of building an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Decompress a zstd blob into a range.
    Replace(ReplaceOp),
    /// Fill a range with zeros.
    Zero(ZeroOp),
    /// An operation a newer writer emitted that this reader does not know; rejected by
    /// [`Manifest::validate`].
    Unsupported {
        /// Its `type` field.
        kind: String,
    },
}

/// `replace` operation fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceOp {
    /// Destination image.
    pub dst: Destination,
    /// Offset in the destination.
    pub dst_offset: u64,
    /// Uncompressed length.
    pub dst_length: u64,
    /// Offset of the blob in the data section.
    pub data_offset: u64,
    /// Compressed length.
    pub data_length: u64,
    /// sha256 of the compressed blob.
    pub data_sha256: Sha256Digest,
}

/// `zero` operation fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZeroOp {
    /// Destination image.
    pub dst: Destination,
    /// Offset in the destination.
    pub dst_offset: u64,
    /// Number of zero bytes.
    pub dst_length: u64,
}

impl Operation {
    /// Destination and range, for known operations.
    pub fn dst_range(&self) -> Option<(Destination, u64, u64)> {
        match self {
            Operation::Replace(r) => Some((r.dst, r.dst_offset, r.dst_length)),
            Operation::Zero(z) => Some((z.dst, z.dst_offset, z.dst_length)),
            Operation::Unsupported { .. } => None,
        }
    }
}

impl Serialize for Operation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (kind, body) = match self {
            Operation::Replace(r) => ("replace", serde_json::to_value(r)),
            Operation::Zero(z) => ("zero", serde_json::to_value(z)),
            Operation::Unsupported { kind } => (kind.as_str(), Ok(serde_json::json!({}))),
        };
        let mut body = body.map_err(serde::ser::Error::custom)?;
        if let Some(map) = body.as_object_mut() {
            map.insert("type".into(), serde_json::Value::String(kind.into()));
        }
        body.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Operation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut value = serde_json::Map::deserialize(d)?;
        let kind = match value.remove("type") {
            Some(serde_json::Value::String(kind)) => kind,
            _ => return Err(D::Error::custom("operation has no string field \"type\"")),
        };
        let body = serde_json::Value::Object(value);
        match kind.as_str() {
            "replace" => serde_json::from_value(body)
                .map(Operation::Replace)
                .map_err(|e| D::Error::custom(format!("replace operation: {e}"))),
            "zero" => serde_json::from_value(body)
                .map(Operation::Zero)
                .map_err(|e| D::Error::custom(format!("zero operation: {e}"))),
            _ => Ok(Operation::Unsupported { kind }),
        }
    }
}

impl Manifest {
    /// Parses manifest JSON and checks it with [`Manifest::validate`].
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|source| FormatError::ManifestSyntax { source })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks internal consistency: known operation types, bounded sizes, every image tiled
    /// exactly in order, contiguous data offsets that add up to `data_len`.
    pub fn validate(&self) -> Result<(), FormatError> {
        let invalid =
            |field: String, reason: String| FormatError::InvalidManifest { field, reason };
        OsVersion::parse(&self.version).map_err(|e| invalid("version".into(), e.to_string()))?;
        if let Some(min) = &self.min_source_version {
            OsVersion::parse(min)
                .map_err(|e| invalid("min_source_version".into(), e.to_string()))?;
        }
        if self.board.is_empty() {
            return Err(invalid("board".into(), "is empty".into()));
        }
        let verity = &self.usr.verity;
        if verity.salt.len() > 512 || hex::decode(&verity.salt).is_err() {
            return Err(invalid(
                "usr.verity.salt".into(),
                "is not hex of at most 256 bytes".into(),
            ));
        }
        let data_end = verity
            .data_blocks
            .checked_mul(crate::verity::BLOCK_SIZE)
            .filter(|&end| end <= verity.hash_offset && verity.hash_offset <= self.usr.size);
        if data_end.is_none() || verity.data_blocks == 0 {
            return Err(invalid(
                "usr.verity".into(),
                format!(
                    "{} data blocks and hash offset {} do not fit a {}-byte image",
                    verity.data_blocks, verity.hash_offset, self.usr.size
                ),
            ));
        }

        let mut next_dst = [0u64; 3];
        let mut last_dst_seen: Option<Destination> = None;
        let mut finished: BTreeSet<Destination> = BTreeSet::new();
        let mut next_data = 0u64;
        for (index, op) in self.operations.iter().enumerate() {
            let field = |name: &str| format!("operations[{index}].{name}");
            let Some((dst, offset, length)) = op.dst_range() else {
                let Operation::Unsupported { kind } = op else {
                    unreachable!("dst_range is None only for unsupported operations")
                };
                return Err(FormatError::UnsupportedOperation {
                    index,
                    kind: kind.clone(),
                });
            };
            if last_dst_seen != Some(dst) {
                if finished.contains(&dst) {
                    return Err(invalid(
                        field("dst"),
                        format!("operations for {} are not consecutive", dst.name()),
                    ));
                }
                if let Some(prev) = last_dst_seen {
                    finished.insert(prev);
                }
                last_dst_seen = Some(dst);
            }
            let slot = &mut next_dst[dst as usize];
            if offset != *slot {
                return Err(invalid(
                    field("dst_offset"),
                    format!(
                        "is {offset}, expected {} (operations must tile {} in order)",
                        *slot,
                        dst.name()
                    ),
                ));
            }
            if length == 0 {
                return Err(invalid(field("dst_length"), "is 0".into()));
            }
            *slot = offset
                .checked_add(length)
                .filter(|&end| end <= self.image_size(dst))
                .ok_or_else(|| {
                    invalid(
                        field("dst_length"),
                        format!(
                            "range {offset}+{length} is past the end of {} ({} bytes)",
                            dst.name(),
                            self.image_size(dst)
                        ),
                    )
                })?;
            if let Operation::Replace(r) = op {
                if r.dst_length > MAX_CHUNK_LEN {
                    return Err(invalid(
                        field("dst_length"),
                        format!(
                            "{} exceeds the {MAX_CHUNK_LEN}-byte chunk limit",
                            r.dst_length
                        ),
                    ));
                }
                if r.data_length == 0 || r.data_length > MAX_BLOB_LEN {
                    return Err(invalid(
                        field("data_length"),
                        format!("{} is outside 1..={MAX_BLOB_LEN}", r.data_length),
                    ));
                }
                if r.data_offset != next_data {
                    return Err(invalid(
                        field("data_offset"),
                        format!(
                            "is {}, expected {next_data} (blobs are contiguous)",
                            r.data_offset
                        ),
                    ));
                }
                next_data += r.data_length;
            }
        }
        for dst in Destination::ALL {
            if next_dst[dst as usize] != self.image_size(dst) {
                return Err(invalid(
                    "operations".into(),
                    format!(
                        "cover {} of {} bytes of {}",
                        next_dst[dst as usize],
                        self.image_size(dst),
                        dst.name()
                    ),
                ));
            }
        }
        if next_data != self.data_len {
            return Err(invalid(
                "data_len".into(),
                format!("is {}, operations use {next_data}", self.data_len),
            ));
        }
        Ok(())
    }

    /// Size of a destination image.
    pub fn image_size(&self, dst: Destination) -> u64 {
        match dst {
            Destination::Usr => self.usr.size,
            Destination::Kernel => self.kernel.size,
            Destination::Initramfs => self.initramfs.size,
        }
    }

    /// Expected sha256 of a destination image.
    pub fn image_sha256(&self, dst: Destination) -> Sha256Digest {
        match dst {
            Destination::Usr => self.usr.sha256,
            Destination::Kernel => self.kernel.sha256,
            Destination::Initramfs => self.initramfs.sha256,
        }
    }
}

/// One entry of the signature block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureEntry {
    /// The signer's public key (a hint; trust comes from [`TrustedKeys`]).
    pub public_key: [u8; PUBLIC_KEY_LENGTH],
    /// ed25519 signature over header || manifest.
    pub signature: [u8; SIGNATURE_LENGTH],
}

/// Serializes a signature block.
pub fn encode_signature_block(entries: &[SignatureEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * SIGNATURE_ENTRY_LEN);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for entry in entries {
        out.extend_from_slice(&entry.public_key);
        out.extend_from_slice(&entry.signature);
    }
    out
}

/// Parses a signature block whose length the header already checked.
pub fn decode_signature_block(bytes: &[u8]) -> Result<Vec<SignatureEntry>, FormatError> {
    let bad = |reason: String| FormatError::InvalidSignatureBlock { reason };
    if bytes.len() < 4 {
        return Err(bad(format!("{} bytes is too short", bytes.len())));
    }
    let count = u32::from_le_bytes(le4(&bytes[0..4])) as usize;
    let entries = &bytes[4..];
    if count == 0 || count * SIGNATURE_ENTRY_LEN != entries.len() {
        return Err(bad(format!(
            "count {count} does not match its {} bytes of entries",
            entries.len()
        )));
    }
    Ok(entries
        .chunks_exact(SIGNATURE_ENTRY_LEN)
        .map(|chunk| {
            let mut public_key = [0u8; PUBLIC_KEY_LENGTH];
            let mut signature = [0u8; SIGNATURE_LENGTH];
            public_key.copy_from_slice(&chunk[..PUBLIC_KEY_LENGTH]);
            signature.copy_from_slice(&chunk[PUBLIC_KEY_LENGTH..]);
            SignatureEntry {
                public_key,
                signature,
            }
        })
        .collect())
}

/// Short printable identity of a public key: first 8 bytes of its sha256, hex.
pub fn key_fingerprint(public_key: &[u8; PUBLIC_KEY_LENGTH]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// The header, manifest bytes and signatures of a payload, as read from the stream. Nothing
/// in it is trusted: the manifest is parsed only after [`PayloadHead::authenticate`] checked
/// the signature (or explicitly, for display, by [`PayloadHead::manifest_unverified`]).
#[derive(Debug, Clone)]
pub struct PayloadHead {
    /// The header.
    pub header: Header,
    /// The signature entries.
    pub signatures: Vec<SignatureEntry>,
    header_bytes: [u8; HEADER_LEN],
    manifest_bytes: Vec<u8>,
}

impl PayloadHead {
    /// Reads header, manifest and signature block from the start of a payload stream, leaving
    /// `reader` at the first data byte. Checks the header and the signature block's shape;
    /// does not parse the manifest or check signatures.
    pub fn read(reader: &mut impl Read) -> Result<Self, FormatError> {
        let mut header_bytes = [0u8; HEADER_LEN];
        read_exact_at(reader, &mut header_bytes, 0, "header")?;
        let header = Header::parse(&header_bytes)?;
        let mut manifest_bytes = vec![0u8; header.manifest_len as usize];
        read_exact_at(reader, &mut manifest_bytes, HEADER_LEN as u64, "manifest")?;
        let mut signature_bytes = vec![0u8; header.signature_block_len as usize];
        read_exact_at(
            reader,
            &mut signature_bytes,
            HEADER_LEN as u64 + header.manifest_len,
            "signature block",
        )?;
        let signatures = decode_signature_block(&signature_bytes)?;
        Ok(Self {
            header,
            signatures,
            header_bytes,
            manifest_bytes,
        })
    }

    /// Parses the manifest without authenticating it: for display only.
    pub fn manifest_unverified(&self) -> Result<Manifest, FormatError> {
        Manifest::parse(&self.manifest_bytes)
    }

    /// The bytes every signature covers: header then manifest.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut message = Vec::with_capacity(HEADER_LEN + self.manifest_bytes.len());
        message.extend_from_slice(&self.header_bytes);
        message.extend_from_slice(&self.manifest_bytes);
        message
    }

    /// sha256 of header and manifest: identifies this payload in checkpoints.
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of(&self.signed_message())
    }

    /// Offset of the first data byte.
    pub fn data_start(&self) -> u64 {
        self.header.data_start()
    }

    /// Checks the signatures against `trusted`, then parses and validates the manifest.
    /// Succeeds when any entry verifies under any trusted key.
    pub fn authenticate(self, trusted: &TrustedKeys) -> Result<VerifiedHead, FormatError> {
        let message = self.signed_message();
        // Every entry against every trusted key (at most 16 x a handful): the public key in an
        // entry is only a hint and is itself unauthenticated.
        let signer = self.signatures.iter().find_map(|entry| {
            let signature = Signature::from_bytes(&entry.signature);
            trusted.keys().iter().find(|key| {
                key.verifying_key
                    .verify_strict(&message, &signature)
                    .is_ok()
            })
        });
        let Some(signer) = signer else {
            let claimed_trusted = self.signatures.iter().find_map(|entry| {
                trusted
                    .keys()
                    .iter()
                    .find(|key| key.verifying_key.as_bytes() == &entry.public_key)
            });
            if let Some(key) = claimed_trusted {
                return Err(FormatError::BadSignature {
                    key: key.describe(),
                });
            }
            return Err(FormatError::UntrustedSigner {
                signers: self
                    .signatures
                    .iter()
                    .map(|e| key_fingerprint(&e.public_key))
                    .collect::<Vec<_>>()
                    .join(", "),
                trusted: trusted.describe(),
            });
        };
        let manifest = Manifest::parse(&self.manifest_bytes)?;
        Ok(VerifiedHead {
            signer: signer.describe(),
            digest: self.digest(),
            manifest,
            head: self,
        })
    }
}

/// A head whose signature verified under a trusted key, with its parsed, validated manifest.
#[derive(Debug, Clone)]
pub struct VerifiedHead {
    head: PayloadHead,
    manifest: Manifest,
    signer: String,
    digest: Sha256Digest,
}

impl VerifiedHead {
    /// The authenticated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The raw head this was made from.
    pub fn head(&self) -> &PayloadHead {
        &self.head
    }

    /// Name and fingerprint of the trusted key that verified.
    pub fn signer(&self) -> &str {
        &self.signer
    }

    /// Offset of the first data byte.
    pub fn data_start(&self) -> u64 {
        self.head.data_start()
    }

    /// Identity of this payload (sha256 of header and manifest).
    pub fn digest(&self) -> Sha256Digest {
        self.digest
    }
}

fn read_exact_at(
    reader: &mut impl Read,
    buf: &mut [u8],
    offset: u64,
    what: &'static str,
) -> Result<(), FormatError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(FormatError::Truncated {
                    offset: offset + filled as u64,
                    what,
                })
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(FormatError::Read {
                    offset: offset + filled as u64,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Checks that `key` is a usable ed25519 public key (not a weak point).
pub(crate) fn verifying_key_from_bytes(bytes: &[u8; PUBLIC_KEY_LENGTH]) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(bytes)
        .ok()
        .filter(|k| !k.is_weak())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trips_and_rejects_each_bad_field() {
        let header = Header {
            manifest_len: 1234,
            signature_block_len: 4 + 96 * 2,
        };
        let bytes = header.to_bytes();
        assert_eq!(Header::parse(&bytes).unwrap(), header);
        assert_eq!(header.data_start(), 32 + 1234 + 196);

        let mut magic = bytes;
        magic[0] ^= 1;
        assert!(matches!(
            Header::parse(&magic),
            Err(FormatError::BadMagic { .. })
        ));
        let mut version = bytes;
        version[8] = 2;
        assert!(matches!(
            Header::parse(&version),
            Err(FormatError::UnsupportedFormat { version: 2 })
        ));
        let mut flags = bytes;
        flags[13] = 1;
        assert!(matches!(
            Header::parse(&flags),
            Err(FormatError::InvalidHeader { field: "flags", .. })
        ));
        let mut huge = bytes;
        huge[23] = 1;
        assert!(matches!(
            Header::parse(&huge),
            Err(FormatError::InvalidHeader {
                field: "manifest length",
                ..
            })
        ));
        let mut sig = bytes;
        sig[24] ^= 1;
        assert!(matches!(
            Header::parse(&sig),
            Err(FormatError::InvalidHeader {
                field: "signature block length",
                ..
            })
        ));
    }

    fn minimal_manifest() -> Manifest {
        Manifest {
            version: "1.2.3".into(),
            board: "amd64-usr".into(),
            build_id: "b".into(),
            min_source_version: None,
            usr: UsrImage {
                size: 8192,
                sha256: Sha256Digest([1; 32]),
                verity: VerityParams {
                    root_hash: Sha256Digest([2; 32]),
                    salt: "aa".into(),
                    hash_offset: 4096,
                    data_blocks: 1,
                },
            },
            kernel: FileImage {
                size: 10,
                sha256: Sha256Digest([3; 32]),
            },
            initramfs: FileImage {
                size: 10,
                sha256: Sha256Digest([4; 32]),
            },
            data_len: 5,
            operations: vec![
                Operation::Zero(ZeroOp {
                    dst: Destination::Usr,
                    dst_offset: 0,
                    dst_length: 8192,
                }),
                Operation::Replace(ReplaceOp {
                    dst: Destination::Kernel,
                    dst_offset: 0,
                    dst_length: 10,
                    data_offset: 0,
                    data_length: 5,
                    data_sha256: Sha256Digest([5; 32]),
                }),
                Operation::Zero(ZeroOp {
                    dst: Destination::Initramfs,
                    dst_offset: 0,
                    dst_length: 10,
                }),
            ],
        }
    }

    #[test]
    fn manifest_json_round_trips() {
        let manifest = minimal_manifest();
        let json = serde_json::to_vec(&manifest).unwrap();
        assert!(String::from_utf8_lossy(&json).contains(r#""type":"replace""#));
        assert_eq!(Manifest::parse(&json).unwrap(), manifest);
    }

    #[test]
    fn unknown_operation_type_is_rejected_by_name() {
        let mut manifest = minimal_manifest();
        manifest.operations[0] = Operation::Unsupported {
            kind: "copy_from_source".into(),
        };
        let json = serde_json::to_vec(&manifest).unwrap();
        let err = Manifest::parse(&json).unwrap_err();
        assert!(
            matches!(&err, FormatError::UnsupportedOperation { index: 0, kind } if kind == "copy_from_source"),
            "{err}"
        );
    }

    #[test]
    fn gaps_overlaps_and_out_of_range_operations_are_rejected() {
        let mut gap = minimal_manifest();
        gap.operations[0] = Operation::Zero(ZeroOp {
            dst: Destination::Usr,
            dst_offset: 0,
            dst_length: 4096,
        });
        let err = gap.validate().unwrap_err().to_string();
        assert!(err.contains("cover 4096 of 8192 bytes of usr"), "{err}");

        let mut past_end = minimal_manifest();
        past_end.operations[0] = Operation::Zero(ZeroOp {
            dst: Destination::Usr,
            dst_offset: 0,
            dst_length: 9000,
        });
        let err = past_end.validate().unwrap_err().to_string();
        assert!(err.contains("past the end of usr"), "{err}");

        let mut data = minimal_manifest();
        data.data_len = 6;
        assert!(data
            .validate()
            .unwrap_err()
            .to_string()
            .contains("data_len"));

        for bad in ["one", "1.2", "1.2.3.4", "1.0.0-rc1"] {
            let mut version = minimal_manifest();
            version.version = bad.into();
            let err = version.validate().unwrap_err().to_string();
            assert!(
                err.contains("field version") && err.contains(&format!("{bad:?}")),
                "{err}"
            );
            let mut min = minimal_manifest();
            min.min_source_version = Some(bad.into());
            let err = min.validate().unwrap_err().to_string();
            assert!(err.contains("field min_source_version"), "{err}");
        }
        let mut nightly = minimal_manifest();
        nightly.version = "4799.0.0+nightly-20260821-2100".into();
        nightly.min_source_version = Some("3815.2.0".into());
        assert!(nightly.validate().is_ok());
    }

    proptest! {
        #[test]
        fn header_parser_never_panics(bytes in proptest::array::uniform32(any::<u8>())) {
            let _ = Header::parse(&bytes);
        }

        #[test]
        fn head_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = PayloadHead::read(&mut bytes.as_slice()).map(|h| h.manifest_unverified());
        }

        #[test]
        fn head_reader_never_panics_on_valid_header_and_junk(
            junk in proptest::collection::vec(any::<u8>(), 0..600),
            manifest_len in 1u64..400,
        ) {
            let mut bytes = Header { manifest_len, signature_block_len: 100 }.to_bytes().to_vec();
            bytes.extend_from_slice(&junk);
            let _ = PayloadHead::read(&mut bytes.as_slice()).map(|h| h.manifest_unverified());
        }

        #[test]
        fn manifest_parser_never_panics_on_mutated_json(
            flips in proptest::collection::vec((0usize..2000, any::<u8>()), 1..8),
        ) {
            let mut json = serde_json::to_vec(&minimal_manifest()).unwrap();
            for (at, byte) in flips {
                let len = json.len();
                json[at % len] = byte;
            }
            let _ = Manifest::parse(&json);
        }
    }
}
