//! The `verity_tree` operation: the /usr slot's dm-verity hash area, rebuilt on the host from
//! the data region the earlier operations wrote, instead of sent in the payload.
//!
//! Fields: `dst` (always `usr`), `dst_offset` (the manifest's `usr.verity.hash_offset`),
//! `dst_length` (the hash area's size for `usr.verity.data_blocks`: superblock block plus the
//! tree), `uuid` (the superblock's uuid, the one input of the area that is not derived from the
//! data and the salt) and `dst_sha256` (sha256 of the area's bytes).
//!
//! A reader hashes the data region as written (every operation before this one tiles it),
//! lays out the area (`wellcar_verity::RootHasher::finish_hash_area`), checks its root against
//! `usr.verity.root_hash` and its bytes against `dst_sha256`, and only then writes it. The
//! area is a pure function of data, salt and uuid, so the operation needs no data blob and
//! no source: it is what keeps a one-file delta from carrying the whole 2 MiB tree (sha256
//! digests do not compress).
//!
//! Writers emit it only in delta payloads: a full payload stays readable by agents that
//! predate the operation, so it can always serve as the fallback.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::manifest::{Destination, Sha256Digest, VerityParams};
use super::FormatError;

/// `verity_tree` operation fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityTreeOp {
    /// Destination image (`usr`).
    pub dst: Destination,
    /// Offset in the destination: the hash offset.
    pub dst_offset: u64,
    /// Size of the hash area.
    pub dst_length: u64,
    /// UUID recorded in the verity superblock.
    pub uuid: Uuid,
    /// sha256 of the hash area's bytes.
    pub dst_sha256: Sha256Digest,
}

impl VerityTreeOp {
    /// Checks that the operation covers exactly the hash area `verity` describes.
    pub(super) fn validate(&self, index: usize, verity: &VerityParams) -> Result<(), FormatError> {
        let invalid = |name: &str, reason: String| FormatError::InvalidManifest {
            field: format!("operations[{index}].{name}"),
            reason,
        };
        if self.dst != Destination::Usr {
            return Err(invalid(
                "dst",
                format!(
                    "is {}; a verity tree is built only for usr",
                    self.dst.name()
                ),
            ));
        }
        if self.dst_offset != verity.hash_offset {
            return Err(invalid(
                "dst_offset",
                format!(
                    "is {}, but usr.verity.hash_offset is {}",
                    self.dst_offset, verity.hash_offset
                ),
            ));
        }
        let area = wellcar_verity::hash_area_size(verity.data_blocks)
            .map_err(|e| invalid("dst_length", e.to_string()))?;
        if self.dst_length != area {
            return Err(invalid(
                "dst_length",
                format!(
                    "is {}, but the hash area of {} data blocks is {area} bytes",
                    self.dst_length, verity.data_blocks
                ),
            ));
        }
        Ok(())
    }
}
