//! Wellcar's USR-A/USR-B boot state: which `/usr` slot GRUB boots, with Flatcar's `gptprio`
//! semantics (priority, tries, successful), kept where stock Debian GRUB 2.06 can read and write
//! it: two GRUB environment blocks on the ESP.
//!
//! - [`state`]: the pure state machine ([`BootState`]): selection, `cgpt prioritize`, and the host
//!   operations `stage`, `mark_good`, `rollback`, `cancel`, `invalidate`, which refuse anything
//!   that would leave no known-good slot.
//! - [`envblock`]: the 512-byte GRUB environment block encoding and its torn-write detection.
//! - [`store`]: the two copies on the ESP ([`Esp`]), how they are read and written so that a
//!   power cut at any instant leaves the old or the new state.
//! - [`grub`]: the `grub.cfg` fragment that implements the selection on stock GRUB.
//! - [`gptprio`]: the same state as GPT attribute bits 48-56, mirrored for cgpt-style tools.
//! - [`booted_slot`]: which slot is running, from the kernel command line.
//!
//! Typical use by the update agent: clear the inactive slot before overwriting it (so a
//! half-written slot is never bootable), write and verify it (plus `vmlinuz-x`/`initrd-x` on
//! the ESP), then stage it. Every call is one locked, tear-safe write; a [`Refusal`] writes
//! nothing.
//! ```no_run
//! use wellcar_bootstate::{booted_slot_from_proc, Esp};
//! let esp = Esp::new("/boot");
//! let booted = booted_slot_from_proc().unwrap();
//! let target = booted.unwrap().other();
//! esp.update(|s| s.invalidate(target, booted)).unwrap();
//! // ... write the slot, verify its verity tree ...
//! let hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
//! let hash: wellcar_contract::RootHash = hash.parse().unwrap();
//! esp.update(|s| s.stage(target, booted, hash, "1.1.0")).unwrap();
//! let status = esp.load().unwrap(); // status.state.next_boot() == Some(target)
//! ```

pub mod envblock;
pub mod gptprio;
pub mod grub;
pub mod state;
pub mod store;

pub use state::{BootState, Refusal, SlotState};
pub use store::{Esp, Loaded, StoreError};
pub use wellcar_disk::Slot;

/// The slot named by a kernel command line: `verity.usr=PARTUUID=<guid>` (or `mount.usr=`,
/// `usr=`), by the slots' fixed unique GUIDs, or `PARTLABEL=USR-A|USR-B`.
pub fn booted_slot(cmdline: &str) -> Option<Slot> {
    let mut found = None;
    for arg in cmdline.split_whitespace() {
        let Some((key, value)) = arg.split_once('=') else {
            continue;
        };
        if !matches!(key, "verity.usr" | "mount.usr" | "usr") {
            continue;
        }
        let slot = if let Some(guid) = value.strip_prefix("PARTUUID=") {
            Slot::ALL
                .into_iter()
                .find(|s| s.unique_guid().to_string().eq_ignore_ascii_case(guid))
        } else if let Some(label) = value.strip_prefix("PARTLABEL=") {
            Slot::parse(label)
        } else {
            None
        };
        // verity.usr wins over mount.usr (which names /dev/mapper/usr on verity images).
        if slot.is_some() && (found.is_none() || key == "verity.usr") {
            found = slot;
        }
    }
    found
}

/// [`booted_slot`] of `/proc/cmdline`.
pub fn booted_slot_from_proc() -> std::io::Result<Option<Slot>> {
    Ok(booted_slot(&std::fs::read_to_string("/proc/cmdline")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booted_slot_reads_the_verity_partuuid() {
        let cmdline = "mount.usr=/dev/mapper/usr verity.usr=PARTUUID=e03dd35c-7c2d-4a47-b3fe-27f15780a57c verity.usrhash=ab root=LABEL=ROOT";
        assert_eq!(booted_slot(cmdline), Some(Slot::B));
        assert_eq!(
            booted_slot("mount.usr=PARTUUID=7130C94A-213A-4E5A-8E26-6CCE9662F132"),
            Some(Slot::A)
        );
        assert_eq!(booted_slot("mount.usr=PARTLABEL=USR-B"), Some(Slot::B));
        assert_eq!(
            booted_slot("root=LABEL=ROOT verity.usr=PARTUUID=0000"),
            None
        );
    }
}
