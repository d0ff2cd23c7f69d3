//! A small build output directory shaped like `wellcar build`'s, and signed payloads made from it
//! (the payload crate's tests, the agent's tests).
//!
//! Contract: [`Build::create`] writes `usr.img` (24 MiB: 9 MiB of data, a hole, a small island,
//! 1 MiB of allocated zeros, a hole, then a real dm-verity hash area from `veritysetup format`
//! at 20 MiB), `vmlinuz`, `initramfs.img` and `manifest.json` (the
//! [`BuildManifest`] contract). The content is the same for every version, so two builds differ
//! only in their manifests. `veritysetup` is required: without it the test fails naming its
//! package. The root hash is cross-checked against [`wellcar_verity::RootHasher`].

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};
use wellcar_contract::{BuildManifest, PackageRecord, RootHash};
use wellcar_payload::{CreateOptions, PayloadSummary, SigningKey};

/// One mebibyte.
pub const MIB: u64 = 1024 * 1024;
/// Size of the /usr image.
pub const USR_SIZE: u64 = 24 * MIB;
/// Verity data blocks: the first 20 MiB.
pub const DATA_BLOCKS: u64 = 20 * MIB / 4096;
/// Where the verity hash area (superblock first) starts.
pub const HASH_OFFSET: u64 = DATA_BLOCKS * 4096;
/// Verity salt (hex).
pub const SALT: &str = "5ea1ab1e5ea1ab1e5ea1ab1e5ea1ab1e";
/// The board every fixture build is for.
pub const BOARD: &str = "amd64-usr";
/// The kernel's size (odd on purpose: not a block multiple).
pub const KERNEL_SIZE: usize = 300_001;
/// The initramfs's size.
pub const INITRAMFS_SIZE: usize = 5 * MIB as usize + 17;

/// Deterministic bytes that compress roughly 2:1, like binaries, and do not repeat.
pub fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let words: [&[u8]; 6] = [
        b"wellcar ",
        b"usr/lib ",
        b"\x7fELF\x02\x01",
        b"systemd ",
        b"\0\0\0\0",
        b"verity ",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if state.is_multiple_of(3) {
            out.extend_from_slice(&state.to_le_bytes());
        } else {
            out.extend_from_slice(words[(state % 6) as usize]);
        }
    }
    out.truncate(len);
    out
}

/// A fresh ed25519 signing key.
pub fn signing_key() -> SigningKey {
    wellcar_payload::keys::new_signing_key().expect("generating a signing key")
}

/// A build output directory (see the module docs).
#[derive(Debug, Clone)]
pub struct Build {
    /// The directory.
    pub dir: PathBuf,
    /// Its `manifest.json`.
    pub manifest: BuildManifest,
}

