//! The state-changing commands (`mark-good`, `rollback`, `cancel`, `stage`) and the `/usr`
//! health check. Each change goes through [`wellcar_bootstate::Esp::update`]: locked, refused
//! without writing when the state machine says no, otherwise one tear-safe write. What each did
//! is reported as an [`Outcome`] (then, with `--mirror-gpt`, a [`Warning`] if the GPT could not
//! be written).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use wellcar_bootstate::state::check_root_hash;
use wellcar_bootstate::{gptprio, Loaded, Slot};
use wellcar_contract::RootHash;

use crate::{Context, Event, Warning};

/// What a command of this module did or found. Its `Display` is the line `wellcar-update`
/// prints on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `mark-good`: `slot` is successful with `priority`, the other slot has `other_priority`.
    /// `changed` is false when it already was (nothing was written).
    MarkedGood {
        /// The booted slot.
        slot: Slot,
        /// Its priority now.
        priority: u8,
        /// The other slot's priority now.
        other_priority: u8,
        /// Whether the state was written.
        changed: bool,
    },
    /// `rollback`: `target` boots next; `fallback` (the booted slot) stays as its fallback.
    RolledBack {
        /// The slot that boots next.
        target: Slot,
        /// The version it holds ("" if none is recorded).
        version: String,
        /// The booted slot.
        fallback: Slot,
    },
    /// `cancel`: the update staged in `target` is dropped; `booted` boots next.
    Cancelled {
        /// The slot that held the staged update.
        target: Slot,
        /// The booted slot.
        booted: Slot,
    },
    /// `stage`: `slot` boots next, once, with `version`.
    Staged {
        /// The staged slot.
        slot: Slot,
        /// The version it holds.
        version: String,
    },
    /// `check-usr` passed: `/usr` is the verity device over `partition`, the booted `slot`.
    UsrVerified {
        /// The booted slot.
        slot: Slot,
        /// Its partition's kernel name (`vda3`).
        partition: String,
        /// The root hash booted with, equal to the recorded one.
        root_hash: RootHash,
    },
    /// `trial-timeout`: the command line names no slot; nothing to do.
    BootedUnknown,
    /// `trial-timeout`: the booted slot is marked good, so this is not a trial boot.
    NotATrial(Slot),
    /// `trial-timeout`: the trial boot of `slot` is rebooted (reported before the reboot);
    /// `next` is the slot the next boot picks.
    TrialRebooting {
        /// The booted slot.
        slot: Slot,
        /// The slot GRUB picks next, if any.
        next: Option<Slot>,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::MarkedGood {
                slot,
                priority,
                changed: false,
                ..
            } => write!(f, "{slot} is already marked good (priority {priority})"),
            Outcome::MarkedGood {
                slot,
                priority,
                other_priority,
                changed: true,
            } => write!(
                f,
                "{slot} marked good: priority {priority}, {} now priority {other_priority}",
                slot.other()
            ),
            Outcome::RolledBack {
                target,
                version,
                fallback,
            } => {
                let version = if version.is_empty() {
                    "unknown version".into()
                } else {
                    format!("version {version}")
                };
                write!(
                    f,
                    "{target} ({version}) will boot next; reboot to switch. {fallback} stays as its fallback."
                )
            }
            Outcome::Cancelled { target, booted } => {
                write!(f, "staged update in {target} cancelled; {booted} boots next")
            }
            Outcome::Staged { slot, version } => write!(
                f,
                "{slot} staged ({version}): it boots next, once; reboot to try it"
            ),
            Outcome::UsrVerified {
                slot,
                partition,
                root_hash,
            } => write!(
                f,
                "/usr is the verity device of {slot} ({partition}, root hash {root_hash})"
            ),
            Outcome::BootedUnknown => write!(f, "booted slot unknown: nothing to do"),
            Outcome::NotATrial(slot) => write!(f, "{slot} is marked good: not a trial boot"),
            Outcome::TrialRebooting { slot, next } => write!(
                f,
                "trial boot of {slot} did not pass its health checks in time; rebooting (next boot: {})",
                next.map_or("none".into(), |s| s.to_string())
            ),
        }
    }
}

