//! The two things the agent needs from the disk: a writable window onto the inactive USR
//! partition, and a way to stage a verified slot.
//!
//! [`SlotControl`] is the narrow interface to the boot-state core (issue 5). Until that crate
//! lands, [`GptSlots`] implements it directly with Flatcar's semantics: GPT attribute bits of
//! USR-A/USR-B (priority 48–51, tries 52–55, successful 56; the staged slot gets
//! tries = 1, successful = 0 and the top priority) plus the ESP file
//! `wellcar/slot-<x>.cfg` holding `set slot_usrhash="<root hash>"`, written before the GPT so
//! a slot is never bootable without its hash. It works the same on a block device and on a
//! disk image file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use wellcar_disk::{find_partition, PartitionKey, Slot};
use wellcar_payload::UsrTarget;

/// Failure locating or staging a slot.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// Disk I/O.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The disk or file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The partition table.
    #[error(transparent)]
    Disk(#[from] wellcar_disk::DiskError),
    /// GPT update failure.
    #[error("writing the partition table of {path}: {reason}")]
    Gpt {
        /// The disk.
        path: PathBuf,
        /// What gptman said.
        reason: String,
    },
    /// Refused: the slot is the booted one.
    #[error("refusing to touch {slot}: it is the booted slot")]
    Booted {
        /// The slot.
        slot: Slot,
    },
    /// The root hash is not 64 hex digits.
    #[error("root hash {0:?} is not 64 hex digits")]
    BadRootHash(String),
}

/// Marks slots bootable. Implemented by the boot-state core; [`GptSlots`] meanwhile.
pub trait SlotControl {
    /// Makes `slot` boot next, once: tries = 1, successful = 0, top priority, with
    /// `root_hash` as its dm-verity root. Called only after the slot fully verified.
    fn stage(&mut self, slot: Slot, root_hash: &str) -> Result<(), SlotError>;
    /// Makes `slot` unbootable (priority 0) before it is overwritten.
    fn invalidate(&mut self, slot: Slot) -> Result<(), SlotError>;
    /// `(priority, tries, successful)` of `slot`, for status displays.
    fn attributes(&mut self, slot: Slot) -> Result<(u8, u8, bool), SlotError>;
}

const PRIORITY_SHIFT: u64 = 48;
const TRIES_SHIFT: u64 = 52;
const SUCCESSFUL_BIT: u64 = 1 << 56;
const PRIO_MASK: u64 = 0xF << PRIORITY_SHIFT;
const TRIES_MASK: u64 = 0xF << TRIES_SHIFT;

/// Decodes `(priority, tries, successful)` from GPT attribute bits.
pub fn decode_attributes(bits: u64) -> (u8, u8, bool) {
    (
        ((bits & PRIO_MASK) >> PRIORITY_SHIFT) as u8,
        ((bits & TRIES_MASK) >> TRIES_SHIFT) as u8,
        bits & SUCCESSFUL_BIT != 0,
    )
}

fn encode(bits: u64, priority: u8, tries: u8, successful: bool) -> u64 {
    let mut out = bits & !(PRIO_MASK | TRIES_MASK | SUCCESSFUL_BIT);
    out |= u64::from(priority & 0xF) << PRIORITY_SHIFT;
    out |= u64::from(tries & 0xF) << TRIES_SHIFT;
    if successful {
        out |= SUCCESSFUL_BIT;
    }
    out
}

/// [`SlotControl`] on a GPT disk plus the ESP (see the module docs).
#[derive(Debug, Clone)]
pub struct GptSlots {
    /// The disk (block device or image).
    pub disk: PathBuf,
    /// The mounted ESP.
    pub esp: PathBuf,
}

impl GptSlots {
    fn open(&self, write: bool) -> Result<File, SlotError> {
        OpenOptions::new()
            .read(true)
            .write(write)
            .open(&self.disk)
            .map_err(|source| SlotError::Io {
                action: "opening",
                path: self.disk.clone(),
                source,
            })
    }

