//! The boot state as ChromeOS/Flatcar GPT attribute bits (priority 48-51, tries 52-55,
//! successful 56), mirrored into the USR-A/USR-B partition entries so that `cgpt show` and
//! Flatcar's tooling agree with the ESP state. The ESP state stays authoritative: GRUB reads it,
//! not these bits.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use wellcar_disk::Slot;

use crate::state::{BootState, SlotState, MAX_NIBBLE};

/// Bits 48-56 (priority, tries, successful).
pub const GPTPRIO_MASK: u64 = 0x1ff << 48;

/// Errors mirroring the state into a GPT.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// Opening or syncing the disk failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The disk.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// gptman could not read or write the table.
    #[error("GPT of {path}: {source}")]
    Gpt {
        /// The disk.
        path: PathBuf,
        /// The cause.
        source: gptman::Error,
    },
    /// The disk has no partition with the slot's unique GUID.
    #[error("{path} has no {slot} partition (PARTUUID {guid})")]
    MissingSlot {
        /// The disk.
        path: PathBuf,
        /// The slot.
        slot: Slot,
        /// Its GUID.
        guid: uuid::Uuid,
    },
}

/// `existing` attribute bits with bits 48-56 replaced by `s`'s attributes.
pub fn to_bits(existing: u64, s: &SlotState) -> u64 {
    (existing & !GPTPRIO_MASK)
        | (u64::from(s.priority.min(MAX_NIBBLE)) << 48)
        | (u64::from(s.tries.min(MAX_NIBBLE)) << 52)
        | (u64::from(s.successful) << 56)
}

/// `(priority, tries, successful)` from attribute bits.
pub fn from_bits(bits: u64) -> (u8, u8, bool) {
    (
        ((bits >> 48) & 0xf) as u8,
        ((bits >> 52) & 0xf) as u8,
        (bits >> 56) & 1 == 1,
    )
}

/// Writes `state`'s attributes into the USR-A and USR-B entries of the GPT on `disk` (a block
/// device or image file), primary and backup, with their CRCs.
pub fn mirror(disk: &Path, state: &BootState) -> Result<(), MirrorError> {
    let io = |action: &'static str| {
        move |source| MirrorError::Io {
            action,
            path: disk.to_path_buf(),
            source,
        }
    };
    let gpt_err = |source| MirrorError::Gpt {
        path: disk.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(io("opening"))?;
    let mut gpt = gptman::GPT::find_from(&mut f).map_err(gpt_err)?;
    for slot in Slot::ALL {
        let guid = slot.unique_guid();
        let index = gpt
            .iter()
            .find(|(_, e)| {
                e.is_used() && uuid::Uuid::from_bytes_le(e.unique_partition_guid) == guid
            })
            .map(|(i, _)| i)
            .ok_or_else(|| MirrorError::MissingSlot {
                path: disk.to_path_buf(),
                slot,
                guid,
            })?;
        gpt[index].attribute_bits = to_bits(gpt[index].attribute_bits, state.slot(slot));
    }
    gpt.write_into(&mut f).map_err(gpt_err)?;
    f.sync_all().map_err(io("syncing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_match_cgpt_layout() {
        let mut s = SlotState::empty();
        s.priority = 2;
        s.tries = 1;
        // Byte 54 of the entry = low nibble priority, high nibble tries; byte 55 bit 0 successful.
        assert_eq!(to_bits(0b100, &s), 0b100 | (0x12 << 48));
        s.successful = true;
        s.tries = 0;
        assert_eq!(to_bits(u64::MAX, &s), !GPTPRIO_MASK | (0x102 << 48));
        assert_eq!(from_bits(to_bits(0, &s)), (2, 0, true));
    }

    #[test]
    fn mirror_writes_both_slots_into_a_real_gpt() {
        let len = 4 * 1024 * 1024 * 1024u64;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        wellcar_disk::gpt::write_layout(f.as_file_mut(), len, Path::new("t")).unwrap();
        let mut state =
            BootState::fresh(wellcar_contract::RootHash::from_bytes([0xaa; 32]), "1.0.0")
                .expect("valid fresh state");
        state.b.priority = 2;
        state.b.tries = 1;
        mirror(f.path(), &state).unwrap();
        let path = f.path().to_path_buf();
        let parts = wellcar_disk::gpt::read_gpt(f.as_file_mut(), &path).unwrap();
        let attrs = |slot: Slot| {
            let p = parts
                .iter()
                .find(|p| p.unique_guid == slot.unique_guid())
                .unwrap();
            from_bits(p.attributes)
        };
        assert_eq!(attrs(Slot::A), (1, 0, true));
        assert_eq!(attrs(Slot::B), (2, 1, false));
    }
}
