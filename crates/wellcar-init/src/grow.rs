//! Growing ROOT to the end of its disk on first boot (Flatcar's `extend-filesystems`).
//!
//! Contract: three idempotent steps, each checking the current state first, so a boot
//! interrupted anywhere finishes the job on the next try:
//! 1. [`grow_partition_table`]: move the backup GPT to the end of the disk and extend the
//!    partition to the last 2 MiB boundary before it (its start never moves); the stale old
//!    backup header is zeroed. Works on any `Read + Write + Seek` (an image file in tests).
//! 2. Tell the kernel the new partition size (`BLKPG_RESIZE_PARTITION`) if sysfs still shows
//!    the old one (`BLKRRPART` cannot work while ROOT is mounted).
//! 3. Grow the mounted ext4 filesystem online (`EXT4_IOC_RESIZE_FS`) if its block count is
//!    smaller than the partition.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use wellcar_contract::PathIoError;

use wellcar_disk::SECTOR_SIZE;

use crate::disk::Partition;
use crate::sys;

/// Partitions end on this boundary (Flatcar's 2 MiB alignment), in sectors.
const ALIGN_SECTORS: u64 = 2 * 1024 * 1024 / SECTOR_SIZE;

/// Why ROOT could not be grown; each variant names the disk or partition.
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    /// The GPT could not be read or written.
    #[error("partition table of {disk}")]
    Table {
        /// The disk.
        disk: PathBuf,
        /// gptman's error.
        #[source]
        source: gptman::Error,
    },
    /// The partition is not the last one, so it cannot grow to the end.
    #[error("partition {number} of {disk} is followed by partition {next}, cannot grow it")]
    NotLast {
        /// The disk.
        disk: PathBuf,
        /// The partition to grow.
        number: u32,
        /// The one after it.
        next: u32,
    },
    /// The partition is not in the table.
    #[error("no partition {number} in the table of {disk}")]
    NoPartition {
        /// The disk.
        disk: PathBuf,
        /// The number looked for.
        number: u32,
    },
    /// An I/O operation on a path failed.
    #[error(transparent)]
    Io(#[from] PathIoError),
    /// The partition does not hold ext4.
    #[error("{device} does not hold an ext4 filesystem")]
    NotExt4 {
        /// The partition.
        device: PathBuf,
    },
}

/// Where the partition lies after [`grow_partition_table`], in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte.
    pub start: u64,
    /// Length.
    pub size: u64,
    /// Whether the table was changed.
    pub changed: bool,
}

/// Moves the backup GPT of `disk` to its end and extends partition `number` up to the last
/// aligned sector before it.
pub fn grow_partition_table<D: Read + Write + Seek>(
    disk: &mut D,
    path: &Path,
    number: u32,
) -> Result<Extent, GrowError> {
    let table_err = |source| GrowError::Table {
        disk: path.to_path_buf(),
        source,
    };
    let mut gpt = gptman::GPT::read_from(disk, SECTOR_SIZE).map_err(table_err)?;
    let entry = gpt
        .iter()
        .find(|(n, e)| *n == number && e.is_used())
        .map(|(_, e)| e.clone())
        .ok_or(GrowError::NoPartition {
            disk: path.to_path_buf(),
            number,
        })?;
    if let Some((next, _)) = gpt
        .iter()
        .filter(|(_, e)| e.is_used() && e.starting_lba > entry.ending_lba)
        .min_by_key(|(_, e)| e.starting_lba)
    {
        return Err(GrowError::NotLast {
            disk: path.to_path_buf(),
            number,
            next,
        });
    }
    let old_backup = gpt.header.backup_lba;
    gpt.header
        .update_from(disk, SECTOR_SIZE)
        .map_err(table_err)?;
    let room = gpt.header.last_usable_lba + 1 - entry.starting_lba;
    let new_end = entry.starting_lba + room / ALIGN_SECTORS * ALIGN_SECTORS - 1;
    let moved = gpt.header.backup_lba != old_backup;
    let grows = new_end > entry.ending_lba;
    if grows {
        gpt[number].ending_lba = new_end;
    }
    let end = gpt[number].ending_lba;
    if moved || grows {
        gpt.write_into(disk).map_err(table_err)?;
        let io_err =
            |source| GrowError::Io(PathIoError::new("writing", path.to_path_buf(), source));
        if moved && old_backup < gpt.header.backup_lba {
            // The old backup header now lies inside the grown partition, past its filesystem;
            // zero it so no tool mistakes it for a GPT.
            disk.seek(SeekFrom::Start(old_backup * SECTOR_SIZE))
                .map_err(io_err)?;
            disk.write_all(&[0u8; SECTOR_SIZE as usize])
                .map_err(io_err)?;
        }
        disk.flush().map_err(io_err)?;
    }
    Ok(Extent {
        start: entry.starting_lba * SECTOR_SIZE,
        size: (end + 1 - entry.starting_lba) * SECTOR_SIZE,
        changed: moved || grows,
    })
}

