//! First-boot support for Ignition's storage and kernel-argument sections.
//!
//! Contract:
//! - [`apply_kernel_arguments`] mounts the OEM partition (ext4) read-write, edits its
//!   `grub.cfg` with [`wellcar_ignition::kargs::edit_grub_cfg`] (the file is replaced atomically
//!   and synced), unmounts it and says whether it changed. The caller then reboots once; the
//!   first-boot flag is still on the ESP, so the next boot provisions again, finds nothing to
//!   change and goes on with the kernel arguments in effect.
//! - [`link_usr_tools`] makes the storage tools of the verity `/usr` (mkfs.*, mkswap, wipefs,
//!   blkid, partx, mount, cryptsetup, mdadm) runnable from the initramfs without carrying them:
//!   the sysroot's `/usr` tree is merged into the initramfs's by symlinks (entries the initramfs
//!   already has stay), `/lib`, `/lib64`, `/bin`, `/sbin` point into `/usr` as on a merged-/usr
//!   system, so the dynamic loader and libraries resolve, `PATH` is set when absent and a
//!   `/tmp` (1777) is made when absent (cryptsetup's key file, the tools' scratch). The
//!   initramfs grows by nothing; the links go with it at switch-root. The merge reaches every
//!   module file below `/usr/lib/modules/<kver>` (and the image's `modules.dep`), so `modprobe`
//!   from `/usr` and the kernel's own module requests (`/sbin/modprobe`, e.g. a cipher for
//!   dm-crypt) find the image's whole module tree.
//! - [`storage_modules`] names the kernel modules a config's storage section needs that the
//!   initramfs does not carry (`wellcar_contract::module_list`: dm-crypt for `luks`, the md
//!   personality of each `raid` level, xfs/btrfs); [`load_modules`] loads them with `modprobe`
//!   from `/usr` after [`link_usr_tools`].
//! - [`close_volumes`] closes, after a successful apply, the LUKS mappings and md arrays
//!   Ignition made (LUKS first, then RAID: the reverse of their creation). The initramfs has no
//!   udev, so a device it left active would have no udev record in the booted system: its
//!   coldplug `add` event is not processed by the device-mapper rules and systemd never sees
//!   `dev-mapper-NAME.device` (the boot then waits forever on the crypttab device). Closed, they
//!   are opened at every boot, the first included, by systemd-cryptsetup from `/etc/crypttab`
//!   and udev's mdadm rules from `/etc/mdadm/mdadm.conf`.

use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};
use wellcar_contract::command::CommandError;
use wellcar_contract::module_list::{filesystem_module, raid_level_module, LUKS_ON_DEMAND};
use wellcar_contract::PathIoError;
use wellcar_ignition::kargs::{edit_grub_cfg, KargsError};
use wellcar_ignition::model::{KernelArguments, Storage};

/// How deep [`link_usr_tools`] merges directories that exist on both sides: deep enough for
/// the module tree the initramfs shares with `/usr`
/// (`usr/lib/modules/<kver>/kernel/arch/x86/crypto/<module>.ko` is 8 levels below the root).
const MERGE_DEPTH: usize = 8;

