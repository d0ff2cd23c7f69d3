//! The state-changing commands (`mark-good`, `rollback`, `cancel`, `stage`) and the `/usr`
//! health check. Each change goes through [`wellcar_bootstate::Esp::update`]: locked, refused
//! without writing when the state machine says no, otherwise one tear-safe write.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use wellcar_bootstate::state::check_root_hash;
use wellcar_bootstate::{gptprio, Loaded, Slot};
use wellcar_contract::RootHash;

use crate::Context;

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
pub fn mark_good(ctx: &Context) -> anyhow::Result<()> {
    let booted = ctx.require_booted()?;
    let before = ctx.esp.load().context("reading the boot state")?;
    let (_, after) = ctx
        .esp
        .update(|s| {
            s.mark_good(booted);
            Ok(())
        })
        .context("marking the booted slot good")?;
    if after.generation == before.generation {
        println!(
            "{booted} is already marked good (priority {})",
            after.state.slot(booted).priority
        );
    } else {
        println!(
            "{booted} marked good: priority {}, {} now priority {}",
            after.state.slot(booted).priority,
            booted.other(),
            after.state.slot(booted.other()).priority
        );
    }
    mirror(ctx, &after);
    Ok(())
}

/// `rollback`: the other slot boots next, if it holds a previously good version.
pub fn rollback(ctx: &Context) -> anyhow::Result<()> {
    let booted = ctx.require_booted()?;
    let (target, after) = ctx
        .esp
        .update(|s| s.rollback(booted))
        .context("rollback refused")?;
    println!(
        "{target} ({}) will boot next; reboot to switch. {booted} stays as its fallback.",
        version_of(&after, target)
    );
    mirror(ctx, &after);
    Ok(())
}

/// `cancel`: drop a staged update that has not booted.
pub fn cancel(ctx: &Context) -> anyhow::Result<()> {
    let booted = ctx.require_booted()?;
    let (target, after) = ctx
        .esp
        .update(|s| s.cancel(booted))
        .context("cancel refused")?;
    println!("staged update in {target} cancelled; {booted} boots next");
    mirror(ctx, &after);
    Ok(())
}

/// `stage SLOT`: one try, not successful, top priority, with the given root hash and version.
pub fn stage(ctx: &Context, opts: &StageOpts) -> anyhow::Result<()> {
    // A bad root hash is a refusal (exit status 2), like a bad version; nothing is written.
    let root_hash =
        check_root_hash(&opts.root_hash).with_context(|| format!("stage {} refused", opts.slot))?;
    let (_, after) = ctx
        .esp
        .update(|s| s.stage(opts.slot, ctx.booted, root_hash, &opts.version))
        .with_context(|| format!("stage {} refused", opts.slot))?;
    println!(
        "{} staged ({}): it boots next, once; reboot to try it",
        opts.slot, opts.version
    );
    mirror(ctx, &after);
    Ok(())
}

/// `check-usr`: `/usr` is mounted from the dm device `usr`, whose only lower device is the booted
/// slot's partition, and the command line's root hash is the one recorded for that slot.
pub fn check_usr(ctx: &Context) -> anyhow::Result<()> {
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
    println!("/usr is the verity device of {booted} ({part_name}, root hash {usrhash})");
    Ok(())
}

/// `trial-timeout`: a trial boot (the booted slot not marked successful) that still has not
/// passed its health checks is rebooted, so that GRUB falls back to the good slot. A slot
/// already marked good is never rebooted by this (that would loop on a broken check).
pub fn trial_timeout(ctx: &Context) -> anyhow::Result<()> {
    let Some(booted) = ctx.booted else {
        println!("booted slot unknown: nothing to do");
        return Ok(());
    };
    let state = ctx.esp.load().context("reading the boot state")?.state;
    if state.slot(booted).successful {
        println!("{booted} is marked good: not a trial boot");
        return Ok(());
    }
    let fallback = state.next_boot();
    println!(
        "trial boot of {booted} did not pass its health checks in time; rebooting (next boot: {})",
        fallback.map_or("none".into(), |s| s.to_string())
    );
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

fn version_of(l: &Loaded, slot: Slot) -> String {
    let v = &l.state.slot(slot).version;
    if v.is_empty() {
        "unknown version".into()
    } else {
        format!("version {v}")
    }
}

/// Best effort: the ESP state is authoritative, so a failed mirror only warns.
fn mirror(ctx: &Context, l: &Loaded) {
    if let Some(disk) = &ctx.mirror_gpt {
        match gptprio::mirror(disk, &l.state) {
            Ok(()) => tracing::info!("mirrored the boot state into the GPT of {}", disk.display()),
            Err(e) => eprintln!("wellcar-update: warning: not mirrored into the GPT: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
