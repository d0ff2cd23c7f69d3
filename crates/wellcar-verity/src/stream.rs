//! The dm-verity root hash of a data region fed front to back, without a hash area on disk.
//!
//! Contract: [`RootHasher`] gives the root hash `veritysetup format` (and [`format()`]) would
//! report for the same data blocks and salt, whatever pieces the data arrives in. It keeps only
//! the level-0 digests (32 bytes per 4 KiB of data: 8 MiB for Flatcar's 1 GiB slot), never the
//! data. It checks the *data* against a root hash; it does not read an on-disk hash area (an
//! update payload's whole-image sha256 covers those bytes). Digests go through the same
//! [`BlockHasher`] as [`format()`], so the two cannot drift apart.
//!
//! [`RootHasher::finish_hash_area`] also lays out the whole hash area (superblock block, then
//! the levels top first) in memory: the bytes [`format()`] writes over a zeroed hash area for
//! the same data, salt and uuid. An update that sends only the data region rebuilds the area
//! with it on the host (a delta's `verity_tree` operation).
//!
//! [`format()`]: crate::format

use uuid::Uuid;
use wellcar_contract::RootHash;

use crate::block_hasher::{BlockHasher, ZERO_BLOCK};
use crate::geometry::TreeGeometry;
use crate::superblock::Superblock;
use crate::{VerityError, BLOCK_SIZE, DIGEST_SIZE};

const BLOCK: usize = BLOCK_SIZE as usize;
const DIGESTS_PER_BLOCK: usize = BLOCK / DIGEST_SIZE;

/// Consumes a data region front to back and produces its dm-verity root hash.
#[derive(Clone)]
pub struct RootHasher {
    hasher: BlockHasher,
    data_len: u64,
    consumed: u64,
    partial: Vec<u8>,
    level0: Vec<[u8; DIGEST_SIZE]>,
}

impl std::fmt::Debug for RootHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootHasher")
            .field("data_len", &self.data_len)
            .field("consumed", &self.consumed)
            .finish_non_exhaustive()
    }
}

impl RootHasher {
    /// A hasher for a region of `data_blocks` 4096-byte blocks, with `salt`.
    pub fn new(salt: &[u8], data_blocks: u64) -> Self {
        RootHasher {
            hasher: BlockHasher::new(salt),
            data_len: data_blocks.saturating_mul(BLOCK_SIZE),
            consumed: 0,
            partial: Vec::with_capacity(BLOCK),
            level0: Vec::with_capacity(usize::try_from(data_blocks).unwrap_or(0).min(1 << 22)),
        }
    }

