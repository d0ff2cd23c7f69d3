//! The pure boot-state machine: ChromeOS/Flatcar `gptprio` semantics for the two USR slots.
//!
//! Each slot has a priority (0-15), tries left (0-15) and a successful flag. The bootloader picks,
//! among the slots with `tries > 0 || successful`, the one with the highest non-zero priority;
//! ties go to USR-A ([`BootState::next_boot`]). It decrements the chosen slot's tries **before**
//! booting it ([`BootState::bootloader_pick`]).
//!
//! The host operations ([`BootState::stage`], [`BootState::mark_good`], [`BootState::rollback`],
//! [`BootState::cancel`], [`BootState::invalidate`]) refuse, with a [`Refusal`], anything that
//! could leave no slot with `successful = 1` and a non-zero priority. That is the invariant the
//! property tests check ([`BootState::has_fallback`]): a successful slot is always bootable, so
//! the machine always has somewhere to go back to.

use serde::Serialize;
use wellcar_contract::{OsVersion, RootHash, RootHashError, VersionError};
use wellcar_disk::Slot;

/// Highest priority and highest tries value (4 bits each, as in the GPT attribute bits).
pub const MAX_NIBBLE: u8 = 15;

/// The longest version string a slot records (the [`OsVersion`] contract's limit, which is this
/// block's: each copy of the state is one 512-byte GRUB environment block).
pub const MAX_VERSION_LEN: usize = wellcar_contract::MAX_VERSION_LEN;

/// One slot's boot attributes and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotState {
    /// 0-15; 0 is never booted.
    pub priority: u8,
    /// 0-15 boots left before the slot is given up on (unless successful).
    pub tries: u8,
    /// The slot booted and passed its health checks.
    pub successful: bool,
    /// The slot's dm-verity root hash, or `None` if it holds nothing. On the ESP (`a_hash=`)
    /// and in serde it is the [`RootHash`]'s 64 lower-case hex digits, or the empty string for
    /// `None`, as when this field was a string.
    #[serde(serialize_with = "root_hash_or_empty")]
    pub root_hash: Option<RootHash>,
    /// The OS version the slot holds, or empty. Staged and fresh slots record an [`OsVersion`]
    /// (`MAJOR.MINOR.PATCH[+build]`, at most 40 bytes, [`check_version`]); a block an older
    /// build wrote may hold a version the contract refuses (`1.2`, `unknown`), which is read
    /// and kept as written ([`readable_version`]); [`SlotState::os_version`] is then `None`.
    pub version: String,
}

impl SlotState {
    /// An empty slot: priority 0, no tries, not successful, no contents.
    pub fn empty() -> Self {
        SlotState {
            priority: 0,
            tries: 0,
            successful: false,
            root_hash: None,
            version: String::new(),
        }
    }

    /// `gptprio` eligibility: tries left or known good, and a non-zero priority.
    pub fn bootable(&self) -> bool {
        self.priority > 0 && (self.tries > 0 || self.successful)
    }

    /// Staged and not yet booted: tries left, not yet successful.
    pub fn is_staged(&self) -> bool {
        self.tries > 0 && !self.successful && self.priority > 0
    }

    /// The recorded version as an [`OsVersion`]; `None` when the slot records none (empty) or
    /// one an older build wrote that is not an OS version (`1.2`, `01.0.0`, `unknown`): the
    /// slot's OS version is then unknown, though [`version`](Self::version) keeps the text.
    pub fn os_version(&self) -> Option<OsVersion> {
        OsVersion::parse(&self.version).ok()
    }
}

/// The state of both slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootState {
    /// USR-A.
    pub a: SlotState,
    /// USR-B.
    pub b: SlotState,
}

