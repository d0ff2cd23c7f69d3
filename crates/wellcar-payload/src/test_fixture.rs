//! Test fixture: a small build output directory shaped like the image builder's (`usr.img`
//! with data, holes, allocated zeros and a dm-verity hash area; kernel; initramfs;
//! `manifest.json`), plus keys and targets.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ed25519_dalek::SigningKey;

use crate::create::{create_payload_with, CreateOptions, PayloadSummary};
use crate::format::Sha256Digest;
use crate::keys::{new_signing_key, TrustedKey, TrustedKeys};
use wellcar_verity::RootHasher;

pub(crate) const MIB: u64 = 1024 * 1024;
/// /usr region size of the fixture.
pub(crate) const USR_SIZE: u64 = 24 * MIB;
/// Verity data blocks: the first 20 MiB.
pub(crate) const DATA_BLOCKS: u64 = 20 * MIB / 4096;
pub(crate) const HASH_OFFSET: u64 = DATA_BLOCKS * 4096;
pub(crate) const SALT: &str = "5ea1ab1e5ea1ab1e5ea1ab1e5ea1ab1e";
pub(crate) const BOARD: &str = "amd64-usr";

/// Deterministic bytes that compress roughly 2:1, like binaries.
pub(crate) fn filler(len: usize, seed: u64) -> Vec<u8> {
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

pub(crate) fn veritysetup_available() -> bool {
    Command::new("veritysetup")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

pub(crate) struct Fixture {
    pub dir: tempfile::TempDir,
    pub build: PathBuf,
    pub manifest: PathBuf,
    pub key: SigningKey,
}

impl Fixture {
    /// A build directory for `version`.
    pub fn new(version: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let build = dir.path().join("out");
        std::fs::create_dir(&build).unwrap();
        let usr_path = build.join("usr.img");
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
        let data = {
            let mut d = vec![0u8; HASH_OFFSET as usize];
            usr.read_exact_at(&mut d, 0).unwrap();
            d
        };
        let mut verity = RootHasher::new(&hex::decode(SALT).unwrap(), DATA_BLOCKS);
        verity.update(&data);
        let root = verity.finish().unwrap().to_string();
        if veritysetup_available() {
            let out = Command::new("veritysetup")
                .args(["format", "--salt", SALT])
                .arg(format!("--data-blocks={DATA_BLOCKS}"))
                .arg(format!("--hash-offset={HASH_OFFSET}"))
                .arg(&usr_path)
                .arg(&usr_path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&root),
                "veritysetup disagrees"
            );
        } else {
            usr.write_all_at(&filler(64 * 1024, 3), HASH_OFFSET)
                .unwrap();
        }
        usr.sync_all().unwrap();
        std::fs::write(build.join("vmlinuz"), filler(300_001, 4)).unwrap();
        std::fs::write(
            build.join("initramfs.img"),
            filler(5 * MIB as usize + 17, 5),
        )
        .unwrap();
        let sha =
            |name: &str| Sha256Digest::of(&std::fs::read(build.join(name)).unwrap()).to_string();
        let manifest = serde_json::json!({
            "version": version, "board": BOARD, "build_id": "test-build",
            "verity_root_hash": root, "verity_salt": SALT,
            "verity_hash_offset": HASH_OFFSET, "verity_data_blocks": DATA_BLOCKS,
            "usr_image": "usr.img", "usr_image_size": USR_SIZE, "usr_image_sha256": sha("usr.img"),
            "kernel": "vmlinuz", "kernel_sha256": sha("vmlinuz"),
            "initramfs": "initramfs.img", "initramfs_sha256": sha("initramfs.img"),
            "disk_image": "wellcar.img", "qcow2_image": "wellcar.qcow2",
            "packages": [{"name": "systemd", "version": "255"}]
        });
        let manifest_path = build.join("manifest.json");
        std::fs::write(
            &manifest_path,
            serde_json::to_vec_pretty(&manifest).unwrap(),
        )
        .unwrap();
        Self {
            dir,
            build,
            manifest: manifest_path,
            key: new_signing_key().unwrap(),
        }
    }

    /// Creates the payload signed by `keys` (default: the fixture key), fast compression.
    pub fn payload_signed_by(&self, keys: &[&SigningKey]) -> PayloadSummary {
        let options = CreateOptions {
            compression_level: 3,
            ..CreateOptions::default()
        };
        create_payload_with(&self.build, &self.manifest, keys, &self.build, &options).unwrap()
    }

    pub fn payload(&self) -> PayloadSummary {
        self.payload_signed_by(&[&self.key])
    }

    pub fn trusted(&self) -> TrustedKeys {
        trusted(&[&self.key])
    }

    pub fn usr_image(&self) -> Vec<u8> {
        std::fs::read(self.build.join("usr.img")).unwrap()
    }

    /// A fresh target set: a `size`-byte USR file full of 0xAA (an old slot), kernel and
    /// initramfs paths on a fake ESP.
    pub fn target(&self, name: &str, size: u64) -> TargetPaths {
        let root = self.dir.path().join(name);
        std::fs::create_dir_all(root.join("esp")).unwrap();
        let usr = root.join("usr-b");
        std::fs::write(&usr, vec![0xAA; size as usize]).unwrap();
        TargetPaths {
            usr,
            kernel: root.join("esp/vmlinuz-b"),
            initramfs: root.join("esp/initramfs-b.img"),
        }
    }
}

pub(crate) fn trusted(keys: &[&SigningKey]) -> TrustedKeys {
    TrustedKeys::new(
        keys.iter()
            .enumerate()
            .map(|(i, k)| TrustedKey {
                name: format!("key{i}"),
                verifying_key: k.verifying_key(),
            })
            .collect(),
    )
}

#[derive(Debug, Clone)]
pub(crate) struct TargetPaths {
    pub usr: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

impl TargetPaths {
    pub fn open(&self) -> crate::apply::InstallTargets<crate::apply::UsrPartition> {
        crate::apply::InstallTargets {
            usr: crate::apply::UsrPartition::open(&self.usr).unwrap(),
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
        }
    }

    /// True if nothing was written: USR still all 0xAA, no kernel/initramfs, no partials.
    pub fn untouched(&self) -> bool {
        let usr = std::fs::read(&self.usr).unwrap();
        usr.iter().all(|&b| b == 0xAA)
            && !self.kernel.exists()
            && !self.initramfs.exists()
            && !crate::apply::partial_path(&self.kernel).exists()
            && !crate::apply::partial_path(&self.initramfs).exists()
    }

    /// True if no kernel or initramfs was installed (the slot cannot boot the new version).
    pub fn not_installed(&self) -> bool {
        !self.kernel.exists() && !self.initramfs.exists()
    }
}

pub(crate) fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}
