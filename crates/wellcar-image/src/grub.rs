//! GRUB for BIOS and UEFI, installed without `grub-install`, loop devices or root.
//!
//! - BIOS: `grub-mkimage -O i386-pc` makes `core.img`, written to the start of BIOS-BOOT.
//!   Debian's `boot.img` goes into the MBR's code area (the protective MBR's partition table
//!   and signature are kept), patched with the LBA of core.img's first sector, and core.img's
//!   first sector (diskboot) gets the block list of the rest — what `grub-bios-setup` does for
//!   an embedded core.img.
//! - UEFI: `grub-mkimage -O x86_64-efi` makes `EFI/BOOT/BOOTX64.EFI`.
//!
//! Both images carry every module they need and an embedded config that finds the ESP by its
//! filesystem label `EFI-SYSTEM` and reads `/grub/grub.cfg` from it; nothing is loaded from
//! `/grub/<platform>/`.

use std::fs;
use std::path::Path;

use wellcar_contract::esp;

use crate::error::{BuildError, IoContext, Result};
use crate::tools::{self, GRUB_EFI_DIR, GRUB_MKIMAGE, GRUB_PC_DIR};

/// Modules both platforms need.
const COMMON_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "fat",
    "ext2",
    "search",
    "search_label",
    "search_fs_uuid",
    "search_fs_file",
    "normal",
    "linux",
    "echo",
    "test",
    "configfile",
    "serial",
    "terminal",
    "loadenv",
    "cat",
    "ls",
    "halt",
    "reboot",
    "gzio",
    "sleep",
    "true",
    "regexp",
];

/// The embedded config: find the ESP by its volume label, then normal mode reads
/// `$prefix/grub.cfg` ([`esp::GRUB_CFG`]).
pub fn early_config() -> String {
    format!(
        "search --no-floppy --label {} --set root\nset prefix=($root)/{}\n",
        esp::VOLUME_LABEL,
        esp::GRUB_DIR
    )
}

/// Offset of the kernel (core.img) sector in boot.img (`GRUB_BOOT_MACHINE_KERNEL_SECTOR`).
const BOOT_KERNEL_SECTOR: usize = 0x5c;
/// Offset of the boot-drive check jump in boot.img (`GRUB_BOOT_MACHINE_DRIVE_CHECK`).
const BOOT_DRIVE_CHECK: usize = 0x66;
/// Size of the MBR code area that boot.img may overwrite (the rest is the partition table).
const MBR_CODE_SIZE: usize = 440;
/// `GRUB_BOOT_I386_PC_KERNEL_SEG + 0x20`: where diskboot loads the second sector.
const CORE_SECOND_SEGMENT: u16 = 0x820;

/// Builds the BIOS core.img into `out`.
pub fn build_bios_core(work: &Path, out: &Path) -> Result<()> {
    let dir = tools::require_dir(GRUB_PC_DIR)?;
    mkimage(work, out, "i386-pc", &dir, &["biosdisk"])
}

/// Builds the UEFI `BOOTX64.EFI` into `out`.
pub fn build_efi(work: &Path, out: &Path) -> Result<()> {
    let dir = tools::require_dir(GRUB_EFI_DIR)?;
    mkimage(
        work,
        out,
        "x86_64-efi",
        &dir,
        &["efi_gop", "efi_uga", "all_video", "chain"],
    )
}

fn mkimage(work: &Path, out: &Path, format: &str, dir: &Path, extra: &[&str]) -> Result<()> {
    let early = work.join(format!("grub-early-{format}.cfg"));
    fs::write(&early, early_config()).at("writing", &early)?;
    tools::run(
        GRUB_MKIMAGE
            .command()?
            .arg("-O")
            .arg(format)
            .arg("-d")
            .arg(dir)
            .arg("-o")
            .arg(out)
            .arg("-c")
            .arg(&early)
            .arg("-p")
            .arg(format!("/{}", esp::GRUB_DIR))
            .args(COMMON_MODULES)
            .args(extra),
    )?;
    Ok(())
}