/// Why a host operation was refused (nothing was changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Staging or clearing the booted slot would overwrite the running `/usr`.
    #[error("{0} is the booted slot; only the other slot can be staged or cleared")]
    SlotIsBooted(Slot),
    /// The operation needs the other slot to be a known-good fallback.
    #[error("{slot} would be the only fallback but it has not booted successfully; mark it good first (wellcar-update mark-good)")]
    NoGoodFallback {
        /// The slot that should be good.
        slot: Slot,
    },
    /// Rollback target holds nothing verified and previously good.
    #[error("cannot roll back to {slot}: {reason}")]
    RollbackTargetNotGood {
        /// The rollback target.
        slot: Slot,
        /// What is wrong with it.
        reason: String,
    },
    /// Cancel found no staged update.
    #[error("nothing to cancel: {0}")]
    NothingStaged(String),
    /// A text that is not a [`RootHash`] ([`check_root_hash`]).
    #[error("invalid root hash {value:?}: {reason}")]
    InvalidRootHash {
        /// The text given.
        value: String,
        /// What is wrong with it.
        reason: RootHashError,
    },
    /// A `version` that is not an [`OsVersion`].
    #[error("invalid version: {0}")]
    InvalidVersion(VersionError),
}

impl BootState {
    /// A freshly built image: USR-A priority 1 and successful, USR-B priority 0 and empty.
    pub fn fresh(root_hash: RootHash, version: &str) -> Result<Self, Refusal> {
        check_version(version)?;
        Ok(BootState {
            a: SlotState {
                priority: 1,
                tries: 0,
                successful: true,
                root_hash: Some(root_hash),
                version: version.into(),
            },
            b: SlotState::empty(),
        })
    }

