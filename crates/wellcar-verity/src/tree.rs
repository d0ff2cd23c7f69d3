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

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::geometry::TreeGeometry;
use crate::superblock::{read_superblock, Superblock, SUPERBLOCK_SIZE};
use crate::{table, VerityError, BLOCK_SIZE, DIGEST_SIZE, MAX_SALT_SIZE};

const BLOCK: usize = BLOCK_SIZE as usize;
/// Data blocks per unit of work of the parallel bottom-level hashing (1 MiB reads).
const CHUNK_BLOCKS: usize = 256;
static ZERO_BLOCK: [u8; BLOCK] = [0; BLOCK];

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

/// The outcome of [`format`]: everything needed to open the device later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityInfo {
    /// The root hash (`verity.usrhash=`).
    pub root_hash: [u8; DIGEST_SIZE],
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
    /// The root hash as 64 lowercase hex characters, as `veritysetup` prints it.
    pub fn root_hash_hex(&self) -> String {
        hex::encode(self.root_hash)
    }

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
            &self.root_hash,
            &self.salt,
        )
    }
}

/// Writes the superblock and hash tree for the data region of `image`, using all CPUs.
/// The image must be open for reading and writing.
pub fn format(image: &File, params: &VerityParams) -> Result<VerityInfo, VerityError> {
    format_with_threads(image, params, default_threads())
}

