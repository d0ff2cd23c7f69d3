//! `wellcar-update install` and `flatcar-update` (one implementation): install a chosen
//! version from the configured server or a local payload file, through the update agent.
//!
//! Contract, after Flatcar's `flatcar-update` (flatcar/init `bin/flatcar-update`):
//! - `-V/--to-version V`: the agent asks its configured server for exactly `V` (Omaha
//!   `targetversionprefix`) and installs only that version;
//! - `-P/--to-payload FILE`: the agent installs the local payload file (air-gapped hosts); its
//!   signature is checked with the image's trusted keys, and another board, an older or the
//!   same version, or a wrong key is refused by name (`wellcar_agent::pin`);
//! - `-A/--disable-afterwards`: `SERVER=disabled` replaces any `SERVER=` line of
//!   `/etc/flatcar/update.conf` once the command is done, also after a failed install (as
//!   Flatcar's script does);
//! - first, as Flatcar's script, the agent's unit (`update-engine.service`) is unmasked and
//!   started: masking it is how updates are turned off, and this command turns them on;
//! - an update staged and not booted yet is an error naming `update_engine_client
//!   -reset_status`; the install itself is the agent's (`wellcar_agent::client`), and the
//!   command waits for its result.
//!
//! Flatcar's flags for its temporary local update service (`-L`, `-M`, `-O`) are accepted and
//! have nothing to do here (the agent reads the file itself); `-E/--extension`,
//! `-D/--force-dev-key` and `-F/--force-flatcar-key` are refused: Wellcar has no sysext
//! payloads, and only the image's own trusted keys verify payloads.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use wellcar_agent::pin::InstallPin;
use wellcar_agent::state::{Operation, StateStore};

use crate::update::Progress;
use crate::Event;

/// Where `--disable-afterwards` writes `SERVER=disabled`.
pub const FLATCAR_UPDATE_CONF: &str = "/etc/flatcar/update.conf";

/// `install` / `flatcar-update` options (Flatcar's flag names and short forms).
#[derive(Debug, Clone, clap::Args)]
pub struct InstallOpts {
    /// Install exactly this version from the configured update server.
    #[arg(short = 'V', long, value_name = "VERSION")]
    pub to_version: Option<String>,
    /// Install this local payload file instead of downloading one (its signature is checked).
    #[arg(short = 'P', long, value_name = "FILENAME")]
    pub to_payload: Option<PathBuf>,
    /// Write SERVER=disabled to /etc/flatcar/update.conf when done.
    #[arg(short = 'A', long)]
    pub disable_afterwards: bool,
    /// Flatcar's sysext payloads: not part of Wellcar (refused).
    #[arg(short = 'E', long, value_name = "FILENAME")]
    pub extension: Vec<PathBuf>,
    /// Flatcar's OEM payloads (accepted; Wellcar's OEM files are in the payload).
    #[arg(short = 'O', long, value_name = "yes|no", value_parser = ["yes", "no"])]
    pub oem_payloads: Option<String>,
    /// Flatcar's local update service port (accepted; no local service is needed).
    #[arg(short = 'L', long, value_name = "PORT")]
    pub listen_port_1: Option<u16>,
    /// Flatcar's local payload service port (accepted; no local service is needed).
    #[arg(short = 'M', long, value_name = "PORT")]
    pub listen_port_2: Option<u16>,
    /// Flatcar's developer key (refused: only the image's trusted keys verify payloads).
    #[arg(short = 'D', long)]
    pub force_dev_key: bool,
    /// Flatcar's release key (refused: only the image's trusted keys verify payloads).
    #[arg(short = 'F', long)]
    pub force_flatcar_key: bool,
    /// The update.conf `--disable-afterwards` edits.
    #[arg(long, hide = true, default_value = FLATCAR_UPDATE_CONF)]
    pub update_conf: PathBuf,
    /// Seconds to wait for the agent to take the request.
    #[arg(long, hide = true, default_value_t = 30)]
    pub take_timeout: u64,
}