/// `stage` arguments.
#[derive(Debug, clap::Args)]
pub struct StageOpts {
    /// The slot that was written: A, B, USR-A or USR-B.
    #[arg(value_parser = parse_slot)]
    pub slot: Slot,
    /// The slot's dm-verity root hash (64 lower-case hex digits), as verified after writing
    /// it.
    #[arg(long)]
    pub root_hash: String,
    /// The OS version the slot now holds (MAJOR.MINOR.PATCH, optionally +build: the version
    /// the update server and the payload name).
    #[arg(long)]
    pub version: String,
}

/// Parses a slot name for clap.
pub fn parse_slot(s: &str) -> Result<Slot, String> {
    Slot::parse(s).ok_or_else(|| format!("{s:?} is not a slot: use A, B, USR-A or USR-B"))
}

/// `mark-good`: the booted slot is successful and top priority. Writes nothing when it already is.
pub fn mark_good(ctx: &Context, on_event: &mut impl FnMut(Event)) -> anyhow::Result<()> {
    let booted = ctx.require_booted()?;
    let before = ctx.esp.load().context("reading the boot state")?;
    let (_, after) = ctx
        .esp
        .update(|s| {
            s.mark_good(booted);
            Ok(())
        })
        .context("marking the booted slot good")?;
    on_event(Event::Done(Outcome::MarkedGood {
        slot: booted,
        priority: after.state.slot(booted).priority,
        other_priority: after.state.slot(booted.other()).priority,
        changed: after.generation != before.generation,
    }));
    mirror(ctx, &after, on_event);
    Ok(())
}

/// `rollback`: the other slot boots next, if it holds a previously good version.
pub fn rollback(ctx: &Context, on_event: &mut impl FnMut(Event)) -> anyhow::Result<()> {
    let booted = ctx.require_booted()?;
    let (target, after) = ctx
        .esp
        .update(|s| s.rollback(booted))
        .context("rollback refused")?;
    on_event(Event::Done(Outcome::RolledBack {
        target,
        version: after.state.slot(target).version.clone(),
        fallback: booted,
    }));
    mirror(ctx, &after, on_event);
    Ok(())
}

/// `cancel`: drop a staged update that has not booted.
pub fn cancel(ctx: &Context, on_event: &mut impl FnMut(Event)) -> anyhow::Result<()> {
    let booted = ctx.require_booted()?;
    let (target, after) = ctx
        .esp
        .update(|s| s.cancel(booted))
        .context("cancel refused")?;
    on_event(Event::Done(Outcome::Cancelled { target, booted }));
    mirror(ctx, &after, on_event);
    Ok(())
}

/// `stage SLOT`: one try, not successful, top priority, with the given root hash and version.
pub fn stage(
    ctx: &Context,
    opts: &StageOpts,
    on_event: &mut impl FnMut(Event),
) -> anyhow::Result<()> {
    // A bad root hash is a refusal (exit status 2), like a bad version; nothing is written.
    let root_hash =
        check_root_hash(&opts.root_hash).with_context(|| format!("stage {} refused", opts.slot))?;
    let (_, after) = ctx
        .esp
        .update(|s| s.stage(opts.slot, ctx.booted, root_hash, &opts.version))
        .with_context(|| format!("stage {} refused", opts.slot))?;
    on_event(Event::Done(Outcome::Staged {
        slot: opts.slot,
        version: opts.version.clone(),
    }));
    mirror(ctx, &after, on_event);
    Ok(())
}

