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
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use wellcar_contract::RootHash;
use wellcar_disk::USR_VERITY_HASH_OFFSET;

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
    /// No valid verity superblock at the hash offset, or its tree's top block unreadable.
    #[error("no usable verity superblock and tree on {device} at byte {offset}")]
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
        expected: RootHash,
        /// What the tree on disk hashes to.
        found: RootHash,
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

/// Checks the slot on `device` and maps it as `/dev/mapper/<name>` under `dev_dir`.
pub fn open_verity(
    device: &Path,
    name: &str,
    root_hash: &RootHash,
    dev_dir: &Path,
) -> Result<PathBuf, OpenUsrError> {
    let read_err = |source| OpenUsrError::Read {
        device: device.to_path_buf(),
        source,
    };
    let mut file = File::open(device).map_err(read_err)?;
    let (superblock, found) = wellcar_verity::stored_root_hash(&mut file, USR_VERITY_HASH_OFFSET)
        .map_err(|source| OpenUsrError::Superblock {
        device: device.to_path_buf(),
        offset: USR_VERITY_HASH_OFFSET,
        source,
    })?;
    if &found != root_hash {
        return Err(OpenUsrError::RootHashMismatch {
            device: device.to_path_buf(),
            expected: *root_hash,
            found,
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
        root_hash.as_bytes(),
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

    /// A slot image of `data_blocks` blocks with its tree right after the data, formatted by
    /// `wellcar_verity::format`, and the root hash it reported.
    fn formatted_slot(data_blocks: u64) -> (tempfile::NamedTempFile, RootHash) {
        let image = tempfile::NamedTempFile::new().unwrap();
        let hash_offset = USR_VERITY_HASH_OFFSET;
        image.as_file().set_len(hash_offset).unwrap();
        // Some non-zero data so the tree is not all zero blocks.
        std::os::unix::fs::FileExt::write_all_at(image.as_file(), &[0x5a; 8192], 0).unwrap();
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
    fn a_wrong_root_hash_is_refused_naming_both_before_any_mapping() {
        let (image, root) = formatted_slot(300);
        let mut wrong = *root.as_bytes();
        wrong[0] ^= 1;
        let wrong = RootHash::from_bytes(wrong);
        // dev_dir does not exist: reaching device-mapper would fail differently.
        let err = open_verity(image.path(), "usr", &wrong, Path::new("/nonexistent")).unwrap_err();
        assert!(
            matches!(&err, OpenUsrError::RootHashMismatch { expected, found, .. }
                if *expected == wrong && *found == root),
            "{err:?}"
        );
        assert!(err.to_string().contains(&root.to_string()), "{err}");
        // The right hash gets past the check, to device-mapper's control node.
        let err = open_verity(image.path(), "usr", &root, Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(err, OpenUsrError::Node { .. }), "{err:?}");
    }

    #[test]
    fn missing_superblock_names_device_and_offset() {
        let image = tempfile::NamedTempFile::new().unwrap();
        image
            .as_file()
            .set_len(USR_VERITY_HASH_OFFSET + 4096)
            .unwrap();
        let zero = RootHash::from_bytes([0; 32]);
        let err = open_verity(image.path(), "usr", &zero, Path::new("/nonexistent")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no usable verity superblock and tree on {} at byte 1065345024",
                image.path().display()
            )
        );
    }
}