/// [`format`] with an explicit number of hashing threads (the output does not depend on it).
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
        root_hash,
        salt: params.salt.clone(),
        hash_area_size: geometry.hash_area_size(),
        data_blocks: params.data_blocks,
        hash_offset: params.hash_offset,
        uuid: params.uuid,
    };
    tracing::debug!(
        data_blocks = info.data_blocks,
        hash_offset = info.hash_offset,
        root_hash = %info.root_hash_hex(),
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
pub fn verify(
    image: &File,
    hash_offset: u64,
    root_hash: &[u8; DIGEST_SIZE],
) -> Result<(), VerityError> {
    verify_with_threads(image, hash_offset, root_hash, default_threads())
}

/// [`verify`] with an explicit number of hashing threads.
pub fn verify_with_threads(
    image: &File,
    hash_offset: u64,
    root_hash: &[u8; DIGEST_SIZE],
    threads: NonZeroUsize,
) -> Result<(), VerityError> {
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
        expected: hex::encode(root_hash),
        actual: hex::encode(actual),
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
) -> Result<(Superblock, [u8; DIGEST_SIZE]), VerityError> {
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
    Ok((superblock, root))
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

/// sha256 with the salt fed first, plus the precomputed digest of an all-zero block.
struct BlockHasher {
    salted: Sha256,
    zero_block_digest: [u8; DIGEST_SIZE],
}

impl BlockHasher {
    fn new(salt: &[u8]) -> Self {
        let salted = Sha256::new_with_prefix(salt);
        let zero_block_digest = salted.clone().chain_update(ZERO_BLOCK).finalize().into();
        BlockHasher {
            salted,
            zero_block_digest,
        }
    }

    fn digest(&self, block: &[u8]) -> [u8; DIGEST_SIZE] {
        self.salted.clone().chain_update(block).finalize().into()
    }

    /// Like [`Self::digest`], but answers all-zero blocks from the precomputed digest
    /// (comparing 4 KiB against zeros is ~20 times cheaper than hashing it).
    fn digest_data_block(&self, block: &[u8]) -> [u8; DIGEST_SIZE] {
        if block == ZERO_BLOCK {
            self.zero_block_digest
        } else {
            self.digest(block)
        }
    }
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
mod tests {
    use std::path::Path;

    use super::*;
    use crate::test_support::{
        flip_bit, open_rw, veritysetup_format, veritysetup_verify, write_image,
    };

    const UUID: &str = "6c1e2a9e-3a8f-4d5b-9c0e-7f1d2b3a4c5d";

    fn params(data_blocks: u64, hash_offset: u64, salt: &[u8]) -> VerityParams {
        VerityParams {
            data_blocks,
            hash_offset,
            salt: salt.to_vec(),
            uuid: Uuid::parse_str(UUID).unwrap(),
        }
    }

    fn salt32() -> Vec<u8> {
        (0u8..32).map(|i| i.wrapping_mul(37) ^ 0x5a).collect()
    }

    fn assert_same_bytes(ours: &Path, reference: &Path) {
        let (ours, reference) = (
            std::fs::read(ours).unwrap(),
            std::fs::read(reference).unwrap(),
        );
        assert_eq!(ours.len(), reference.len(), "image lengths differ");
        if let Some(at) = ours.iter().zip(&reference).position(|(a, b)| a != b) {
            panic!(
                "images differ first at byte {at}: ours {:#04x}, veritysetup {:#04x}",
                ours[at], reference[at]
            );
        }
    }

    #[test]
    fn golden_hash_area_is_byte_identical_to_veritysetup() {
        let dir = tempfile::tempdir().unwrap();
        let big_salt: Vec<u8> = (0..=255u8).collect();
        // (data blocks, random blocks, image blocks, hash offset in blocks, salt)
        let cases: [(u64, u64, u64, u64, Vec<u8>); 7] = [
            (1, 1, 1, 1, salt32()),       // no tree: root = digest of the data block
            (2, 1, 2, 2, salt32()),       // one level, one block
            (128, 128, 128, 128, vec![]), // one full level-0 block, empty salt
            (129, 100, 129, 129, vec![0xab]),
            (300, 120, 310, 302, salt32()), // gap between data and hash area, zero tail
            (700, 650, 700, 700, big_salt), // 256-byte salt
            (16_385, 300, 16_385, 16_385, salt32()), // three levels
        ];
        for (data_blocks, random_blocks, image_blocks, offset_blocks, salt) in cases {
            let hash_offset = offset_blocks * BLOCK_SIZE;
            let name = format!("{data_blocks}");
            let reference = write_image(
                dir.path(),
                &format!("{name}.ref"),
                image_blocks,
                random_blocks,
                data_blocks,
            );
            let ours = write_image(
                dir.path(),
                &format!("{name}.ours"),
                image_blocks,
                random_blocks,
                data_blocks,
            );

            let expected_root =
                veritysetup_format(&reference, data_blocks, hash_offset, &salt, UUID);
            let info = format(&open_rw(&ours), &params(data_blocks, hash_offset, &salt)).unwrap();

            assert_eq!(
                info.root_hash_hex(),
                hex::encode(expected_root),
                "{data_blocks} blocks"
            );
            assert_same_bytes(&ours, &reference);
            assert_eq!(
                std::fs::metadata(&ours).unwrap().len(),
                (hash_offset + info.hash_area_size).max(image_blocks * BLOCK_SIZE),
                "{data_blocks} blocks: file grown to the end of the hash area"
            );
            let superblock = crate::read_superblock(&mut open_rw(&reference), hash_offset).unwrap();
            assert_eq!(superblock.salt, salt);
            assert_eq!(superblock.data_blocks, data_blocks);
            assert_eq!(superblock.uuid.to_string(), UUID);
            verify(&open_rw(&reference), hash_offset, &expected_root).unwrap_or_else(|err| {
                panic!("{data_blocks} blocks: our verify rejected veritysetup's tree: {err}")
            });
        }
    }

    #[test]
    fn veritysetup_accepts_ours_and_rejects_a_flipped_data_byte() {
        let dir = tempfile::tempdir().unwrap();
        let data_blocks = 1000;
        let image = write_image(dir.path(), "usr.img", data_blocks, 600, 7);
        let hash_offset = data_blocks * BLOCK_SIZE;
        let info = format(
            &open_rw(&image),
            &params(data_blocks, hash_offset, &salt32()),
        )
        .unwrap();

        let (accepted, output) = veritysetup_verify(&image, hash_offset, &info.root_hash);
        assert!(accepted, "veritysetup verify rejected our tree: {output}");
        verify(&open_rw(&image), hash_offset, &info.root_hash).unwrap();

        // One bit in data block 700, inside the zero tail.
        flip_bit(&image, 700 * BLOCK_SIZE + 123);
        let (accepted, output) = veritysetup_verify(&image, hash_offset, &info.root_hash);
        assert!(
            !accepted,
            "veritysetup verify accepted a corrupted image: {output}"
        );
        match verify(&open_rw(&image), hash_offset, &info.root_hash) {
            Err(VerityError::DataBlockMismatch { block, offset }) => {
                assert_eq!(block, 700);
                assert_eq!(offset, 700 * BLOCK_SIZE);
            }
            other => panic!("expected a data block mismatch, got {other:?}"),
        }
    }

    #[test]
    fn verify_names_the_first_corrupt_hash_block_top_down() {
        let dir = tempfile::tempdir().unwrap();
        let data_blocks = 16_385; // levels: 129, 2, 1 blocks
        let hash_offset = data_blocks * BLOCK_SIZE;
        let image = write_image(dir.path(), "img", data_blocks, 40, 3);
        let info = format(
            &open_rw(&image),
            &params(data_blocks, hash_offset, &salt32()),
        )
        .unwrap();
        let geometry = TreeGeometry::new(data_blocks).unwrap();
        let levels = geometry.levels().to_vec();

        // A wrong root hash.
        let mut wrong_root = info.root_hash;
        wrong_root[31] ^= 0xff;
        match verify(&open_rw(&image), hash_offset, &wrong_root) {
            Err(VerityError::RootHashMismatch { expected, actual }) => {
                assert_eq!(expected, hex::encode(wrong_root));
                assert_eq!(actual, info.root_hash_hex());
            }
            other => panic!("expected a root hash mismatch, got {other:?}"),
        }

        // Level-0 block 5 corrupt: its digest in level 1 no longer matches. Also corrupt a data
        // block under it; top-down, the hash block is reported first.
        let bad_hash_block = hash_offset + levels[0].byte_offset() + 5 * BLOCK_SIZE;
        flip_bit(&image, bad_hash_block + 100);
        flip_bit(&image, 3 * BLOCK_SIZE);
        match verify(&open_rw(&image), hash_offset, &info.root_hash) {
            Err(VerityError::HashBlockMismatch {
                level,
                block,
                offset,
            }) => {
                assert_eq!((level, block, offset), (0, 5, bad_hash_block));
            }
            other => panic!("expected a hash block mismatch, got {other:?}"),
        }

        // The top block corrupt: nothing below it can be trusted, the root does not match.
        flip_bit(&image, hash_offset + levels[2].byte_offset());
        assert!(matches!(
            verify(&open_rw(&image), hash_offset, &info.root_hash),
            Err(VerityError::RootHashMismatch { .. })
        ));
    }

    #[test]
    fn stored_root_hash_reads_only_the_top_block() {
        let dir = tempfile::tempdir().unwrap();
        for data_blocks in [1, 129, 16_385] {
            let hash_offset = data_blocks * BLOCK_SIZE;
            let path = write_image(dir.path(), "img", data_blocks, data_blocks.min(200), 4);
            let info = format(
                &open_rw(&path),
                &params(data_blocks, hash_offset, &salt32()),
            )
            .unwrap();
            let (superblock, root) = stored_root_hash(&mut open_rw(&path), hash_offset).unwrap();
            assert_eq!(root, info.root_hash, "{data_blocks} blocks");
            assert_eq!(superblock.data_blocks, data_blocks);
            assert_eq!(superblock.salt, salt32());
        }
        // A corrupt data block far below the top is not noticed; a corrupt top block is.
        let path = dir.path().join("img");
        let hash_offset = 16_385 * BLOCK_SIZE;
        flip_bit(&path, 5 * BLOCK_SIZE);
        let (_, root) = stored_root_hash(&mut open_rw(&path), hash_offset).unwrap();
        let verdict = verify(&open_rw(&path), hash_offset, &root);
        assert!(matches!(
            verdict,
            Err(VerityError::DataBlockMismatch { block: 5, .. })
        ));
        flip_bit(&path, hash_offset + BLOCK_SIZE + 9);
        let (_, corrupted_root) = stored_root_hash(&mut open_rw(&path), hash_offset).unwrap();
        assert_ne!(corrupted_root, root);
    }

    #[test]
    fn one_block_image_verifies_against_the_data_digest() {
        let dir = tempfile::tempdir().unwrap();
        let image = write_image(dir.path(), "img", 1, 1, 11);
        let info = format(&open_rw(&image), &params(1, BLOCK_SIZE, &salt32())).unwrap();
        assert_eq!(info.hash_area_size, BLOCK_SIZE);
        verify(&open_rw(&image), BLOCK_SIZE, &info.root_hash).unwrap();
        flip_bit(&image, 17);
        assert!(matches!(
            verify(&open_rw(&image), BLOCK_SIZE, &info.root_hash),
            Err(VerityError::RootHashMismatch { .. })
        ));
    }

    #[test]
    fn output_is_reproducible_and_independent_of_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        let data_blocks = 3000;
        let hash_offset = data_blocks * BLOCK_SIZE;
        let mut roots = Vec::new();
        for threads in [1, 2, 5] {
            let image = write_image(dir.path(), &format!("t{threads}"), data_blocks, 2000, 99);
            let info = format_with_threads(
                &open_rw(&image),
                &params(data_blocks, hash_offset, &salt32()),
                NonZeroUsize::new(threads).unwrap(),
            )
            .unwrap();
            roots.push(info.root_hash);
        }
        assert!(roots.iter().all(|root| *root == roots[0]), "{roots:02x?}");
        assert_same_bytes(&dir.path().join("t1"), &dir.path().join("t2"));
        assert_same_bytes(&dir.path().join("t1"), &dir.path().join("t5"));
    }

    #[test]
    fn info_renders_hex_and_the_dm_table() {
        let dir = tempfile::tempdir().unwrap();
        let image = write_image(dir.path(), "img", 10, 10, 5);
        let info = format(&open_rw(&image), &params(10, 10 * BLOCK_SIZE, &[])).unwrap();
        assert_eq!(info.salt_hex(), "-");
        assert_eq!(info.root_hash_hex().len(), 64);
        assert_eq!(
            info.dm_table_params("/dev/sda3", "/dev/sda3"),
            format!(
                "1 /dev/sda3 /dev/sda3 4096 4096 10 11 sha256 {} - 1 panic_on_corruption",
                info.root_hash_hex()
            )
        );
    }

    #[test]
    fn rejects_bad_parameters_naming_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let image = open_rw(&write_image(dir.path(), "img", 8, 8, 1));
        let err = format(&image, &params(8, 8 * BLOCK_SIZE + 512, &[])).unwrap_err();
        assert!(
            matches!(err, VerityError::MisalignedHashOffset { hash_offset } if hash_offset == 8 * 4096 + 512)
        );
        let err = format(&image, &params(8, 4 * BLOCK_SIZE, &[])).unwrap_err();
        assert!(
            matches!(
                err,
                VerityError::HashAreaOverlapsData {
                    hash_offset: 16384,
                    data_end: 32768
                }
            ),
            "{err:?}"
        );
        let err = format(&image, &params(8, 8 * BLOCK_SIZE, &[0; 257])).unwrap_err();
        assert!(matches!(err, VerityError::SaltTooLong { len: 257 }));
        let err = format(&image, &params(0, 8 * BLOCK_SIZE, &[])).unwrap_err();
        assert!(matches!(err, VerityError::NoDataBlocks));
        let err = format(&image, &params(9, 9 * BLOCK_SIZE, &[])).unwrap_err();
        assert!(
            matches!(
                err,
                VerityError::ImageTooSmall {
                    len: 32768,
                    needed: 36864
                }
            ),
            "{err:?}"
        );
        let err = format(&image, &params(1 << 62, 1 << 63, &[])).unwrap_err();
        assert!(matches!(err, VerityError::SizeOverflow { .. }), "{err:?}");
    }

    #[test]
    fn verify_reports_a_missing_or_truncated_hash_area() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_image(dir.path(), "img", 300, 300, 2);
        let hash_offset = 300 * BLOCK_SIZE;
        let err = verify(&open_rw(&path), hash_offset, &[0; 32]).unwrap_err();
        assert!(
            matches!(err, VerityError::ReadHashArea { offset, .. } if offset == hash_offset),
            "{err:?}"
        );

        let info = format(&open_rw(&path), &params(300, hash_offset, &salt32())).unwrap();
        let image = open_rw(&path);
        image
            .set_len(hash_offset + info.hash_area_size - 1)
            .unwrap();
        let err = verify(&image, hash_offset, &info.root_hash).unwrap_err();
        assert!(
            matches!(err, VerityError::ImageTooSmall { needed, .. } if needed == hash_offset + info.hash_area_size),
            "{err:?}"
        );
    }
}