    fn modify(&self, f: impl FnOnce(&mut gptman::GPT)) -> Result<(), SlotError> {
        let mut file = self.open(true)?;
        let gpt_err = |reason: String| SlotError::Gpt {
            path: self.disk.clone(),
            reason,
        };
        let mut gpt = gptman::GPT::read_from(&mut file, wellcar_disk::SECTOR_SIZE)
            .map_err(|e| gpt_err(e.to_string()))?;
        f(&mut gpt);
        gpt.write_into(&mut file)
            .map_err(|e| gpt_err(e.to_string()))?;
        file.sync_all().map_err(|source| SlotError::Io {
            action: "syncing",
            path: self.disk.clone(),
            source,
        })
    }

    /// The ESP file holding the slot's root hash.
    pub fn slot_config_path(&self, slot: Slot) -> PathBuf {
        self.esp
            .join("wellcar")
            .join(format!("slot-{}.cfg", slot.letter()))
    }
}

impl SlotControl for GptSlots {
    fn stage(&mut self, slot: Slot, root_hash: &str) -> Result<(), SlotError> {
        if root_hash.len() != 64 || !root_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SlotError::BadRootHash(root_hash.to_owned()));
        }
        let cfg = self.slot_config_path(slot);
        crate::state::write_atomic(
            &cfg,
            format!("set slot_usrhash=\"{root_hash}\"\n").as_bytes(),
        )
        .map_err(|e| match e {
            crate::state::StateError::Io { action, source, .. } => SlotError::Io {
                action,
                path: cfg.clone(),
                source,
            },
            other => SlotError::Io {
                action: "writing",
                path: cfg.clone(),
                source: io::Error::other(other.to_string()),
            },
        })?;
        let number = slot.spec().number;
        let other = slot.other().spec().number;
        self.modify(|gpt| {
            let (other_prio, other_tries, other_ok) = decode_attributes(gpt[other].attribute_bits);
            // Top priority for the new slot; the other keeps its bootability below it.
            gpt[number].attribute_bits = encode(gpt[number].attribute_bits, 2, 1, false);
            gpt[other].attribute_bits = encode(
                gpt[other].attribute_bits,
                other_prio.min(1),
                other_tries,
                other_ok,
            );
        })
    }

    fn invalidate(&mut self, slot: Slot) -> Result<(), SlotError> {
        let number = slot.spec().number;
        let (prio, tries, ok) = self.attributes(slot)?;
        if (prio, tries, ok) == (0, 0, false) {
            return Ok(());
        }
        self.modify(|gpt| {
            gpt[number].attribute_bits = encode(gpt[number].attribute_bits, 0, 0, false);
        })
    }

    fn attributes(&mut self, slot: Slot) -> Result<(u8, u8, bool), SlotError> {
        let mut file = self.open(false)?;
        let loc = find_partition(
            &mut file,
            &self.disk,
            PartitionKey::Guid(slot.unique_guid()),
        )?;
        Ok(decode_attributes(loc.attributes))
    }
}

/// The USR partition of `slot` on `disk`, as a payload target: a bounded window onto the disk
/// (block device or image file).
#[derive(Debug)]
pub struct PartitionWindow {
    file: File,
    path: PathBuf,
    label: String,
    offset: u64,
    len: u64,
    pos: u64,
}

impl PartitionWindow {
    /// Opens `slot`'s partition on `disk` read-write.
    pub fn open(disk: &Path, slot: Slot) -> Result<Self, SlotError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk)
            .map_err(|source| SlotError::Io {
                action: "opening",
                path: disk.to_owned(),
                source,
            })?;
        let loc = find_partition(&mut file, disk, PartitionKey::Guid(slot.unique_guid()))?;
        Ok(Self {
            file,
            path: disk.to_owned(),
            label: loc.label,
            offset: loc.offset,
            len: loc.size,
            pos: 0,
        })
    }

    fn clamp(&self, want: usize) -> usize {
        want.min(self.len.saturating_sub(self.pos) as usize)
    }
}

