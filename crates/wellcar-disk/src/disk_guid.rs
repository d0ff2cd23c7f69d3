//! Giving a disk written from an image its own GPT disk GUID (Flatcar's `randomize_disk_guid`):
//! every disk written from one image carries the build's [`BUILD_DISK_GUID`], and two such
//! disks in one machine confuse by-GUID lookups.
//!
//! Contract ([`make_disk_guid_unique`], run by the initramfs on first boot before anything uses
//! the disk): when the disk GUID is the build's, both GPT headers get one new random GUID. Only
//! the headers change (the disk GUID is not in the partition entries, so the arrays and their
//! CRCs stay as they are); each header is one 512-byte sector, written with a correct header
//! CRC, in the safe order: **backup first, synced, then primary, synced**. A power cut at any
//! point leaves a state the next call turns into a consistent pair:
//! - nothing written: both headers still carry the build GUID: randomized as above;
//! - backup written, primary not: the backup carries the new GUID: the primary is repaired to
//!   it (the backup is the one written first, so its GUID wins);
//! - a torn header (bad CRC or signature): rebuilt from the valid one, keeping a GUID that is
//!   already unique, otherwise randomizing both.
//!
//! Partition GUIDs (PARTUUIDs, which GRUB and the initramfs boot by) never change.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::gpt::DiskError;
use crate::layout::{BUILD_DISK_GUID, SECTOR_SIZE};

const SIGNATURE: &[u8; 8] = b"EFI PART";
const GUID_AT: usize = 56;
const CRC_AT: usize = 16;
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// What [`make_disk_guid_unique`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskGuidOutcome {
    /// The disk already had its own GUID in both headers; nothing was written.
    AlreadyUnique(Uuid),
    /// Both headers were given this new GUID.
    Randomized(Uuid),
    /// An interrupted earlier run was completed: both headers now carry this GUID.
    Repaired(Uuid),
}

/// A GPT header sector as read, and whether it is valid.
#[derive(Debug, Clone)]
struct HeaderSector {
    lba: u64,
    bytes: Vec<u8>,
    valid: bool,
}

impl HeaderSector {
    fn guid(&self) -> Uuid {
        Uuid::from_bytes_le(
            self.bytes[GUID_AT..GUID_AT + 16]
                .try_into()
                .expect("16 bytes"),
        )
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.bytes[at..at + 8].try_into().expect("8 bytes"))
    }

    /// This header's sector with the disk GUID `guid` and a correct CRC.
    fn with_guid(&self, guid: Uuid) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        bytes[GUID_AT..GUID_AT + 16].copy_from_slice(&guid.to_bytes_le());
        set_crc(&mut bytes);
        bytes
    }
}

