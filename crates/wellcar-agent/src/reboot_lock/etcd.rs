//! `etcd-lock`: locksmith's reboot semaphore in etcd, through the [`EtcdSemaphore`] seam.
//!
//! Contract (locksmithd's flow, `locksmithctl/daemon.go`):
//! - The holder id is the machine id (`/etc/machine-id`), as locksmith's, so Wellcar and
//!   Flatcar hosts configured alike share one semaphore and `locksmithctl unlock <id>` names
//!   the same machines.
//! - Lock: adding a holder that is already in the list is success (locksmith's `ErrExist`);
//!   a full semaphore is a refusal, retried with backoff.
//! - Unlock: removing a holder that is not in the list is success (locksmith's
//!   `ErrNotExist`).
//! - The keys, JSON and etcd API (v2 keys, compare-and-swap) are `wellcar-locksmith`'s; this
//!   module only adapts its [`wellcar_locksmith::EtcdLock`] to [`RebootLock`] (a fresh client
//!   per attempt, from the configuration of that tick).

use super::{LockError, RebootLock};
use crate::config::EtcdLockSettings;

/// What went wrong talking to the semaphore.
#[derive(Debug, thiserror::Error)]
#[error("etcd-lock at {endpoints}{}: {reason}", group.as_deref().map(|g| format!(" group {g}")).unwrap_or_default())]
pub struct EtcdLockError {
    /// The endpoints, comma-separated.
    pub endpoints: String,
    /// `LOCKSMITHD_GROUP`, if set.
    pub group: Option<String>,
    /// The semaphore is full (the lock was refused, not failed).
    pub full: bool,
    /// What failed.
    pub reason: String,
}

/// What etcd-lock needs from locksmith's semaphore.
pub trait EtcdSemaphore {
    /// Adds `holder`; already holding is `Ok`.
    fn lock(&mut self, holder: &str) -> Result<(), EtcdLockError>;
    /// Removes `holder`; not holding is `Ok`.
    fn unlock(&mut self, holder: &str) -> Result<(), EtcdLockError>;
    /// For logs.
    fn describe(&self) -> String;
}

/// [`RebootLock`] over an [`EtcdSemaphore`] for one holder.
#[derive(Debug)]
pub struct EtcdLock<S> {
    semaphore: S,
    holder: String,
}

impl<S: EtcdSemaphore> EtcdLock<S> {
    /// The lock of `holder` (the machine id) in `semaphore`.
    pub fn new(semaphore: S, holder: &str) -> Self {
        Self {
            semaphore,
            holder: holder.to_owned(),
        }
    }
}

impl<S: EtcdSemaphore> RebootLock for EtcdLock<S> {
    fn acquire(&mut self) -> Result<(), LockError> {
        Ok(self.semaphore.lock(&self.holder)?)
    }

    fn release(&mut self) -> Result<(), LockError> {
        Ok(self.semaphore.unlock(&self.holder)?)
    }

    fn describe(&self) -> String {
        format!("{} holder {}", self.semaphore.describe(), self.holder)
    }
}

/// The semaphore for `settings`: locksmith's key for `LOCKSMITHD_GROUP` in the etcd of
/// `LOCKSMITHD_ENDPOINT`, created as locksmith creates it when missing.
pub fn open(settings: &EtcdLockSettings) -> Result<Box<dyn EtcdSemaphore>, EtcdLockError> {
    let lock = wellcar_locksmith::EtcdLock::new(
        &settings.locksmith.etcd,
        settings.locksmith.group.as_deref(),
    )
    .map_err(|e| failure(settings, &e))?;
    Ok(Box::new(Locksmith {
        lock,
        settings: settings.clone(),
    }))
}

fn failure(settings: &EtcdLockSettings, e: &wellcar_locksmith::Error) -> EtcdLockError {
    EtcdLockError {
        endpoints: settings.locksmith.etcd.endpoints.join(","),
        group: settings.locksmith.group.clone(),
        full: e.is_full(),
        reason: wellcar_contract::error_chain(e),
    }
}

/// [`EtcdSemaphore`] through `wellcar-locksmith`.
#[derive(Debug)]
struct Locksmith {
    lock: wellcar_locksmith::EtcdLock,
    settings: EtcdLockSettings,
}

impl EtcdSemaphore for Locksmith {
    fn lock(&mut self, holder: &str) -> Result<(), EtcdLockError> {
        // Held already (also when locksmith's "full" check comes first) is success.
        self.lock
            .acquire(holder)
            .map(|_| ())
            .map_err(|e| failure(&self.settings, &e))
    }

    fn unlock(&mut self, holder: &str) -> Result<(), EtcdLockError> {
        self.lock
            .unlock_if_held(holder)
            .map(|_| ())
            .map_err(|e| failure(&self.settings, &e))
    }

    fn describe(&self) -> String {
        format!(
            "etcd-lock {} key {}",
            self.lock.endpoints().join(","),
            self.lock.key()
        )
    }
}

impl EtcdSemaphore for Box<dyn EtcdSemaphore> {
    fn lock(&mut self, holder: &str) -> Result<(), EtcdLockError> {
        (**self).lock(holder)
    }

    fn unlock(&mut self, holder: &str) -> Result<(), EtcdLockError> {
        (**self).unlock(holder)
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}
