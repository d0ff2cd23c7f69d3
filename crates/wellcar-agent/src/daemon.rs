//! The update daemon loop (`update-engine.service`): resume an interrupted install, check on
//! schedule and on request, answer the D-Bus service's requests. It never reboots: as on
//! Flatcar, a staged update waits in `UPDATE_STATUS_UPDATED_NEED_REBOOT` for the reboot manager
//! ([`crate::locksmithd`], `locksmithd.service`), so `systemctl mask locksmithd.service` or
//! `REBOOT_STRATEGY=off` leaves the reboot to the operator.
//!
//! One thread does everything in order. Configuration is re-read before every check (no
//! restart needed after editing `update.conf`). At start a configuration that cannot be read
//! is an error ([`start_config`]: the daemon refuses to start, naming file, line and key); a
//! file broken while running keeps the last good configuration for scheduling, and each check
//! fails and records the error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::agent::{Agent, InstallSource};
use crate::config::{Config, ConfigError};
use crate::pin::CheckRequest;
use crate::schedule;
use crate::slots::SlotControl;

/// How often the loop wakes to look for requests and the schedule.
pub const TICK: Duration = Duration::from_millis(250);

/// The configuration the daemon starts with: any error (an unknown `REBOOT_STRATEGY`, a bad
/// value) refuses the start.
pub fn start_config<S: SlotControl>(agent: &Agent<S>) -> Result<Config, ConfigError> {
    Config::load(&agent.paths().config_files)
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
            let config = Config::reload(Config::load(&agent.paths().config_files), &mut last_good);
            let delay = schedule::next_delay(
                &config,
                agent.state().consecutive_failures(),
                poll,
                schedule::random_unit(),
            );
            tracing::debug!(in_secs = delay.as_secs(), "next update check scheduled");
            next_check = Instant::now() + delay;
        }
        std::thread::sleep(TICK);
    }
}
