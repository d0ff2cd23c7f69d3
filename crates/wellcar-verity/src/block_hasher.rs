//! The one place a dm-verity block digest is computed: `sha256(salt || block)` (hash format 1),
//! for data blocks and hash blocks alike. [`format()`](crate::format), [`verify()`](crate::verify),
//! [`stored_root_hash`](crate::stored_root_hash) and the streaming [`RootHasher`](crate::RootHasher)
//! all hash through it.

use sha2::{Digest, Sha256};

use crate::{BLOCK_SIZE, DIGEST_SIZE};

/// One all-zero block (the sparse tail of a /usr image is made of them).
pub(crate) static ZERO_BLOCK: [u8; BLOCK_SIZE as usize] = [0; BLOCK_SIZE as usize];

/// sha256 with the salt fed first, plus the precomputed digest of an all-zero block.
#[derive(Clone)]
pub(crate) struct BlockHasher {
    salt: Vec<u8>,
    salted: Sha256,
    zero_block_digest: [u8; DIGEST_SIZE],
}

impl BlockHasher {
    pub(crate) fn new(salt: &[u8]) -> Self {
        let salted = Sha256::new_with_prefix(salt);
        let zero_block_digest = salted.clone().chain_update(ZERO_BLOCK).finalize().into();
        BlockHasher {
            salt: salt.to_vec(),
            salted,
            zero_block_digest,
        }
    }

    /// The salt every digest starts with.
    pub(crate) fn salt(&self) -> &[u8] {
        &self.salt
    }

    pub(crate) fn digest(&self, block: &[u8]) -> [u8; DIGEST_SIZE] {
        self.salted.clone().chain_update(block).finalize().into()
    }

    /// The digest of an all-zero block.
    pub(crate) fn zero_block_digest(&self) -> [u8; DIGEST_SIZE] {
        self.zero_block_digest
    }

    /// Like [`Self::digest`], but answers all-zero blocks from the precomputed digest
    /// (comparing 4 KiB against zeros is ~20 times cheaper than hashing it).
    pub(crate) fn digest_data_block(&self, block: &[u8]) -> [u8; DIGEST_SIZE] {
        if block == ZERO_BLOCK {
            self.zero_block_digest
        } else {
            self.digest(block)
        }
    }
}