/// ext4 block count and block size from the superblock on `device`.
pub fn ext4_size(device: &Path) -> Result<(u64, u64), GrowError> {
    let io_err = |source| GrowError::Io(PathIoError::new("reading", device.to_path_buf(), source));
    let mut file = File::open(device).map_err(io_err)?;
    let mut sb = [0u8; 1024];
    file.seek(SeekFrom::Start(1024)).map_err(io_err)?;
    file.read_exact(&mut sb).map_err(io_err)?;
    if sb[0x38..0x3a] != [0x53, 0xef] {
        return Err(GrowError::NotExt4 {
            device: device.to_path_buf(),
        });
    }
    let u32_at = |o: usize| u64::from(u32::from_le_bytes(sb[o..o + 4].try_into().expect("4")));
    let incompat = u32_at(0x60);
    let mut blocks = u32_at(0x4);
    if incompat & 0x80 != 0 {
        // INCOMPAT_64BIT: high half of the block count.
        blocks |= u32_at(0x150) << 32;
    }
    let block_size = 1024u64 << u32_at(0x18);
    Ok((blocks, block_size))
}

/// What [`grow_root`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrowReport {
    /// Partition size in bytes afterwards.
    pub partition_size: u64,
    /// Filesystem blocks before and after.
    pub fs_blocks: (u64, u64),
}

