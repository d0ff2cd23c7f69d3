//! The signed manifest: what a payload installs and how, as parsed JSON.
//!
//! [`Manifest::parse`] accepts only JSON of the documented shape (unknown fields rejected)
//! that passes [`Manifest::validate`]: known operation types, bounded chunk and blob sizes,
//! every image tiled exactly in order, contiguous data offsets. Code past `parse` relies on
//! these invariants. Parsing never panics on arbitrary bytes.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wellcar_contract::{OsVersion, RootHash};

use super::source_ops::{
    extents_len, SourceCopyOp, SourceExtent, SourcePatchOp, SourceSlot, MAX_SOURCE_EXTENTS,
    MAX_SOURCE_LEN,
};
use super::verity_tree::VerityTreeOp;
use super::{FormatError, MAX_BLOB_LEN, MAX_CHUNK_LEN};

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
    /// For a delta: the slot it reads from (absent in a full payload). An older reader
    /// rejects a delta as an unknown field before writing anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSlot>,
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
    /// Root hash: 64 lower-case hex digits in JSON (the [`RootHash`] contract).
    pub root_hash: RootHash,
    /// Salt, hex (any length up to 256 bytes).
    pub salt: String,
    /// Byte offset of the hash area (superblock first).
    pub hash_offset: u64,
    /// Number of 4096-byte data blocks covered.
    pub data_blocks: u64,
}

impl VerityParams {
    /// A [`RootHasher`](wellcar_verity::RootHasher) for the data region these parameters
    /// describe. Only for a validated manifest ([`Manifest::validate`] checks the salt is hex).
    pub fn root_hasher(&self) -> wellcar_verity::RootHasher {
        let salt = hex::decode(&self.salt).expect("salt validated by Manifest::validate");
        wellcar_verity::RootHasher::new(&salt, self.data_blocks)
    }
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
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Destination {
    /// The USR partition.
    #[default]
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

    /// Whether this is [`Destination::Usr`].
    pub fn is_usr(&self) -> bool {
        *self == Destination::Usr
    }

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
    /// Copy extents of the source slot (delta payloads).
    SourceCopy(SourceCopyOp),
    /// Decode a zstd patch against extents of the source slot (delta payloads).
    SourcePatch(SourcePatchOp),
    /// Rebuild the /usr dm-verity hash area from the data written before it.
    VerityTree(VerityTreeOp),
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
            Operation::SourceCopy(c) => Some((c.dst, c.dst_offset, c.dst_length)),
            Operation::SourcePatch(p) => Some((p.dst, p.dst_offset, p.dst_length)),
            Operation::VerityTree(v) => Some((v.dst, v.dst_offset, v.dst_length)),
            Operation::Unsupported { .. } => None,
        }
    }

    /// Bytes of the data section this operation consumes.
    pub fn data_length(&self) -> u64 {
        match self {
            Operation::Replace(r) => r.data_length,
            Operation::SourcePatch(p) => p.data_length,
            _ => 0,
        }
    }

    /// Source extents this operation reads, if it reads the source slot.
    pub fn source_extents(&self) -> Option<&[SourceExtent]> {
        match self {
            Operation::SourceCopy(c) => Some(&c.src_extents),
            Operation::SourcePatch(p) => Some(&p.src_extents),
            _ => None,
        }
    }
}

