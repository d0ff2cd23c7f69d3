//! The boot state on the ESP: two GRUB environment blocks, `/wellcar/state-0.env` and
//! `/wellcar/state-1.env` ([`STATE_FILES`]), one 512-byte sector each ([`crate::envblock`]).
//!
//! **Reading** (GRUB and [`Esp::load`] alike): a copy is valid when it decodes and its `wc_gen`
//! equals its `wc_seal`; the valid copy with the higher generation is current (ties: copy 0).
//!
//! **Host writes** ([`Esp::commit`]) put generation + 1 into the *other* copy, in place: the file
//! is opened without truncation, its 512 bytes are overwritten with one `pwrite`, then `fsync`.
//! The current copy is never touched, so a power cut during the write leaves either the old
//! state (the torn copy is invalid or still the older generation) or the new one.
//!
//! **GRUB's write** (decrementing the picked slot's tries before booting it) goes into the
//! *current* copy with `save_env`, which changes one hex digit in place: a single byte differs,
//! so a torn write yields the old or the new block.
//!
//! Both files are created at build time and never change size, so after the build no FAT
//! metadata (allocation table, directory entry sizes or clusters) is ever rewritten; Linux only
//! refreshes a directory entry's timestamps, and GRUB writes file data sectors only. That is why
//! there is no write-temp-and-rename here: on FAT, rename is itself a multi-sector metadata
//! update, and GRUB cannot rename at all.
//!
//! Concurrent host writers are serialised by an exclusive `flock` on `state-0.env`.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use wellcar_disk::Slot;

use crate::envblock::{self, BlockError, BLOCK_SIZE};
use crate::state::{BootState, Refusal};

/// The state copies, relative to the ESP root (the ESP layout, `wellcar_contract::esp`).
pub use wellcar_contract::esp::STATE_FILES;

/// Errors of the on-ESP store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading, writing, syncing or locking a state file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A state file does not have its fixed size (it must never be reallocated).
    #[error(
        "{path} is {len} bytes, expected 512 (state files are written in place, never resized)"
    )]
    Size {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// Neither copy is valid.
    #[error("no valid boot state under {esp}: copy 0: {first}; copy 1: {second}")]
    NoValidCopy {
        /// The ESP root.
        esp: PathBuf,
        /// Why copy 0 is invalid.
        first: String,
        /// Why copy 1 is invalid.
        second: String,
    },
    /// The state machine refused the operation; nothing was written.
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// The loaded state and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The current state.
    pub state: BootState,
    /// Its generation.
    pub generation: u64,
    /// Which copy (0 or 1) holds it.
    pub copy: usize,
    /// The current copy's bytes (GRUB rewrites this block in place).
    pub block: [u8; BLOCK_SIZE],
    /// Why the other copy is not usable, if it is not (informational).
    pub other_invalid: Option<BlockError>,
}

/// One planned in-place write of a state copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedWrite {
    /// The file.
    pub path: PathBuf,
    /// Its content before the write.
    pub old: [u8; BLOCK_SIZE],
    /// Its content after the write.
    pub new: [u8; BLOCK_SIZE],
}

/// The boot state store of one mounted (or unpacked) ESP.
#[derive(Debug, Clone)]
pub struct Esp {
    root: PathBuf,
}

