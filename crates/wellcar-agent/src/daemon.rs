//! The daemon loop: resume an interrupted install, check on schedule and on request, reboot
//! by strategy.
//!
//! One thread does everything in order, so a reboot can never start while an install is in
//! progress. Configuration is re-read before every check and every reboot decision (no restart
//! needed after editing `update.conf`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::agent::{Agent, InstallSource};
use crate::config::Config;
use crate::schedule;
use crate::slots::SlotControl;

/// How often the loop wakes to look for requests, the schedule and the reboot window.
pub const TICK: Duration = Duration::from_millis(250);

/// Pause before asking for a reboot again (after a failed or an ignored reboot command).
pub const REBOOT_RETRY: Duration = Duration::from_secs(10 * 60);

/// Runs until `stop` is set.
pub fn run<S: SlotControl>(agent: &mut Agent<S>, stop: &AtomicBool) {
    match agent.resume_pending() {
        Ok(Some(version)) => tracing::info!(%version, "interrupted install completed"),
        Ok(None) => {}
        Err(e) => tracing::error!("resuming the interrupted install: {e:#}"),
    }
    let config = load_config(&agent.paths().config_files);
    let mut next_check = Instant::now() + schedule::first_delay(&config, schedule::random_unit());
    tracing::info!(
        in_secs = next_check
            .saturating_duration_since(Instant::now())
            .as_secs(),
        "first update check scheduled"
    );
    let mut next_reboot_attempt: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        let request_path = agent.request_path();
        let request = std::fs::read_to_string(&request_path).ok();
        if request.is_some() {
            // Taken: the client now waits for `handled_request`.
            let _ = std::fs::remove_file(&request_path);
        }
        let due = Instant::now() >= next_check;
        if request.is_some() || due {
            let source = if request.is_some() {
                InstallSource::OnDemand
            } else {
                InstallSource::Scheduler
            };
            let result = agent.check(source);
            let poll = match &result {
                Ok(outcome) => {
                    tracing::info!(?outcome, "update check done");
                    outcome.poll_interval()
                }
                Err(e) => {
                    tracing::error!("update check failed: {e:#}");
                    None
                }
            };
            let result = match &result {
                Ok(outcome) => outcome.to_string(),
                Err(e) => format!("failed: {e:#}"),
            };
            if let Err(e) = agent.record_check(result, request) {
                tracing::error!("{e:#}");
            }
            let config = load_config(&agent.paths().config_files);
            let delay = schedule::next_delay(
                &config,
                agent.state().consecutive_failures(),
                poll,
                schedule::random_unit(),
            );
            tracing::debug!(in_secs = delay.as_secs(), "next update check scheduled");
            next_check = Instant::now() + delay;
        }
        let config = load_config(&agent.paths().config_files);
        let now = jiff::Zoned::now();
        let reboot_due = next_reboot_attempt.is_none_or(|t| Instant::now() >= t);
        if reboot_due && agent.reboot_wait(&config, &now) == Some(Duration::ZERO) {
            if let Err(e) = agent.reboot(config.reboot_warning) {
                tracing::error!(
                    "reboot failed, retrying in {REBOOT_RETRY:?}: {}",
                    wellcar_contract::error_chain(&e)
                );
            }
            // Success: the machine is going down; if it does not, ask again later.
            next_reboot_attempt = Some(Instant::now() + REBOOT_RETRY);
        }
        std::thread::sleep(TICK);
    }
}

fn load_config(files: &[std::path::PathBuf]) -> Config {
    // A bad file is reported by the check itself; scheduling and reboot decisions fall back
    // to the defaults meanwhile.
    Config::load(files).unwrap_or_else(|e| {
        tracing::warn!("{e}; scheduling with defaults");
        Config::default()
    })
}
