//! `manifest.json`: the build's record and the contract with every consumer of a build
//! (tests, `wellcar payload create`, `wellcar run`). File names are relative to the output
//! directory. Keys are only ever added.

use std::path::Path;

use serde::{Deserialize, Serialize};
use wellcar_contract::RootHash;

use crate::error::{IoContext, Result};
use crate::reshape::Package;

/// The build manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildManifest {
    /// OS version (VERSION_ID).
    pub version: String,
    /// Board, Flatcar-style (`amd64-usr`).
    pub board: String,
    /// BUILD_ID in os-release.
    pub build_id: String,
    /// SOURCE_DATE_EPOCH the build used.
    pub source_date_epoch: u64,
    /// dm-verity root hash of the /usr slot image (64 lower-case hex digits in the JSON).
    pub verity_root_hash: RootHash,
    /// dm-verity salt (hex).
    pub verity_salt: String,
    /// Byte offset of the hash area (superblock first) inside the USR partition.
    pub verity_hash_offset: u64,
    /// Data blocks (4096 bytes) covered by the tree.
    pub verity_data_blocks: u64,
    /// The /usr slot image.
    pub usr_image: String,
    /// Its size in bytes.
    pub usr_image_size: u64,
    /// Its sha256.
    pub usr_image_sha256: String,
    /// Size of the EROFS filesystem inside it.
    pub usr_fs_size: u64,
    /// Apparent size of the uncompressed /usr tree.
    pub usr_tree_size: u64,
    /// The kernel.
    pub kernel: String,
    /// Kernel release.
    pub kernel_version: String,
    /// Kernel sha256.
    pub kernel_sha256: String,
    /// The initramfs.
    pub initramfs: String,
    /// Initramfs sha256.
    pub initramfs_sha256: String,
    /// Initramfs size in bytes.
    pub initramfs_size: u64,
    /// Raw disk image.
    pub disk_image: String,
    /// qcow2 disk image.
    pub qcow2_image: String,
    /// Signed update payload, when one was written.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub payload: Option<String>,
    /// Installed Debian packages.
    pub packages: Vec<Package>,
    /// Root filesystem cache key.
    pub rootfs_cache_key: String,
    /// Phase name and seconds.
    pub phases: Vec<(String, f64)>,
}

impl BuildManifest {
    /// Writes the manifest atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let p = dir.join("manifest.json");
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        wellcar_contract::atomic_file::write(&p, (text + "\n").as_bytes(), 0o644).at("writing", &p)
    }

    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<BuildManifest> {
        let p = dir.join("manifest.json");
        let text = std::fs::read_to_string(&p).at("reading", &p)?;
        serde_json::from_str(&text).map_err(|e| crate::error::BuildError::Rootfs {
            path: p,
            message: e.to_string(),
        })
    }
}