impl Build {
    /// Writes a build of `version` into `dir` (created if missing).
    pub fn create(dir: &Path, version: &str) -> Build {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let usr_path = dir.join("usr.img");
        let usr = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&usr_path)
            .unwrap();
        usr.set_len(USR_SIZE).unwrap();
        // 9 MiB of data, a hole, a small island, allocated zeros, a hole, the hash area.
        usr.write_all_at(&filler(9 * MIB as usize, 1), 0).unwrap();
        usr.write_all_at(&filler(3 * 4096, 2), 13 * MIB).unwrap();
        usr.write_all_at(&vec![0u8; MIB as usize], 14 * MIB)
            .unwrap();
        let mut data = vec![0u8; HASH_OFFSET as usize];
        usr.read_exact_at(&mut data, 0).unwrap();
        let mut hasher = wellcar_verity::RootHasher::new(&hex::decode(SALT).unwrap(), DATA_BLOCKS);
        hasher.update(&data);
        let root = hasher.finish().expect("the data fills the data blocks");
        let out = crate::tools::run(
            Command::new("veritysetup")
                .args(["format", "--salt", SALT])
                .arg(format!("--data-blocks={DATA_BLOCKS}"))
                .arg(format!("--hash-offset={HASH_OFFSET}"))
                .arg(&usr_path)
                .arg(&usr_path),
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            printed.contains(&root.to_string()),
            "veritysetup disagrees with RootHasher ({root}): {printed}"
        );
        usr.sync_all().unwrap();
        drop(usr);
        std::fs::write(dir.join("vmlinuz"), filler(KERNEL_SIZE, 4)).unwrap();
        std::fs::write(dir.join("initramfs.img"), filler(INITRAMFS_SIZE, 5)).unwrap();
        let sha = |name: &str| hex::encode(Sha256::digest(std::fs::read(dir.join(name)).unwrap()));
        let manifest = BuildManifest {
            version: version.into(),
            board: BOARD.into(),
            build_id: "test-build".into(),
            source_date_epoch: 0,
            verity_root_hash: root,
            verity_salt: SALT.into(),
            verity_hash_offset: HASH_OFFSET,
            verity_data_blocks: DATA_BLOCKS,
            usr_image: "usr.img".into(),
            usr_image_size: USR_SIZE,
            usr_image_sha256: sha("usr.img"),
            usr_fs_size: 0,
            usr_tree_size: 0,
            kernel: "vmlinuz".into(),
            kernel_version: String::new(),
            kernel_sha256: sha("vmlinuz"),
            initramfs: "initramfs.img".into(),
            initramfs_sha256: sha("initramfs.img"),
            initramfs_size: INITRAMFS_SIZE as u64,
            disk_image: "wellcar.img".into(),
            qcow2_image: "wellcar.qcow2".into(),
            payload: None,
            packages: vec![PackageRecord {
                name: "systemd".into(),
                version: "255".into(),
            }],
            rootfs_cache_key: String::new(),
            phases: Vec::new(),
            deltas: Vec::new(),
            pxe_kernel: None,
            pxe_initramfs: None,
            pxe_initramfs_size: None,
            live_kernel_args: None,
            iso_image: None,
        };
        manifest.write(dir).unwrap();
        Build {
            dir: dir.to_owned(),
            manifest,
        }
    }

    /// A file of the build.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `manifest.json`.
    pub fn manifest_path(&self) -> PathBuf {
        self.path(wellcar_contract::BUILD_MANIFEST_FILE)
    }

    /// The /usr image's dm-verity root hash.
    pub fn root_hash(&self) -> RootHash {
        self.manifest.verity_root_hash
    }

    /// The bytes of `usr.img`.
    pub fn usr_image(&self) -> Vec<u8> {
        std::fs::read(self.path(&self.manifest.usr_image)).unwrap()
    }

    /// The bytes of the kernel.
    pub fn kernel(&self) -> Vec<u8> {
        std::fs::read(self.path(&self.manifest.kernel)).unwrap()
    }

    /// Creates `wellcar_update.bin` in the build directory, signed by `keys` (compression level
    /// 3: fast).
    ///
    /// The payload crate's own tests make theirs with their own `crate::` functions (this is
    /// the payload crate as other crates see it).
    pub fn payload(&self, keys: &[&SigningKey]) -> PayloadSummary {
        let options = CreateOptions {
            compression_level: 3,
            ..CreateOptions::default()
        };
        wellcar_payload::create_payload_with(
            &self.dir,
            &self.manifest_path(),
            keys,
            &self.dir,
            &options,
        )
        .unwrap_or_else(|e| panic!("creating the payload of {}: {e}", self.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_has_what_its_manifest_says_and_makes_a_verifiable_payload() {
        let dir = tempfile::tempdir().unwrap();
        let build = Build::create(&dir.path().join("out"), "1.2.3");
        let read = BuildManifest::read(&build.dir).unwrap();
        assert_eq!(read, build.manifest);
        assert_eq!(read.version, "1.2.3");
        let usr = build.usr_image();
        assert_eq!(usr.len() as u64, USR_SIZE);
        assert_eq!(hex::encode(Sha256::digest(&usr)), read.usr_image_sha256);
        assert!(
            usr[HASH_OFFSET as usize..].iter().any(|&b| b != 0),
            "a hash area"
        );
        assert_eq!(build.kernel().len(), KERNEL_SIZE);
        // The same content for every version.
        let other = Build::create(&dir.path().join("other"), "1.2.4");
        assert_eq!(other.root_hash(), build.root_hash());
        let key = signing_key();
        let summary = build.payload(&[&key]);
        assert_eq!(summary.version, "1.2.3");
        assert!(summary.size < USR_SIZE / 2, "{} bytes", summary.size);
        let trusted = wellcar_payload::TrustedKeys::new(vec![wellcar_payload::keys::TrustedKey {
            name: "test".into(),
            verifying_key: key.verifying_key(),
        }]);
        let report = wellcar_payload::verify_payload(
            &mut std::fs::File::open(&summary.path).unwrap(),
            &trusted,
        )
        .unwrap();
        assert_eq!(report.version, "1.2.3");
    }
}
