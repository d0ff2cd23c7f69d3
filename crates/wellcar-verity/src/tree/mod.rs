//! Formatting and verifying a dm-verity hash tree in place, in one image file or block device.
//!
//! The data region is bytes `[0, data_blocks * 4096)` of the image; the hash area starts at
//! `hash_offset` in the same image (Flatcar's /usr layout: `--hash-offset=1065345024`). The
//! result is byte-identical to `veritysetup format --hash=sha256 --data-block-size=4096
//! --hash-block-size=4096 --format=1 --salt=<hex> --uuid=<uuid> --data-blocks=<n>
//! --hash-offset=<off> <image> <image>` on the same input: the same superblock, the same tree,
//! the same growth of a regular file to `hash_offset + hash_area_size`, nothing else touched.
//!
//! Digests: `sha256(salt || block)` for data blocks and hash blocks alike; hash blocks are
//! zero-padded to 4096 bytes. The root hash is the digest of the single top-level block (or of
//! the data block, for a one-block image).
//!
//! Speed: the bottom level (one digest per data block, 127/128 of the work) is hashed by
//! several threads pulling 1 MiB chunks from a shared queue and reading them with `pread`;
//! all-zero data blocks (the sparse tail of a /usr image) reuse one precomputed digest.
//! Memory use is the size of the hash area (about 1/128 of the data).
//!
//! Crash safety: the tree is written and synced before the superblock, so an interrupted
//! format leaves no superblock claiming a tree that is not there (if there was none before).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use uuid::Uuid;
use wellcar_contract::RootHash;

use crate::block_hasher::BlockHasher;
use crate::geometry::TreeGeometry;
use crate::superblock::{read_superblock, Superblock, SUPERBLOCK_SIZE};
use crate::{table, VerityError, BLOCK_SIZE, DIGEST_SIZE, MAX_SALT_SIZE};

const BLOCK: usize = BLOCK_SIZE as usize;
/// Data blocks per unit of work of the parallel bottom-level hashing (1 MiB reads).
const CHUNK_BLOCKS: usize = 256;

/// What to format: the data region's size, where the hash area goes, and the two values that
/// `veritysetup` would otherwise pick at random. Pass a deterministic salt and uuid to get a
/// byte-identical hash area for identical data (reproducible images).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// Number of 4096-byte data blocks, starting at byte 0 of the image.
    pub data_blocks: u64,
    /// Byte offset of the hash area (superblock first); a multiple of 4096, at or after the
    /// end of the data region.
    pub hash_offset: u64,
    /// Salt prepended to every hashed block, 0..=256 bytes (`veritysetup` uses 32).
    pub salt: Vec<u8>,
    /// UUID recorded in the superblock.
    pub uuid: Uuid,
}

/// The outcome of [`format()`]: everything needed to open the device later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityInfo {
    /// The root hash (`verity.usrhash=`); its `Display` is the 64 lower-case hex digits
    /// `veritysetup` prints.
    pub root_hash: RootHash,
    /// The salt, as written to the superblock.
    pub salt: Vec<u8>,
    /// Bytes from `hash_offset` to the end of the tree, superblock block included.
    pub hash_area_size: u64,
    /// Number of 4096-byte data blocks covered.
    pub data_blocks: u64,
    /// Byte offset of the superblock.
    pub hash_offset: u64,
    /// UUID recorded in the superblock.
    pub uuid: Uuid,
}

impl VerityInfo {
    /// The salt as lowercase hex (`-` when empty), as `veritysetup` prints it.
    pub fn salt_hex(&self) -> String {
        if self.salt.is_empty() {
            "-".to_string()
        } else {
            hex::encode(&self.salt)
        }
    }

    /// The kernel dm-verity target parameters for this tree; see [`table::dm_table_params`].
    pub fn dm_table_params(&self, data_dev: &str, hash_dev: &str) -> String {
        table::dm_table_params(
            data_dev,
            hash_dev,
            self.data_blocks,
            self.hash_offset,
            self.root_hash.as_bytes(),
            &self.salt,
        )
    }
}

/// Writes the superblock and hash tree for the data region of `image`, using all CPUs.
/// The image must be open for reading and writing.
pub fn format(image: &File, params: &VerityParams) -> Result<VerityInfo, VerityError> {
    format_with_threads(image, params, default_threads())
}

