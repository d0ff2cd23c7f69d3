//! `flatcar-reset` (also `wellcar-update reset`): re-provision on the next boot, keeping the
//! paths the user names, as Flatcar's (flatcar/init `bin/flatcar-reset`).
//!
//! Contract: staging a reset writes `/selective-os-reset` on ROOT (the keep expression,
//! [`wellcar_init::os_reset::keep_regex`]) and the first-boot flag `/boot/flatcar/first_boot`;
//! on the next boot the initramfs deletes from ROOT everything not kept
//! ([`wellcar_init::os_reset::reset`]) and Ignition runs again.
//! - `-K/--keep-paths REGEX...`: paths to keep (absolute, or an expression for one);
//! - `-M/--keep-machine-id`: `systemd.machine_id=<id>` is appended to `linux_append` in
//!   `/oem/grub.cfg` (without it any such setting there is removed), as Flatcar does;
//! - `-F/--ignition-file FILE`: copied to `/oem/config.ign`; `-U/--ignition-url URL`:
//!   `ignition.config.url=URL` appended to `linux_append` in `/oem/grub.cfg` (either replaces
//!   the other);
//! - exclusive actions, nothing staged: `-S/--stop` (removes the marker and the flag),
//!   `-P/--preview-delete`, `-W/--preview-keep` (what the next boot would delete or keep,
//!   from the staged marker or the given paths), `-D/--delete-backup`.
//!
//! `-B/--backup` and `-R/--restore-backup` are refused: the preview shows what would go, and
//! nothing is deleted before the reboot.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use wellcar_contract::esp;
use wellcar_init::os_reset::{self, KeepSet};

/// What `flatcar-reset` reports, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line(pub String);

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `flatcar-reset` options (Flatcar's names and short forms).
#[derive(Debug, Clone, clap::Args)]
pub struct ResetOpts {
    /// Writes the given Ignition config JSON file to /oem/config.ign.
    #[arg(
        short = 'F',
        long,
        value_name = "FILE",
        conflicts_with = "ignition_url"
    )]
    pub ignition_file: Option<PathBuf>,
    /// Writes the given Ignition config URL as kernel argument to /oem/grub.cfg.
    #[arg(short = 'U', long, value_name = "URL")]
    pub ignition_url: Option<String>,
    /// The arguments are regular expressions for paths to keep.
    #[arg(short = 'K', long)]
    pub keep_paths: bool,
    /// Keeps the machine ID (as kernel argument in /oem/grub.cfg).
    #[arg(short = 'M', long)]
    pub keep_machine_id: bool,
    /// Flatcar's backup copy (refused on Wellcar).
    #[arg(short = 'B', long)]
    pub backup: bool,
    /// Stops a staged reset: nothing happens on the next boot.
    #[arg(short = 'S', long, group = "action")]
    pub stop: bool,
    /// Prints the files that will be deleted.
    #[arg(short = 'P', long, group = "action")]
    pub preview_delete: bool,
    /// Prints the files that will be kept.
    #[arg(short = 'W', long, group = "action")]
    pub preview_keep: bool,
    /// Deletes the backup under /flatcar-backup/.
    #[arg(short = 'D', long, group = "action")]
    pub delete_backup: bool,
    /// Flatcar's restore from the backup (refused on Wellcar).
    #[arg(short = 'R', long, group = "action")]
    pub restore_backup: bool,
    /// Regular expressions of paths to keep (with -K).
    #[arg(value_name = "REGEX")]
    pub paths: Vec<String>,
    /// ROOT's top as the running system sees it.
    #[arg(long, hide = true, default_value = "/")]
    pub root: PathBuf,
    /// Where the OEM partition is mounted.
    #[arg(long, hide = true, default_value = "/oem")]
    pub oem: PathBuf,
    /// The machine ID file.
    #[arg(long, hide = true, default_value = "/etc/machine-id")]
    pub machine_id_file: PathBuf,
}

