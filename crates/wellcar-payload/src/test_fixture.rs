//! Test fixture: a build output directory shaped like the image builder's (from
//! [`wellcar_test_support::build`], shared with the agent's tests), plus keys and targets in
//! this crate's own types.

use std::fs::File;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use wellcar_test_support::build::Build;
pub(crate) use wellcar_test_support::build::{BOARD, DATA_BLOCKS, HASH_OFFSET, MIB, USR_SIZE};

use crate::create::{create_payload_with, CreateOptions, PayloadSummary};
use crate::keys::{new_signing_key, TrustedKey, TrustedKeys};

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
        let build = Build::create(&dir.path().join("out"), version);
        Self {
            manifest: build.manifest_path(),
            build: build.dir,
            dir,
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

/// Makes build `name` of `version` from the build in `from`: the same files, with `edit`
/// applied to the first `DATA_BLOCKS` blocks of its usr.img, its dm-verity area formatted again
/// (`veritysetup`) and its manifest rewritten with the new hashes. Returns its directory.
pub(crate) fn derived_build(
    from: &Path,
    to: &Path,
    version: &str,
    edit: impl FnOnce(&mut Vec<u8>),
) -> PathBuf {
    use sha2::Digest;
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(to).unwrap();
    let mut build = wellcar_contract::BuildManifest::read(from).unwrap();
    for name in [&build.kernel, &build.initramfs] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
    let usr_path = to.join(&build.usr_image);
    let usr = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&usr_path)
        .unwrap();
    usr.set_len(USR_SIZE).unwrap();
    let mut data = vec![0u8; HASH_OFFSET as usize];
    File::open(from.join(&build.usr_image))
        .unwrap()
        .read_exact_at(&mut data, 0)
        .unwrap();
    edit(&mut data);
    assert_eq!(data.len() as u64, HASH_OFFSET, "edits keep the size");
    usr.write_all_at(&data, 0).unwrap();
    usr.sync_all().unwrap();
    let salt = &build.verity_salt;
    let mut hasher = wellcar_verity::RootHasher::new(&hex::decode(salt).unwrap(), DATA_BLOCKS);
    hasher.update(&data);
    let root = hasher.finish().unwrap();
    wellcar_test_support::tools::run(
        std::process::Command::new("veritysetup")
            .args(["format", "--salt", salt])
            .arg(format!("--data-blocks={DATA_BLOCKS}"))
            .arg(format!("--hash-offset={HASH_OFFSET}"))
            .arg(&usr_path)
            .arg(&usr_path),
    );
    build.version = version.into();
    build.verity_root_hash = root;
    build.usr_image_sha256 = hex::encode(sha2::Sha256::digest(std::fs::read(&usr_path).unwrap()));
    build.write(to).unwrap();
    to.to_owned()
}
