//! Carrying out a `verity_tree` operation (see `crate::format::VerityTreeOp`): the /usr data
//! region is read back from the target, its hash area laid out in memory, and the area
//! returned only if its root is the manifest's and its bytes hash to the operation's
//! `dst_sha256`. The caller writes it; nothing here writes.
//!
//! Cost: the data region's digests are taken as the operations write it ([`WrittenRegion`]), so
//! an install that runs from the first operation reads nothing back here; a resumed one reads
//! the region back once (all-zero blocks are not hashed). The area is held in memory (about
//! 1/128 of the data region: 8 MiB for a 1 GiB slot). `finish()`'s read-back of the whole
//! slot still checks everything written, the area included.

use std::io::SeekFrom;

use crate::format::{Manifest, Operation, Sha256Digest, VerityTreeOp};
use wellcar_verity::RootHasher;

use super::{read_back_error, ApplyError, UsrTarget, IO_BUF_LEN};

/// The /usr data region's digests, taken from the bytes as operations write them. It holds
/// only while it has seen every write into the region, in order from offset 0; anything else
/// (a resumed install, a rollback to an earlier checkpoint, a write out of order) drops it,
/// and the region is read back from the target instead.
#[derive(Debug)]
pub(super) struct WrittenRegion(Option<RootHasher>);

impl WrittenRegion {
    /// Tracks a fresh install of a payload with a `verity_tree` operation; nothing otherwise.
    pub(super) fn new(manifest: &Manifest, fresh: bool) -> Self {
        let needed = fresh
            && manifest
                .operations
                .iter()
                .any(|op| matches!(op, Operation::VerityTree(_)));
        Self(needed.then(|| manifest.usr.verity.root_hasher()))
    }

    /// `bytes` were written at `offset` of /usr.
    pub(super) fn wrote(&mut self, offset: u64, bytes: &[u8]) {
        if let Some(hasher) = self.in_order(offset) {
            hasher.update(bytes);
        }
    }

    /// `len` zero bytes were written at `offset` of /usr.
    pub(super) fn zeroed(&mut self, offset: u64, len: u64) {
        if let Some(hasher) = self.in_order(offset) {
            hasher.update_zeros(len);
        }
    }

    /// Writes it saw may be undone or repeated: read the region back instead.
    pub(super) fn forget(&mut self) {
        self.0 = None;
    }

    /// The hasher if a write at `offset` continues what it has seen; past the data region
    /// nothing is tracked; a gap or overlap drops it.
    fn in_order(&mut self, offset: u64) -> Option<&mut RootHasher> {
        let hasher = self.0.as_mut()?;
        let data_len = hasher.consumed() + hasher.remaining();
        if offset >= data_len {
            return None;
        }
        if offset != hasher.consumed() {
            self.0 = None;
            return None;
        }
        self.0.as_mut()
    }

    /// The hasher, if it has seen the whole data region.
    fn take_complete(&mut self) -> Option<RootHasher> {
        self.0.take().filter(|hasher| hasher.remaining() == 0)
    }
}

/// The hash area for the data region on `usr` (from `written` if it saw all of it, else read
/// back), checked against `manifest` and `op`.
pub(super) fn rebuild_hash_area<T: UsrTarget>(
    usr: &mut T,
    written: &mut WrittenRegion,
    manifest: &Manifest,
    op: &VerityTreeOp,
    operation: usize,
) -> Result<Vec<u8>, ApplyError> {
    let hasher = match written.take_complete() {
        Some(hasher) => hasher,
        None => read_back_data(usr, manifest)?,
    };
    let verity = &manifest.usr.verity;
    let area = hasher
        .finish_hash_area(op.uuid)
        .map_err(|e| ApplyError::VerityTree {
            operation,
            reason: e.to_string(),
        })?
        .expect("every data block was fed");
    if area.root_hash != verity.root_hash {
        return Err(ApplyError::VerityTree {
            operation,
            reason: format!(
                "the data written has dm-verity root {}, manifest says {}",
                area.root_hash, verity.root_hash
            ),
        });
    }
    let actual = Sha256Digest::of(&area.bytes);
    if actual != op.dst_sha256 {
        return Err(ApplyError::VerityTree {
            operation,
            reason: format!(
                "the hash area has sha256 {actual}, manifest says {}",
                op.dst_sha256
            ),
        });
    }
    Ok(area.bytes)
}

/// Hashes the data region as it is on `usr`.
fn read_back_data<T: UsrTarget>(
    usr: &mut T,
    manifest: &Manifest,
) -> Result<RootHasher, ApplyError> {
    let verity = &manifest.usr.verity;
    let target = usr.describe();
    let read_err = read_back_error(&target);
    usr.seek(SeekFrom::Start(0)).map_err(|e| read_err(0, e))?;
    let mut hasher = verity.root_hasher();
    let mut buf = vec![0u8; IO_BUF_LEN];
    while hasher.remaining() > 0 {
        let at = verity.data_blocks * wellcar_verity::BLOCK_SIZE - hasher.remaining();
        let want = hasher.remaining().min(buf.len() as u64) as usize;
        usr.read_exact(&mut buf[..want])
            .map_err(|e| read_err(at, e))?;
        hasher.update(&buf[..want]);
    }
    Ok(hasher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(blocks: u64) -> WrittenRegion {
        WrittenRegion(Some(RootHasher::new(b"salt", blocks)))
    }

    fn root(data: &[u8], blocks: u64) -> wellcar_contract::RootHash {
        let mut hasher = RootHasher::new(b"salt", blocks);
        hasher.update(data);
        hasher.finish().unwrap()
    }

    #[test]
    fn in_order_writes_and_zeros_give_the_regions_root_and_writes_past_it_are_ignored() {
        let mut data = vec![7u8; 4 * 4096];
        data[4096..2 * 4096].fill(0);
        let mut written = region(4);
        written.wrote(0, &data[..4096]);
        written.zeroed(4096, 4096);
        written.wrote(2 * 4096, &data[2 * 4096..]);
        written.wrote(5 * 4096, &[1; 4096]); // the hash area, after the region
        let hasher = written.take_complete().expect("complete");
        assert_eq!(hasher.finish(), Some(root(&data, 4)));
    }

    #[test]
    fn a_gap_an_overlap_or_a_forget_drops_it_and_an_incomplete_one_is_not_used() {
        let mut gap = region(4);
        gap.wrote(0, &[1; 4096]);
        gap.wrote(2 * 4096, &[1; 4096]);
        assert!(gap.0.is_none());

        let mut overlap = region(4);
        overlap.wrote(0, &[1; 2 * 4096]);
        overlap.zeroed(4096, 4096);
        assert!(overlap.0.is_none());

        let mut forgotten = region(1);
        forgotten.wrote(0, &[1; 4096]);
        forgotten.forget();
        assert!(forgotten.take_complete().is_none());

        let mut partial = region(4);
        partial.wrote(0, &[1; 4096]);
        assert!(partial.take_complete().is_none());
    }
}