/// [`format()`] with an explicit number of hashing threads (the output does not depend on it).
pub fn format_with_threads(
    image: &File,
    params: &VerityParams,
    threads: NonZeroUsize,
) -> Result<VerityInfo, VerityError> {
    let started = Instant::now();
    if params.salt.len() > MAX_SALT_SIZE {
        return Err(VerityError::SaltTooLong {
            len: params.salt.len(),
        });
    }
    if !params.hash_offset.is_multiple_of(BLOCK_SIZE) {
        return Err(VerityError::MisalignedHashOffset {
            hash_offset: params.hash_offset,
        });
    }
    let geometry = TreeGeometry::new(params.data_blocks)?;
    let (data_end, hash_end) = region_ends(&geometry, params.hash_offset)?;
    let image_len = image_size(image)?;
    if image_len < data_end {
        return Err(VerityError::ImageTooSmall {
            len: image_len,
            needed: data_end,
        });
    }

    let hasher = BlockHasher::new(&params.salt);
    let mut tree = vec![0u8; (geometry.tree_blocks() * BLOCK_SIZE) as usize];
    let root_hash = match geometry.levels() {
        [] => {
            let mut digest = [0u8; DIGEST_SIZE];
            hash_data_region(image, &hasher, threads, &mut digest)?;
            digest
        }
        levels => {
            let (bottom, top) = (levels[0], levels[levels.len() - 1]);
            let digests_len = params.data_blocks as usize * DIGEST_SIZE;
            let bottom_at = tree_offset(bottom.first_block);
            hash_data_region(
                image,
                &hasher,
                threads,
                &mut tree[bottom_at..bottom_at + digests_len],
            )?;
            build_upper_levels(&mut tree, &geometry, &hasher);
            let top_at = tree_offset(top.first_block);
            hasher.digest(&tree[top_at..top_at + BLOCK])
        }
    };
    let hashed = started.elapsed();

    if image_len < hash_end && image.metadata().map_err(VerityError::Stat)?.is_file() {
        image
            .set_len(hash_end)
            .map_err(|source| VerityError::Extend {
                len: hash_end,
                source,
            })?;
    }
    let tree_at = params.hash_offset + BLOCK_SIZE;
    image
        .write_all_at(&tree, tree_at)
        .map_err(|source| VerityError::WriteHashArea {
            offset: tree_at,
            source,
        })?;
    image.sync_data().map_err(VerityError::Sync)?;
    let superblock = Superblock {
        uuid: params.uuid,
        data_blocks: params.data_blocks,
        salt: params.salt.clone(),
    };
    image
        .write_all_at(&superblock.to_bytes()?, params.hash_offset)
        .map_err(|source| VerityError::WriteHashArea {
            offset: params.hash_offset,
            source,
        })?;
    image.sync_data().map_err(VerityError::Sync)?;

    let info = VerityInfo {
        root_hash: RootHash::from_bytes(root_hash),
        salt: params.salt.clone(),
        hash_area_size: geometry.hash_area_size(),
        data_blocks: params.data_blocks,
        hash_offset: params.hash_offset,
        uuid: params.uuid,
    };
    tracing::debug!(
        data_blocks = info.data_blocks,
        hash_offset = info.hash_offset,
        root_hash = %info.root_hash,
        hash_seconds = hashed.as_secs_f64(),
        total_seconds = started.elapsed().as_secs_f64(),
        "formatted dm-verity hash area"
    );
    Ok(info)
}

/// Recomputes the tree described by the superblock at `hash_offset` and checks it against the
/// stored tree and `root_hash`, like `veritysetup verify`, using all CPUs.
///
/// The check runs top-down, the way trust flows from the root: first the top block against
/// the root hash, then each level's blocks against their parent's digests, then the data
/// blocks against level 0. The error names the first mismatch in that order, so a corrupt data
/// block is reported as that data block, and a corrupt hash block as that hash block.
pub fn verify(image: &File, hash_offset: u64, root_hash: &RootHash) -> Result<(), VerityError> {
    verify_with_threads(image, hash_offset, root_hash, default_threads())
}

