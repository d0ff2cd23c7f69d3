//! Reading and writing Wellcar's GPT with `gptman`.
//!
//! [`write_layout`] lays the [`LAYOUT`] out on an image file or device and
//! writes the protective MBR, primary and backup GPT; it touches nothing else on the disk.
//! [`read_gpt`] and [`find_partition`] are what the initramfs and the boot-state code use to
//! find a partition by label or unique GUID without udev.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::layout::{
    PartitionSpec, ALIGNMENT, BUILD_DISK_GUID, LAYOUT, ROOT_BUILD_SIZE, SECTOR_SIZE,
};

/// Failures reading or writing a GPT; each names the disk it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The GPT could not be read or written.
    #[error("GPT on {path}")]
    Gpt {
        /// The disk or image.
        path: PathBuf,
        /// gptman's error.
        #[source]
        source: gptman::Error,
    },
    /// Plain I/O on the disk failed.
    #[error("I/O on {path}")]
    Io {
        /// The disk or image.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A partition the layout requires is not in the table.
    #[error("no partition {what} on {path}")]
    Missing {
        /// The disk or image.
        path: PathBuf,
        /// Label or GUID that was looked for.
        what: String,
    },
    /// The disk is too small for the layout.
    #[error("{path} is {size} bytes, the layout needs at least {needed}")]
    TooSmall {
        /// The disk or image.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// What the layout needs.
        needed: u64,
    },
}

/// Where a partition lies on its disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLocation {
    /// GPT partition number.
    pub number: u32,
    /// GPT label.
    pub label: String,
    /// Type GUID.
    pub type_guid: Uuid,
    /// Unique GUID.
    pub unique_guid: Uuid,
    /// Byte offset of the first sector.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// GPT attribute bits (priority/tries/successful live in 48..=56).
    pub attributes: u64,
}

/// Smallest disk the layout fits on: every partition at its build size, plus GPT overhead.
pub fn minimum_disk_size() -> u64 {
    let parts: u64 = LAYOUT
        .iter()
        .map(|p| if p.size == 0 { ROOT_BUILD_SIZE } else { p.size })
        .sum();
    // 1 MiB of leading GPT space rounded to the alignment, 1 MiB for the backup GPT.
    parts + ALIGNMENT + ALIGNMENT
}

/// Unique GUID for partitions without a fixed one: derived from the disk's purpose, so builds
/// are reproducible (Flatcar randomises the disk GUID on first boot, not these).
fn derived_guid(spec: &PartitionSpec) -> Uuid {
    spec.unique_guid.unwrap_or_else(|| {
        Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("wellcar-partition-{}", spec.label).as_bytes(),
        )
    })
}

/// Writes the protective MBR, primary and backup GPT of the Wellcar layout onto `disk`
/// (`len` bytes long) and returns where every partition went. ROOT takes the rest.
pub fn write_layout<D: Read + Write + Seek>(
    disk: &mut D,
    len: u64,
    path: &Path,
) -> Result<Vec<PartitionLocation>, DiskError> {
    let needed = minimum_disk_size();
    if len < needed {
        return Err(DiskError::TooSmall {
            path: path.into(),
            size: len,
            needed,
        });
    }
    let gpt_err = |source| DiskError::Gpt {
        path: path.into(),
        source,
    };
    let mut gpt =
        gptman::GPT::new_from(disk, SECTOR_SIZE, BUILD_DISK_GUID.to_bytes_le()).map_err(gpt_err)?;
    let align = ALIGNMENT / SECTOR_SIZE;
    gpt.align = align;
    let mut next = align; // first partition at 2 MiB, as Flatcar does
    for spec in &LAYOUT {
        let sectors = if spec.size == 0 {
            // ROOT: to the last aligned sector before the backup GPT.
            (gpt.header.last_usable_lba + 1 - next) / align * align
        } else {
            spec.size / SECTOR_SIZE
        };
        gpt[spec.number] = gptman::GPTPartitionEntry {
            partition_type_guid: spec.type_guid.to_bytes_le(),
            unique_partition_guid: derived_guid(spec).to_bytes_le(),
            starting_lba: next,
            ending_lba: next + sectors - 1,
            attribute_bits: 0,
            partition_name: spec.label.into(),
        };
        next += sectors;
    }
    gpt.write_into(disk).map_err(gpt_err)?;
    gptman::GPT::write_protective_mbr_into(disk, SECTOR_SIZE).map_err(gpt_err)?;
    Ok(locations(&gpt))
}

