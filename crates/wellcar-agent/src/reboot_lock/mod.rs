//! Reboot coordination: which reboot strategies take a lock, the lock backends (FleetLock,
//! locksmith's etcd semaphore), the host the reboot manager acts on ([`host::RebootHost`]) and
//! its per-tick driver around the pure [`coordinator::Coordinator`]. The process that runs it
//! is `locksmithd` ([`crate::locksmithd`]), as on Flatcar; the update agent never reboots.
//!
//! Contract:
//! - Strategies ([`crate::config::RebootStrategy`]): `reboot` reboots when an update is staged
//!   and the window is open; `off` never reboots; `fleetlock` and `etcd-lock` take the lock
//!   first (inside the window only) and release it once the new boot is marked good;
//!   `best-effort` is `etcd-lock` when `LOCKSMITHD_ENDPOINT` is set, else `reboot`
//!   ([`lock_kind`]).
//! - "Marked good" is the booted slot's boot state (successful, non-zero priority; what
//!   `wellcar-mark-good.service` sets after the health checks), read through
//!   [`crate::slots::SlotControl::booted_is_good`].
//! - At start locksmithd assumes it may hold the lock from before (a reboot, a `kill -9`) and
//!   releases it once the booted slot is good, retrying with backoff, as Zincati
//!   (steady-state at start) and locksmithd (unlock at start) do. Release is idempotent on
//!   both backends, so nothing about the lock is persisted in the state.
//! - The backend is built from the configuration read for that tick, so editing
//!   `update.conf` needs no restart; errors name the URL or endpoints and the server's
//!   answer.

pub mod coordinator;
pub mod etcd;
pub mod fleetlock;
pub mod host;

#[cfg(test)]
mod daemon_tests;

use std::time::Instant;

use crate::config::{Config, RebootStrategy};
use crate::slots::SlotControl;
use coordinator::{Coordinator, Step, Tick};
use host::RebootHost;

/// Why a lock or unlock did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// FleetLock.
    #[error(transparent)]
    FleetLock(#[from] fleetlock::FleetLockError),
    /// locksmith's etcd semaphore.
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdLockError),
}

impl LockError {
    /// Whether the lock was refused because the group's slots are all taken (as opposed to
    /// the server being unreachable or failing).
    pub fn is_full(&self) -> bool {
        match self {
            Self::FleetLock(e) => e.is_semaphore_full(),
            Self::Etcd(e) => e.full,
        }
    }
}

/// A reboot lock held by this machine.
pub trait RebootLock {
    /// Takes this machine's slot; already holding it is success.
    fn acquire(&mut self) -> Result<(), LockError>;
    /// Gives this machine's slot back; not holding it is success.
    fn release(&mut self) -> Result<(), LockError>;
    /// Backend, server and group, for logs.
    fn describe(&self) -> String;
}

/// Which lock a configuration's strategy takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// FleetLock (`FLEETLOCK_URL`).
    FleetLock,
    /// locksmith's etcd semaphore (`LOCKSMITHD_*`).
    Etcd,
}

/// The lock `config`'s strategy takes, if any.
pub fn lock_kind(config: &Config) -> Option<LockKind> {
    match config.reboot_strategy {
        RebootStrategy::FleetLock => Some(LockKind::FleetLock),
        RebootStrategy::EtcdLock => Some(LockKind::Etcd),
        RebootStrategy::BestEffort if config.etcd_lock.endpoint_configured => Some(LockKind::Etcd),
        RebootStrategy::BestEffort | RebootStrategy::Reboot | RebootStrategy::Off => None,
    }
}

/// The lock backend of `kind` for holder `machine_id`.
pub fn open(
    kind: LockKind,
    config: &Config,
    machine_id: &str,
) -> Result<Box<dyn RebootLock>, LockError> {
    Ok(match kind {
        LockKind::FleetLock => {
            Box::new(fleetlock::FleetLockClient::from_config(config, machine_id)?)
        }
        LockKind::Etcd => Box::new(etcd::EtcdLock::new(
            etcd::open(&config.etcd_lock)?,
            machine_id,
        )),
    })
}

/// locksmithd's reboot decisions and the lock I/O they lead to.
///
/// Waiting is logged once when it starts (a staged update outside the window; a held lock
/// while the new boot is not marked good yet), so the journal says why no reboot or release
/// happened.
#[derive(Debug, Default)]
pub struct RebootDriver {
    coordinator: Coordinator,
    waiting_for_window: bool,
    waiting_for_good: bool,
}

