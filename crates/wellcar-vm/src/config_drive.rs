//! OpenStack-style config drives for `wellcar run --config-drive DIR`, made without root.
//!
//! Contract: [`build`] copies the tree `dir` (which holds `openstack/latest/user_data` and
//! optionally `openstack/latest/meta_data.json`) into a new FAT image labelled `CONFIG-2`
//! (FAT labels are upper case; the guest matches `config-2` and `CONFIG-2`) with `mkfs.vfat`
//! and `mcopy` (dosfstools, mtools), no mounting. The image is sized to the tree plus slack.
//! A `dir` without `openstack/latest/user_data` is refused: the drive would carry no config.

use std::path::Path;
use std::process::Command;

use wellcar_contract::PathIoError;

use crate::machine::run;
use crate::VmError;

/// The label written (the guest also accepts `config-2`).
pub const LABEL: &str = "CONFIG-2";

fn tree_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            tree_size(&entry.path())? + 4096
        } else {
            meta.len().div_ceil(4096) * 4096
        };
    }
    Ok(total)
}

/// Builds the config drive image `out` from the tree `dir`.
pub fn build(dir: &Path, out: &Path) -> Result<(), VmError> {
    let user_data = dir.join("openstack/latest/user_data");
    if !user_data.is_file() {
        return Err(VmError::Missing {
            what: "config drive user data",
            path: user_data,
            hint: "put the Ignition config at openstack/latest/user_data in the directory",
        });
    }
    let size = tree_size(dir).map_err(|source| {
        PathIoError::new("sizing config drive tree", dir.to_path_buf(), source)
    })?;
    // FAT12/16 overhead and root directory: 1 MiB of slack, whole KiB for mkfs.vfat.
    let kib = (size + (1 << 20)).div_ceil(1024);
    let _ = std::fs::remove_file(out);
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", LABEL])
        .arg(out)
        .arg(kib.to_string()))?;
    let mut mcopy = Command::new("mcopy");
    mcopy.args(["-s", "-Q", "-i"]).arg(out);
    let listing = |source| PathIoError::new("listing", dir.to_path_buf(), source);
    for entry in std::fs::read_dir(dir).map_err(listing)? {
        let entry = entry.map_err(listing)?;
        mcopy.arg(entry.path());
    }
    mcopy.arg("::/");
    run(&mut mcopy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_becomes_a_labelled_fat_image_holding_the_user_data() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("openstack/latest")).unwrap();
        let config = br#"{"ignition":{"version":"3.4.0"}}"#;
        std::fs::write(tree.join("openstack/latest/user_data"), config).unwrap();
        let image = dir.path().join("drive.img");
        build(&tree, &image).unwrap();
        // The volume label, as the guest's /init reads it (FAT boot sector).
        let bytes = std::fs::read(&image).unwrap();
        assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
        assert_eq!(&bytes[0x2b..0x36], b"CONFIG-2   ");
        let out = Command::new("mtype")
            .args(["-i"])
            .arg(&image)
            .arg("::/openstack/latest/user_data")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, config);

        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let err = build(&empty, &dir.path().join("x.img")).unwrap_err();
        assert!(err.to_string().contains("user_data"), "{err}");
    }
}
