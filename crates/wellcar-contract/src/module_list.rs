//! The initramfs module load list: which kernel modules the initramfs carries, the file that
//! tells `/init` how to load them, and when `/init` loads which.
//!
//! Contract: `wellcar-initramfs` (the builder) resolves [`WANTED`] plus dependencies against the
//! image's kernel and writes [`LOAD_LIST`] into the archive, one [`ListedModule`] per line,
//! dependencies first: the module's absolute path inside the initramfs, then the names
//! ([`module_name`]) of the *listed* modules it depends on, separated by single spaces.
//! `wellcar-init` (`/init`) reads that file and loads every line with `finit_module`: on every
//! boot all but [`FIRST_BOOT_ONLY`] and [`SCSI_FALLBACK`], on first boot also
//! [`FIRST_BOOT_ONLY`], and [`SCSI_FALLBACK`] only when the boot disk does not show up without
//! them. A name a kernel lacks is skipped by the builder, so the lists may name modules some
//! kernels build in.
//!
//! Modules for Ignition's storage section are *not* carried: when a first-boot config has
//! `luks`, `raid` or xfs/btrfs filesystems, `/init` loads [`LUKS_ON_DEMAND`],
//! [`raid_level_module`] and [`filesystem_module`] from the verity `/usr` (`modprobe` and the
//! image's `modules.dep`), and the kernel's own requests (ciphers for dm-crypt) go to the same
//! `/sbin/modprobe`. They cost the initramfs nothing.

use std::fmt;

/// Where `/init` reads the load list (inside the initramfs).
pub const LOAD_LIST: &str = "/etc/wellcar-init/modules.load";

/// Modules a Wellcar boot needs: disks (virtio, SCSI, NVMe, AHCI), device-mapper verity,
/// the filesystems (EROFS /usr, ext4 ROOT and OEM, overlay /etc, vfat ESP), QEMU's fw_cfg
/// for Ignition configs, and the virtio NIC. Names a kernel does not have are skipped.
///
/// `virtio_net` is here so the NIC exists before udev starts: udev's coldplug handles the
/// `net` subsystem first and networkd configures it at once. Left to udev, the module is
/// loaded only when the coldplug queue reaches the virtio device, behind several hundred
/// events (65 ttys among them), which delayed DHCP by about 4 s on every boot under TCG.
pub const WANTED: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "nvme",
    "ahci",
    "dm_mod",
    "dm_verity",
    // SSSE3/AVX2/SHA-NI sha256 for dm-verity (the built-in one is plain C).
    "sha256_ssse3",
    "erofs",
    "ext4",
    "overlay",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    // vfat's default iocharset (ascii) and its utf8 option need these at mount time.
    "nls_ascii",
    "nls_utf8",
    "qemu_fw_cfg",
    "virtio_net",
    // First boot on OpenStack: an iso9660 config drive (a FAT one needs only vfat).
    "isofs",
    // The live system's /usr image (ISO, PXE), see `LIVE_ONLY`.
    "loop",
];

/// Modules `/init` loads only on first boot (vfat for the ESP's first-boot flag and FAT config
/// drives, fw_cfg for the Ignition config, iso9660 config drives; after switch root udev loads
/// what the machine has). A module here must not depend on one loaded only later
/// ([`SCSI_FALLBACK`]): a CD-ROM config drive (`sr_mod`) needs the SCSI stack first.
pub const FIRST_BOOT_ONLY: &[&str] = &[
    "fat",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_ascii",
    "nls_utf8",
    "qemu_fw_cfg",
    "isofs",
];

/// Modules `/init` loads only for the live system (`wellcar.live`, see [`crate::live`]): the
/// loop device its `/usr` image is read through. A live boot also loads [`FIRST_BOOT_ONLY`]:
/// it provisions on every boot.
pub const LIVE_ONLY: &[&str] = &["loop"];

/// Modules for SCSI disks (virtio-scsi, SATA through libata), loaded only when the boot disk
/// does not show up without them.
pub const SCSI_FALLBACK: &[&str] = &["scsi_common", "scsi_mod", "virtio_scsi", "sd_mod"];

/// Modules a LUKS volume needs at provisioning, loaded from `/usr` (not carried): dm-crypt and
/// the XTS mode of LUKS2's default cipher (`aes-xts-plain64`); the AES implementation itself
/// is requested by the kernel when the mapping is made.
pub const LUKS_ON_DEMAND: &[&str] = &["dm_crypt", "xts"];

/// The md personality module for an Ignition `raid.level` (`md_mod` comes with it), loaded from
/// `/usr` at provisioning; `None` for a level Ignition does not accept.
pub fn raid_level_module(level: &str) -> Option<&'static str> {
    Some(match level {
        "linear" => "linear",
        "raid0" | "0" | "stripe" => "raid0",
        "raid1" | "1" | "mirror" => "raid1",
        "raid4" | "4" | "raid5" | "5" | "raid6" | "6" => "raid456",
        "raid10" | "10" => "raid10",
        _ => return None,
    })
}