impl Serialize for Operation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (kind, body) = match self {
            Operation::Replace(r) => ("replace", serde_json::to_value(r)),
            Operation::Zero(z) => ("zero", serde_json::to_value(z)),
            Operation::SourceCopy(c) => ("source_copy", serde_json::to_value(c)),
            Operation::SourcePatch(p) => ("source_patch", serde_json::to_value(p)),
            Operation::VerityTree(v) => ("verity_tree", serde_json::to_value(v)),
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
            "source_copy" => serde_json::from_value(body)
                .map(Operation::SourceCopy)
                .map_err(|e| D::Error::custom(format!("source_copy operation: {e}"))),
            "source_patch" => serde_json::from_value(body)
                .map(Operation::SourcePatch)
                .map_err(|e| D::Error::custom(format!("source_patch operation: {e}"))),
            "verity_tree" => serde_json::from_value(body)
                .map(Operation::VerityTree)
                .map_err(|e| D::Error::custom(format!("verity_tree operation: {e}"))),
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
        if let Some(source) = &self.source {
            OsVersion::parse(&source.version)
                .map_err(|e| invalid("source.version".into(), e.to_string()))?;
            if source.verity.data_blocks == 0
                || source.verity.salt.len() > 512
                || hex::decode(&source.verity.salt).is_err()
            {
                return Err(invalid(
                    "source.verity".into(),
                    "needs data blocks and a hex salt of at most 256 bytes".into(),
                ));
            }
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
            .checked_mul(wellcar_verity::BLOCK_SIZE)
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
            if let Some(extents) = op.source_extents() {
                self.validate_source_op(index, op, extents)?;
            }
            if let Operation::VerityTree(v) = op {
                v.validate(index, verity)?;
            }
            if let Operation::SourcePatch(p) = op {
                if p.data_length == 0 || p.data_length > MAX_BLOB_LEN {
                    return Err(invalid(
                        field("data_length"),
                        format!("{} is outside 1..={MAX_BLOB_LEN}", p.data_length),
                    ));
                }
                if p.data_offset != next_data {
                    return Err(invalid(
                        field("data_offset"),
                        format!(
                            "is {}, expected {next_data} (blobs are contiguous)",
                            p.data_offset
                        ),
                    ));
                }
                next_data += p.data_length;
            }
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

    /// Checks a source operation: the manifest names a source, the extents are few, non-empty
    /// and inside the source's verity data region, and their total fits the operation.
    fn validate_source_op(
        &self,
        index: usize,
        op: &Operation,
        extents: &[SourceExtent],
    ) -> Result<(), FormatError> {
        let invalid = |name: &str, reason: String| FormatError::InvalidManifest {
            field: format!("operations[{index}].{name}"),
            reason,
        };
        let Some(source) = &self.source else {
            return Err(invalid(
                "type",
                "reads the source slot, but the manifest names no source".into(),
            ));
        };
        let (_, _, dst_length) = op.dst_range().expect("source operations have a range");
        if dst_length > MAX_CHUNK_LEN {
            return Err(invalid(
                "dst_length",
                format!("{dst_length} exceeds the {MAX_CHUNK_LEN}-byte chunk limit"),
            ));
        }
        if extents.is_empty() || extents.len() > MAX_SOURCE_EXTENTS {
            return Err(invalid(
                "src_extents",
                format!(
                    "has {} extents, allowed 1..={MAX_SOURCE_EXTENTS}",
                    extents.len()
                ),
            ));
        }
        let src = match op {
            Operation::SourceCopy(c) => c.src,
            _ => Destination::Usr,
        };
        let Some(slot_len) = source.readable_len(src) else {
            return Err(invalid(
                "src",
                format!(
                    "reads the source slot's {}, which the manifest's source does not describe",
                    src.name()
                ),
            ));
        };
        let region = if src.is_usr() {
            "verity data region".to_owned()
        } else {
            src.name().to_owned()
        };
        for (i, extent) in extents.iter().enumerate() {
            let end = extent.offset.checked_add(extent.length);
            if extent.length == 0 || end.is_none_or(|end| end > slot_len) {
                return Err(invalid(
                    &format!("src_extents[{i}]"),
                    format!(
                        "range {}+{} is empty or beyond the source slot's {slot_len}-byte {region}",
                        extent.offset, extent.length
                    ),
                ));
            }
        }
        let total = extents_len(extents).unwrap_or(u64::MAX);
        let limit = match op {
            Operation::SourceCopy(_) => dst_length,
            _ => MAX_SOURCE_LEN,
        };
        let fits = match op {
            Operation::SourceCopy(_) => total == dst_length,
            _ => total <= limit,
        };
        if !fits {
            return Err(invalid(
                "src_extents",
                format!(
                    "total {total} bytes; this operation needs {} {limit}",
                    if matches!(op, Operation::SourceCopy(_)) {
                        "exactly"
                    } else {
                        "at most"
                    }
                ),
            ));
        }
        Ok(())
    }

    /// True for a delta payload (one that reads a source slot).
    pub fn is_delta(&self) -> bool {
        self.source.is_some()
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