impl Esp {
    /// The store under the ESP mounted (or staged as a tree) at `root`, e.g. `/boot`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Esp { root: root.into() }
    }

    /// Path of copy `i`.
    pub fn copy_path(&self, i: usize) -> PathBuf {
        self.root.join(STATE_FILES[i])
    }

    /// Creates both copies for `state` (build time: copy 0 generation 1, copy 1 generation 0,
    /// same state), creating `/wellcar` if needed.
    pub fn create(&self, state: &BootState) -> Result<(), StoreError> {
        let dir = self.root.join(wellcar_contract::esp::WELLCAR_DIR);
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            action: "creating",
            path: dir,
            source,
        })?;
        for (i, gen) in [(0, 1), (1, 0)] {
            let path = self.copy_path(i);
            fs::write(&path, envblock::encode(state, gen)).map_err(|source| StoreError::Io {
                action: "writing",
                path,
                source,
            })?;
        }
        Ok(())
    }

    /// Reads both copies and returns the current state.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let blocks = [self.read_copy(0)?, self.read_copy(1)?];
        let decoded = [envblock::decode(&blocks[0]), envblock::decode(&blocks[1])];
        let pick = match (&decoded[0], &decoded[1]) {
            (Ok((_, g0)), Ok((_, g1))) => usize::from(g1 > g0),
            (Ok(_), Err(_)) => 0,
            (Err(_), Ok(_)) => 1,
            (Err(e0), Err(e1)) => {
                return Err(StoreError::NoValidCopy {
                    esp: self.root.clone(),
                    first: e0.to_string(),
                    second: e1.to_string(),
                })
            }
        };
        let [d0, d1] = decoded;
        let (current, other) = if pick == 0 { (d0, d1) } else { (d1, d0) };
        let (state, generation) = current.expect("picked a valid copy");
        Ok(Loaded {
            state,
            generation,
            copy: pick,
            block: blocks[pick],
            other_invalid: other.err(),
        })
    }

    /// The write that makes `new` current after `loaded`: into the other copy, with a generation
    /// above the current one and above any generation the other copy mentions (a torn earlier
    /// write may have left its number there; reusing it could validate a mix of two writes).
    pub fn plan_commit(
        &self,
        loaded: &Loaded,
        new: &BootState,
    ) -> Result<PlannedWrite, StoreError> {
        let target = 1 - loaded.copy;
        let old = self.read_copy(target)?;
        let generation = loaded
            .generation
            .max(envblock::highest_generation_mentioned(&old))
            + 1;
        Ok(PlannedWrite {
            path: self.copy_path(target),
            old,
            new: envblock::encode(new, generation),
        })
    }

    /// Writes `new` as the next generation (see the module docs) and returns it as loaded.
    pub fn commit(&self, loaded: &Loaded, new: &BootState) -> Result<Loaded, StoreError> {
        let plan = self.plan_commit(loaded, new)?;
        write_in_place(&plan.path, &plan.new)?;
        let (_, generation) = envblock::decode(&plan.new).expect("encode output decodes");
        Ok(Loaded {
            state: new.clone(),
            generation,
            copy: 1 - loaded.copy,
            block: plan.new,
            other_invalid: None,
        })
    }

    /// Locks the store, loads it, applies `op` to the state and commits the result if it changed.
    /// A [`Refusal`] from `op` writes nothing.
    pub fn update<T>(
        &self,
        op: impl FnOnce(&mut BootState) -> Result<T, Refusal>,
    ) -> Result<(T, Loaded), StoreError> {
        let _lock = self.lock()?;
        let loaded = self.load()?;
        let mut next = loaded.state.clone();
        let out = op(&mut next)?;
        let loaded = if next == loaded.state {
            loaded
        } else {
            self.commit(&loaded, &next)?
        };
        Ok((out, loaded))
    }

    /// What GRUB does at boot, for tests and tools: the slot it picks, and the in-place write of
    /// the current copy that consumes one try (none when the slot has no tries left).
    pub fn plan_bootloader(&self, loaded: &Loaded) -> (Option<Slot>, Option<PlannedWrite>) {
        let mut next = loaded.state.clone();
        let Some(slot) = next.bootloader_pick() else {
            return (None, None);
        };
        if next == loaded.state {
            return (Some(slot), None);
        }
        let new = envblock::with_tries(&loaded.block, slot, next.slot(slot).tries)
            .expect("a decoded block has every tries key");
        (
            Some(slot),
            Some(PlannedWrite {
                path: self.copy_path(loaded.copy),
                old: loaded.block,
                new,
            }),
        )
    }

    /// Holds an exclusive lock on the store until dropped.
    pub fn lock(&self) -> Result<File, StoreError> {
        let path = self.copy_path(0);
        let f = File::open(&path).map_err(|source| StoreError::Io {
            action: "opening",
            path: path.clone(),
            source,
        })?;
        f.lock().map_err(|source| StoreError::Io {
            action: "locking",
            path,
            source,
        })?;
        Ok(f)
    }

    fn read_copy(&self, i: usize) -> Result<[u8; BLOCK_SIZE], StoreError> {
        let path = self.copy_path(i);
        let bytes = fs::read(&path).map_err(|source| StoreError::Io {
            action: "reading",
            path: path.clone(),
            source,
        })?;
        bytes.as_slice().try_into().map_err(|_| StoreError::Size {
            path,
            len: bytes.len() as u64,
        })
    }
}

