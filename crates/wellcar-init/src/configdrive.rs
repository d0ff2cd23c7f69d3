//! Finding and mounting an OpenStack config drive (iso9660 or vfat, label `config-2`).
//!
//! Contract: [`fs_label`] reads a filesystem's type and label from its first sectors (iso9660
//! primary volume descriptor at 32 KiB; FAT boot sector) without mounting it. [`find`]
//! returns the first block device under `/sys/class/block` whose label is one of
//! `wellcar_platform::configdrive::LABELS`. [`read`] mounts it read-only, reads user data
//! and metadata, and unmounts it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};
use wellcar_platform::{configdrive, Attributes, PlatformError};

/// A filesystem type that can carry a config drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveFs {
    /// ISO 9660 (what OpenStack writes by default).
    Iso9660,
    /// FAT (`config_drive_format=vfat`).
    Vfat,
}

impl DriveFs {
    fn fstype(self) -> &'static str {
        match self {
            DriveFs::Iso9660 => "iso9660",
            DriveFs::Vfat => "vfat",
        }
    }
}

fn trimmed(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

/// The filesystem type and label of the image or device `reader`, if it is iso9660 or FAT.
pub fn fs_label(reader: &mut (impl Read + Seek)) -> Option<(DriveFs, String)> {
    let mut pvd = [0u8; 72];
    if reader.seek(SeekFrom::Start(32768)).is_ok() && reader.read_exact(&mut pvd).is_ok() {
        // Type 1 (primary volume descriptor), "CD001"; volume identifier at 40, 32 bytes.
        if pvd[0] == 1 && &pvd[1..6] == b"CD001" {
            return Some((DriveFs::Iso9660, trimmed(&pvd[40..72])));
        }
    }
    let mut boot = [0u8; 512];
    reader.seek(SeekFrom::Start(0)).ok()?;
    reader.read_exact(&mut boot).ok()?;
    if boot[510..512] != [0x55, 0xaa] {
        return None;
    }
    // FAT32 keeps the extended BPB at 0x40 (label at 0x47), FAT12/16 at 0x24 (label 0x2b).
    if &boot[0x52..0x57] == b"FAT32" {
        Some((DriveFs::Vfat, trimmed(&boot[0x47..0x52])))
    } else if &boot[0x36..0x39] == b"FAT" {
        Some((DriveFs::Vfat, trimmed(&boot[0x2b..0x36])))
    } else {
        None
    }
}

/// The first block device labelled as a config drive.
pub fn find(class_block: &Path, dev: &Path) -> Option<(PathBuf, DriveFs)> {
    let mut names: Vec<String> = std::fs::read_dir(class_block)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let device = dev.join(&name);
        let mut file = File::open(&device).ok()?;
        let (fs, label) = fs_label(&mut file)?;
        configdrive::LABELS
            .contains(&label.as_str())
            .then_some((device, fs))
    })
}

/// What a config drive holds.
#[derive(Debug, Default)]
pub struct DriveContents {
    /// `openstack/latest/user_data`.
    pub user_data: Option<Vec<u8>>,
    /// From `openstack/latest/meta_data.json`.
    pub attributes: Attributes,
}

/// Why a config drive could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// Mounting failed.
    #[error("mounting config drive {device}")]
    Mount {
        /// The device.
        device: PathBuf,
        /// Cause.
        #[source]
        source: crate::sysroot::SysrootError,
    },
    /// Reading its files failed.
    #[error("config drive {device}")]
    Read {
        /// The device.
        device: PathBuf,
        /// Cause.
        #[source]
        source: Box<PlatformError>,
    },
}

/// Mounts `device` read-only at `mount_point`, reads it, unmounts it.
pub fn read(device: &Path, fs: DriveFs, mount_point: &Path) -> Result<DriveContents, DriveError> {
    let _ = std::fs::create_dir_all(mount_point);
    crate::sysroot::mount(
        &device.display().to_string(),
        mount_point,
        fs.fstype(),
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )
    .map_err(|source| DriveError::Mount {
        device: device.to_path_buf(),
        source,
    })?;
    let read = || -> Result<DriveContents, PlatformError> {
        Ok(DriveContents {
            user_data: configdrive::user_data(mount_point)?,
            attributes: configdrive::attributes(mount_point)?,
        })
    };
    let result = read().map_err(|source| DriveError::Read {
        device: device.to_path_buf(),
        source: Box::new(source),
    });
    let _ = rustix::mount::unmount(mount_point, UnmountFlags::empty());
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn tool(name: &str) -> PathBuf {
        for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
            let p = Path::new(dir).join(name);
            if p.exists() {
                return p;
            }
        }
        panic!("{name} is required for this test (dosfstools / xorriso or genisoimage)");
    }

    #[test]
    fn labels_of_real_vfat_and_iso9660_images() {
        let dir = tempfile::tempdir().unwrap();
        let fat = dir.path().join("fat.img");
        std::fs::write(&fat, vec![0u8; 2 << 20]).unwrap();
        let status = Command::new(tool("mkfs.vfat"))
            .args(["-n", "CONFIG-2"])
            .arg(&fat)
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        let label = fs_label(&mut File::open(&fat).unwrap()).unwrap();
        assert_eq!(label, (DriveFs::Vfat, "CONFIG-2".to_string()));

        let tree = dir.path().join("tree/openstack/latest");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("user_data"), b"{}").unwrap();
        let iso = dir.path().join("cd.iso");
        let out = Command::new(tool("xorriso"))
            .args(["-as", "mkisofs", "-quiet", "-R", "-V", "config-2", "-o"])
            .arg(&iso)
            .arg(dir.path().join("tree"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let label = fs_label(&mut File::open(&iso).unwrap()).unwrap();
        assert_eq!(label, (DriveFs::Iso9660, "config-2".to_string()));

        let blank = dir.path().join("blank.img");
        std::fs::write(&blank, vec![0u8; 64 << 10]).unwrap();
        assert_eq!(fs_label(&mut File::open(&blank).unwrap()), None);
    }
}