fn set_crc(bytes: &mut [u8]) {
    let len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    bytes[CRC_AT..CRC_AT + 4].fill(0);
    let crc = CRC32.checksum(&bytes[..len]);
    bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

fn header_valid(bytes: &[u8], lba: u64) -> bool {
    if &bytes[..8] != SIGNATURE {
        return false;
    }
    let len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    if !(92..=bytes.len()).contains(&len) {
        return false;
    }
    let mut copy = bytes[..len].to_vec();
    let stored = u32::from_le_bytes(copy[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
    copy[CRC_AT..CRC_AT + 4].fill(0);
    let own_lba = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
    CRC32.checksum(&copy) == stored && own_lba == lba
}

struct Disk<'a, D> {
    disk: &'a mut D,
    path: PathBuf,
}

impl<D: Read + Write + Seek> Disk<'_, D> {
    fn io(&self) -> impl Fn(std::io::Error) -> DiskError + '_ {
        |source| DiskError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn read_header(&mut self, lba: u64) -> Result<HeaderSector, DiskError> {
        let mut bytes = vec![0u8; SECTOR_SIZE as usize];
        self.disk
            .seek(SeekFrom::Start(lba * SECTOR_SIZE))
            .map_err(self.io())?;
        self.disk.read_exact(&mut bytes).map_err(self.io())?;
        let valid = header_valid(&bytes, lba);
        Ok(HeaderSector { lba, bytes, valid })
    }

    fn write_header(&mut self, lba: u64, bytes: &[u8]) -> Result<(), DiskError> {
        self.disk
            .seek(SeekFrom::Start(lba * SECTOR_SIZE))
            .map_err(self.io())?;
        self.disk.write_all(bytes).map_err(self.io())?;
        self.disk.flush().map_err(self.io())
    }
}

/// A header for `lba` made from the valid header `from` (the other copy): own and alternate LBA
/// swapped, the partition array's LBA taken from `array_lba`.
fn mirror(from: &HeaderSector, lba: u64, array_lba: u64) -> HeaderSector {
    let mut bytes = from.bytes.clone();
    let other = from.u64_at(24);
    bytes[24..32].copy_from_slice(&lba.to_le_bytes());
    bytes[32..40].copy_from_slice(&other.to_le_bytes());
    bytes[72..80].copy_from_slice(&array_lba.to_le_bytes());
    set_crc(&mut bytes);
    HeaderSector {
        lba,
        bytes,
        valid: true,
    }
}

/// Makes the disk GUID of `disk` (`len` bytes) unique as the module documentation says,
/// using `new_guid` if a new one is needed. `sync` is called after each header write (the
/// caller's fsync; a test's cut point).
pub fn make_disk_guid_unique<D: Read + Write + Seek>(
    disk: &mut D,
    len: u64,
    path: &Path,
    new_guid: Uuid,
    sync: &mut dyn FnMut(&mut D) -> std::io::Result<()>,
) -> Result<DiskGuidOutcome, DiskError> {
    let mut d = Disk {
        disk,
        path: path.into(),
    };
    let last = len / SECTOR_SIZE - 1;
    let primary = d.read_header(1)?;
    // The backup's place comes from the primary when it is valid (the disk may have grown).
    let backup_lba = if primary.valid {
        primary.u64_at(32)
    } else {
        last
    };
    let backup = d.read_header(backup_lba)?;
    let (primary, backup) = match (primary.valid, backup.valid) {
        (true, true) => (primary, backup),
        (true, false) => {
            let array = primary.u64_at(48) + 1; // last usable + 1
            let backup = mirror(&primary, backup_lba, array);
            (
                primary,
                HeaderSector {
                    valid: false,
                    ..backup
                },
            )
        }
        (false, true) => {
            let primary = mirror(&backup, 1, 2);
            (
                HeaderSector {
                    valid: false,
                    ..primary
                },
                backup,
            )
        }
        (false, false) => {
            return Err(DiskError::Missing {
                path: path.into(),
                what: "a valid GPT header (primary and backup are both damaged)".into(),
            })
        }
    };
    let sync_err = |source| DiskError::Io {
        path: path.into(),
        source,
    };
    let (pg, bg) = (primary.guid(), backup.guid());
    // The GUID both headers end with: the backup's if it is already unique (written first),
    // else the primary's if unique, else a new one.
    let (guid, fresh) = if backup.valid && bg != BUILD_DISK_GUID {
        (bg, false)
    } else if primary.valid && pg != BUILD_DISK_GUID {
        (pg, false)
    } else {
        (new_guid, true)
    };
    if primary.valid && backup.valid && pg == guid && bg == guid {
        return Ok(DiskGuidOutcome::AlreadyUnique(guid));
    }
    for header in [&backup, &primary] {
        if !header.valid || header.guid() != guid {
            let bytes = header.with_guid(guid);
            d.write_header(header.lba, &bytes)?;
            sync(d.disk).map_err(sync_err)?;
        }
    }
    Ok(if fresh {
        DiskGuidOutcome::Randomized(guid)
    } else {
        DiskGuidOutcome::Repaired(guid)
    })
}

/// Reads the disk GUID from the primary header, else the backup (`None`: neither is valid).
pub fn disk_guid<D: Read + Seek>(disk: &mut D, len: u64) -> std::io::Result<Option<Uuid>> {
    for lba in [1, len / SECTOR_SIZE - 1] {
        let mut bytes = vec![0u8; SECTOR_SIZE as usize];
        disk.seek(SeekFrom::Start(lba * SECTOR_SIZE))?;
        disk.read_exact(&mut bytes)?;
        if header_valid(&bytes, lba) {
            let h = HeaderSector {
                lba,
                bytes,
                valid: true,
            };
            return Ok(Some(h.guid()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
