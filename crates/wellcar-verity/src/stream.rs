//! The dm-verity root hash of a data region fed front to back, without a hash area on disk.
//!
//! Contract: [`RootHasher`] gives the root hash `veritysetup format` (and [`format()`]) would
//! report for the same data blocks and salt, whatever pieces the data arrives in. It keeps only
//! the level-0 digests (32 bytes per 4 KiB of data: 8 MiB for Flatcar's 1 GiB slot), never the
//! data. It checks the *data* against a root hash; it does not read an on-disk hash area (an
//! update payload's whole-image sha256 covers those bytes). Digests go through the same
//! [`BlockHasher`] as [`format()`], so the two cannot drift apart.
//!
//! [`format()`]: crate::format

use wellcar_contract::RootHash;

use crate::block_hasher::{BlockHasher, ZERO_BLOCK};
use crate::{BLOCK_SIZE, DIGEST_SIZE};

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
            let digest = self.hasher.digest(block);
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
}