    /// One slot's state.
    pub fn slot(&self, slot: Slot) -> &SlotState {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// One slot's state, mutable.
    pub fn slot_mut(&mut self, slot: Slot) -> &mut SlotState {
        match slot {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }

    /// The slot the bootloader picks next (GRUB `gptprio.next` order): the highest priority among
    /// bootable slots, ties to USR-A; `None` if no slot is bootable.
    pub fn next_boot(&self) -> Option<Slot> {
        let mut found: Option<Slot> = None;
        for slot in Slot::ALL {
            let s = self.slot(slot);
            let best = found.map_or(0, |f| self.slot(f).priority);
            if s.bootable() && s.priority > best {
                found = Some(slot);
            }
        }
        found
    }

    /// What the bootloader does: pick [`next_boot`](Self::next_boot) and consume one of its tries.
    pub fn bootloader_pick(&mut self) -> Option<Slot> {
        let slot = self.next_boot()?;
        let s = self.slot_mut(slot);
        s.tries = s.tries.saturating_sub(1);
        Some(slot)
    }

    /// Some slot is successful with a non-zero priority: the machine can always fall back to it.
    pub fn has_fallback(&self) -> bool {
        Slot::ALL.iter().any(|&s| {
            let s = self.slot(s);
            s.successful && s.priority > 0
        })
    }

    /// `cgpt prioritize`: `slot` gets the top priority; the others keep their order below it,
    /// priorities compacted, never below 1, and slots at priority 0 stay at 0.
    pub fn prioritize(&mut self, slot: Slot) {
        // Distinct priorities of the other slots, highest first (the "groups").
        let mut groups: Vec<u8> = Slot::ALL
            .iter()
            .filter(|&&s| s != slot)
            .map(|&s| self.slot(s).priority)
            .collect();
        groups.sort_unstable_by(|x, y| y.cmp(x));
        groups.dedup();
        // A trailing priority-0 group is never raised.
        if groups.last() == Some(&0) {
            groups.pop();
        }
        let count = (groups.len() + 1).min(MAX_NIBBLE as usize) as u8;
        self.slot_mut(slot).priority = count;
        for other in Slot::ALL.into_iter().filter(|&s| s != slot) {
            let old = self.slot(other).priority;
            if let Some(rank) = groups.iter().position(|&g| g == old) {
                self.slot_mut(other).priority = count.saturating_sub(rank as u8 + 1).max(1);
            }
        }
    }

    /// Before writing `slot`: priority 0, no tries, not successful, contents forgotten. Refused
    /// for the booted slot and when the other slot is not a good fallback.
    pub fn invalidate(&mut self, slot: Slot, booted: Option<Slot>) -> Result<(), Refusal> {
        self.check_target(slot, booted)?;
        *self.slot_mut(slot) = SlotState::empty();
        Ok(())
    }

    /// After a verified write of `slot`: one try, not successful, top priority, the new root hash
    /// and version recorded (Flatcar's postinst: `cgpt add -S0 -T1`, `cgpt prioritize`).
    pub fn stage(
        &mut self,
        slot: Slot,
        booted: Option<Slot>,
        root_hash: RootHash,
        version: &str,
    ) -> Result<(), Refusal> {
        check_version(version)?;
        self.check_target(slot, booted)?;
        let s = self.slot_mut(slot);
        s.tries = 1;
        s.successful = false;
        s.root_hash = Some(root_hash);
        s.version = version.into();
        self.prioritize(slot);
        Ok(())
    }

    /// The booted slot passed its health checks: successful, no tries, top priority
    /// (Flatcar's `flatcar-setgoodroot`).
    pub fn mark_good(&mut self, booted: Slot) {
        let s = self.slot_mut(booted);
        s.successful = true;
        s.tries = 0;
        self.prioritize(booted);
    }

    /// Make the other slot boot next. Refused unless it holds a root hash and booted successfully
    /// before (a staged, never-booted slot is `cancel`'s business, not rollback's).
    pub fn rollback(&mut self, booted: Slot) -> Result<Slot, Refusal> {
        let target = booted.other();
        let t = self.slot(target);
        let reason = if t.root_hash.is_none() {
            Some("it holds no verified /usr (no root hash recorded)".to_string())
        } else if t.is_staged() {
            Some(
                "it holds a staged update that has never booted; use `wellcar-update cancel` to drop it"
                    .to_string(),
            )
        } else if !t.successful {
            Some("its last boot did not succeed (it is not marked successful)".to_string())
        } else if t.priority == 0 {
            Some("it was cleared (priority 0)".to_string())
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(Refusal::RollbackTargetNotGood {
                slot: target,
                reason,
            });
        }
        self.prioritize(target);
        Ok(target)
    }

    /// Undo a staged update that has not booted yet: the staged slot goes to priority 0 with no
    /// tries, and the booted slot to the top.
    pub fn cancel(&mut self, booted: Slot) -> Result<Slot, Refusal> {
        let target = booted.other();
        let t = self.slot(target);
        if !t.is_staged() {
            let why = if t.successful {
                format!("{target} is not a staged update (it already booted successfully; use rollback to switch to it, or nothing to undo)")
            } else {
                format!("{target} has no staged update (tries left: {})", t.tries)
            };
            return Err(Refusal::NothingStaged(why));
        }
        let t = self.slot_mut(target);
        t.priority = 0;
        t.tries = 0;
        self.prioritize(booted);
        Ok(target)
    }

    /// `slot` may be written or staged: it is not the booted slot and the other slot is a good
    /// fallback.
    fn check_target(&self, slot: Slot, booted: Option<Slot>) -> Result<(), Refusal> {
        if booted == Some(slot) {
            return Err(Refusal::SlotIsBooted(slot));
        }
        let other = self.slot(slot.other());
        if !(other.successful && other.priority > 0) {
            return Err(Refusal::NoGoodFallback { slot: slot.other() });
        }
        Ok(())
    }
}

/// Parses a root hash given as text (`wellcar-update stage --root-hash`, a block's `a_hash=`):
/// the [`RootHash`] contract, 64 lower-case hex digits, as a [`Refusal`] otherwise.
pub fn check_root_hash(h: &str) -> Result<RootHash, Refusal> {
    h.parse().map_err(|reason| Refusal::InvalidRootHash {
        value: h.into(),
        reason,
    })
}

/// Serializes a slot's root hash as before it was typed: its hex digits, or `""` for none.
fn root_hash_or_empty<S: serde::Serializer>(
    hash: &Option<RootHash>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match hash {
        Some(hash) => serializer.collect_str(hash),
        None => serializer.serialize_str(""),
    }
}

/// A version a slot is given when it is written ([`BootState::stage`], [`BootState::fresh`]) is
/// an [`OsVersion`], never empty. Strict on write only: reading is [`readable_version`].
pub fn check_version(v: &str) -> Result<OsVersion, Refusal> {
    OsVersion::parse(v).map_err(Refusal::InvalidVersion)
}

/// Whether `v` is accepted as a slot's version when a block is *read*
/// ([`envblock::decode`](crate::envblock::decode)): empty (an empty slot), or 1-40 bytes of
/// `[A-Za-z0-9._+-]`, the grammar every build checked before the [`OsVersion`] contract (so a
/// block an older build wrote, with `1.2`, `01.0.0` or `wellcar-update stage`'s old default
/// `unknown`, still loads, and a machine can update away from it). Decoding is lenient, writing
/// strict ([`check_version`]); a text no build wrote (a space, a `#`, 41 bytes) still makes the
/// copy invalid.
pub fn readable_version(v: &str) -> bool {
    v.len() <= MAX_VERSION_LEN
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._+-".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: RootHash = RootHash::from_bytes([0x11; 32]);
    const H2: RootHash = RootHash::from_bytes([0x22; 32]);

    fn attrs(s: &BootState) -> [(u8, u8, bool); 2] {
        [
            (s.a.priority, s.a.tries, s.a.successful),
            (s.b.priority, s.b.tries, s.b.successful),
        ]
    }

    #[test]
    fn flatcar_state_table_is_reproduced() {
        // flatcar.md §2.7, A running, update to B.
        let mut s = BootState::fresh(H1, "1.0.0").unwrap();
        assert_eq!(attrs(&s), [(1, 0, true), (0, 0, false)]);
        assert_eq!(s.next_boot(), Some(Slot::A));
        s.stage(Slot::B, Some(Slot::A), H2, "1.1.0").unwrap();
        assert_eq!(attrs(&s), [(1, 0, true), (2, 1, false)]);
        let mut failed = s.clone();
        assert_eq!(s.bootloader_pick(), Some(Slot::B));
        assert_eq!(attrs(&s), [(1, 0, true), (2, 0, false)]);
        s.mark_good(Slot::B);
        assert_eq!(attrs(&s), [(1, 0, true), (2, 0, true)]);
        // The failure path: B picked, never marked, next boot goes to A which marks itself.
        assert_eq!(failed.bootloader_pick(), Some(Slot::B));
        assert_eq!(failed.bootloader_pick(), Some(Slot::A));
        failed.mark_good(Slot::A);
        assert_eq!(attrs(&failed), [(2, 0, true), (1, 0, false)]);
        assert!(!failed.b.bootable());
    }

    #[test]
    fn cgpt_prioritize_example() {
        let mut s = BootState::fresh(H1, "1.0.0").unwrap();
        s.prioritize(Slot::B);
        assert_eq!((s.a.priority, s.b.priority), (1, 2));
        s.prioritize(Slot::A);
        assert_eq!((s.a.priority, s.b.priority), (2, 1));
        // A priority-0 slot stays at 0.
        let mut s = BootState::fresh(H1, "1.0.0").unwrap();
        s.prioritize(Slot::A);
        assert_eq!((s.a.priority, s.b.priority), (1, 0));
    }

    #[test]
    fn ties_go_to_usr_a_and_priority_zero_never_boots() {
        let mut s = BootState::fresh(H1, "1.0.0").unwrap();
        s.b = s.a.clone();
        assert_eq!(s.next_boot(), Some(Slot::A));
        s.a.priority = 0;
        assert_eq!(s.next_boot(), Some(Slot::B));
        s.b.priority = 0;
        assert_eq!(s.next_boot(), None);
    }

    #[test]
    fn refusals_name_the_reason() {
        let mut s = BootState::fresh(H1, "1.0.0").unwrap();
        assert_eq!(
            s.stage(Slot::A, Some(Slot::A), H2, "2.0.0"),
            Err(Refusal::SlotIsBooted(Slot::A))
        );
        let e = s.rollback(Slot::A).unwrap_err();
        assert!(e.to_string().contains("no verified /usr"), "{e}");
        let e = s.cancel(Slot::A).unwrap_err();
        assert!(e.to_string().contains("no staged update"), "{e}");
        s.stage(Slot::B, Some(Slot::A), H2, "2.0.0").unwrap();
        let e = s.rollback(Slot::A).unwrap_err();
        assert!(e.to_string().contains("use `wellcar-update cancel`"), "{e}");
        assert_eq!(s.cancel(Slot::A), Ok(Slot::B));
        assert_eq!(attrs(&s), [(1, 0, true), (0, 0, false)]);
        let e = check_root_hash("XYZ").unwrap_err();
        assert!(
            matches!(
                e,
                Refusal::InvalidRootHash {
                    reason: RootHashError::Length { len: 3 },
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("64 lower-case hex digits"), "{e}");
        assert_eq!(check_root_hash(&H1.to_string()), Ok(H1));
        assert_eq!(
            H1.to_string(),
            "1111111111111111111111111111111111111111111111111111111111111111"
        );
        let before = s.clone();
        for bad in [
            "bad version!",
            "2",
            "1.2",
            "1.2.3.4",
            "v1.2.3",
            "1.0.0-rc1",
            "",
        ] {
            let e = s.stage(Slot::B, Some(Slot::A), H2, bad).unwrap_err();
            assert!(matches!(e, Refusal::InvalidVersion(_)), "{bad}: {e:?}");
            assert!(e.to_string().starts_with("invalid version: "), "{e}");
            assert!(BootState::fresh(H1, bad).is_err(), "{bad}");
        }
        assert_eq!(s, before, "a refused stage changes nothing");
        let too_long = format!("1.0.0+{}", "x".repeat(MAX_VERSION_LEN - 5));
        assert!(matches!(
            check_version(&too_long),
            Err(Refusal::InvalidVersion(VersionError::TooLong { .. }))
        ));
        assert_eq!(
            check_version("4799.0.0+nightly-20260821-2100").map(|v| v.to_string()),
            Ok("4799.0.0+nightly-20260821-2100".to_string())
        );
    }

    #[test]
    fn staging_from_an_unmarked_trial_boot_is_refused() {
        let mut s = BootState::fresh(H1, "1.0.0").unwrap();
        s.stage(Slot::B, Some(Slot::A), H2, "2.0.0").unwrap();
        assert_eq!(s.bootloader_pick(), Some(Slot::B));
        // Running B (not yet good): writing A would destroy the only good slot.
        assert_eq!(
            s.stage(Slot::A, Some(Slot::B), H1, "3.0.0"),
            Err(Refusal::NoGoodFallback { slot: Slot::B })
        );
        s.mark_good(Slot::B);
        s.stage(Slot::A, Some(Slot::B), H1, "3.0.0").unwrap();
        assert_eq!(s.next_boot(), Some(Slot::A));
    }

    #[test]
    fn rollback_switches_to_the_previous_good_slot() {
        let mut s = BootState::fresh(H1, "1.0.0").unwrap();
        s.stage(Slot::B, Some(Slot::A), H2, "2.0.0").unwrap();
        s.bootloader_pick();
        s.mark_good(Slot::B);
        assert_eq!(s.rollback(Slot::B), Ok(Slot::A));
        assert_eq!(s.next_boot(), Some(Slot::A));
        assert!(s.b.successful && s.b.priority == 1, "B stays a fallback");
    }

    #[test]
    fn serializes_root_hashes_as_strings_and_an_empty_slot_as_empty() {
        let s = BootState::fresh(H1, "1.0.0").unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["a"]["root_hash"], H1.to_string());
        assert_eq!(json["b"]["root_hash"], "");
        assert_eq!(json["b"]["version"], "");
    }
}
