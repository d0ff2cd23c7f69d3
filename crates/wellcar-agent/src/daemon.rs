//! The daemon loop: resume an interrupted install, check on schedule and on request, reboot
//! by strategy (taking and releasing the reboot lock, [`crate::reboot_lock`]).
//!
//! One thread does everything in order, so a reboot can never start while an install is in
//! progress. Configuration is re-read before every check and every reboot decision (no restart
//! needed after editing `update.conf`). At start a configuration that cannot be read is an
//! error ([`start_config`]: the daemon refuses to start, naming file, line and key); a file
//! broken while running keeps the last good configuration for scheduling and reboot decisions
//! (never the defaults, whose `reboot` strategy would skip a configured lock), and each check
//! fails and records the error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::agent::{Agent, InstallSource};
use crate::config::{Config, ConfigError};
use crate::pin::CheckRequest;
use crate::reboot_lock::RebootDriver;
use crate::schedule;
use crate::slots::SlotControl;

/// How often the loop wakes to look for requests, the schedule and the reboot window.
pub const TICK: Duration = Duration::from_millis(250);

/// Pause before asking for a reboot again (after a failed or an ignored reboot command).
pub const REBOOT_RETRY: Duration = crate::reboot_lock::coordinator::REBOOT_RETRY;

/// The configuration the daemon starts with: any error (an unknown `REBOOT_STRATEGY`, a bad
/// value) refuses the start.
pub fn start_config<S: SlotControl>(agent: &Agent<S>) -> Result<Config, ConfigError> {
    let config = Config::load(&agent.paths().config_files)?;
    tracing::info!(
        strategy = config.reboot_strategy.name(),
        lock = ?crate::reboot_lock::lock_kind(&config),
        "reboot strategy"
    );
    Ok(config)
}

/// A request to the loop from another thread of the daemon (the D-Bus service,
/// [`crate::dbus`]); answered on the sender it carries once the loop is between steps.
#[derive(Debug)]
pub enum Request {
    /// update_engine's `ResetStatus` ([`Agent::reset_status`]): `Ok(false)` when the status
    /// does not allow it.
    ResetStatus(std::sync::mpsc::Sender<Result<bool, String>>),
}

/// Runs until `stop` is set, starting from `config` ([`start_config`]).
pub fn run<S: SlotControl>(agent: &mut Agent<S>, config: Config, stop: &AtomicBool) {
    let (_keep, requests) = std::sync::mpsc::channel();
    run_with_requests(agent, config, stop, &requests);
}

/// [`run`], also answering `requests` between steps.
pub fn run_with_requests<S: SlotControl>(
    agent: &mut Agent<S>,
    config: Config,
    stop: &AtomicBool,
    requests: &std::sync::mpsc::Receiver<Request>,
) {
    match agent.resume_pending() {
        Ok(Some(version)) => tracing::info!(%version, "interrupted install completed"),
        Ok(None) => {}
        Err(e) => tracing::error!("resuming the interrupted install: {e:#}"),
    }
    let mut last_good = config;
    let config = last_good.clone();
    let mut next_check = Instant::now() + schedule::first_delay(&config, schedule::random_unit());
    tracing::info!(
        in_secs = next_check
            .saturating_duration_since(Instant::now())
            .as_secs(),
        "first update check scheduled"
    );
    let mut reboots = RebootDriver::new();
    while !stop.load(Ordering::SeqCst) {
        while let Ok(request) = requests.try_recv() {
            match request {
                Request::ResetStatus(reply) => {
                    let _ = reply.send(agent.reset_status().map_err(|e| format!("{e:#}")));
                }
            }
        }
        let request_path = agent.request_path();
        let request = std::fs::read_to_string(&request_path)
            .ok()
            .map(|text| CheckRequest::parse(&text));
        if request.is_some() {
            // Taken: the client now waits for `handled_request`.
            let _ = std::fs::remove_file(&request_path);
        }
        let due = Instant::now() >= next_check;
        if let Some((CheckRequest { id, .. }, Some(unreadable))) = &request {
            tracing::error!("{unreadable}");
            if let Err(e) = agent.record_check(format!("failed: {unreadable}"), Some(id.clone())) {
                tracing::error!("{e:#}");
            }
        } else if request.is_some() || due {
            let source = if request.is_some() {
                InstallSource::OnDemand
            } else {
                InstallSource::Scheduler
            };
            let pin = request.as_ref().and_then(|(r, _)| r.pin.as_ref());
            let result = agent.check_pinned(source, pin);
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
            let id = request.map(|(r, _)| r.id);
            if let Err(e) = agent.record_check(result, id) {
                tracing::error!("{e:#}");
            }
            let config = reload(&agent.paths().config_files, &mut last_good);
            let delay = schedule::next_delay(
                &config,
                agent.state().consecutive_failures(),
                poll,
                schedule::random_unit(),
            );
            tracing::debug!(in_secs = delay.as_secs(), "next update check scheduled");
            next_check = Instant::now() + delay;
        }
        let config = reload(&agent.paths().config_files, &mut last_good);
        reboots.tick(agent, &config, &jiff::Zoned::now());
        std::thread::sleep(TICK);
    }
}

/// The configuration now, or the last good one while the files are broken (the check itself
/// reports the error).
fn reload(files: &[std::path::PathBuf], last_good: &mut Config) -> Config {
    match Config::load(files) {
        Ok(config) => {
            *last_good = config.clone();
            config
        }
        Err(e) => {
            tracing::warn!("{e}; keeping the last good configuration");
            last_good.clone()
        }
    }
}
