//! The ESP layout: which file lives where on the EFI system partition, who writes it and who
//! reads it. Every crate (and the `grub.cfg` the builder generates) spells these paths through
//! this module.
//!
//! The ESP is GPT partition 1 (`EFI-SYSTEM`, `wellcar_disk::layout`), a FAT32 filesystem with
//! the volume label [`VOLUME_LABEL`]. Paths here are relative to its root, `/`-separated:
//!
//! ```text
//! EFI/BOOT/BOOTX64.EFI        EFI_LOADER         GRUB for UEFI. Written by the image builder;
//!                                                read by the firmware (the removable-media
//!                                                path, so no NVRAM boot entry is needed).
//! grub/grub.cfg               GRUB_CFG           the A/B menu. Written by the image builder;
//!                                                read by GRUB (BIOS and UEFI), whose embedded
//!                                                config finds the ESP by VOLUME_LABEL and sets
//!                                                its prefix to GRUB_DIR.
//! wellcar/vmlinuz-{a,b}       kernel(slot)       a slot's kernel; written by the image builder
//! wellcar/initrd-{a,b}        initramfs(slot)    (slot a) and the update agent (the slot it
//!                                                installs); read by GRUB when booting the slot.
//! wellcar/state-{0,1}.env     STATE_FILES        the boot state: two 512-byte GRUB environment
//!                                                blocks. Created by the image builder; written
//!                                                in place by `wellcar-bootstate` (host) and by
//!                                                GRUB (tries); read by both.
//! wellcar/first_boot          FIRST_BOOT_FLAG    written by the image builder; GRUB turns it into
//!                                                `wellcar.first_boot=detected`; the initramfs
//!                                                removes it (and FIRST_BOOT_FLAGS' legacy names)
//!                                                after provisioning succeeded.
//! ```
//!
//! The running system mounts the ESP at [`MOUNT_POINT`] (`boot.mount`, by [`VOLUME_LABEL`]).
//! A slot is named by its letter (`wellcar_disk::Slot::letter`); in `grub.cfg` the functions
//! take a GRUB variable holding the letter instead, so [`kernel`], [`initramfs`] and
//! [`state_file`] accept anything printable.

use std::fmt::Display;

/// FAT volume label of the ESP: GRUB's embedded config searches for it, `boot.mount` mounts by
/// it. The same text as the ESP's GPT partition label.
pub const VOLUME_LABEL: &str = "EFI-SYSTEM";

/// Where the running system mounts the ESP.
pub const MOUNT_POINT: &str = "/boot";

/// The UEFI removable-media boot path: GRUB's `BOOTX64.EFI`.
pub const EFI_LOADER: &str = "EFI/BOOT/BOOTX64.EFI";

/// The directory of [`EFI_LOADER`].
pub const EFI_BOOT_DIR: &str = "EFI/BOOT";

/// GRUB's prefix directory: GRUB reads `<GRUB_DIR>/grub.cfg`.
pub const GRUB_DIR: &str = "grub";

/// The generated GRUB menu.
pub const GRUB_CFG: &str = "grub/grub.cfg";

/// Wellcar's directory: kernels, initramfs images, the boot state and the first-boot flag.
pub const WELLCAR_DIR: &str = "wellcar";

/// Flatcar's directory on its ESP (`/boot/flatcar`), created empty so that Flatcar's
/// `touch /boot/flatcar/first_boot` works.
pub const FLATCAR_DIR: &str = "flatcar";

/// The directories the image builder creates, parents first.
pub const DIRECTORIES: [&str; 4] = [EFI_BOOT_DIR, GRUB_DIR, WELLCAR_DIR, FLATCAR_DIR];

/// The two copies of the boot state (`wellcar-bootstate`'s store), copy 0 first.
pub const STATE_FILES: [&str; 2] = ["wellcar/state-0.env", "wellcar/state-1.env"];

/// The first-boot flag: while it exists, GRUB passes `wellcar.first_boot=detected`.
pub const FIRST_BOOT_FLAG: &str = "wellcar/first_boot";

/// Every first-boot flag the initramfs removes after provisioning: [`FIRST_BOOT_FLAG`], then
/// Flatcar's and CoreOS's names.
pub const FIRST_BOOT_FLAGS: [&str; 3] =
    [FIRST_BOOT_FLAG, "flatcar/first_boot", "coreos/first_boot"];

/// The kernel of `slot` (its letter, `a` or `b`; in `grub.cfg` a variable such as `$1`).
pub fn kernel(slot: impl Display) -> String {
    format!("{WELLCAR_DIR}/vmlinuz-{slot}")
}

/// The initramfs of `slot` (its letter; in `grub.cfg` a variable).
pub fn initramfs(slot: impl Display) -> String {
    format!("{WELLCAR_DIR}/initrd-{slot}")
}

/// Boot state copy `copy` (0 or 1, [`STATE_FILES`]; in `grub.cfg` a variable).
pub fn state_file(copy: impl Display) -> String {
    format!("{WELLCAR_DIR}/state-{copy}.env")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_the_documented_ones() {
        assert_eq!(kernel('a'), "wellcar/vmlinuz-a");
        assert_eq!(initramfs('b'), "wellcar/initrd-b");
        assert_eq!(kernel("$1"), "wellcar/vmlinuz-$1");
        assert_eq!(state_file("$wc_copy"), "wellcar/state-$wc_copy.env");
        assert_eq!(state_file(0), STATE_FILES[0]);
        assert_eq!(state_file(1), STATE_FILES[1]);
    }

    #[test]
    fn every_file_lies_in_a_directory_the_builder_creates() {
        let files = [
            EFI_LOADER,
            GRUB_CFG,
            FIRST_BOOT_FLAG,
            STATE_FILES[0],
            STATE_FILES[1],
        ];
        for file in files
            .iter()
            .copied()
            .chain([&*kernel('a'), &*initramfs('a')])
        {
            let (dir, name) = file
                .rsplit_once('/')
                .expect("no file at the ESP's top level");
            assert!(DIRECTORIES.contains(&dir), "{file}");
            assert!(!name.is_empty() && !file.starts_with('/'), "{file}");
        }
        assert_eq!(EFI_LOADER.rsplit_once('/').unwrap().0, EFI_BOOT_DIR);
        // GRUB reads `$prefix/grub.cfg`, the prefix being GRUB_DIR.
        assert_eq!(GRUB_CFG, format!("{GRUB_DIR}/grub.cfg"));
        assert_eq!(FIRST_BOOT_FLAGS[0], FIRST_BOOT_FLAG);
        assert!(MOUNT_POINT.starts_with('/'));
    }
}