/// [`verify`] with an explicit number of hashing threads.
pub fn verify_with_threads(
    image: &File,
    hash_offset: u64,
    root_hash: &RootHash,
    threads: NonZeroUsize,
) -> Result<(), VerityError> {
    let expected = *root_hash;
    let root_hash = root_hash.as_bytes();
    let mut superblock_bytes = [0u8; SUPERBLOCK_SIZE];
    image
        .read_exact_at(&mut superblock_bytes, hash_offset)
        .map_err(|source| VerityError::ReadHashArea {
            offset: hash_offset,
            source,
        })?;
    let superblock = Superblock::from_bytes(&superblock_bytes, hash_offset)?;
    let geometry = TreeGeometry::new(superblock.data_blocks)?;
    let (data_end, hash_end) = region_ends(&geometry, hash_offset)?;
    let image_len = image_size(image)?;
    if image_len < hash_end {
        return Err(VerityError::ImageTooSmall {
            len: image_len,
            needed: hash_end.max(data_end),
        });
    }
    let hasher = BlockHasher::new(&superblock.salt);
    let tree_at = hash_offset + BLOCK_SIZE;
    let mut tree = vec![0u8; (geometry.tree_blocks() * BLOCK_SIZE) as usize];
    image
        .read_exact_at(&mut tree, tree_at)
        .map_err(|source| VerityError::ReadHashArea {
            offset: tree_at,
            source,
        })?;
    let root_mismatch = |actual: &[u8; DIGEST_SIZE]| VerityError::RootHashMismatch {
        expected: expected.to_string(),
        actual: RootHash::from_bytes(*actual).to_string(),
    };

    let levels = geometry.levels();
    let Some((bottom, top)) = levels.first().zip(levels.last()) else {
        let mut digest = [0u8; DIGEST_SIZE];
        hash_data_region(image, &hasher, threads, &mut digest)?;
        return match digest == *root_hash {
            true => Ok(()),
            false => Err(root_mismatch(&digest)),
        };
    };
    let top_at = tree_offset(top.first_block);
    let top_digest = hasher.digest(&tree[top_at..top_at + BLOCK]);
    if top_digest != *root_hash {
        return Err(root_mismatch(&top_digest));
    }
    for level in (1..levels.len()).rev() {
        let (parent, child) = (levels[level], levels[level - 1]);
        let parent_at = tree_offset(parent.first_block);
        let child_at = tree_offset(child.first_block);
        let parent_digests = &tree[parent_at..parent_at + child.blocks as usize * DIGEST_SIZE];
        let child_blocks = &tree[child_at..child_at + child.byte_len() as usize];
        let first_bad = child_blocks
            .chunks_exact(BLOCK)
            .zip(parent_digests.chunks_exact(DIGEST_SIZE))
            .position(|(block, stored)| hasher.digest(block) != stored);
        if let Some(block) = first_bad {
            return Err(VerityError::HashBlockMismatch {
                level: level - 1,
                block: block as u64,
                offset: hash_offset + child.byte_offset() + block as u64 * BLOCK_SIZE,
            });
        }
    }
    let bottom_at = tree_offset(bottom.first_block);
    let stored = &tree[bottom_at..bottom_at + superblock.data_blocks as usize * DIGEST_SIZE];
    let mut computed = vec![0u8; stored.len()];
    hash_data_region(image, &hasher, threads, &mut computed)?;
    let first_bad = computed
        .chunks_exact(DIGEST_SIZE)
        .zip(stored.chunks_exact(DIGEST_SIZE))
        .position(|(computed, stored)| computed != stored);
    match first_bad {
        None => Ok(()),
        Some(block) => Err(VerityError::DataBlockMismatch {
            block: block as u64,
            offset: block as u64 * BLOCK_SIZE,
        }),
    }
}

/// The root hash the stored tree claims: the digest of the stored top block (for a one-block
/// image, of the data block), plus the superblock it was found with. Reads one superblock and
/// one block and hashes one block, so the initramfs can compare it with `verity.usrhash=` and
/// fail early with a clear message; it does not check the rest of the tree or the data (the
/// kernel does that on every read).
pub fn stored_root_hash<R: Read + Seek>(
    reader: &mut R,
    hash_offset: u64,
) -> Result<(Superblock, RootHash), VerityError> {
    let superblock = read_superblock(reader, hash_offset)?;
    let geometry = TreeGeometry::new(superblock.data_blocks)?;
    let (offset, read_error): (u64, fn(u64, std::io::Error) -> VerityError) =
        match geometry.levels().last() {
            Some(top) => (hash_offset + top.byte_offset(), |offset, source| {
                VerityError::ReadHashArea { offset, source }
            }),
            None => (0, |offset, source| VerityError::ReadData { offset, source }),
        };
    let mut block = vec![0u8; BLOCK];
    reader
        .seek(SeekFrom::Start(offset))
        .and_then(|_| reader.read_exact(&mut block))
        .map_err(|source| read_error(offset, source))?;
    let root = BlockHasher::new(&superblock.salt).digest(&block);
    Ok((superblock, RootHash::from_bytes(root)))
}

