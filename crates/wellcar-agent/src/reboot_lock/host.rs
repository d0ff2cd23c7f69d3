//! What the reboot manager reads and does on the host: the update agent's persisted state
//! (`status.json`, read-only here), the reboot strategy's window, the reboot command with its
//! warning to logged-in users, and the facts reboot coordination needs (the machine id, whether
//! the booted slot is marked good). When to reboot is [`crate::reboot_lock`]'s decision.
//!
//! Contract: the reboot manager (`locksmithd`, [`crate::locksmithd`]) never writes the agent's
//! state; it re-reads `status.json` (written atomically by the agent) and the boot id before
//! every decision ([`RebootHost::refresh`]) and reboots only while the state says
//! `UPDATE_STATUS_UPDATED_NEED_REBOOT` for an update staged during this boot. An update staged
//! during an earlier boot has been rebooted into already: the agent notes that when it next
//! reads the host, and until then its old `status.json` must not cause a second reboot (at boot
//! locksmithd may read it before the agent has started).

use std::time::Duration;

use wellcar_contract::CommandError;

use crate::agent::{error_code, AgentError};
use crate::config::{Config, RebootStrategy};
use crate::host::{read_boot_id, HostFacts, HostPaths};
use crate::slots::{EspSlots, SlotControl};
use crate::state::{AgentState, StateStore};

/// The host as the reboot manager sees it.
pub struct RebootHost<S: SlotControl = EspSlots> {
    pub(crate) paths: HostPaths,
    slots: S,
    store: StateStore,
    pub(crate) state: AgentState,
    boot_id: String,
}

impl RebootHost<EspSlots> {
    /// The host at `paths`, reading the boot state on the ESP; the agent's state is loaded.
    pub fn open(paths: HostPaths) -> Result<Self, AgentError> {
        let slots = EspSlots::for_paths(&paths);
        Self::with_slots(paths, slots)
    }
}

impl<S: SlotControl> RebootHost<S> {
    /// The host at `paths` with an explicit slot controller; the agent's state is loaded.
    pub fn with_slots(paths: HostPaths, slots: S) -> Result<Self, AgentError> {
        let store = StateStore::new(&paths.state_dir);
        let state = store.load()?;
        let boot_id = read_boot_id(&paths)?;
        Ok(Self {
            paths,
            slots,
            store,
            state,
            boot_id,
        })
    }

    /// Re-reads the agent's state and the boot id; on an error the last ones read stay.
    pub fn refresh(&mut self) -> Result<(), AgentError> {
        let boot_id = read_boot_id(&self.paths)?;
        self.state = self.store.load()?;
        self.boot_id = boot_id;
        Ok(())
    }

    /// Whether an update is staged during this boot (and so not rebooted into yet).
    fn staged_this_boot(&self) -> bool {
        self.state
            .phase
            .staged()
            .is_some_and(|staged| staged.boot_id == self.boot_id)
    }

    /// The agent's state as last read.
    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// The paths and commands.
    pub fn paths(&self) -> &HostPaths {
        &self.paths
    }

    /// Whether the strategy and the window allow rebooting at `now`: `Some(Duration::ZERO)` =
    /// now, `Some(d)` = wait `d`, `None` = never (nothing staged during this boot, install in
    /// progress, `off`). The lock strategies still need their lock ([`crate::reboot_lock`]).
    pub fn reboot_wait(&self, config: &Config, now: &jiff::Zoned) -> Option<Duration> {
        if !self.staged_this_boot() {
            return None;
        }
        if config.reboot_strategy == RebootStrategy::Off {
            return None;
        }
        Some(
            config
                .reboot_window
                .map(|w| w.wait_from(now))
                .unwrap_or(Duration::ZERO),
        )
    }

