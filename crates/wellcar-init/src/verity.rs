//! Opening a USR slot through dm-verity.
//!
//! Contract: [`open_verity`] reads the verity superblock at
//! [`wellcar_disk::USR_VERITY_HASH_OFFSET`] of the partition, checks
//! the top block of the hash tree against the root hash from the command line (so a wrong
//! `verity.usrhash` or an unformatted slot is a clear error instead of a kernel panic on the
//! first read), then creates the read-only `verity` mapping with `panic_on_corruption` via
//! device-mapper ioctls and makes `/dev/mapper/<name>` (a block node). Corruption found later,
//! while reading, panics the kernel; `/init` sets `kernel.panic` so that panic reboots.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wellcar_disk::USR_VERITY_HASH_OFFSET;
use wellcar_verity::{Superblock, TreeGeometry, BLOCK_SIZE};

use crate::sys;

/// Why `/usr` could not be opened; each variant names the device.
#[derive(Debug, thiserror::Error)]
pub enum OpenUsrError {
    /// The partition could not be opened or read.
    #[error("reading {device}")]
    Read {
        /// The USR partition.
        device: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No valid verity superblock at the hash offset.
    #[error("no usable verity superblock on {device} at byte {offset}")]
    Superblock {
        /// The USR partition.
        device: PathBuf,
        /// Where it was looked for.
        offset: u64,
        /// What was wrong.
        #[source]
        source: wellcar_verity::VerityError,
    },
    /// The tree's top block does not hash to the expected root hash.
    #[error("verity root hash of {device} is {found}, the kernel command line expects {expected}")]
    RootHashMismatch {
        /// The USR partition.
        device: PathBuf,
        /// `verity.usrhash`.
        expected: String,
        /// What the tree on disk hashes to.
        found: String,
    },
    /// A device-mapper ioctl failed.
    #[error("device-mapper {operation} of {name} on {device}")]
    DeviceMapper {
        /// create, load table or resume.
        operation: &'static str,
        /// Mapping name.
        name: String,
        /// The USR partition.
        device: PathBuf,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// `/dev/mapper/<name>` could not be created.
    #[error("creating {path}")]
    Node {
        /// The node.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The root hash the tree stored at `hash_offset` of `image` hashes to (format 1: salt first).
pub fn tree_root_hash<R: Read + Seek>(
    image: &mut R,
    hash_offset: u64,
    superblock: &Superblock,
) -> std::io::Result<[u8; 32]> {
    let geometry = TreeGeometry::new(superblock.data_blocks)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    // The top level is a single block right after the superblock block; with one data block
    // there is no tree and the root is the digest of that block.
    let top = match geometry.levels().last() {
        Some(level) => hash_offset + level.byte_offset(),
        None => 0,
    };
    let mut block = vec![0u8; BLOCK_SIZE as usize];
    image.seek(SeekFrom::Start(top))?;
    image.read_exact(&mut block)?;
    let mut hasher = Sha256::new();
    hasher.update(&superblock.salt);
    hasher.update(&block);
    Ok(hasher.finalize().into())
}

/// Checks the slot on `device` and maps it as `/dev/mapper/<name>` under `dev_dir`.
pub fn open_verity(
    device: &Path,
    name: &str,
    root_hash: &[u8; 32],
    dev_dir: &Path,
) -> Result<PathBuf, OpenUsrError> {
    let read_err = |source| OpenUsrError::Read {
        device: device.to_path_buf(),
        source,
    };
    let mut file = File::open(device).map_err(read_err)?;
    let superblock =
        wellcar_verity::read_superblock(&mut file, USR_VERITY_HASH_OFFSET).map_err(|source| {
            OpenUsrError::Superblock {
                device: device.to_path_buf(),
                offset: USR_VERITY_HASH_OFFSET,
                source,
            }
        })?;
    let found = tree_root_hash(&mut file, USR_VERITY_HASH_OFFSET, &superblock).map_err(read_err)?;
    if &found != root_hash {
        return Err(OpenUsrError::RootHashMismatch {
            device: device.to_path_buf(),
            expected: hex::encode(root_hash),
            found: hex::encode(found),
        });
    }
    drop(file);

    let control_path = dev_dir.join("mapper/control");
    let control = File::options()
        .read(true)
        .write(true)
        .open(&control_path)
        .map_err(|source| OpenUsrError::Node {
            path: control_path.clone(),
            source,
        })?;
    let dm_err = |operation| {
        move |source| OpenUsrError::DeviceMapper {
            operation,
            name: name.to_string(),
            device: device.to_path_buf(),
            source,
        }
    };
    let device_text = device.display().to_string();
    let params = wellcar_verity::dm_table_params(
        &device_text,
        &device_text,
        superblock.data_blocks,
        USR_VERITY_HASH_OFFSET,
        root_hash,
        &superblock.salt,
    );
    let uuid = format!("WELLCAR-VERITY-{}", superblock.uuid.simple());
    let (major, minor) = sys::dm_create(control.as_fd(), name, &uuid).map_err(dm_err("create"))?;
    sys::dm_load_table(
        control.as_fd(),
        name,
        wellcar_verity::dm_target_sectors(superblock.data_blocks),
        "verity",
        &params,
    )
    .map_err(dm_err("table load"))?;
    sys::dm_resume(control.as_fd(), name).map_err(dm_err("resume"))?;

    let node = dev_dir.join("mapper").join(name);
    let node_err = |source| OpenUsrError::Node {
        path: node.clone(),
        source,
    };
    if !node.exists() {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &node,
            rustix::fs::FileType::BlockDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::makedev(major, minor),
        )
        .map_err(|e| node_err(e.into()))?;
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn formatted_slot(data_blocks: u64) -> (tempfile::NamedTempFile, [u8; 32]) {
        let image = tempfile::NamedTempFile::new().unwrap();
        let hash_offset = data_blocks * BLOCK_SIZE;
        image.as_file().set_len(hash_offset).unwrap();
        // Some non-zero data so the tree is not all zero blocks.
        use std::io::Write;
        let mut f = image.as_file();
        f.write_all(&[0x5a; 8192]).unwrap();
        let info = wellcar_verity::format(
            image.as_file(),
            &wellcar_verity::VerityParams {
                data_blocks,
                hash_offset,
                salt: vec![0x11; 32],
                uuid: uuid::Uuid::from_u128(7),
            },
        )
        .unwrap();
        (image, info.root_hash)
    }

    #[test]
    fn root_of_the_tree_matches_what_format_reported() {
        for blocks in [1, 3, 300] {
            let (image, root) = formatted_slot(blocks);
            let mut f = File::open(image.path()).unwrap();
            let offset = blocks * BLOCK_SIZE;
            let sb = wellcar_verity::read_superblock(&mut f, offset).unwrap();
            assert_eq!(
                tree_root_hash(&mut f, offset, &sb).unwrap(),
                root,
                "{blocks} blocks"
            );
        }
    }

    #[test]
    fn a_tampered_top_block_changes_the_root() {
        let (image, root) = formatted_slot(300);
        let offset = 300 * BLOCK_SIZE;
        let mut f = File::options()
            .read(true)
            .write(true)
            .open(image.path())
            .unwrap();
        f.seek(SeekFrom::Start(offset + BLOCK_SIZE + 5)).unwrap();
        use std::io::Write;
        f.write_all(&[0xff]).unwrap();
        let sb = wellcar_verity::read_superblock(&mut f, offset).unwrap();
        assert_ne!(tree_root_hash(&mut f, offset, &sb).unwrap(), root);
    }

    #[test]
    fn missing_superblock_names_device_and_offset() {
        let image = tempfile::NamedTempFile::new().unwrap();
        image
            .as_file()
            .set_len(USR_VERITY_HASH_OFFSET + 4096)
            .unwrap();
        let err =
            open_verity(image.path(), "usr", &[0; 32], Path::new("/nonexistent")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no usable verity superblock on {} at byte 1065345024",
                image.path().display()
            )
        );
    }
}
