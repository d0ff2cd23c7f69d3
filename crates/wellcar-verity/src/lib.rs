//! dm-verity hash trees in Rust, byte-compatible with `veritysetup format`.
//!
//! One flavour only, the one Flatcar and Wellcar use for /usr: superblock format version 1,
//! hash type 1 ("normal": salt prepended, hash blocks zero-padded), sha256, 4096-byte data and
//! hash blocks, data and hash area in the same image with the hash area at `hash_offset`.
//!
//! - [`format()`] writes the superblock and tree and returns the root hash (a
//!   [`RootHash`](wellcar_contract::RootHash), the contract's one type); given the same data,
//!   salt and uuid it writes exactly the bytes `veritysetup format --salt=<hex> --uuid=<uuid>`
//!   writes, so `veritysetup verify` and the kernel accept it.
//! - [`read_superblock`] parses and validates the superblock (the initramfs learns the salt and
//!   data block count from it); [`dm_table_params`] renders the kernel's dm-verity target line.
//! - [`verify`] recomputes the tree and names the first bad block and level;
//!   [`stored_root_hash`] is the cheap early check (superblock + top block only).
//! - [`RootHasher`] computes the root hash of data streamed front to back, with no hash area
//!   (an update payload's read-back and `wellcar payload create`).
//!
//! Every block digest, in all four, comes from one place (`block_hasher`): this crate is the only
//! code that computes a dm-verity root hash.
//! - [`hash_area_size`] / [`TreeGeometry`] tell a layout how much room the hash area needs.
//!
//! The tests check all of this against the real `veritysetup` (Debian package `cryptsetup-bin`).
//!
//! Speed (`cargo bench -p wellcar-verity`, 1 GiB Flatcar-shaped USR image with 350 MiB of
//! random data, 2 shared cores): `veritysetup format` ~850-930 ms, [`format()`] ~130-250 ms
//! (2 threads) and ~250 ms (1 thread), same root hash.

mod block_hasher;
mod error;
pub mod geometry;
mod stream;
pub mod superblock;
pub mod table;
mod tree;

#[cfg(test)]
mod test_support;

pub use error::VerityError;
pub use geometry::{hash_area_size, LevelExtent, TreeGeometry};
pub use stream::{HashArea, RootHasher};
pub use superblock::{read_superblock, Superblock, SUPERBLOCK_SIZE};
pub use table::{dm_table_params, dm_target_sectors, parse_root_hash};
pub use tree::{
    format, format_with_threads, stored_root_hash, verify, verify_with_threads, VerityInfo,
    VerityParams,
};

/// Size of a data block and of a hash block, in bytes.
pub const BLOCK_SIZE: u64 = 4096;
/// Size of a sha256 digest, in bytes.
pub const DIGEST_SIZE: usize = 32;
/// Largest salt the superblock can hold, in bytes.
pub const MAX_SALT_SIZE: usize = 256;