/// Grows `root` (mounted at `mount_point`) to the end of its disk; `class_block` is
/// `/sys/class/block`.
pub fn grow_root(
    root: &Partition,
    mount_point: &Path,
    class_block: &Path,
) -> Result<GrowReport, GrowError> {
    let disk_path = &root.disk;
    let mut disk = File::options()
        .read(true)
        .write(true)
        .open(disk_path)
        .map_err(|source| GrowError::Io(PathIoError::new("opening", disk_path.clone(), source)))?;
    let extent = grow_partition_table(&mut disk, disk_path, root.location.number)?;
    disk.sync_all()
        .map_err(|source| GrowError::Io(PathIoError::new("syncing", disk_path.clone(), source)))?;

    let name = root.device.file_name().unwrap_or_default();
    let size_file = class_block.join(name).join("size");
    let kernel_sectors: u64 = std::fs::read_to_string(&size_file)
        .map_err(|source| GrowError::Io(PathIoError::new("reading", size_file.clone(), source)))?
        .trim()
        .parse()
        .map_err(|_| {
            GrowError::Io(PathIoError::new(
                "parsing",
                size_file.clone(),
                std::io::Error::from(std::io::ErrorKind::InvalidData),
            ))
        })?;
    if kernel_sectors * 512 != extent.size {
        sys::blkpg_resize_partition(
            disk.as_fd(),
            root.location.number,
            extent.start,
            extent.size,
        )
        .map_err(|source| {
            GrowError::Io(PathIoError::new(
                "BLKPG resize of partition on",
                disk_path.clone(),
                source,
            ))
        })?;
    }

    let (blocks, block_size) = ext4_size(&root.device)?;
    let wanted = extent.size / block_size;
    if blocks < wanted {
        let dir = File::open(mount_point).map_err(|source| {
            GrowError::Io(PathIoError::new(
                "opening",
                mount_point.to_path_buf(),
                source,
            ))
        })?;
        sys::ext4_resize(dir.as_fd(), wanted).map_err(|source| {
            GrowError::Io(PathIoError::new(
                "EXT4_IOC_RESIZE_FS on",
                mount_point.to_path_buf(),
                source,
            ))
        })?;
    }
    Ok(GrowReport {
        partition_size: extent.size,
        fs_blocks: (blocks, wanted.max(blocks)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn image(len: u64) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.set_len(len).unwrap();
        wellcar_disk::write_layout(&mut f, len, Path::new("img")).unwrap();
        f
    }

    fn root_of(f: &mut File) -> wellcar_disk::PartitionLocation {
        wellcar_disk::find_partition(
            f,
            Path::new("img"),
            wellcar_disk::PartitionKey::Label("ROOT"),
        )
        .unwrap()
    }

    #[test]
    fn grows_root_to_a_resized_disk_and_moves_the_backup() {
        let built = 3 * GIB;
        let mut f = image(built);
        let before = root_of(&mut f);
        f.set_len(8 * GIB).unwrap(); // qemu-img resize
        let extent = grow_partition_table(&mut f, Path::new("img"), 9).unwrap();
        assert!(extent.changed);
        assert_eq!(extent.start, before.offset);
        let after = root_of(&mut f);
        assert_eq!(after.offset, before.offset);
        assert_eq!(after.size, extent.size);
        // Ends on a 2 MiB boundary, within the last 2 MiB + GPT before the end of the disk.
        assert_eq!((after.offset + after.size) % (2 << 20), 0);
        assert!(8 * GIB - (after.offset + after.size) < (2 << 20) + 33 * 512);
        // Backup header in the last sector; the old one zeroed.
        let mut sector = [0u8; 512];
        f.seek(SeekFrom::Start(8 * GIB - 512)).unwrap();
        f.read_exact(&mut sector).unwrap();
        assert_eq!(&sector[..8], b"EFI PART");
        f.seek(SeekFrom::Start(built - 512)).unwrap();
        f.read_exact(&mut sector).unwrap();
        assert_eq!(sector, [0u8; 512]);
        // Other partitions untouched.
        let usr = wellcar_disk::find_partition(
            &mut f,
            Path::new("img"),
            wellcar_disk::PartitionKey::Label("USR-A"),
        )
        .unwrap();
        assert_eq!(usr.size, GIB);
        // Second run: nothing to do.
        let again = grow_partition_table(&mut f, Path::new("img"), 9).unwrap();
        assert!(!again.changed);
        assert_eq!(again.size, extent.size);
    }

    #[test]
    fn unresized_disk_is_left_alone() {
        let mut f = image(3 * GIB);
        let before = root_of(&mut f);
        let extent = grow_partition_table(&mut f, Path::new("img"), 9).unwrap();
        assert!(!extent.changed);
        assert_eq!(extent.size, before.size);
    }

    #[test]
    fn only_the_last_partition_grows() {
        let mut f = image(3 * GIB);
        let err = grow_partition_table(&mut f, Path::new("img"), 7).unwrap_err();
        assert_eq!(
            err.to_string(),
            "partition 7 of img is followed by partition 9, cannot grow it"
        );
        let err = grow_partition_table(&mut f, Path::new("img"), 5).unwrap_err();
        assert_eq!(err.to_string(), "no partition 5 in the table of img");
    }

    #[test]
    fn ext4_size_reads_a_real_mkfs_superblock() {
        // The real mkfs.ext4 (package e2fsprogs, which scripts/install-deps.sh installs).
        let dir = tempfile::tempdir().unwrap();
        let fs = dir.path().join("root.ext4");
        File::create(&fs).unwrap().set_len(64 << 20).unwrap();
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-L", "ROOT"])
            .arg(&fs)
            .output()
            .expect("mkfs.ext4 is missing: install e2fsprogs (scripts/install-deps.sh)");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(ext4_size(&fs).unwrap(), (16384, 4096));
        let id = crate::disk::ext4_identity(&fs).unwrap();
        assert_eq!(id.label, "ROOT");
        let err = ext4_size(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/dev/zero does not hold an ext4 filesystem"
        );
    }
}