/// The module for an Ignition filesystem `format` that the initramfs does not carry (xfs,
/// btrfs), loaded from `/usr` at provisioning; `None` for one it carries or one with no module.
pub fn filesystem_module(format: &str) -> Option<&'static str> {
    match format {
        "xfs" => Some("xfs"),
        "btrfs" => Some("btrfs"),
        _ => None,
    }
}

/// Kernel module name of a module path or name: the file name up to `.ko`, `-` as `_`
/// (`.../nls_iso8859-1.ko.xz` and `nls_iso8859-1` are both `nls_iso8859_1`).
pub fn module_name(path_or_name: &str) -> String {
    let file = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let stem = file.find(".ko").map_or(file, |i| &file[..i]);
    stem.replace('-', "_")
}

/// One line of the load list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedModule {
    /// Absolute path of the module file inside the initramfs.
    pub path: String,
    /// Its module name ([`module_name`] of the path).
    pub name: String,
    /// Names of listed modules it needs loaded first.
    pub depends: Vec<String>,
}

impl ListedModule {
    /// The line for the module at `path` needing `depends`.
    pub fn new(path: impl Into<String>, depends: Vec<String>) -> Self {
        let path = path.into();
        ListedModule {
            name: module_name(&path),
            path,
            depends,
        }
    }

    /// Parses one line; `None` for a blank one.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let path = words.next()?;
        Some(Self::new(path, words.map(str::to_owned).collect()))
    }
}

impl fmt::Display for ListedModule {
    /// The line, without its line ending.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)?;
        for dep in &self.depends {
            write!(f, " {dep}")?;
        }
        Ok(())
    }
}

/// Every module of a load list, in file order.
pub fn parse(text: &str) -> impl Iterator<Item = ListedModule> + '_ {
    text.lines().filter_map(ListedModule::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let m = ListedModule::new(
            "/usr/lib/modules/6.1/kernel/fs/nls/nls_iso8859-1.ko",
            vec!["nls_base".into()],
        );
        assert_eq!(m.name, "nls_iso8859_1");
        let line = m.to_string();
        assert_eq!(
            line,
            "/usr/lib/modules/6.1/kernel/fs/nls/nls_iso8859-1.ko nls_base"
        );
        assert_eq!(ListedModule::parse(&line), Some(m.clone()));
        let text = format!("{line}\n\n/m/dm-mod.ko\n");
        let all: Vec<ListedModule> = parse(&text).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], m);
        assert_eq!((all[1].name.as_str(), all[1].depends.len()), ("dm_mod", 0));
    }

    #[test]
    fn storage_modules_are_named_as_the_kernel_names_them_and_are_not_carried() {
        for level in ["raid0", "1", "mirror", "raid5", "6", "raid10", "linear"] {
            let module = raid_level_module(level).unwrap();
            assert_eq!(module_name(module), module);
            assert!(!WANTED.contains(&module), "{module}");
        }
        assert_eq!(raid_level_module("raid1"), Some("raid1"));
        assert_eq!(raid_level_module("raid6"), Some("raid456"));
        assert_eq!(raid_level_module("raid7"), None);
        assert_eq!(filesystem_module("btrfs"), Some("btrfs"));
        assert_eq!(filesystem_module("ext4"), None);
        for module in LUKS_ON_DEMAND {
            assert!(!WANTED.contains(module), "{module}");
        }
    }

    #[test]
    fn names_are_kernel_module_names() {
        assert_eq!(
            module_name("kernel/fs/nls/nls_iso8859-1.ko.xz"),
            "nls_iso8859_1"
        );
        assert_eq!(module_name("dm-verity"), "dm_verity");
        assert_eq!(module_name("/m/virtio_blk.ko"), "virtio_blk");
    }

    /// The pass lists name modules the builder carries: wanted ones, or the dependencies of
    /// wanted ones named here. A misspelt or dropped name would leave a module loading in the
    /// wrong pass.
    #[test]
    fn the_pass_lists_name_carried_modules() {
        let dependencies = ["fat", "scsi_common", "scsi_mod"];
        for name in FIRST_BOOT_ONLY.iter().chain(SCSI_FALLBACK) {
            assert!(
                WANTED.contains(name) || dependencies.contains(name),
                "{name} is neither wanted nor a known dependency"
            );
            assert_eq!(&module_name(name), name);
        }
        assert!(WANTED.iter().all(|n| module_name(n) == *n));
        assert!(LOAD_LIST.starts_with('/'));
    }
}