/// Runs `flatcar-reset` with the ESP mounted at `esp_dir`.
pub fn run(opts: &ResetOpts, esp_dir: &Path, on_line: &mut dyn FnMut(Line)) -> anyhow::Result<()> {
    let mut say = |s: String| on_line(Line(s));
    if !opts.paths.is_empty() && !opts.keep_paths {
        anyhow::bail!("Found unused arguments: {}", opts.paths.join(" "));
    }
    if opts.keep_paths && opts.paths.is_empty() {
        anyhow::bail!("No paths to keep specified for --keep-paths argument");
    }
    if opts.backup || opts.restore_backup {
        anyhow::bail!("--backup/--restore-backup: not supported on Wellcar; check what the reset deletes with --preview-delete and --preview-keep");
    }
    let regex = os_reset::keep_regex(&opts.paths)?;
    let marker = opts.root.join(os_reset::MARKER);
    if marker.exists() {
        say("INFO: An OS reset was staged already from a previous run.".into());
    }
    let flag = esp_dir.join(esp::FLATCAR_DIR).join("first_boot");
    if opts.stop {
        say(format!(
            "Removing {} and {}",
            marker.display(),
            flag.display()
        ));
        for path in [&marker, &flag] {
            remove_if_present(path)?;
        }
        return Ok(());
    }
    if opts.preview_delete || opts.preview_keep {
        // The staged marker when no paths are given, as Flatcar's preview of a staged reset.
        let keep = match (opts.keep_paths, os_reset::read_marker(&opts.root)?) {
            (false, Some(staged)) => staged,
            _ => KeepSet::parse(&regex)?,
        };
        let plan = os_reset::plan(&opts.root, &keep)?;
        let list = if opts.preview_delete {
            plan.deleted
        } else {
            plan.kept
        };
        for path in list {
            say(path);
        }
        return Ok(());
    }
    if opts.delete_backup {
        let backup = opts.root.join(os_reset::BACKUP_DIR);
        say(format!("Removing {}/ directory", backup.display()));
        match std::fs::remove_dir_all(&backup) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", backup.display()))
            }
            _ => return Ok(()),
        }
    }
    let grub_cfg = opts.oem.join("grub.cfg");
    let original = read_or_empty(&grub_cfg)?;
    let mut grub = original.clone();
    grub = drop_argument(&grub, "systemd.machine_id");
    if opts.keep_machine_id {
        let id = std::fs::read_to_string(&opts.machine_id_file)
            .with_context(|| format!("reading {}", opts.machine_id_file.display()))?;
        grub.push_str(&linux_append(&format!("systemd.machine_id={}", id.trim())));
        say(format!(
            "Wrote machine ID as kernel cmdline parameter to {}",
            grub_cfg.display()
        ));
    }
    let config_ign = opts.oem.join("config.ign");
    if let Some(file) = &opts.ignition_file {
        grub = drop_argument(&grub, "ignition.config.url");
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        wellcar_agent::state::write_atomic(&config_ign, &bytes)?;
        say(format!("Wrote Ignition file {}", config_ign.display()));
    }
    if let Some(url) = &opts.ignition_url {
        remove_if_present(&config_ign)?;
        grub = drop_argument(&grub, "ignition.config.url");
        grub.push_str(&linux_append(&format!("ignition.config.url={url}")));
        say(format!(
            "Wrote Ignition URL as kernel cmdline parameter to {}",
            grub_cfg.display()
        ));
    }
    if grub != original {
        wellcar_agent::state::write_atomic(&grub_cfg, grub.as_bytes())?;
    }
    wellcar_agent::state::write_atomic(&marker, format!("{regex}\n").as_bytes())?;
    std::fs::create_dir_all(flag.parent().expect("has a parent"))
        .with_context(|| format!("creating {}", esp_dir.display()))?;
    wellcar_agent::state::write_atomic(&flag, b"")?;
    say(format!(
        "Prepared {} and {}",
        marker.display(),
        flag.display()
    ));
    say("Staged OS reset, you can reboot now".into());
    Ok(())
}

fn linux_append(arg: &str) -> String {
    format!("set linux_append=\"$linux_append {arg}\"\n")
}

/// `text` without any `NAME=value` argument (as Flatcar's `sed s/NAME=[^ "']*//g`), and
/// without `linux_append` lines left empty by that.
fn drop_argument(text: &str, name: &str) -> String {
    let prefix = format!("{name}=");
    text.lines()
        .map(|line| {
            let mut out = String::new();
            let mut rest = line;
            while let Some(at) = rest.find(&prefix) {
                out.push_str(&rest[..at]);
                let tail = &rest[at + prefix.len()..];
                let end = tail.find([' ', '"', '\'']).unwrap_or(tail.len());
                rest = &tail[end..];
            }
            out.push_str(rest);
            out
        })
        .filter(|line| {
            let compact: String = line.split_whitespace().collect::<Vec<_>>().join(" ");
            compact != "set linux_append=\"$linux_append\""
                && compact != "set linux_append=\"$linux_append \""
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

fn read_or_empty(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