/// Why the storage support failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageStageError {
    /// An I/O operation on a path failed.
    #[error(transparent)]
    Io(#[from] PathIoError),
    /// Mounting the OEM partition failed.
    #[error(transparent)]
    Mount(#[from] crate::sysroot::SysrootError),
    /// The OEM partition holds no ext4 filesystem, so there is no grub.cfg to edit.
    #[error("kernelArguments: the OEM partition {0} holds no ext4 filesystem to keep grub.cfg on")]
    NoOemFilesystem(PathBuf),
    /// An argument cannot be written.
    #[error(transparent)]
    Kargs(#[from] KargsError),
    /// A LUKS mapping or md array could not be closed after provisioning.
    #[error("closing {volume} after provisioning, for the booted system to open it")]
    Close {
        /// The mapping name or array device.
        volume: String,
        /// The tool's failure.
        #[source]
        source: CommandError,
    },
    /// `modprobe` could not load the storage modules.
    #[error("loading kernel modules {modules:?} from /usr for the storage section")]
    Modules {
        /// The modules asked for.
        modules: Vec<&'static str>,
        /// modprobe's failure.
        #[source]
        source: CommandError,
    },
}

/// The kernel modules `storage` needs beyond those the initramfs carries, without repeats:
/// dm-crypt (and XTS) for `luks`, `md_mod` and each `raid` level's personality, and the
/// modules of xfs/btrfs filesystems. Empty when the section needs none.
pub fn storage_modules(storage: &Storage) -> Vec<&'static str> {
    let mut modules = Vec::new();
    if !storage.luks.is_empty() {
        modules.extend_from_slice(LUKS_ON_DEMAND);
    }
    if !storage.raid.is_empty() {
        modules.push("md_mod");
    }
    modules.extend(
        storage
            .raid
            .iter()
            .filter_map(|r| raid_level_module(r.level.as_deref()?)),
    );
    modules.extend(
        storage
            .filesystems
            .iter()
            .filter_map(|f| filesystem_module(f.format.as_deref()?)),
    );
    let mut seen = std::collections::HashSet::new();
    modules.retain(|m| seen.insert(*m));
    modules
}

/// Closes `storage`'s LUKS mappings (`cryptsetup close NAME`), then stops its md arrays
/// (`mdadm --stop /dev/md/NAME`), so the booted system opens and assembles them itself.
pub fn close_volumes(storage: &Storage) -> Result<(), StorageStageError> {
    for luks in &storage.luks {
        wellcar_contract::command::run(
            std::process::Command::new("cryptsetup")
                .arg("close")
                .arg(&luks.name),
        )
        .map_err(|source| StorageStageError::Close {
            volume: luks.name.clone(),
            source,
        })?;
    }
    for raid in &storage.raid {
        let device = if raid.name.starts_with('/') {
            raid.name.clone()
        } else {
            format!("/dev/md/{}", raid.name)
        };
        wellcar_contract::command::run(
            std::process::Command::new("mdadm")
                .arg("--stop")
                .arg(&device),
        )
        .map_err(|source| StorageStageError::Close {
            volume: device.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Loads `modules` with `modprobe -a` (from `/usr`, after [`link_usr_tools`]); nothing to do
/// for an empty list.
pub fn load_modules(modules: &[&'static str]) -> Result<(), StorageStageError> {
    if modules.is_empty() {
        return Ok(());
    }
    wellcar_contract::command::run(
        std::process::Command::new("modprobe")
            .arg("-a")
            .args(modules),
    )
    .map_err(|source| StorageStageError::Modules {
        modules: modules.to_vec(),
        source,
    })?;
    Ok(())
}

/// Applies `args` to `grub.cfg` on the OEM partition `device`; `true` when it changed.
pub fn apply_kernel_arguments(
    device: &Path,
    mount_point: &Path,
    args: &KernelArguments,
) -> Result<bool, StorageStageError> {
    if crate::disk::ext4_identity(device).is_none() {
        return Err(StorageStageError::NoOemFilesystem(device.to_path_buf()));
    }
    std::fs::create_dir_all(mount_point)
        .map_err(|source| PathIoError::new("creating", mount_point.to_path_buf(), source))?;
    crate::sysroot::mount(
        &device.display().to_string(),
        mount_point,
        "ext4",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )?;
    let result = edit_in_place(&mount_point.join("grub.cfg"), args);
    let _ = rustix::mount::unmount(mount_point, UnmountFlags::empty());
    result
}

/// Edits the `grub.cfg` at `path` (missing = empty); `true` when it changed.
pub fn edit_in_place(path: &Path, args: &KernelArguments) -> Result<bool, StorageStageError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(PathIoError::new("reading", path.to_path_buf(), source).into()),
    };
    let edit = edit_grub_cfg(&text, args)?;
    if edit.reboot_needed {
        wellcar_contract::atomic_file::write(path, edit.text.as_bytes(), 0o644)
            .map_err(|source| PathIoError::new("writing", path.to_path_buf(), source))?;
    }
    Ok(edit.reboot_needed)
}

fn merge(dst: &Path, src: &Path, depth: usize) -> Result<(), StorageStageError> {
    match std::fs::symlink_metadata(dst) {
        Err(_) => std::os::unix::fs::symlink(src, dst)
            .map_err(|source| PathIoError::new("linking", dst.to_path_buf(), source).into()),
        Ok(meta) if meta.is_dir() && src.is_dir() && depth > 0 => {
            let entries = std::fs::read_dir(src)
                .map_err(|source| PathIoError::new("listing", src.to_path_buf(), source))?;
            for entry in entries.flatten() {
                merge(&dst.join(entry.file_name()), &entry.path(), depth - 1)?;
            }
            Ok(())
        }
        Ok(_) => Ok(()),
    }
}

/// Makes `sysroot`'s `/usr` tools runnable from the initramfs rooted at `initramfs_root`.
pub fn link_usr_tools(initramfs_root: &Path, sysroot: &Path) -> Result<(), StorageStageError> {
    let usr = initramfs_root.join("usr");
    if !usr.exists() {
        std::fs::create_dir_all(&usr)
            .map_err(|source| PathIoError::new("creating", usr.clone(), source))?;
    }
    merge(&usr, &sysroot.join("usr"), MERGE_DEPTH)?;
    for name in ["lib", "lib64", "bin", "sbin"] {
        merge(
            &initramfs_root.join(name),
            Path::new(&format!("usr/{name}")),
            0,
        )?;
    }
    if std::env::var_os("PATH").is_none() {
        std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    }
    // The tools and the LUKS stage's transient key file want a /tmp; the initramfs has none.
    // It lives in the initramfs's RAM and goes with it at switch-root.
    let tmp = initramfs_root.join("tmp");
    if std::fs::symlink_metadata(&tmp).is_err() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o1777)
            .create(&tmp)
            .map_err(|source| PathIoError::new("creating", tmp.clone(), source))?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .map_err(|source| PathIoError::new("setting the mode of", tmp.clone(), source))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_arguments_are_written_once_and_the_second_boot_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("grub.cfg");
        std::fs::write(
            &cfg,
            "set oem_id=\"qemu\"\nset linux_append=\"wellcar.autologin\"\n",
        )
        .unwrap();
        let args = KernelArguments {
            should_exist: vec!["nosmt".into()],
            should_not_exist: vec!["wellcar.autologin".into()],
        };
        assert!(edit_in_place(&cfg, &args).unwrap());
        assert_eq!(
            std::fs::read_to_string(&cfg).unwrap(),
            "set oem_id=\"qemu\"\nset linux_append=\"nosmt\"\n"
        );
        assert!(!edit_in_place(&cfg, &args).unwrap());
        let bad = KernelArguments {
            should_exist: vec!["x\"y".into()],
            ..Default::default()
        };
        assert!(matches!(
            edit_in_place(&cfg, &bad),
            Err(StorageStageError::Kargs(_))
        ));
        assert_eq!(
            std::fs::read_to_string(&cfg).unwrap(),
            "set oem_id=\"qemu\"\nset linux_append=\"nosmt\"\n"
        );
    }

    #[test]
    fn storage_modules_follow_the_config_and_are_named_once() {
        let config = serde_json::json!({
                "ignition": {"version": "3.4.0"},
                "storage": {
                    "luks": [{"name": "secret", "device": "/dev/vdb2"}],
                    "raid": [
                        {"name": "a", "level": "raid1", "devices": ["/dev/vdc", "/dev/vdd"]},
                        {"name": "b", "level": "mirror", "devices": ["/dev/vde", "/dev/vdf"]},
                        {"name": "c", "level": "raid5", "devices": ["/dev/vdg", "/dev/vdh", "/dev/vdi"]}
                    ],
                    "filesystems": [
                        {"device": "/dev/md/a", "format": "xfs"},
                        {"device": "/dev/vdb1", "format": "ext4"}
                    ]
                }
        });
        let storage = wellcar_ignition::parse_config(config.to_string().as_bytes())
            .unwrap()
            .config
            .storage;
        assert_eq!(
            storage_modules(&storage),
            ["dm_crypt", "xts", "md_mod", "raid1", "raid456", "xfs"]
        );
        assert!(storage_modules(&Storage::default()).is_empty());
        // Nothing to load runs nothing (no modprobe on this machine is needed for that).
        load_modules(&[]).unwrap();
    }

    #[test]
    fn closing_a_volume_that_is_not_open_names_it_and_stops_there() {
        let config = serde_json::json!({
            "ignition": {"version": "3.4.0"},
            "storage": {
                "luks": [{"name": "wellcar-test-not-open", "device": "/dev/vdb2"}],
                "raid": [{"name": "data", "level": "raid1", "devices": ["/dev/vdc", "/dev/vdd"]}]
            }
        });
        let storage = wellcar_ignition::parse_config(config.to_string().as_bytes())
            .unwrap()
            .config
            .storage;
        let err = close_volumes(&storage).unwrap_err();
        assert!(
            matches!(&err, StorageStageError::Close { volume, .. } if volume == "wellcar-test-not-open"),
            "{err:?}"
        );
        close_volumes(&Storage::default()).unwrap();
    }

    #[test]
    fn the_sysroot_usr_is_merged_into_the_initramfs_without_replacing_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let initramfs = dir.path().join("initramfs");
        let sysroot = dir.path().join("sysroot");
        std::fs::create_dir_all(initramfs.join("usr/lib/modules/6.1")).unwrap();
        std::fs::create_dir_all(sysroot.join("usr/lib/modules/6.1")).unwrap();
        std::fs::create_dir_all(sysroot.join("usr/lib/x86_64-linux-gnu")).unwrap();
        std::fs::create_dir_all(sysroot.join("usr/sbin")).unwrap();
        std::fs::write(sysroot.join("usr/sbin/mkfs.ext4"), "elf").unwrap();
        std::fs::write(sysroot.join("usr/lib/x86_64-linux-gnu/libc.so.6"), "lib").unwrap();
        std::fs::write(initramfs.join("usr/lib/modules/6.1/erofs.ko"), "ko").unwrap();
        // A module directory both sides have, down to the deepest module path.
        let crypto = "usr/lib/modules/6.1/kernel/arch/x86/crypto";
        std::fs::create_dir_all(initramfs.join(crypto)).unwrap();
        std::fs::create_dir_all(sysroot.join(crypto)).unwrap();
        std::fs::write(sysroot.join(crypto).join("aesni-intel.ko"), "aes").unwrap();
        std::fs::write(sysroot.join("usr/lib/modules/6.1/modules.dep"), "dep").unwrap();
        link_usr_tools(&initramfs, &sysroot).unwrap();
        assert_eq!(
            std::fs::read_to_string(initramfs.join(crypto).join("aesni-intel.ko")).unwrap(),
            "aes"
        );
        assert_eq!(
            std::fs::read_to_string(initramfs.join("lib/modules/6.1/modules.dep")).unwrap(),
            "dep"
        );
        assert_eq!(
            std::fs::read_to_string(initramfs.join("usr/sbin/mkfs.ext4")).unwrap(),
            "elf"
        );
        assert_eq!(
            std::fs::read_to_string(initramfs.join("lib/x86_64-linux-gnu/libc.so.6")).unwrap(),
            "lib"
        );
        assert_eq!(
            std::fs::read_link(initramfs.join("sbin")).unwrap(),
            Path::new("usr/sbin")
        );
        assert!(
            !initramfs.join("usr/lib").is_symlink(),
            "the initramfs's own /usr/lib was replaced"
        );
        assert_eq!(
            std::fs::read_to_string(initramfs.join("usr/lib/modules/6.1/erofs.ko")).unwrap(),
            "ko"
        );
        use std::os::unix::fs::PermissionsExt;
        let tmp = std::fs::metadata(initramfs.join("tmp")).unwrap();
        assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
        // A second call (second boot, or a retry) is harmless.
        link_usr_tools(&initramfs, &sysroot).unwrap();
    }
}