/// All CPUs the process may use (1 if that cannot be determined).
fn default_threads() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// End of the data region and end of the hash area, checking they do not overlap or overflow.
fn region_ends(geometry: &TreeGeometry, hash_offset: u64) -> Result<(u64, u64), VerityError> {
    let overflow = VerityError::SizeOverflow {
        data_blocks: geometry.data_blocks(),
        hash_offset,
    };
    let Some(data_end) = geometry.data_blocks().checked_mul(BLOCK_SIZE) else {
        return Err(overflow);
    };
    if hash_offset < data_end {
        return Err(VerityError::HashAreaOverlapsData {
            hash_offset,
            data_end,
        });
    }
    let Some(hash_end) = hash_offset.checked_add(geometry.hash_area_size()) else {
        return Err(overflow);
    };
    Ok((data_end, hash_end))
}

/// Byte length of a regular file, or of a block device (whose metadata length is 0).
fn image_size(image: &File) -> Result<u64, VerityError> {
    let metadata = image.metadata().map_err(VerityError::Stat)?;
    if metadata.is_file() {
        return Ok(metadata.len());
    }
    // Seeking moves the shared file position; everything here uses positioned I/O.
    let mut handle = image;
    handle.seek(SeekFrom::End(0)).map_err(VerityError::Stat)
}

/// Offset inside the in-memory tree (which starts after the superblock block) of a hash block
/// numbered from the start of the hash area.
fn tree_offset(first_block: u64) -> usize {
    ((first_block - 1) * BLOCK_SIZE) as usize
}

/// Fills `digests` (32 bytes per data block, starting at data block 0) with the digests of
/// the data blocks, read from `image` by `threads` threads.
fn hash_data_region(
    image: &File,
    hasher: &BlockHasher,
    threads: NonZeroUsize,
    digests: &mut [u8],
) -> Result<(), VerityError> {
    let chunk_count = digests.len().div_ceil(CHUNK_BLOCKS * DIGEST_SIZE);
    let threads = threads.get().min(chunk_count);
    let queue = Mutex::new(digests.chunks_mut(CHUNK_BLOCKS * DIGEST_SIZE).enumerate());
    let failed = AtomicBool::new(false);
    let worker = || -> Result<(), VerityError> {
        let mut buffer = vec![0u8; CHUNK_BLOCKS * BLOCK];
        loop {
            if failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
            let Some((chunk, out)) = next else {
                return Ok(());
            };
            let blocks = out.len() / DIGEST_SIZE;
            let offset = (chunk * CHUNK_BLOCKS) as u64 * BLOCK_SIZE;
            let data = &mut buffer[..blocks * BLOCK];
            if let Err(source) = image.read_exact_at(data, offset) {
                failed.store(true, Ordering::Relaxed);
                return Err(VerityError::ReadData { offset, source });
            }
            for (block, digest) in data
                .chunks_exact(BLOCK)
                .zip(out.chunks_exact_mut(DIGEST_SIZE))
            {
                digest.copy_from_slice(&hasher.digest_data_block(block));
            }
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads).map(|_| scope.spawn(worker)).collect();
        let mut result = worker();
        for handle in handles {
            let joined = handle.join().expect("a verity hashing thread panicked");
            result = result.and(joined);
        }
        result
    })
}

/// Fills levels 1.. of `tree` from the level below each (level 0 must be complete).
fn build_upper_levels(tree: &mut [u8], geometry: &TreeGeometry, hasher: &BlockHasher) {
    let levels = geometry.levels();
    for level in 1..levels.len() {
        let (parent, child) = (levels[level], levels[level - 1]);
        // Top first on disk: the parent level lies before the child level.
        let (upper, lower) = tree.split_at_mut(tree_offset(child.first_block));
        let child_blocks = &lower[..child.byte_len() as usize];
        let parent_at = tree_offset(parent.first_block);
        let parent_digests = &mut upper[parent_at..parent_at + parent.byte_len() as usize];
        for (block, digest) in child_blocks
            .chunks_exact(BLOCK)
            .zip(parent_digests.chunks_exact_mut(DIGEST_SIZE))
        {
            digest.copy_from_slice(&hasher.digest(block));
        }
    }
}

#[cfg(test)]
mod tests;