/// Overwrites the 512-byte file at `path` in place (no truncation, no reallocation) and syncs it.
pub fn write_in_place(path: &Path, block: &[u8; BLOCK_SIZE]) -> Result<(), StoreError> {
    let io = |action: &'static str| {
        move |source| StoreError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("opening"))?;
    let len = f.metadata().map_err(io("inspecting"))?.len();
    if len != BLOCK_SIZE as u64 {
        return Err(StoreError::Size {
            path: path.into(),
            len,
        });
    }
    f.write_all_at(block, 0).map_err(io("writing"))?;
    f.sync_all().map_err(io("syncing"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wellcar_contract::RootHash;

    const H1: RootHash = RootHash::from_bytes([0x11; 32]);
    const H2: RootHash = RootHash::from_bytes([0x22; 32]);

    /// SplitMix64: a small deterministic generator, so a failing seed can be replayed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// How a cut write leaves the sector.
    #[derive(Debug, Clone, Copy)]
    enum Tear {
        /// The first `n` bytes are new, the rest old.
        NewPrefix(usize),
        /// The first `n` bytes are old, the rest new.
        OldPrefix(usize),
        /// The first `n` bytes are new, the rest zeros (a truncated write).
        ZeroTail(usize),
    }

    fn torn(w: &PlannedWrite, tear: Tear) -> [u8; BLOCK_SIZE] {
        let mut out = w.old;
        match tear {
            Tear::NewPrefix(n) => out[..n].copy_from_slice(&w.new[..n]),
            Tear::OldPrefix(n) => out[n..].copy_from_slice(&w.new[n..]),
            Tear::ZeroTail(n) => {
                out[..n].copy_from_slice(&w.new[..n]);
                out[n..].fill(0);
            }
        }
        out
    }

    fn fresh_esp() -> (tempfile::TempDir, Esp) {
        let dir = tempfile::tempdir().unwrap();
        let esp = Esp::new(dir.path());
        esp.create(&BootState::fresh(H1, "1.0.0").unwrap()).unwrap();
        (dir, esp)
    }

    #[test]
    fn fresh_store_boots_usr_a() {
        let (_d, esp) = fresh_esp();
        let l = esp.load().unwrap();
        assert_eq!((l.copy, l.generation), (0, 1));
        assert_eq!(l.state.next_boot(), Some(Slot::A));
        assert_eq!(esp.plan_bootloader(&l), (Some(Slot::A), None));
    }

    #[test]
    fn commits_alternate_copies_and_refusals_write_nothing() {
        let (_d, esp) = fresh_esp();
        let (_, l) = esp
            .update(|s| s.stage(Slot::B, Some(Slot::A), H2, "1.1.0"))
            .unwrap();
        assert_eq!((l.copy, l.generation), (1, 2));
        assert_eq!(esp.load().unwrap(), l);
        let before = fs::read(esp.copy_path(0)).unwrap();
        let e = esp.update(|s| s.rollback(Slot::A)).unwrap_err();
        assert!(matches!(e, StoreError::Refused(_)), "{e}");
        assert_eq!(fs::read(esp.copy_path(0)).unwrap(), before);
        // GRUB consumes B's try in copy 1, in place.
        let (slot, w) = esp.plan_bootloader(&l);
        assert_eq!(slot, Some(Slot::B));
        let w = w.unwrap();
        assert_eq!(w.path, esp.copy_path(1));
        write_in_place(&w.path, &w.new).unwrap();
        let l = esp.load().unwrap();
        assert_eq!((l.state.b.tries, l.generation), (0, 2));
    }

    /// An ESP an older build wrote, whose booted slot records `unknown` (the old
    /// `wellcar-update stage --version` default), still loads and takes an update; only the new
    /// version is checked, and the old slot keeps its text.
    #[test]
    fn an_older_builds_version_loads_and_only_new_versions_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let esp = Esp::new(dir.path());
        let mut older = BootState::fresh(H1, "1.0.0").unwrap();
        older.a.version = "unknown".into();
        esp.create(&older).unwrap();
        let l = esp.load().expect("an older build's state loads");
        assert_eq!(l.state.a.version, "unknown");
        assert_eq!(l.state.a.os_version(), None);
        let before = [
            fs::read(esp.copy_path(0)).unwrap(),
            fs::read(esp.copy_path(1)).unwrap(),
        ];
        let e = esp
            .update(|s| s.stage(Slot::B, Some(Slot::A), H2, "unknown"))
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Refused(Refusal::InvalidVersion(_))),
            "{e}"
        );
        assert_eq!(fs::read(esp.copy_path(0)).unwrap(), before[0]);
        assert_eq!(fs::read(esp.copy_path(1)).unwrap(), before[1]);
        let (_, l) = esp
            .update(|s| s.stage(Slot::B, Some(Slot::A), H2, "1.1.0"))
            .unwrap();
        assert_eq!(esp.load().unwrap(), l);
        assert_eq!(
            (l.state.a.version.as_str(), l.state.b.version.as_str()),
            ("unknown", "1.1.0")
        );
        assert_eq!(l.state.next_boot(), Some(Slot::B));
    }

    #[test]
    fn a_resized_state_file_is_an_error_naming_it() {
        let (_d, esp) = fresh_esp();
        fs::write(esp.copy_path(1), b"short").unwrap();
        let l = esp.load();
        let e = l.unwrap_err().to_string();
        assert!(e.contains("state-1.env is 5 bytes"), "{e}");
    }

    #[test]
    fn both_copies_invalid_is_reported_with_both_reasons() {
        let (_d, esp) = fresh_esp();
        fs::write(esp.copy_path(0), [0u8; 512]).unwrap();
        fs::write(esp.copy_path(1), [b'#'; 512]).unwrap();
        let e = esp.load().unwrap_err().to_string();
        assert!(
            e.contains("copy 0: no GRUB environment block signature"),
            "{e}"
        );
        assert!(
            e.contains("copy 1: no GRUB environment block signature"),
            "{e}"
        );
    }

    /// Random lives of a machine: staging, boots (healthy or not), mark-good, rollback, cancel and
    /// clearing, each write cut with some probability at a random byte in one of three ways, after
    /// which the machine reboots. After every cut the state must be exactly the state before or
    /// after the interrupted write, some slot must be bootable and a known-good fallback must
    /// remain.
    #[test]
    fn power_cuts_never_leave_the_machine_without_a_bootable_slot() {
        let mut cuts = 0;
        let mut kinds = [0usize; 3];
        let mut boots_of = [0usize; 2];
        for seed in 0..100u64 {
            let mut rng = Rng(seed);
            let (_d, esp) = fresh_esp();
            let mut booted = Slot::A;
            let mut version = 1u32;
            for _step in 0..40 {
                let loaded = esp.load().expect("a valid copy always exists");
                let mut next = loaded.state.clone();
                let op = rng.below(6);
                let write = match op {
                    // Host operations, through the same plan as `commit`.
                    0..=3 => {
                        let r = match op {
                            0 => {
                                version += 1;
                                let h = if rng.below(2) == 0 { H1 } else { H2 };
                                next.stage(
                                    booted.other(),
                                    Some(booted),
                                    h,
                                    &format!("1.{version}.0"),
                                )
                            }
                            1 => {
                                next.mark_good(booted);
                                Ok(())
                            }
                            2 => next.rollback(booted).map(|_| ()),
                            _ => {
                                if rng.below(2) == 0 {
                                    next.cancel(booted).map(|_| ())
                                } else {
                                    next.invalidate(booted.other(), Some(booted))
                                }
                            }
                        };
                        if r.is_err() || next == loaded.state {
                            continue;
                        }
                        esp.plan_commit(&loaded, &next).unwrap()
                    }
                    // A reboot: GRUB picks and consumes a try.
                    _ => {
                        let (slot, w) = esp.plan_bootloader(&loaded);
                        booted = slot.expect("always a bootable slot");
                        boots_of[usize::from(booted == Slot::B)] += 1;
                        match w {
                            Some(w) => w,
                            None => continue,
                        }
                    }
                };
                let grub_write = op >= 4;
                if rng.below(3) == 0 {
                    // Power cut during this write.
                    let n = rng.below(BLOCK_SIZE as u64 + 1) as usize;
                    let kind = rng.below(3) as usize;
                    kinds[kind] += 1;
                    let tear = [Tear::NewPrefix(n), Tear::OldPrefix(n), Tear::ZeroTail(n)][kind];
                    fs::write(&write.path, torn(&write, tear)).unwrap();
                    cuts += 1;
                    let after = esp.load().unwrap_or_else(|e| {
                        panic!("seed {seed}: no valid state after {tear:?}: {e}")
                    });
                    let expected_old = &loaded.state;
                    let zero_filled_grub_write = grub_write && matches!(tear, Tear::ZeroTail(_));
                    if zero_filled_grub_write {
                        // The in-place copy can be lost to zeros; the previous generation is
                        // still a consistent state with a fallback.
                        assert!(after.generation <= loaded.generation, "seed {seed}");
                    } else {
                        assert!(
                            after.state == *expected_old || after.state == next_after(&esp, &write),
                            "seed {seed}: {tear:?} left a state that is neither old nor new: {:?}",
                            after.state
                        );
                    }
                    assert!(after.state.has_fallback(), "seed {seed}: no fallback");
                    // The machine reboots.
                    let (slot, w) = esp.plan_bootloader(&after);
                    booted = slot.expect("bootable after a cut");
                    if let Some(w) = w {
                        write_in_place(&w.path, &w.new).unwrap();
                    }
                } else {
                    write_in_place(&write.path, &write.new).unwrap();
                    let after = esp.load().unwrap();
                    assert!(after.state.has_fallback(), "seed {seed}");
                    // Healthy boots are marked good most of the time.
                    if grub_write && rng.below(4) != 0 {
                        esp.update(|s| {
                            s.mark_good(booted);
                            Ok(())
                        })
                        .unwrap();
                    }
                }
                let now = esp.load().unwrap();
                assert!(
                    now.state.next_boot().is_some(),
                    "seed {seed}: nothing bootable"
                );
                assert!(now.state.has_fallback(), "seed {seed}: no good fallback");
            }
        }
        eprintln!("{cuts} power cuts, tear kinds {kinds:?}, boots per slot {boots_of:?}");
        assert!(cuts >= 200, "only {cuts} power cuts");
        assert!(kinds.iter().all(|&k| k > 30), "tear kinds {kinds:?}");
        assert!(
            boots_of.iter().all(|&b| b > 20),
            "boots per slot {boots_of:?}"
        );
    }

    /// The state `write` would have left if it completed.
    fn next_after(esp: &Esp, write: &PlannedWrite) -> BootState {
        let _ = esp;
        envblock::decode(&write.new).unwrap().0
    }
}