/// Patches `mbr` (the disk's first sector, holding the protective MBR) with boot.img's code and
/// `core` (core.img) with its block list, for core.img written contiguously at `core_lba`.
pub fn embed_bios(
    boot_img: &[u8],
    mbr: &mut [u8; 512],
    core: &mut [u8],
    core_lba: u64,
) -> Result<()> {
    if boot_img.len() != 512 {
        return Err(BuildError::BootImgSize {
            dir: GRUB_PC_DIR.0.into(),
            len: boot_img.len(),
        });
    }
    if core.len() < 1024 || !core.len().is_multiple_of(512) {
        return Err(BuildError::CoreImgSize { len: core.len() });
    }
    mbr[..MBR_CODE_SIZE].copy_from_slice(&boot_img[..MBR_CODE_SIZE]);
    mbr[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    // A hard disk: replace the "is this a floppy?" jump with two NOPs, as grub-bios-setup does.
    mbr[BOOT_DRIVE_CHECK] = 0x90;
    mbr[BOOT_DRIVE_CHECK + 1] = 0x90;
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let sectors = (core.len() / 512) as u64;
    let rest = u16::try_from(sectors - 1).map_err(|_| BuildError::CoreImgSectors { sectors })?;
    // Block list entries (start u64, len u16, segment u16) grow downwards from the end of the
    // first sector; one entry for the contiguous rest, then a zero terminator.
    let first = 512 - 12;
    core[first..first + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[first + 8..first + 10].copy_from_slice(&rest.to_le_bytes());
    core[first + 10..first + 12].copy_from_slice(&CORE_SECOND_SEGMENT.to_le_bytes());
    core[first - 12..first].fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_patches_sector_and_blocklist_but_keeps_partition_table() {
        let boot: Vec<u8> = (0..512).map(|i| (i % 251) as u8).collect();
        let mut mbr = [0u8; 512];
        mbr[446..462].copy_from_slice(&[0xee; 16]);
        let mut core = vec![0xaau8; 512 * 40];
        embed_bios(&boot, &mut mbr, &mut core, 4096).unwrap();
        assert_eq!(&mbr[..0x5c], &boot[..0x5c]);
        assert_eq!(
            u64::from_le_bytes(mbr[0x5c..0x64].try_into().unwrap()),
            4096
        );
        assert_eq!(&mbr[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(&mbr[446..462], &[0xee; 16], "partition table kept");
        assert_eq!(&mbr[510..], &[0x55, 0xaa]);
        assert_eq!(u64::from_le_bytes(core[500..508].try_into().unwrap()), 4097);
        assert_eq!(u16::from_le_bytes(core[508..510].try_into().unwrap()), 39);
        assert_eq!(
            u16::from_le_bytes(core[510..512].try_into().unwrap()),
            0x820
        );
        assert!(core[488..500].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_embedded_config_finds_the_esp_and_its_grub_cfg() {
        assert_eq!(
            early_config(),
            "search --no-floppy --label EFI-SYSTEM --set root\nset prefix=($root)/grub\n"
        );
        assert_eq!(esp::GRUB_CFG, format!("{}/grub.cfg", esp::GRUB_DIR));
    }

    #[test]
    fn odd_sized_core_is_rejected() {
        let mut mbr = [0u8; 512];
        let err = embed_bios(&[0; 512], &mut mbr, &mut [0; 700], 1).unwrap_err();
        assert!(
            matches!(err, BuildError::CoreImgSize { len: 700 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("700 bytes"), "{err}");
        let err = embed_bios(&[0; 511], &mut mbr, &mut [0; 1024], 1).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("GRUB's boot.img (/usr/lib/grub/i386-pc) is 511 bytes"),
            "{err}"
        );
    }
}
