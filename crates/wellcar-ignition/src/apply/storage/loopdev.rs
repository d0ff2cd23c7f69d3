//! Test fixture: sparse image files attached as loop devices (with partition scanning), detached
//! on drop. Needs root and `losetup`.

use std::path::{Path, PathBuf};
use std::process::Command;

use wellcar_contract::command;

/// A loop device over a sparse file in a temp dir.
pub(crate) struct LoopDisk {
    pub(crate) device: String,
    pub(crate) image: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDisk {
    /// A zeroed sparse disk of `mib` MiB.
    pub(crate) fn new(mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let out = command::run(
            Command::new("losetup")
                .args(["--find", "--show", "--partscan"])
                .arg(&image),
        )
        .expect("losetup (util-linux) as root is needed for this test");
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(device.starts_with("/dev/loop"), "{device}");
        Self {
            device,
            image,
            _dir: dir,
        }
    }

    /// `sgdisk -p` of the disk (what a user would look at).
    pub(crate) fn sgdisk_print(&self) -> String {
        let out = command::run(Command::new("sgdisk").args(["-p", &self.device])).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sgdisk -i N` of partition `n`.
    pub(crate) fn sgdisk_info(&self, n: u32) -> String {
        let out = command::run(Command::new("sgdisk").args(["-i", &n.to_string(), &self.device]))
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The disk's bytes hash (to show nothing was written).
    pub(crate) fn digest(&self) -> String {
        use sha2::Digest;
        let mut f = std::fs::File::open(&self.image).unwrap();
        let mut h = sha2::Sha256::new();
        std::io::copy(&mut f, &mut h).unwrap();
        format!("{:x}", h.finalize())
    }

    pub(crate) fn path(&self) -> &Path {
        Path::new(&self.device)
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}
