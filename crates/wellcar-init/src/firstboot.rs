//! First-boot provisioning inputs and the first-boot flag.
//!
//! Contract:
//! - [`fw_cfg_config`] returns the Ignition config QEMU passes over fw_cfg, trying
//!   `opt/org.flatcar-linux/config` then `opt/com.coreos/config` (Flatcar's names), or `None`.
//! - [`oem_config`] mounts the OEM partition read-only, reads `config.ign` if there is one and
//!   unmounts it again. An OEM partition without a filesystem is "no config"; any other
//!   mount failure is an error, so a config the user put there is never silently ignored.
//! - [`remove_flag`] deletes the first-boot flag file(s) on the ESP and syncs the directory;
//!   it is called only after every first-boot step succeeded. A flag that is already gone is
//!   not an error (nothing would re-run Ignition); any other failure is.

use std::path::Path;
use wellcar_contract::PathIoError;

use rustix::mount::{MountFlags, UnmountFlags};
use wellcar_contract::esp;

use crate::sysroot;

/// fw_cfg entries carrying an Ignition config, in order of preference.
pub const FW_CFG_NAMES: [&str; 2] = ["opt/org.flatcar-linux/config", "opt/com.coreos/config"];

/// Reading a config or touching the flag failed.
#[derive(Debug, thiserror::Error)]
pub enum FirstBootError {
    /// An I/O operation on a path failed.
    #[error(transparent)]
    Io(#[from] PathIoError),
    /// Mounting a partition failed.
    #[error(transparent)]
    Mount(#[from] sysroot::SysrootError),
}

/// Where a config came from, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundConfig {
    /// File it was read from (fw_cfg path or `config.ign` on the OEM partition).
    pub source: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Reads the fw_cfg config under `by_name` (`/sys/firmware/qemu_fw_cfg/by_name`).
pub fn fw_cfg_config(by_name: &Path) -> Result<Option<FoundConfig>, FirstBootError> {
    for name in FW_CFG_NAMES {
        let path = by_name.join(name).join("raw");
        match std::fs::read(&path) {
            Ok(bytes) => {
                return Ok(Some(FoundConfig {
                    source: path.display().to_string(),
                    bytes,
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(FirstBootError::Io(PathIoError::new(
                    "reading", path, source,
                )))
            }
        }
    }
    Ok(None)
}

/// Mounts `device` (of type `fstype`) at `mount_point`, creating the directory.
fn mount_at(
    device: &Path,
    mount_point: &Path,
    fstype: &str,
    flags: MountFlags,
) -> Result<(), FirstBootError> {
    std::fs::create_dir_all(mount_point).map_err(|source| {
        FirstBootError::Io(PathIoError::new(
            "creating",
            mount_point.to_path_buf(),
            source,
        ))
    })?;
    sysroot::mount(
        &device.display().to_string(),
        mount_point,
        fstype,
        flags,
        "",
    )?;
    Ok(())
}

/// Reads `config.ign` from the OEM partition `device` (ext4), mounted read-only at `mount_point`.
pub fn oem_config(
    device: &Path,
    mount_point: &Path,
) -> Result<Option<FoundConfig>, FirstBootError> {
    oem_file(device, mount_point, "config.ign")
}

/// Reads file `name` from the OEM partition `device` (ext4), mounted read-only at
/// `mount_point`; `None` when the partition has no filesystem or no such file.
pub fn oem_file(
    device: &Path,
    mount_point: &Path,
    name: &str,
) -> Result<Option<FoundConfig>, FirstBootError> {
    if crate::disk::ext4_identity(device).is_none() {
        return Ok(None);
    }
    mount_at(
        device,
        mount_point,
        "ext4",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
    )?;
    let path = mount_point.join(name);
    let result = match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(FoundConfig {
            source: format!("{name} on {}", device.display()),
            bytes,
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FirstBootError::Io(PathIoError::new(
            "reading", path, source,
        ))),
    };
    let _ = rustix::mount::unmount(mount_point, UnmountFlags::empty());
    result
}

/// Removes the flag files ([`esp::FIRST_BOOT_FLAGS`]) under the mounted ESP at `esp_root`;
/// returns those removed.
pub fn remove_flag_files(esp_root: &Path) -> Result<Vec<String>, FirstBootError> {
    let mut removed = Vec::new();
    for name in esp::FIRST_BOOT_FLAGS {
        let path = esp_root.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                removed.push(name.to_string());
                let dir = path.parent().unwrap_or(esp_root);
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|source| {
                        FirstBootError::Io(PathIoError::new("syncing", dir.to_path_buf(), source))
                    })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(FirstBootError::Io(PathIoError::new(
                    "removing", path, source,
                )))
            }
        }
    }
    Ok(removed)
}

/// Mounts the ESP `device` (vfat) at `mount_point`, removes the flag, unmounts.
pub fn remove_flag(device: &Path, mount_point: &Path) -> Result<Vec<String>, FirstBootError> {
    mount_at(
        device,
        mount_point,
        "vfat",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
    )?;
    let result = remove_flag_files(mount_point);
    let unmounted = rustix::mount::unmount(mount_point, UnmountFlags::empty());
    let removed = result?;
    unmounted.map_err(|e| {
        FirstBootError::Io(PathIoError::new(
            "unmounting",
            mount_point.to_path_buf(),
            e.into(),
        ))
    })?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatcar_fw_cfg_name_wins_over_coreos() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(fw_cfg_config(dir.path()).unwrap(), None);
        let coreos = dir.path().join("opt/com.coreos/config");
        std::fs::create_dir_all(&coreos).unwrap();
        std::fs::write(coreos.join("raw"), b"{\"coreos\":1}").unwrap();
        let found = fw_cfg_config(dir.path()).unwrap().unwrap();
        assert_eq!(found.bytes, b"{\"coreos\":1}");
        let flatcar = dir.path().join("opt/org.flatcar-linux/config");
        std::fs::create_dir_all(&flatcar).unwrap();
        std::fs::write(flatcar.join("raw"), b"{\"flatcar\":1}").unwrap();
        let found = fw_cfg_config(dir.path()).unwrap().unwrap();
        assert_eq!(found.bytes, b"{\"flatcar\":1}");
        assert!(found.source.ends_with("opt/org.flatcar-linux/config/raw"));
    }

    #[test]
    fn flag_files_are_removed_and_absence_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("wellcar")).unwrap();
        std::fs::write(dir.path().join("wellcar/first_boot"), b"").unwrap();
        assert_eq!(
            remove_flag_files(dir.path()).unwrap(),
            ["wellcar/first_boot"]
        );
        assert!(!dir.path().join("wellcar/first_boot").exists());
        assert!(remove_flag_files(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn unformatted_oem_partition_means_no_config() {
        let dir = tempfile::tempdir().unwrap();
        let blank = dir.path().join("oem.img");
        std::fs::write(&blank, vec![0u8; 4096]).unwrap();
        assert_eq!(oem_config(&blank, &dir.path().join("mnt")).unwrap(), None);
    }
}
