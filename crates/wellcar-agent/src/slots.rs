//! The two things the agent needs from the disk: a writable window onto the inactive USR
//! partition, and a way to make a verified slot boot next.
//!
//! [`SlotControl`] is the narrow interface to the boot-state core; [`EspSlots`] implements it
//! with `wellcar-bootstate` (the state GRUB reads from the ESP, optionally mirrored into the GPT
//! attribute bits for cgpt-style tools). The agent makes the target slot unbootable before
//! writing it and stages it (tries = 1, successful = 0, top priority, root hash, version) only
//! after the written slot verified.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use wellcar_contract::PathIoError;

use wellcar_bootstate::Esp;
use wellcar_contract::RootHash;
use wellcar_disk::{find_partition, PartitionKey, Slot};
use wellcar_payload::{SourceReader, UsrTarget};

/// Failure locating or staging a slot.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// An I/O operation on a path failed.
    #[error(transparent)]
    Io(#[from] PathIoError),
    /// The partition table.
    #[error(transparent)]
    Disk(#[from] wellcar_disk::DiskError),
    /// The boot state refused or could not be written.
    #[error("boot state on the ESP")]
    BootState(#[from] wellcar_bootstate::StoreError),
}

/// Marks slots bootable: the boot-state core, as the agent uses it.
pub trait SlotControl {
    /// Makes `slot` unbootable and forgets its contents, before it is overwritten. Refused for
    /// the booted slot and when `booted` is not a known-good fallback.
    fn invalidate(&mut self, slot: Slot, booted: Slot) -> Result<(), SlotError>;
    /// Whether `booted` is a known-good fallback (successful, non-zero priority). Until the
    /// running slot is marked good, the other slot must not be overwritten.
    fn booted_is_good(&mut self, booted: Slot) -> Result<bool, SlotError>;
    /// Makes `slot` boot next, once: tries = 1, successful = 0, top priority, with
    /// `root_hash` and `version` recorded. Called only after the slot fully verified.
    fn stage(
        &mut self,
        slot: Slot,
        booted: Slot,
        root_hash: RootHash,
        version: &str,
    ) -> Result<(), SlotError>;
}

/// [`SlotControl`] through `wellcar-bootstate`'s ESP store.
#[derive(Debug, Clone)]
pub struct EspSlots {
    /// The boot state store on the mounted ESP.
    pub esp: Esp,
    /// Also mirror the state into the GPT attribute bits of this disk (best effort, as
    /// `wellcar-update --mirror-gpt`).
    pub mirror_gpt: Option<PathBuf>,
}

impl EspSlots {
    /// The boot state on the ESP `paths` names (mirrored into `paths.mirror_gpt` if set).
    pub fn for_paths(paths: &crate::host::HostPaths) -> Self {
        Self {
            esp: Esp::new(&paths.esp),
            mirror_gpt: paths.mirror_gpt.clone(),
        }
    }

    fn mirror(&self, loaded: &wellcar_bootstate::Loaded) {
        if let Some(disk) = &self.mirror_gpt {
            if let Err(e) = wellcar_bootstate::gptprio::mirror(disk, &loaded.state) {
                tracing::warn!("boot state not mirrored into the GPT: {e}");
            }
        }
    }
}

impl SlotControl for EspSlots {
    fn booted_is_good(&mut self, booted: Slot) -> Result<bool, SlotError> {
        let state = self.esp.load()?.state;
        let s = state.slot(booted);
        Ok(s.successful && s.priority > 0)
    }

    fn invalidate(&mut self, slot: Slot, booted: Slot) -> Result<(), SlotError> {
        let (_, loaded) = self.esp.update(|s| s.invalidate(slot, Some(booted)))?;
        self.mirror(&loaded);
        Ok(())
    }

    fn stage(
        &mut self,
        slot: Slot,
        booted: Slot,
        root_hash: RootHash,
        version: &str,
    ) -> Result<(), SlotError> {
        let (_, loaded) = self
            .esp
            .update(|s| s.stage(slot, Some(booted), root_hash, version))?;
        self.mirror(&loaded);
        Ok(())
    }
}

/// The USR partition of the booted `slot` on `disk`, opened read-only: the source a delta
/// payload reads (and verifies whole before reading any extent).
pub fn source_slot(disk: &Path, slot: Slot) -> Result<SourceReader, SlotError> {
    let mut file = File::open(disk)
        .map_err(|source| SlotError::Io(PathIoError::new("opening", disk.to_owned(), source)))?;
    let loc = find_partition(&mut file, disk, PartitionKey::Guid(slot.unique_guid()))?;
    let name = PathBuf::from(format!("{} on {}", loc.label, disk.display()));
    Ok(SourceReader::window(file, name, loc.offset, loc.size))
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
            .map_err(|source| {
                SlotError::Io(PathIoError::new("opening", disk.to_owned(), source))
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
    use wellcar_bootstate::BootState;

    /// The root hash of the version a fresh test machine runs from USR-A.
    pub(crate) const HASH_A: RootHash = RootHash::from_bytes([0xaa; 32]);

    /// A sparse disk image with the Wellcar GPT layout.
    pub(crate) fn disk_image(dir: &Path) -> PathBuf {
        let path = dir.join("disk.img");
        let mut f = File::create(&path).unwrap();
        let len = wellcar_disk::gpt::minimum_disk_size();
        f.set_len(len).unwrap();
        wellcar_disk::write_layout(&mut f, len, &path).unwrap();
        path
    }

    /// An ESP as the image builder leaves it: A good at `version`, B empty.
    pub(crate) fn fresh_esp(esp: &Path, version: &str) -> Esp {
        let esp = Esp::new(esp);
        esp.create(&BootState::fresh(HASH_A, version).unwrap())
            .unwrap();
        esp
    }

    #[test]
    fn stage_and_invalidate_through_the_boot_state() {
        let dir = tempfile::tempdir().unwrap();
        let disk = disk_image(dir.path());
        let mut slots = EspSlots {
            esp: fresh_esp(&dir.path().join("esp"), "1.0.0"),
            mirror_gpt: Some(disk.clone()),
        };
        let hash = RootHash::from_bytes([0xab; 32]);
        let err = slots.stage(Slot::A, Slot::A, hash, "1.1.0").unwrap_err();
        assert!(format!("{err:#}").contains("boot state"), "{err}");
        assert!(
            std::error::Error::source(&err)
                .unwrap()
                .to_string()
                .contains("booted slot"),
            "{err:?}"
        );
        slots.stage(Slot::B, Slot::A, hash, "1.1.0").unwrap();
        let state = slots.esp.load().unwrap().state;
        assert_eq!(state.next_boot(), Some(Slot::B));
        assert_eq!((state.b.tries, state.b.successful), (1, false));
        assert_eq!(
            (state.b.root_hash, state.b.version.as_str()),
            (Some(hash), "1.1.0")
        );
        assert!(
            state.a.successful && state.a.priority > 0,
            "A stays the fallback"
        );
        let mut f = File::open(&disk).unwrap();
        let b = find_partition(&mut f, &disk, PartitionKey::Guid(Slot::B.unique_guid())).unwrap();
        assert_eq!(
            wellcar_bootstate::gptprio::from_bits(b.attributes).1,
            1,
            "mirrored into the GPT"
        );
        slots.invalidate(Slot::B, Slot::A).unwrap();
        let state = slots.esp.load().unwrap().state;
        assert_eq!(state.next_boot(), Some(Slot::A));
        assert!(state.b.root_hash.is_none());
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
