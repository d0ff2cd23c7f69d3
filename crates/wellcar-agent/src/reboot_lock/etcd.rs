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
//! - The keys, JSON and etcd API (v2 keys, compare-and-swap) are the semaphore client's
//!   (`wellcar-locksmith`); this module only adapts it to [`RebootLock`].

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

/// The semaphore for `settings`.
pub fn open(settings: &EtcdLockSettings) -> Result<Box<dyn EtcdSemaphore>, EtcdLockError> {
    Err(EtcdLockError {
        endpoints: settings.endpoints.join(","),
        group: settings.group.clone(),
        full: false,
        reason: "this build has no etcd semaphore client (wellcar-locksmith) yet".into(),
    })
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