/// Why the command refuses its arguments (nothing was asked of the agent).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// Neither a version nor a payload.
    #[error("must specify --to-version or --to-payload")]
    NothingToInstall,
    /// A Flatcar flag that has no meaning on Wellcar.
    #[error("{flag}: {why}")]
    Unsupported {
        /// The flag.
        flag: &'static str,
        /// Why.
        why: &'static str,
    },
    /// The payload file cannot be found.
    #[error("--to-payload {}: {source}", path.display())]
    Payload {
        /// The path given.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        source: std::io::Error,
    },
}

impl InstallOpts {
    /// The agent's pin, with the payload path made absolute (the daemon has another cwd).
    pub fn pin(&self) -> Result<InstallPin, UsageError> {
        let keys_why = "Wellcar verifies payloads only with the image's trusted keys";
        if self.force_dev_key {
            return Err(UsageError::Unsupported {
                flag: "--force-dev-key",
                why: keys_why,
            });
        }
        if self.force_flatcar_key {
            return Err(UsageError::Unsupported {
                flag: "--force-flatcar-key",
                why: keys_why,
            });
        }
        if !self.extension.is_empty() {
            return Err(UsageError::Unsupported {
                flag: "--extension",
                why: "Wellcar has no extension payloads; the update payload carries all of /usr",
            });
        }
        let payload = match &self.to_payload {
            Some(path) => {
                Some(
                    std::fs::canonicalize(path).map_err(|source| UsageError::Payload {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        if payload.is_none() && self.to_version.is_none() {
            return Err(UsageError::NothingToInstall);
        }
        Ok(InstallPin {
            to_version: self.to_version.clone(),
            payload,
        })
    }
}

/// `install`: unmasks and starts the agent's unit, asks the agent for the pinned install and
/// waits for it; then `-A`.
pub fn install(opts: &InstallOpts, on_event: &mut impl FnMut(Event)) -> anyhow::Result<()> {
    opts.pin()?;
    for action in ["unmask", "start"] {
        wellcar_contract::command::run(
            std::process::Command::new("systemctl").args([action, wellcar_agent::AGENT_UNIT]),
        )
        .with_context(|| format!("systemctl {action} {}", wellcar_agent::AGENT_UNIT))?;
    }
    install_with(&crate::update::state_store(), opts, &mut |p| {
        on_event(Event::Check(p))
    })
}

/// [`install`] against the agent state in `store`.
pub fn install_with(
    store: &StateStore,
    opts: &InstallOpts,
    on_progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<()> {
    let pin = opts.pin()?;
    let staged =
        store.status_path().exists() && store.load()?.operation() == Operation::UpdatedNeedReboot;
    if staged {
        anyhow::bail!(wellcar_agent::pin::PinError::AlreadyStaged);
    }
    let result = wait_for_install(store, pin, opts, on_progress);
    if opts.disable_afterwards {
        disable_updates(&opts.update_conf)?;
        on_progress(Progress::Finished(format!(
            "Setting SERVER=disabled in {}",
            opts.update_conf.display()
        )));
    }
    result?;
    on_progress(Progress::Finished(
        "Done, please make sure to reboot either manually or through your reboot manager (check locksmithd.service)".into(),
    ));
    Ok(())
}

fn wait_for_install(
    store: &StateStore,
    pin: InstallPin,
    opts: &InstallOpts,
    on_progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<()> {
    let state = crate::update::request_and_wait(
        store,
        Some(pin),
        "asking the update agent for the install",
        opts.take_timeout,
        on_progress,
    )?;
    let result = state.last_result.clone().unwrap_or_default();
    if let Some(reason) = result.strip_prefix("failed: ") {
        anyhow::bail!("update failed: {reason}");
    }
    if state.operation() != Operation::UpdatedNeedReboot {
        anyhow::bail!("update failed: {result}");
    }
    on_progress(Progress::Finished(result));
    Ok(())
}

/// Replaces every `SERVER=` line of `path` by `SERVER=disabled` (created if missing), written
/// atomically.
pub fn disable_updates(path: &Path) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut out: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("SERVER="))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str("SERVER=disabled\n");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    wellcar_agent::state::write_atomic(path, out.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests;
