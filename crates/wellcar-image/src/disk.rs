//! Assembles the GPT disk image from partition images, without loop devices or mounts.
//!
//! The raw image is sparse: only written chunks take space. USR-B stays empty (zeros) until the
//! first update. The qcow2 image is converted from the raw one by `qemu-img`.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use wellcar_disk::{gpt::minimum_disk_size, PartitionLocation, SECTOR_SIZE};

use crate::error::{BuildError, IoContext, Result};
use crate::grub;
use crate::tools::{self, GRUB_PC_DIR, QEMU_IMG};
use crate::usr_image::sparse_copy;

/// Partition images to place, by GPT label.
#[derive(Debug)]
pub struct DiskContents<'a> {
    /// EFI-SYSTEM (FAT32).
    pub esp: &'a Path,
    /// GRUB's BIOS core.img for BIOS-BOOT.
    pub bios_core: &'a Path,
    /// USR-A's slot image.
    pub usr_a: &'a Path,
    /// OEM (ext4).
    pub oem: &'a Path,
    /// ROOT (ext4); must be the size of partition 9.
    pub root: &'a Path,
}

/// Size of the built raw image.
pub fn image_size() -> u64 {
    minimum_disk_size()
}

/// Writes the raw disk image and returns the partition table it wrote.
pub fn assemble(c: &DiskContents<'_>, out: &Path) -> Result<Vec<PartitionLocation>> {
    let _ = fs::remove_file(out);
    let mut disk = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(out)
        .at("creating", out)?;
    let size = image_size();
    disk.set_len(size).at("sizing", out)?;
    let parts = wellcar_disk::write_layout(&mut disk, size, out)?;
    let part = |label: &str| {
        parts
            .iter()
            .find(|p| p.label == label)
            .expect("layout has every label")
    };

    for (label, image) in [
        ("EFI-SYSTEM", c.esp),
        ("USR-A", c.usr_a),
        ("OEM", c.oem),
        ("ROOT", c.root),
    ] {
        place(&mut disk, out, part(label), image)?;
    }

    // GRUB for BIOS: core.img at the start of BIOS-BOOT, boot.img in the MBR.
    let bios = part("BIOS-BOOT");
    let mut core = fs::read(c.bios_core).at("reading", c.bios_core)?;
    core.resize(core.len().div_ceil(512) * 512, 0);
    if core.len() as u64 > bios.size {
        return Err(BuildError::PartitionTooSmall {
            image: c.bios_core.into(),
            len: core.len() as u64,
            number: bios.number,
            label: bios.label.clone(),
            capacity: bios.size,
        });
    }
    let boot_img_path = PathBuf::from(GRUB_PC_DIR.0).join("boot.img");
    let boot_img = fs::read(&boot_img_path).at("reading", &boot_img_path)?;
    let mut mbr = [0u8; 512];
    disk.seek(SeekFrom::Start(0)).at("seeking", out)?;
    disk.read_exact(&mut mbr).at("reading MBR of", out)?;
    grub::embed_bios(&boot_img, &mut mbr, &mut core, bios.offset / SECTOR_SIZE)?;
    disk.seek(SeekFrom::Start(0)).at("seeking", out)?;
    disk.write_all(&mbr).at("writing MBR of", out)?;
    disk.seek(SeekFrom::Start(bios.offset)).at("seeking", out)?;
    disk.write_all(&core).at("writing core.img into", out)?;
    disk.sync_all().at("syncing", out)?;
    Ok(parts)
}

fn place(disk: &mut File, disk_path: &Path, part: &PartitionLocation, image: &Path) -> Result<()> {
    let mut src = File::open(image).at("opening", image)?;
    let len = src.metadata().at("inspecting", image)?.len();
    if len > part.size {
        return Err(BuildError::PartitionTooSmall {
            image: image.into(),
            len,
            number: part.number,
            label: part.label.clone(),
            capacity: part.size,
        });
    }
    sparse_copy(&mut src, image, disk, disk_path, part.offset)?;
    Ok(())
}

/// Converts the raw image to qcow2.
pub fn to_qcow2(raw: &Path, out: &Path) -> Result<()> {
    let _ = fs::remove_file(out);
    tools::run(
        QEMU_IMG
            .command()?
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(out),
    )?;
    Ok(())
}