/// `check-usr`: `/usr` is mounted from the dm device `usr`, whose only lower device is the booted
/// slot's partition, and the command line's root hash is the one recorded for that slot.
pub fn check_usr(ctx: &Context, on_event: &mut impl FnMut(Event)) -> anyhow::Result<()> {
    let booted = ctx.require_booted()?;
    let state = ctx.esp.load().context("reading the boot state")?.state;
    let (major, minor) = mount_device("/proc/self/mountinfo", "/usr")?;
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let name = std::fs::read_to_string(sys.join("dm/name"))
        .with_context(|| format!("/usr ({major}:{minor}) is not a device-mapper device"))?;
    if name.trim() != "usr" {
        bail!("/usr is on dm device {:?}, expected \"usr\"", name.trim());
    }
    let lower: Vec<String> = std::fs::read_dir(sys.join("slaves"))
        .with_context(|| format!("listing {}", sys.join("slaves").display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let by_partuuid = PathBuf::from(format!("/dev/disk/by-partuuid/{}", booted.unique_guid()));
    let partition = std::fs::canonicalize(&by_partuuid)
        .with_context(|| format!("resolving {}", by_partuuid.display()))?;
    let part_name = partition
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if lower != [part_name.clone()] {
        bail!("/usr's verity device sits on {lower:?}, not on the booted {booted} ({part_name})");
    }
    let usrhash_text = ctx
        .cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("verity.usrhash="))
        .context("the kernel command line has no verity.usrhash=")?;
    let usrhash: RootHash = usrhash_text.parse().with_context(|| {
        format!("the kernel command line's verity.usrhash={usrhash_text} is not a root hash")
    })?;
    let Some(recorded) = state.slot(booted).root_hash else {
        bail!("booted with root hash {usrhash} but the boot state records none for {booted}");
    };
    if usrhash != recorded {
        bail!("booted with root hash {usrhash} but the boot state records {recorded} for {booted}");
    }
    on_event(Event::Done(Outcome::UsrVerified {
        slot: booted,
        partition: part_name,
        root_hash: usrhash,
    }));
    Ok(())
}

/// `trial-timeout`: a trial boot (the booted slot not marked successful) that still has not
/// passed its health checks is rebooted, so that GRUB falls back to the good slot. A slot
/// already marked good is never rebooted by this (that would loop on a broken check).
pub fn trial_timeout(ctx: &Context, on_event: &mut impl FnMut(Event)) -> anyhow::Result<()> {
    let Some(booted) = ctx.booted else {
        on_event(Event::Done(Outcome::BootedUnknown));
        return Ok(());
    };
    let state = ctx.esp.load().context("reading the boot state")?.state;
    if state.slot(booted).successful {
        on_event(Event::Done(Outcome::NotATrial(booted)));
        return Ok(());
    }
    on_event(Event::Done(Outcome::TrialRebooting {
        slot: booted,
        next: state.next_boot(),
    }));
    let status = std::process::Command::new("systemctl")
        .arg("reboot")
        .status()
        .context("running systemctl reboot")?;
    if !status.success() {
        bail!("systemctl reboot failed: {status}");
    }
    Ok(())
}

/// The `major:minor` of the filesystem mounted at `mount_point` (last mount wins), from a
/// `mountinfo` file.
pub fn mount_device(mountinfo: impl AsRef<Path>, mount_point: &str) -> anyhow::Result<(u32, u32)> {
    let path = mountinfo.as_ref();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_mount_device(&text, mount_point)
        .with_context(|| format!("{mount_point} is not a mount point in {}", path.display()))
}

fn parse_mount_device(mountinfo: &str, mount_point: &str) -> Option<(u32, u32)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&mount_point))
                .then(|| f.get(2).copied())
                .flatten()
        })
        .next_back()
        .and_then(|dev| {
            let (a, b) = dev.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
}

/// Best effort: the ESP state is authoritative, so a failed mirror is only a [`Warning`].
fn mirror(ctx: &Context, l: &Loaded, on_event: &mut impl FnMut(Event)) {
    if let Some(disk) = &ctx.mirror_gpt {
        match gptprio::mirror(disk, &l.state) {
            Ok(()) => tracing::info!("mirrored the boot state into the GPT of {}", disk.display()),
            Err(e) => on_event(Event::Warning(Warning::GptNotMirrored(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wellcar_bootstate::{BootState, Esp};

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    /// A fresh ESP (USR-A good with 1.0.0) in `dir`, booted from `booted`.
    fn context(dir: &Path, booted: Option<Slot>) -> Context {
        let esp = Esp::new(dir.join("esp"));
        if !dir.join("esp").exists() {
            esp.create(&BootState::fresh(H1.parse().unwrap(), "1.0.0").unwrap())
                .unwrap();
        }
        Context {
            esp,
            booted,
            cmdline: String::new(),
            mirror_gpt: None,
        }
    }

    fn events(f: impl FnOnce(&mut dyn FnMut(Event)) -> anyhow::Result<()>) -> Vec<Event> {
        let mut out = Vec::new();
        f(&mut |e| out.push(e)).unwrap();
        out
    }

    fn outcomes(events: &[Event]) -> Vec<&Outcome> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Done(o) => Some(o),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn state_changes_report_their_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let on_a = context(dir.path(), Some(Slot::A));
        let opts = StageOpts {
            slot: Slot::B,
            root_hash: H2.into(),
            version: "1.1.0".into(),
        };
        let ev = events(|on| stage(&on_a, &opts, &mut |e| on(e)));
        assert_eq!(
            outcomes(&ev),
            [&Outcome::Staged {
                slot: Slot::B,
                version: "1.1.0".into()
            }]
        );
        assert_eq!(
            ev[0].to_string(),
            "USR-B staged (1.1.0): it boots next, once; reboot to try it"
        );
        let ev = events(|on| cancel(&on_a, &mut |e| on(e)));
        assert_eq!(
            outcomes(&ev),
            [&Outcome::Cancelled {
                target: Slot::B,
                booted: Slot::A
            }]
        );
        let ev = events(|on| mark_good(&on_a, &mut |e| on(e)));
        let [Outcome::MarkedGood {
            slot: Slot::A,
            changed: false,
            priority,
            ..
        }] = outcomes(&ev)[..]
        else {
            panic!("{ev:?}");
        };
        assert_eq!(
            ev[0].to_string(),
            format!("USR-A is already marked good (priority {priority})")
        );
    }

    #[test]
    fn a_failed_gpt_mirror_is_a_warning_naming_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = context(dir.path(), Some(Slot::A));
        let disk = dir.path().join("no-such-disk");
        ctx.mirror_gpt = Some(disk.clone());
        let ev = events(|on| mark_good(&ctx, &mut |e| on(e)));
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(matches!(ev[0], Event::Done(Outcome::MarkedGood { .. })));
        let Event::Warning(w @ Warning::GptNotMirrored(_)) = &ev[1] else {
            panic!("{ev:?}");
        };
        let text = w.to_string();
        assert!(text.starts_with("not mirrored into the GPT: "), "{text}");
        assert!(text.contains("no-such-disk"), "{text}");
    }

    #[test]
    fn trial_timeout_leaves_good_and_unknown_slots_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ev = events(|on| trial_timeout(&context(dir.path(), None), &mut |e| on(e)));
        assert_eq!(outcomes(&ev), [&Outcome::BootedUnknown]);
        let ev = events(|on| trial_timeout(&context(dir.path(), Some(Slot::A)), &mut |e| on(e)));
        assert_eq!(outcomes(&ev), [&Outcome::NotATrial(Slot::A)]);
        assert_eq!(ev[0].to_string(), "USR-A is marked good: not a trial boot");
    }

    #[test]
    fn outcomes_read_as_before() {
        // tests/abboot.rs reads the rollback line from ssh.
        let rolled = Outcome::RolledBack {
            target: Slot::A,
            version: "1.0.0".into(),
            fallback: Slot::B,
        };
        assert_eq!(
            rolled.to_string(),
            "USR-A (version 1.0.0) will boot next; reboot to switch. USR-B stays as its fallback."
        );
        let unknown = Outcome::RolledBack {
            target: Slot::A,
            version: String::new(),
            fallback: Slot::B,
        };
        assert!(unknown
            .to_string()
            .starts_with("USR-A (unknown version) will boot next"));
        assert_eq!(
            Outcome::TrialRebooting {
                slot: Slot::B,
                next: None
            }
            .to_string(),
            "trial boot of USR-B did not pass its health checks in time; rebooting (next boot: none)"
        );
    }

    #[test]
    fn finds_the_usr_mount_device() {
        let mi = "22 1 254:0 / /usr ro,relatime shared:2 - erofs /dev/mapper/usr ro\n\
                  23 22 0:5 / /usr/x rw - tmpfs t rw\n";
        assert_eq!(parse_mount_device(mi, "/usr"), Some((254, 0)));
        assert_eq!(parse_mount_device(mi, "/boot"), None);
    }

    #[test]
    fn slot_names_parse_or_explain() {
        assert_eq!(parse_slot("b"), Ok(Slot::B));
        assert_eq!(parse_slot("USR-A"), Ok(Slot::A));
        assert!(parse_slot("c")
            .unwrap_err()
            .contains("A, B, USR-A or USR-B"));
    }
}
