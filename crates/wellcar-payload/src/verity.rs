//! dm-verity root hash computation (hash format 1, sha256, 4096-byte blocks), streaming.
//!
//! This is what `veritysetup format` computes: every data block is hashed as
//! `sha256(salt || block)`; digests are packed 128 to a 4096-byte hash block (zero padded);
//! hash blocks are hashed the same way, level by level, until one block remains, and the root
//! hash is `sha256(salt || that block)`. The hasher keeps only the level-0 digests (32 bytes
//! per 4 KiB of data: 8 MiB for Flatcar's 1 GiB slot), never the data.
//!
//! It checks the *data* against a root hash; it does not read the on-disk hash area (the
//! payload's whole-image sha256 covers those bytes).

use sha2::{Digest, Sha256};

use crate::format::Sha256Digest;

/// dm-verity data and hash block size.
pub const BLOCK_SIZE: u64 = wellcar_disk::VERITY_BLOCK_SIZE;
const DIGESTS_PER_BLOCK: usize = BLOCK_SIZE as usize / 32;

/// Consumes the data region front to back and produces its dm-verity root hash.
#[derive(Debug, Clone)]
pub struct VerityHasher {
    salted: Sha256,
    data_len: u64,
    consumed: u64,
    partial: Vec<u8>,
    level0: Vec<[u8; 32]>,
    zero_block_digest: [u8; 32],
}

impl VerityHasher {
    /// A hasher for `data_blocks` blocks with `salt`.
    pub fn new(salt: &[u8], data_blocks: u64) -> Self {
        let mut salted = Sha256::new();
        salted.update(salt);
        let mut zero = salted.clone();
        zero.update([0u8; BLOCK_SIZE as usize]);
        Self {
            salted,
            data_len: data_blocks * BLOCK_SIZE,
            consumed: 0,
            partial: Vec::with_capacity(BLOCK_SIZE as usize),
            level0: Vec::with_capacity(usize::try_from(data_blocks).unwrap_or(0).min(1 << 22)),
            zero_block_digest: zero.finalize().into(),
        }
    }

    /// Feeds the next bytes of the region. Bytes past the data blocks (the hash area) are
    /// ignored.
    pub fn update(&mut self, mut bytes: &[u8]) {
        let room = self.data_len - self.consumed;
        bytes = &bytes[..bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        self.consumed += bytes.len() as u64;
        if !self.partial.is_empty() {
            let take = (BLOCK_SIZE as usize - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() == BLOCK_SIZE as usize {
                let digest = self.hash_block(&self.partial);
                self.level0.push(digest);
                self.partial.clear();
            }
        }
        let mut blocks = bytes.chunks_exact(BLOCK_SIZE as usize);
        for block in &mut blocks {
            let digest = self.hash_block(block);
            self.level0.push(digest);
        }
        self.partial.extend_from_slice(blocks.remainder());
    }

    /// Feeds `len` zero bytes; whole zero blocks reuse one precomputed digest.
    pub fn update_zeros(&mut self, mut len: u64) {
        const ZEROS: [u8; BLOCK_SIZE as usize] = [0; BLOCK_SIZE as usize];
        while len > 0 && !self.partial.is_empty() {
            let take = len.min(BLOCK_SIZE - self.partial.len() as u64);
            self.update(&ZEROS[..take as usize]);
            len -= take;
        }
        let room = self.data_len - self.consumed;
        let whole = len.min(room) / BLOCK_SIZE;
        self.level0
            .extend(std::iter::repeat_n(self.zero_block_digest, whole as usize));
        self.consumed += whole * BLOCK_SIZE;
        len -= whole * BLOCK_SIZE;
        if len > 0 {
            self.update(&ZEROS[..len.min(BLOCK_SIZE) as usize]);
        }
    }

    /// Bytes of the data region still expected.
    pub fn remaining(&self) -> u64 {
        self.data_len - self.consumed
    }

    /// The root hash, or `None` if fewer than all data blocks were fed.
    pub fn finish(self) -> Option<Sha256Digest> {
        if self.consumed != self.data_len || self.level0.is_empty() {
            return None;
        }
        // dm-verity stores as many levels as needed to reduce the digests to one; with a
        // single data block there are no hash levels and the root is that block's digest.
        let mut level = self.level0;
        let mut block = [0u8; BLOCK_SIZE as usize];
        while level.len() > 1 {
            level = level
                .chunks(DIGESTS_PER_BLOCK)
                .map(|digests| {
                    block.fill(0);
                    for (slot, digest) in block.chunks_exact_mut(32).zip(digests) {
                        slot.copy_from_slice(digest);
                    }
                    let mut hasher = self.salted.clone();
                    hasher.update(block);
                    hasher.finalize().into()
                })
                .collect();
        }
        Some(Sha256Digest(level[0]))
    }

    fn hash_block(&self, block: &[u8]) -> [u8; 32] {
        let mut hasher = self.salted.clone();
        hasher.update(block);
        hasher.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn chunking_and_zero_shortcut_do_not_change_the_root() {
        let mut data = pattern(300 * 4096);
        data[100 * 4096..200 * 4096].fill(0);
        let mut whole = VerityHasher::new(b"salt", 300);
        whole.update(&data);
        let expected = whole.finish().unwrap();

        let mut pieces = VerityHasher::new(b"salt", 300);
        pieces.update(&data[..100 * 4096 - 5]);
        pieces.update(&data[100 * 4096 - 5..100 * 4096]);
        pieces.update_zeros(100 * 4096);
        for chunk in data[200 * 4096..].chunks(1000) {
            pieces.update(chunk);
        }
        assert_eq!(pieces.remaining(), 0);
        assert_eq!(pieces.finish().unwrap(), expected);

        let mut other_salt = VerityHasher::new(b"pepper", 300);
        other_salt.update(&data);
        assert_ne!(other_salt.finish().unwrap(), expected);
    }

    #[test]
    fn short_input_has_no_root() {
        let mut hasher = VerityHasher::new(b"", 2);
        hasher.update(&[1; 4096]);
        assert!(hasher.finish().is_none());
    }

    /// Cross-checks against the real `veritysetup` (cryptsetup), for one and for three tree
    /// levels. Skipped, with a message, on a machine without it.
    #[test]
    fn root_matches_veritysetup() {
        if Command::new("veritysetup")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("veritysetup not installed; skipping cross-check");
            return;
        }
        for blocks in [1u64, 129, 20_000] {
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join("img");
            let mut data = pattern(blocks as usize * 4096);
            data[..4096].fill(0);
            std::fs::write(&image, &data).unwrap();
            let salt = "00112233445566778899aabbccddeeff";
            let out = Command::new("veritysetup")
                .args(["format", "--salt", salt])
                .arg(format!("--data-blocks={blocks}"))
                .arg(format!("--hash-offset={}", blocks * 4096))
                .arg(&image)
                .arg(&image)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let root = stdout
                .lines()
                .find_map(|l| l.strip_prefix("Root hash:"))
                .unwrap()
                .trim()
                .to_owned();
            let mut hasher = VerityHasher::new(&hex::decode(salt).unwrap(), blocks);
            hasher.update(&data);
            assert_eq!(
                hasher.finish().unwrap().to_string(),
                root,
                "{blocks} blocks"
            );
        }
    }
}