    /// Feeds the next bytes of the region. Bytes past the data blocks (a hash area after
    /// them) are ignored.
    pub fn update(&mut self, mut bytes: &[u8]) {
        let room = self.remaining();
        bytes = &bytes[..bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        self.consumed += bytes.len() as u64;
        if !self.partial.is_empty() {
            let take = (BLOCK - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() == BLOCK {
                let digest = self.hasher.digest(&self.partial);
                self.level0.push(digest);
                self.partial.clear();
            }
        }
        let mut blocks = bytes.chunks_exact(BLOCK);
        for block in &mut blocks {
            let digest = self.hasher.digest_data_block(block);
            self.level0.push(digest);
        }
        self.partial.extend_from_slice(blocks.remainder());
    }

    /// Feeds `len` zero bytes; whole zero blocks reuse one precomputed digest.
    pub fn update_zeros(&mut self, mut len: u64) {
        while len > 0 && !self.partial.is_empty() {
            let take = len.min(BLOCK_SIZE - self.partial.len() as u64);
            self.update(&ZERO_BLOCK[..take as usize]);
            len -= take;
        }
        let whole = len.min(self.remaining()) / BLOCK_SIZE;
        let zero = self.hasher.zero_block_digest();
        self.level0
            .extend(std::iter::repeat_n(zero, whole as usize));
        self.consumed += whole * BLOCK_SIZE;
        len -= whole * BLOCK_SIZE;
        if len > 0 {
            self.update(&ZERO_BLOCK[..len.min(BLOCK_SIZE) as usize]);
        }
    }

    /// Bytes of the data region fed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Bytes of the data region still expected.
    pub fn remaining(&self) -> u64 {
        self.data_len - self.consumed
    }

    /// The root hash, or `None` if fewer than all data blocks were fed.
    pub fn finish(self) -> Option<RootHash> {
        if self.consumed != self.data_len || self.level0.is_empty() {
            return None;
        }
        // dm-verity stores as many levels as needed to reduce the digests to one; with a
        // single data block there are no hash levels and the root is that block's digest.
        let mut level = self.level0;
        let mut block = [0u8; BLOCK];
        while level.len() > 1 {
            level = level
                .chunks(DIGESTS_PER_BLOCK)
                .map(|digests| {
                    block.fill(0);
                    for (slot, digest) in block.chunks_exact_mut(DIGEST_SIZE).zip(digests) {
                        slot.copy_from_slice(digest);
                    }
                    self.hasher.digest(&block)
                })
                .collect();
        }
        Some(RootHash::from_bytes(level[0]))
    }

    /// The root hash and the whole hash area for the data fed so far, with `uuid` in the
    /// superblock; `Ok(None)` if fewer than all data blocks were fed.
    pub fn finish_hash_area(self, uuid: Uuid) -> Result<Option<HashArea>, VerityError> {
        if self.consumed != self.data_len || self.level0.is_empty() {
            return Ok(None);
        }
        let data_blocks = self.level0.len() as u64;
        let geometry = TreeGeometry::new(data_blocks)?;
        let superblock = Superblock {
            uuid,
            data_blocks,
            salt: self.hasher.salt().to_vec(),
        }
        .to_bytes()?;
        let mut bytes = vec![0u8; geometry.hash_area_size() as usize];
        bytes[..superblock.len()].copy_from_slice(&superblock);
        let levels = geometry.levels();
        let Some(bottom) = levels.first() else {
            // One data block: no tree, the root is that block's digest.
            let root_hash = RootHash::from_bytes(self.level0[0]);
            return Ok(Some(HashArea { root_hash, bytes }));
        };
        let bottom_at = bottom.byte_offset() as usize;
        for (slot, digest) in bytes[bottom_at..]
            .chunks_exact_mut(DIGEST_SIZE)
            .zip(&self.level0)
        {
            slot.copy_from_slice(digest);
        }
        for pair in levels.windows(2) {
            let (child, parent) = (pair[0], pair[1]);
            // Top first on disk: the parent level lies before the child level.
            let (upper, lower) = bytes.split_at_mut(child.byte_offset() as usize);
            let parent_at = parent.byte_offset() as usize;
            let parent_digests = &mut upper[parent_at..parent_at + parent.byte_len() as usize];
            for (block, digest) in lower[..child.byte_len() as usize]
                .chunks_exact(BLOCK)
                .zip(parent_digests.chunks_exact_mut(DIGEST_SIZE))
            {
                digest.copy_from_slice(&self.hasher.digest(block));
            }
        }
        let top = levels[levels.len() - 1].byte_offset() as usize;
        let root_hash = RootHash::from_bytes(self.hasher.digest(&bytes[top..top + BLOCK]));
        Ok(Some(HashArea { root_hash, bytes }))
    }
}

/// A hash area built in memory by [`RootHasher::finish_hash_area`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashArea {
    /// The root hash of the tree.
    pub root_hash: RootHash,
    /// The superblock block and the levels, top first: `hash_area_size` bytes, to be written
    /// at the hash offset.
    pub bytes: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::veritysetup_format;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn chunking_and_zero_shortcut_do_not_change_the_root() {
        let mut data = pattern(300 * BLOCK);
        data[100 * BLOCK..200 * BLOCK].fill(0);
        let mut whole = RootHasher::new(b"salt", 300);
        whole.update(&data);
        let expected = whole.finish().unwrap();

        let mut pieces = RootHasher::new(b"salt", 300);
        pieces.update(&data[..100 * BLOCK - 5]);
        pieces.update(&data[100 * BLOCK - 5..100 * BLOCK]);
        pieces.update_zeros(100 * BLOCK_SIZE);
        for chunk in data[200 * BLOCK..].chunks(1000) {
            pieces.update(chunk);
        }
        assert_eq!(pieces.remaining(), 0);
        assert_eq!(pieces.finish().unwrap(), expected);

        let mut other_salt = RootHasher::new(b"pepper", 300);
        other_salt.update(&data);
        assert_ne!(other_salt.finish().unwrap(), expected);
    }

    #[test]
    fn short_input_has_no_root_and_extra_input_is_ignored() {
        let mut hasher = RootHasher::new(b"", 2);
        hasher.update(&[1; BLOCK]);
        assert_eq!(hasher.remaining(), BLOCK_SIZE);
        assert!(hasher.clone().finish().is_none());
        hasher.update(&[1; 3 * BLOCK]);
        assert_eq!(hasher.remaining(), 0);
        let mut exact = RootHasher::new(b"", 2);
        exact.update(&[1; 2 * BLOCK]);
        assert_eq!(hasher.finish(), exact.finish());
    }

    /// Against the real `veritysetup` (cryptsetup-bin; the test fails if it is missing), for
    /// no tree level, one, and three, and against [`format()`](crate::format) on the same data.
    #[test]
    fn root_matches_veritysetup_and_format() {
        let salt = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77];
        for blocks in [1u64, 129, 20_000] {
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join("img");
            let mut data = pattern(blocks as usize * BLOCK);
            data[..BLOCK].fill(0);
            std::fs::write(&image, &data).unwrap();
            let expected = veritysetup_format(
                &image,
                blocks,
                blocks * BLOCK_SIZE,
                &salt,
                "00000000-0000-0000-0000-000000000001",
            );
            let mut hasher = RootHasher::new(&salt, blocks);
            hasher.update(&data);
            assert_eq!(hasher.finish(), Some(expected), "{blocks} blocks");

            let ours = dir.path().join("ours");
            std::fs::write(&ours, &data).unwrap();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&ours)
                .unwrap();
            let info = crate::format(
                &file,
                &crate::VerityParams {
                    data_blocks: blocks,
                    hash_offset: blocks * BLOCK_SIZE,
                    salt: salt.to_vec(),
                    uuid: uuid::Uuid::from_u128(1),
                },
            )
            .unwrap();
            assert_eq!(info.root_hash, expected, "format(), {blocks} blocks");
        }
    }

    /// The in-memory hash area is byte for byte what the real `veritysetup format` writes
    /// (cryptsetup-bin; the test fails if it is missing) after the same data, for no tree
    /// level, one, and three, with zero blocks and a partial last hash block.
    #[test]
    fn hash_area_matches_veritysetup_byte_for_byte() {
        let salt = [0x5a; 32];
        let uuid = "12345678-9abc-def0-1234-56789abcdef0";
        for blocks in [1u64, 300, 20_000] {
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join("img");
            let mut data = pattern(blocks as usize * BLOCK);
            let first = BLOCK.min(data.len());
            for zeroed in data[first..].chunks_mut(3 * BLOCK).step_by(2) {
                zeroed.fill(0);
            }
            // Hash area a little after the data, as in a slot with free room.
            let hash_offset = (blocks + 3) * BLOCK_SIZE;
            std::fs::write(&image, &data).unwrap();
            let expected = veritysetup_format(&image, blocks, hash_offset, &salt, uuid);
            let on_disk = std::fs::read(&image).unwrap();

            let mut hasher = RootHasher::new(&salt, blocks);
            for piece in data.chunks(10_000) {
                hasher.update(piece);
            }
            let area = hasher
                .finish_hash_area(Uuid::parse_str(uuid).unwrap())
                .unwrap()
                .unwrap();
            assert_eq!(area.root_hash, expected, "{blocks} blocks");
            assert_eq!(
                area.bytes.len() as u64,
                crate::hash_area_size(blocks).unwrap(),
                "{blocks} blocks"
            );
            assert!(
                area.bytes == on_disk[hash_offset as usize..],
                "{blocks} blocks: the hash area differs from veritysetup's"
            );
        }
    }

    #[test]
    fn hash_area_needs_every_data_block() {
        let mut hasher = RootHasher::new(b"", 3);
        hasher.update(&[7; 2 * BLOCK]);
        assert_eq!(hasher.finish_hash_area(Uuid::nil()).unwrap(), None);
    }
}