impl RebootDriver {
    /// A driver for a freshly started locksmithd (a lock from before is released once steady).
    pub fn new() -> Self {
        Self::default()
    }

    /// The decisions so far.
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// One tick: reboot, lock or release as [`Coordinator::step`] decides, with `config` and
    /// the agent's state read for this tick and `now` the local time (for the window).
    pub fn tick<S: SlotControl>(
        &mut self,
        host: &mut RebootHost<S>,
        config: &Config,
        now: &jiff::Zoned,
    ) {
        let kind = lock_kind(config);
        let wait = host.reboot_wait(config, now);
        let window_closed = wait.filter(|d| !d.is_zero());
        if window_closed.is_some() != self.waiting_for_window {
            self.waiting_for_window = window_closed.is_some();
            if let Some(d) = window_closed {
                tracing::info!(
                    opens_in_secs = d.as_secs(),
                    "update staged, waiting for the reboot window"
                );
            }
        }
        let tick = Tick {
            now: Instant::now(),
            reboot_allowed: wait == Some(std::time::Duration::ZERO),
            uses_lock: kind.is_some(),
            retry_delay: config.lock_retry_delay,
            jitter: crate::schedule::random_unit(),
        };
        match self.coordinator.step(&tick) {
            Step::Wait => {}
            Step::Reboot => match host.reboot(config.reboot_warning) {
                Ok(()) => self.coordinator.reboot_started(Instant::now()),
                Err(e) => {
                    tracing::error!(
                        "reboot failed, retrying in {:?}: {}",
                        coordinator::REBOOT_RETRY,
                        wellcar_contract::error_chain(&e)
                    );
                    self.coordinator.reboot_failed(Instant::now());
                }
            },
            Step::Acquire => {
                let result = kind
                    .ok_or_else(|| "no lock".to_owned())
                    .and_then(|kind| self.with_lock(host, config, kind, |lock| lock.acquire()));
                match result {
                    Ok(what) => {
                        tracing::info!(lock = %what, "reboot lock taken");
                        self.coordinator.acquired();
                    }
                    Err(e) => {
                        let pause = self.coordinator.acquire_failed(&tick);
                        tracing::warn!("reboot lock not taken, retrying in {pause:?}: {e}");
                    }
                }
            }
            Step::ReleaseIfSteady => {
                match host.booted_is_good() {
                    Ok(true) => self.waiting_for_good = false,
                    Ok(false) => {
                        if !self.waiting_for_good {
                            self.waiting_for_good = true;
                            tracing::info!(
                                "booted slot not marked good yet, keeping the reboot lock"
                            );
                        }
                        self.coordinator.not_steady(tick.now);
                        return;
                    }
                    Err(e) => {
                        let pause = self.coordinator.release_failed(&tick);
                        tracing::warn!(
                            "reading the boot state before releasing the reboot lock, retrying in {pause:?}: {}",
                            wellcar_contract::error_chain(&e)
                        );
                        return;
                    }
                }
                let result = kind
                    .ok_or_else(|| "no lock".to_owned())
                    .and_then(|kind| self.with_lock(host, config, kind, |lock| lock.release()));
                match result {
                    Ok(what) => {
                        tracing::info!(lock = %what, "reboot lock released (booted slot is good)");
                        self.coordinator.released();
                    }
                    Err(e) => {
                        let pause = self.coordinator.release_failed(&tick);
                        tracing::warn!(
                            "releasing the reboot lock failed, retrying in {pause:?}: {e}"
                        );
                    }
                }
            }
        }
    }

    /// Opens the backend for this tick's configuration and runs `op` on it; the error text
    /// names what failed.
    fn with_lock<S: SlotControl>(
        &self,
        host: &RebootHost<S>,
        config: &Config,
        kind: LockKind,
        op: impl FnOnce(&mut dyn RebootLock) -> Result<(), LockError>,
    ) -> Result<String, String> {
        let machine_id = host
            .machine_id()
            .map_err(|e| wellcar_contract::error_chain(&e))?;
        let mut lock = open(kind, config, &machine_id).map_err(|e| e.to_string())?;
        op(lock.as_mut()).map_err(|e| e.to_string())?;
        Ok(lock.describe())
    }
}
