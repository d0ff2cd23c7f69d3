//! Where each level of the hash tree lives inside the hash area.
//!
//! With sha256 and 4096-byte hash blocks a hash block holds 128 digests. Level 0 holds one
//! digest per data block, level 1 one digest per level-0 block, and so on, until a level fits
//! in a single block; the root hash is the digest of that block. The number of levels is
//! cryptsetup's: the smallest `n` with `(data_blocks - 1) >> (7 * n) == 0`, so a one-block image
//! has no tree at all and its root hash is the digest of its only data block.
//!
//! On disk, the hash area is the superblock block, then the levels **top first**: the single
//! top block right after the superblock, level 0 last.

use crate::{VerityError, BLOCK_SIZE, DIGEST_SIZE};

/// log2 of the digests per hash block (4096 / 32 = 128).
const DIGESTS_PER_BLOCK_BITS: u32 = 7;
/// Digests per hash block.
pub const DIGESTS_PER_BLOCK: u64 = BLOCK_SIZE / DIGEST_SIZE as u64;

/// One level of the tree: its position in the hash area, in hash blocks counted from the
/// superblock block (which is block 0), and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelExtent {
    /// First hash block of the level, counted from the start of the hash area.
    pub first_block: u64,
    /// Number of hash blocks in the level.
    pub blocks: u64,
}

impl LevelExtent {
    /// Byte offset of the level, relative to the start of the hash area.
    pub fn byte_offset(&self) -> u64 {
        self.first_block * BLOCK_SIZE
    }

    /// Length of the level in bytes.
    pub fn byte_len(&self) -> u64 {
        self.blocks * BLOCK_SIZE
    }
}

/// The shape of the tree for a given number of data blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeGeometry {
    data_blocks: u64,
    /// Index 0 is the level right above the data.
    levels: Vec<LevelExtent>,
}

impl TreeGeometry {
    /// Computes the tree shape for `data_blocks` 4096-byte data blocks.
    pub fn new(data_blocks: u64) -> Result<Self, VerityError> {
        if data_blocks == 0 {
            return Err(VerityError::NoDataBlocks);
        }
        let mut level_count = 0u32;
        while DIGESTS_PER_BLOCK_BITS * level_count < u64::BITS
            && (data_blocks - 1) >> (DIGESTS_PER_BLOCK_BITS * level_count) != 0
        {
            level_count += 1;
        }
        let blocks_of_level = |level: u32| {
            // ceil(data_blocks / 128^(level + 1)), without overflowing 128^(level + 1).
            (data_blocks - 1)
                .checked_shr(DIGESTS_PER_BLOCK_BITS * (level + 1))
                .unwrap_or(0)
                + 1
        };
        let mut levels = vec![
            LevelExtent {
                first_block: 0,
                blocks: 0
            };
            level_count as usize
        ];
        // Top level first, right after the superblock block.
        let mut next_block = 1;
        for level in (0..level_count).rev() {
            let blocks = blocks_of_level(level);
            levels[level as usize] = LevelExtent {
                first_block: next_block,
                blocks,
            };
            next_block += blocks;
        }
        Ok(TreeGeometry {
            data_blocks,
            levels,
        })
    }

    /// Number of data blocks the tree covers.
    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    /// The levels, index 0 being the level right above the data. Empty for a one-block image.
    pub fn levels(&self) -> &[LevelExtent] {
        &self.levels
    }

    /// Hash blocks in all levels together (without the superblock block).
    pub fn tree_blocks(&self) -> u64 {
        self.levels.iter().map(|level| level.blocks).sum()
    }

    /// Bytes of the hash area: the superblock block plus the tree. `veritysetup` grows a
    /// regular file to `hash_offset + hash_area_size`.
    pub fn hash_area_size(&self) -> u64 {
        (1 + self.tree_blocks()) * BLOCK_SIZE
    }
}

/// Bytes of the hash area (superblock block plus tree) for `data_blocks` data blocks; what an
/// image layout must reserve after the data region.
pub fn hash_area_size(data_blocks: u64) -> Result<u64, VerityError> {
    Ok(TreeGeometry::new(data_blocks)?.hash_area_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks_per_level(data_blocks: u64) -> Vec<u64> {
        TreeGeometry::new(data_blocks)
            .unwrap()
            .levels()
            .iter()
            .map(|l| l.blocks)
            .collect()
    }

    #[test]
    fn level_counts_match_veritysetup() {
        // "Hash blocks:" as printed by veritysetup 2.6.1 for 1, 2, 128 and 129 data blocks.
        assert_eq!(TreeGeometry::new(1).unwrap().tree_blocks(), 0);
        assert_eq!(TreeGeometry::new(2).unwrap().tree_blocks(), 1);
        assert_eq!(TreeGeometry::new(128).unwrap().tree_blocks(), 1);
        assert_eq!(TreeGeometry::new(129).unwrap().tree_blocks(), 3);
        assert_eq!(blocks_per_level(129), vec![2, 1]);
        assert_eq!(blocks_per_level(16_384), vec![128, 1]);
        assert_eq!(blocks_per_level(16_385), vec![129, 2, 1]);
    }

    #[test]
    fn levels_are_stored_top_first_after_the_superblock() {
        let geometry = TreeGeometry::new(16_385).unwrap();
        let levels = geometry.levels();
        assert_eq!(levels[2].first_block, 1);
        assert_eq!(levels[1].first_block, 2);
        assert_eq!(levels[0].first_block, 4);
        assert_eq!(levels[0].byte_offset(), 4 * 4096);
        assert_eq!(geometry.hash_area_size(), (1 + 129 + 2 + 1) * 4096);
    }

    #[test]
    fn flatcar_usr_hash_area_ends_exactly_at_one_gib() {
        // 260094 data blocks at hash offset 1065345024: superblock + 2032 + 16 + 1 blocks.
        assert_eq!(blocks_per_level(260_094), vec![2032, 16, 1]);
        assert_eq!(
            1_065_345_024 + hash_area_size(260_094).unwrap(),
            1024 * 1024 * 1024
        );
    }

    #[test]
    fn huge_block_counts_do_not_overflow() {
        let geometry = TreeGeometry::new(u64::MAX).unwrap();
        assert_eq!(geometry.levels().len(), 10);
        assert_eq!(geometry.levels()[9].blocks, 1);
        assert_eq!(geometry.levels()[0].blocks, 1 << 57);
    }

    #[test]
    fn zero_data_blocks_is_an_error() {
        assert!(matches!(
            TreeGeometry::new(0),
            Err(VerityError::NoDataBlocks)
        ));
    }
}
