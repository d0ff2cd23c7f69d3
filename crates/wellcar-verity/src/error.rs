//! The one error type of this crate.
//!
//! Every variant carries the byte offset, block index, level or field that failed, so a message
//! alone tells where to look. The functions take an open [`std::fs::File`], not a path: callers
//! add the path as context.

use std::io;

/// What went wrong while formatting, reading or verifying a dm-verity hash area.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// `data_blocks` was zero: a tree over no data does not exist.
    #[error("data_blocks is 0: the data region must hold at least one 4096-byte block")]
    NoDataBlocks,

    /// The salt is longer than the 256 bytes the superblock can hold.
    #[error("salt is {len} bytes long; the verity superblock holds at most 256")]
    SaltTooLong { len: usize },

    /// The hash offset is not a multiple of the 4096-byte hash block size.
    #[error("hash offset {hash_offset} is not a multiple of 4096 (the hash block size)")]
    MisalignedHashOffset { hash_offset: u64 },

    /// The hash area would start inside the data region.
    #[error(
        "hash offset {hash_offset} lies inside the data region, which ends at byte {data_end}"
    )]
    HashAreaOverlapsData { hash_offset: u64, data_end: u64 },

    /// `data_blocks * 4096` does not fit in a u64 or the hash area would end past u64::MAX.
    #[error(
        "{data_blocks} data blocks at hash offset {hash_offset} overflow a 64-bit byte offset"
    )]
    SizeOverflow { data_blocks: u64, hash_offset: u64 },

    /// The image is shorter than the data region it is said to hold.
    #[error("image is {len} bytes long, but its data region needs {needed} bytes")]
    ImageTooSmall { len: u64, needed: u64 },

    /// Reading the image's size failed.
    #[error("cannot stat the image")]
    Stat(#[source] io::Error),

    /// Growing a regular file to hold the hash area failed.
    #[error("cannot extend the image to {len} bytes for the hash area")]
    Extend {
        len: u64,
        #[source]
        source: io::Error,
    },

    /// Reading the data region failed.
    #[error("cannot read the data region at byte {offset}")]
    ReadData {
        offset: u64,
        #[source]
        source: io::Error,
    },

    /// Reading the hash area (superblock or tree) failed.
    #[error("cannot read the hash area at byte {offset}")]
    ReadHashArea {
        offset: u64,
        #[source]
        source: io::Error,
    },

    /// Writing the hash area (superblock or tree) failed.
    #[error("cannot write the hash area at byte {offset}")]
    WriteHashArea {
        offset: u64,
        #[source]
        source: io::Error,
    },

    /// Flushing the written hash area to stable storage failed.
    #[error("cannot sync the hash area to disk")]
    Sync(#[source] io::Error),

    /// The 8-byte signature at the hash offset is not `verity\0\0`.
    #[error("no verity superblock at byte {offset}: signature is {found:02x?}, expected \"verity\\0\\0\"")]
    BadSignature { offset: u64, found: [u8; 8] },

    /// A superblock field holds a value this crate does not handle.
    #[error("verity superblock at byte {offset}: {field} is {found}, expected {expected}")]
    UnsupportedSuperblock {
        offset: u64,
        field: &'static str,
        found: String,
        expected: &'static str,
    },

    /// A root hash given as text is not 64 hexadecimal characters.
    #[error("root hash {input:?} is not 64 hexadecimal characters")]
    InvalidRootHash { input: String },

    /// The top tree block (or, for a one-block image, the data block) does not hash to the root.
    #[error("root hash mismatch: expected {expected}, the image hashes to {actual}")]
    RootHashMismatch { expected: String, actual: String },

    /// A stored hash block does not match the digest its parent level holds for it.
    /// Level 0 is the level right above the data.
    #[error(
        "hash block {block} of level {level} (byte {offset}) does not match its parent digest"
    )]
    HashBlockMismatch {
        level: usize,
        block: u64,
        offset: u64,
    },

    /// A data block does not match the digest level 0 holds for it.
    #[error("data block {block} (byte {offset}) does not match its digest in the hash tree")]
    DataBlockMismatch { block: u64, offset: u64 },
}