    /// Warns logged-in users (if any) and waits `warning`, then runs the reboot command.
    /// Refuses unless an update was staged during this boot (so also while an install is in
    /// progress).
    pub fn reboot(&self, warning: Duration) -> Result<(), AgentError> {
        if !self.staged_this_boot() {
            return Err(AgentError::Install {
                version: self.state.new_version().unwrap_or_default().to_owned(),
                code: error_code::ERROR,
                reason: format!(
                    "refusing to reboot in state {}: no update staged during this boot",
                    self.state.operation().short_name()
                ),
            });
        }
        let users = run_capture(&self.paths.who_command).unwrap_or_default();
        if !users.trim().is_empty() {
            let minutes = warning.as_secs().div_ceil(60);
            let message = format!(
                "Wellcar {} is installed. System reboot in {minutes} minute(s)!",
                self.state.new_version().unwrap_or_default()
            );
            let mut wall = self.paths.wall_command.clone();
            wall.push(message);
            if let Err(e) = run_capture(&wall) {
                tracing::warn!(
                    "warning users failed: {}",
                    wellcar_contract::error_chain(&e)
                );
            }
            std::thread::sleep(warning);
        }
        tracing::info!(command = ?self.paths.reboot_command, "rebooting into the new version");
        run_capture(&self.paths.reboot_command).map_err(|source| AgentError::Reboot {
            version: self.state.new_version().unwrap_or_default().to_owned(),
            source,
        })?;
        Ok(())
    }

    /// Whether the booted slot is marked good (successful, non-zero priority): the new boot
    /// is healthy, so a reboot lock can be released.
    pub fn booted_is_good(&mut self) -> Result<bool, AgentError> {
        let facts = HostFacts::read(&self.paths)?;
        Ok(self.slots.booted_is_good(facts.booted_slot)?)
    }

    /// The machine id (`/etc/machine-id`), the reboot-lock holder id.
    pub fn machine_id(&self) -> Result<String, AgentError> {
        Ok(HostFacts::read(&self.paths)?.machine_id)
    }
}