impl Read for PartitionWindow {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.clamp(buf.len());
        let got = self.file.read_at(&mut buf[..n], self.offset + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for PartitionWindow {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.clamp(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("write past the end of {}", self.label),
            ));
        }
        let put = self.file.write_at(&buf[..n], self.offset + self.pos)?;
        self.pos += put as u64;
        Ok(put)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for PartitionWindow {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        self.pos = new;
        Ok(new)
    }
}

impl UsrTarget for PartitionWindow {
    fn capacity(&mut self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if offset.saturating_add(len) > self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("zeroing past the end of {}", self.label),
            ));
        }
        use rustix::fs::{fallocate, FallocateFlags};
        let abs = self.offset + offset;
        for flags in [
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
        ] {
            match fallocate(&self.file, flags, abs, len) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let zeros = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], abs + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn drop_cache(&mut self) -> io::Result<()> {
        rustix::fs::fadvise(
            &self.file,
            self.offset,
            std::num::NonZeroU64::new(self.len),
            rustix::fs::Advice::DontNeed,
        )?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{} on {}", self.label, self.path.display())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A sparse disk image with the Wellcar GPT layout, USR-A marked booted-successfully.
    pub(crate) fn disk_image(dir: &Path) -> PathBuf {
        let path = dir.join("disk.img");
        let mut f = File::create(&path).unwrap();
        let len = wellcar_disk::gpt::minimum_disk_size();
        f.set_len(len).unwrap();
        wellcar_disk::write_layout(&mut f, len, &path).unwrap();
        let slots = GptSlots {
            disk: path.clone(),
            esp: dir.join("esp"),
        };
        slots
            .modify(|gpt| {
                let a = Slot::A.spec().number;
                gpt[a].attribute_bits = encode(gpt[a].attribute_bits, 1, 0, true);
            })
            .unwrap();
        path
    }

    #[test]
    fn stage_sets_flatcar_attributes_and_the_hash_file() {
        let dir = tempfile::tempdir().unwrap();
        let disk = disk_image(dir.path());
        let mut slots = GptSlots {
            disk,
            esp: dir.path().join("esp"),
        };
        assert_eq!(slots.attributes(Slot::B).unwrap(), (0, 0, false));
        assert!(matches!(
            slots.stage(Slot::B, "xyz"),
            Err(SlotError::BadRootHash(_))
        ));
        let hash = "ab".repeat(32);
        slots.stage(Slot::B, &hash).unwrap();
        assert_eq!(slots.attributes(Slot::B).unwrap(), (2, 1, false));
        assert_eq!(slots.attributes(Slot::A).unwrap(), (1, 0, true));
        let cfg = std::fs::read_to_string(slots.slot_config_path(Slot::B)).unwrap();
        assert_eq!(cfg, format!("set slot_usrhash=\"{hash}\"\n"));
        slots.invalidate(Slot::B).unwrap();
        assert_eq!(slots.attributes(Slot::B).unwrap(), (0, 0, false));
    }

    #[test]
    fn partition_window_stays_inside_its_partition() {
        let dir = tempfile::tempdir().unwrap();
        let disk = disk_image(dir.path());
        let mut w = PartitionWindow::open(&disk, Slot::B).unwrap();
        assert_eq!(w.capacity().unwrap(), 1024 * 1024 * 1024);
        w.write_all(b"slot b data").unwrap();
        w.seek(SeekFrom::End(-4)).unwrap();
        w.write_all(b"tail").unwrap();
        assert!(
            w.write_all(b"x").is_err(),
            "writes past the end are refused"
        );
        let mut raw = File::open(&disk).unwrap();
        let loc = find_partition(&mut raw, &disk, PartitionKey::Label("USR-B")).unwrap();
        let mut buf = [0u8; 11];
        raw.read_exact_at(&mut buf, loc.offset).unwrap();
        assert_eq!(&buf, b"slot b data");
        raw.read_exact_at(&mut buf[..4], loc.offset + loc.size - 4)
            .unwrap();
        assert_eq!(&buf[..4], b"tail");
        w.write_zeros(0, 4).unwrap();
        raw.read_exact_at(&mut buf[..4], loc.offset).unwrap();
        assert_eq!(&buf[..4], &[0; 4]);
    }
}
