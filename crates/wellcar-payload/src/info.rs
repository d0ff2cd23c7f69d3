//! A description of a payload for people and scripts (`wellcar payload info`).
//!
//! Built from the head alone, **without checking signatures**: it says who claims to have
//! signed, not who did. Use [`crate::verify_payload`] for that.

use std::fmt;
use std::io::Read;

use serde::Serialize;

use crate::format::{
    key_fingerprint, Destination, FormatError, Manifest, Operation, PayloadHead, FORMAT_VERSION,
};

/// What `wellcar payload info` shows.
#[derive(Debug, Clone, Serialize)]
pub struct PayloadInfo {
    /// Format version from the header.
    pub format_version: u32,
    /// Offset of the data section.
    pub data_start: u64,
    /// Fingerprints of the claimed signers (unverified).
    pub claimed_signers: Vec<String>,
    /// Operation counts by type.
    pub replace_operations: usize,
    /// `zero` operations.
    pub zero_operations: usize,
    /// `source_copy` operations (delta payloads).
    pub source_copy_operations: usize,
    /// `source_patch` operations (delta payloads).
    pub source_patch_operations: usize,
    /// `verity_tree` operations (delta payloads: the hash area is rebuilt, not sent).
    pub verity_tree_operations: usize,
    /// /usr bytes zero-filled without data.
    pub usr_zero_bytes: u64,
    /// The manifest, unverified.
    pub manifest: Manifest,
}

impl PayloadInfo {
    /// Reads the head of a payload and describes it. Does not check signatures.
    pub fn read(reader: &mut impl Read) -> Result<Self, FormatError> {
        let head = PayloadHead::read(reader)?;
        let manifest = head.manifest_unverified()?;
        let mut info = Self {
            format_version: FORMAT_VERSION,
            data_start: head.data_start(),
            claimed_signers: head
                .signatures
                .iter()
                .map(|s| key_fingerprint(&s.public_key))
                .collect(),
            replace_operations: 0,
            zero_operations: 0,
            source_copy_operations: 0,
            source_patch_operations: 0,
            verity_tree_operations: 0,
            usr_zero_bytes: 0,
            manifest,
        };
        for op in &info.manifest.operations {
            match op {
                Operation::Replace(_) => info.replace_operations += 1,
                Operation::Zero(z) => {
                    info.zero_operations += 1;
                    if z.dst == Destination::Usr {
                        info.usr_zero_bytes += z.dst_length;
                    }
                }
                Operation::SourceCopy(_) => info.source_copy_operations += 1,
                Operation::SourcePatch(_) => info.source_patch_operations += 1,
                Operation::VerityTree(_) => info.verity_tree_operations += 1,
                Operation::Unsupported { .. } => {}
            }
        }
        Ok(info)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("payload info always serializes")
    }
}

impl fmt::Display for PayloadInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        writeln!(f, "format:        wellcar payload v{}", self.format_version)?;
        writeln!(f, "version:       {}", m.version)?;
        writeln!(f, "board:         {}", m.board)?;
        writeln!(f, "build id:      {}", m.build_id)?;
        if let Some(min) = &m.min_source_version {
            writeln!(f, "min source:    {min}")?;
        }
        writeln!(
            f,
            "usr:           {} bytes, sha256 {}",
            m.usr.size, m.usr.sha256
        )?;
        writeln!(
            f,
            "  verity:      root {}, salt {}, hash offset {}, {} data blocks",
            m.usr.verity.root_hash,
            m.usr.verity.salt,
            m.usr.verity.hash_offset,
            m.usr.verity.data_blocks
        )?;
        writeln!(
            f,
            "  zero-filled: {} bytes (no data in the payload)",
            self.usr_zero_bytes
        )?;
        writeln!(
            f,
            "kernel:        {} bytes, sha256 {}",
            m.kernel.size, m.kernel.sha256
        )?;
        writeln!(
            f,
            "initramfs:     {} bytes, sha256 {}",
            m.initramfs.size, m.initramfs.sha256
        )?;
        writeln!(
            f,
            "operations:    {} ({} replace, {} zero)",
            m.operations.len(),
            self.replace_operations,
            self.zero_operations
        )?;
        writeln!(
            f,
            "data:          {} bytes from offset {}",
            m.data_len, self.data_start
        )?;
        writeln!(
            f,
            "signed by:     {} (claimed; not verified, use `wellcar payload verify`)",
            self.claimed_signers.join(", ")
        )
    }
}