/// Runs `command` (program, then arguments) and returns its stdout.
fn run_capture(command: &[String]) -> Result<String, CommandError> {
    let Some((program, args)) = command.split_first() else {
        return Err(CommandError::Spawn {
            program: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
        });
    };
    let out = wellcar_contract::command::run(std::process::Command::new(program).args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Operation;
    use crate::state::{Download, Offer, Phase, StagedUpdate};
    use crate::window::RebootWindow;
    use wellcar_contract::error_chain;
    use wellcar_disk::Slot;

    fn offer() -> Offer {
        Offer {
            version: "1.1.0".into(),
            urls: vec!["http://u/p".into()],
            size: 10,
            sha256: "ab".repeat(32),
            target: Slot::B,
            is_delta: false,
        }
    }

    fn staged() -> Phase {
        Phase::Staged(StagedUpdate {
            version: "1.1.0".into(),
            size: 10,
            slot: Slot::B,
            boot_id: "b".into(),
        })
    }

    /// A host below `dir` in the boot `staged()` was staged in.
    fn host_in(dir: &std::path::Path) -> RebootHost {
        let paths = HostPaths::under_root(dir);
        std::fs::create_dir_all(paths.boot_id.parent().unwrap()).unwrap();
        std::fs::write(&paths.boot_id, "b\n").unwrap();
        RebootHost::open(paths).unwrap()
    }

    #[test]
    fn the_state_is_reread_from_the_agents_status_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = host_in(dir.path());
        assert_eq!(host.state().operation(), Operation::Idle);
        StateStore::new(&host.paths.state_dir)
            .save(&AgentState::in_phase(staged()))
            .unwrap();
        assert_eq!(
            host.state().operation(),
            Operation::Idle,
            "read only on refresh"
        );
        host.refresh().unwrap();
        assert_eq!(host.state().operation(), Operation::UpdatedNeedReboot);
        std::fs::write(host.store.status_path(), "{").unwrap();
        let err = error_chain(&host.refresh().unwrap_err());
        assert!(err.contains("status.json"), "{err}");
        assert_eq!(
            host.state().operation(),
            Operation::UpdatedNeedReboot,
            "the last good read stays"
        );
    }

    #[test]
    fn reboot_waits_for_strategy_and_window() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = host_in(dir.path());
        // 2026-11-25 is a Wednesday.
        let now: jiff::civil::DateTime = "2026-11-25T04:00:00".parse().unwrap();
        let now = now.to_zoned(jiff::tz::TimeZone::UTC).unwrap();
        let mut config = Config::default();
        assert_eq!(host.reboot_wait(&config, &now), None, "nothing staged");
        host.state.phase = staged();
        assert_eq!(host.reboot_wait(&config, &now), Some(Duration::ZERO));
        config.reboot_window =
            Some(RebootWindow::parse("Thu 04:00", Duration::from_secs(3600)).unwrap());
        assert_eq!(
            host.reboot_wait(&config, &now),
            Some(Duration::from_secs(24 * 3600))
        );
        config.reboot_strategy = RebootStrategy::Off;
        assert_eq!(host.reboot_wait(&config, &now), None);
        host.state.phase = Phase::Downloading(Download::start(offer()));
        config.reboot_strategy = RebootStrategy::Reboot;
        config.reboot_window = None;
        assert_eq!(host.reboot_wait(&config, &now), None, "never mid-install");
    }

    /// At boot locksmithd may read `status.json` before the agent notes the reboot: an
    /// update staged during an earlier boot is never rebooted into twice.
    #[test]
    fn an_update_staged_during_an_earlier_boot_is_not_rebooted_into_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = host_in(dir.path());
        host.paths.reboot_command = vec!["false".into()];
        host.state.phase = staged();
        let now = jiff::Zoned::now();
        let config = Config::default();
        assert_eq!(host.reboot_wait(&config, &now), Some(Duration::ZERO));
        std::fs::write(&host.paths.boot_id, "{next-boot}\n").unwrap();
        StateStore::new(&host.paths.state_dir)
            .save(&AgentState::in_phase(staged()))
            .unwrap();
        host.refresh().unwrap();
        assert_eq!(host.reboot_wait(&config, &now), None);
        let err = host.reboot(Duration::ZERO).unwrap_err().to_string();
        assert!(err.contains("refusing to reboot"), "{err}");
    }

    #[test]
    fn reboot_warns_logged_in_users_and_refuses_mid_install() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = host_in(dir.path());
        let marker = dir.path().join("rebooted");
        let wall = dir.path().join("wall.txt");
        host.paths.reboot_command = vec!["touch".into(), marker.display().to_string()];
        host.paths.who_command = vec!["echo".into(), "core pts/0".into()];
        host.paths.wall_command = vec![
            "sh".into(),
            "-c".into(),
            format!("printf %s \"$1\" > {}", wall.display()),
            "sh".into(),
        ];
        host.state.phase = Phase::Verifying(Download::start(offer()));
        let err = host.reboot(Duration::ZERO).unwrap_err().to_string();
        assert!(err.contains("VERIFYING"), "{err}");
        assert!(!marker.exists() && !wall.exists());
        host.state.phase = staged();
        host.reboot(Duration::from_millis(10)).unwrap();
        assert!(marker.exists());
        let message = std::fs::read_to_string(&wall).unwrap();
        assert!(
            message.contains("1.1.0") && message.contains("reboot"),
            "{message}"
        );
        // Nobody logged in: no broadcast.
        std::fs::remove_file(&wall).unwrap();
        host.paths.who_command = vec!["true".into()];
        host.reboot(Duration::from_secs(3600)).unwrap();
        assert!(!wall.exists());
    }

    #[test]
    fn a_failed_reboot_command_is_an_error_with_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = host_in(dir.path());
        host.paths.who_command = vec!["true".into()];
        host.paths.reboot_command = vec![
            "sh".into(),
            "-c".into(),
            "echo 'Access denied' >&2; exit 1".into(),
        ];
        host.state.phase = staged();
        let err = host.reboot(Duration::ZERO).unwrap_err();
        let AgentError::Reboot { version, source } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(version, "1.1.0");
        assert_eq!(source.status().and_then(|s| s.code()), Some(1));
        let line = error_chain(&err);
        assert!(
            line.starts_with("rebooting into 1.1.0: `sh -c ") && line.ends_with(": Access denied"),
            "{line}"
        );
        host.paths.reboot_command = Vec::new();
        let err = error_chain(&host.reboot(Duration::ZERO).unwrap_err());
        assert!(err.ends_with("cannot run ``: empty command"), "{err}");
    }
}
