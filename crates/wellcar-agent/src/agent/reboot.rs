//! Rebooting into a staged update, and the host facts reboot coordination reads (the machine
//! id, whether the booted slot is marked good). When to reboot is [`crate::reboot_lock`]'s
//! decision.

use std::time::Duration;

use wellcar_contract::CommandError;

use super::{error_code, Agent, AgentError};
use crate::config::{Config, RebootStrategy};
use crate::host::HostFacts;
use crate::slots::SlotControl;
use crate::state::Operation;

impl<S: SlotControl> Agent<S> {
    /// Whether the strategy and the window allow rebooting at `now`: `Some(Duration::ZERO)` =
    /// now, `Some(d)` = wait `d`, `None` = never (no staged update, install in progress,
    /// `off`). The lock strategies still need their lock ([`crate::reboot_lock`]).
    pub fn reboot_wait(&self, config: &Config, now: &jiff::Zoned) -> Option<Duration> {
        if self.state().operation() != Operation::UpdatedNeedReboot {
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
    /// Refuses while an install is in progress.
    pub fn reboot(&self, warning: Duration) -> Result<(), AgentError> {
        if self.state().operation() != Operation::UpdatedNeedReboot {
            return Err(AgentError::Install {
                version: self.state().new_version().unwrap_or_default().to_owned(),
                code: error_code::ERROR,
                reason: format!(
                    "refusing to reboot in state {}",
                    self.state().operation().short_name()
                ),
            });
        }
        let users = run_capture(&self.paths.who_command).unwrap_or_default();
        if !users.trim().is_empty() {
            let minutes = warning.as_secs().div_ceil(60);
            let message = format!(
                "Wellcar {} is installed. System reboot in {minutes} minute(s)!",
                self.state().new_version().unwrap_or_default()
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
            version: self.state().new_version().unwrap_or_default().to_owned(),
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