fn locations(gpt: &gptman::GPT) -> Vec<PartitionLocation> {
    gpt.iter()
        .filter(|(_, e)| e.is_used())
        .map(|(number, e)| PartitionLocation {
            number,
            label: e.partition_name.as_str().to_string(),
            type_guid: Uuid::from_bytes_le(e.partition_type_guid),
            unique_guid: Uuid::from_bytes_le(e.unique_partition_guid),
            offset: e.starting_lba * gpt.sector_size,
            size: (e.ending_lba + 1 - e.starting_lba) * gpt.sector_size,
            attributes: e.attribute_bits,
        })
        .collect()
}

/// Reads the GPT (primary, else backup) of `disk` and lists its used partitions.
pub fn read_gpt<D: Read + Seek>(
    disk: &mut D,
    path: &Path,
) -> Result<Vec<PartitionLocation>, DiskError> {
    disk.seek(SeekFrom::Start(0))
        .map_err(|source| DiskError::Io {
            path: path.into(),
            source,
        })?;
    let gpt = gptman::GPT::read_from(disk, SECTOR_SIZE).map_err(|source| DiskError::Gpt {
        path: path.into(),
        source,
    })?;
    Ok(locations(&gpt))
}

/// How to pick a partition.
#[derive(Debug, Clone, Copy)]
pub enum PartitionKey<'a> {
    /// By GPT label (PARTLABEL).
    Label(&'a str),
    /// By unique GUID (PARTUUID).
    Guid(Uuid),
}

impl std::fmt::Display for PartitionKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartitionKey::Label(l) => write!(f, "PARTLABEL={l}"),
            PartitionKey::Guid(g) => write!(f, "PARTUUID={g}"),
        }
    }
}

/// Finds one partition of `disk` by label or unique GUID.
pub fn find_partition<D: Read + Seek>(
    disk: &mut D,
    path: &Path,
    key: PartitionKey<'_>,
) -> Result<PartitionLocation, DiskError> {
    read_gpt(disk, path)?
        .into_iter()
        .find(|p| match key {
            PartitionKey::Label(l) => p.label == l,
            PartitionKey::Guid(g) => p.unique_guid == g,
        })
        .ok_or_else(|| DiskError::Missing {
            path: path.into(),
            what: key.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Slot, TYPE_ROOT_RESIZE};

    #[test]
    fn layout_round_trips() {
        let len = 4 * 1024 * 1024 * 1024u64;
        let mut f = tempfile::tempfile().unwrap();
        f.set_len(len).unwrap();
        let written = write_layout(&mut f, len, Path::new("test.img")).unwrap();
        let read = read_gpt(&mut f, Path::new("test.img")).unwrap();
        assert_eq!(written, read);
        assert_eq!(read.len(), 7);
        let usr_a = find_partition(
            &mut f,
            Path::new("t"),
            PartitionKey::Guid(Slot::A.unique_guid()),
        )
        .unwrap();
        assert_eq!((usr_a.number, usr_a.label.as_str()), (3, "USR-A"));
        assert_eq!(usr_a.size, 1 << 30);
        let root = find_partition(&mut f, Path::new("t"), PartitionKey::Label("ROOT")).unwrap();
        assert_eq!(root.type_guid, TYPE_ROOT_RESIZE);
        assert!(root.offset + root.size <= len - 33 * 512);
        assert!(read
            .windows(2)
            .all(|w| w[0].offset + w[0].size <= w[1].offset));
    }

    #[test]
    fn too_small_names_sizes() {
        let mut f = tempfile::tempfile().unwrap();
        let err = write_layout(&mut f, 1 << 20, Path::new("small.img")).unwrap_err();
        assert!(
            err.to_string().contains("small.img is 1048576 bytes"),
            "{err}"
        );
    }

    #[test]
    fn missing_partition_is_named() {
        let len = 4 * 1024 * 1024 * 1024u64;
        let mut f = tempfile::tempfile().unwrap();
        f.set_len(len).unwrap();
        write_layout(&mut f, len, Path::new("d")).unwrap();
        let err = find_partition(&mut f, Path::new("d"), PartitionKey::Label("USR-C")).unwrap_err();
        assert_eq!(err.to_string(), "no partition PARTLABEL=USR-C on d");
    }
}
