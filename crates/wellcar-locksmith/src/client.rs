//! The lock client: one group's semaphore in etcd, read and changed by compare-and-swap
//! (locksmith's `EtcdLockClient` and `Lock`; see the crate docs for the contract).

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::keys::{KeysClient, Precondition, COMPARE_FAILED, NODE_EXIST};
use crate::{Error, EtcdConfig, Semaphore, SemaphoreError};

/// locksmith's key prefix.
pub const KEY_PREFIX: &str = "coreos.com/updateengine/rebootlock";

/// Compare-and-swap attempts of one change before [`Error::CasConflictsExhausted`].
pub const MAX_CAS_ATTEMPTS: u32 = 64;

/// Longest pause between two attempts (the pause is random, growing with the attempt).
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// What Go's `url.QueryEscape` leaves alone: letters, digits and `-_.~` (a space becomes `+`).
const QUERY_ESCAPE_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b' ');

/// Go's `url.QueryEscape`.
fn query_escape(s: &str) -> String {
    utf8_percent_encode(s, QUERY_ESCAPE_KEEP)
        .to_string()
        .replace(' ', "+")
}

/// The semaphore's key for `group` (`None` or `""`: the default semaphore):
/// `coreos.com/updateengine/rebootlock/semaphore` or
/// `coreos.com/updateengine/rebootlock/groups/<url.QueryEscape(group)>/semaphore`.
///
/// `.` and `..` are refused: locksmith's `path.Join` would fold them into another key.
pub fn semaphore_key(group: Option<&str>) -> Result<String, Error> {
    match group {
        None | Some("") => Ok(format!("{KEY_PREFIX}/semaphore")),
        Some(g @ ("." | "..")) => Err(Error::InvalidGroup {
            group: g.to_owned(),
            reason: "`.` and `..` would name another key".into(),
        }),
        Some(g) => Ok(format!("{KEY_PREFIX}/groups/{}/semaphore", query_escape(g))),
    }
}

/// One group's semaphore in etcd.
#[derive(Debug)]
pub struct EtcdLock {
    keys: KeysClient,
    key: String,
}

impl EtcdLock {
    /// Connects to `config`'s etcd and makes sure `group`'s semaphore exists (locksmith's
    /// `Init`: create `{"semaphore":1,"max":1,"holders":null}` unless the key exists).
    pub fn new(config: &EtcdConfig, group: Option<&str>) -> Result<Self, Error> {
        let lock = EtcdLock {
            keys: KeysClient::new(config)?,
            key: semaphore_key(group)?,
        };
        match lock.keys.put(
            &lock.key,
            &Semaphore::default().to_json(),
            Precondition::Absent,
        ) {
            Ok(_) => Ok(lock),
            Err(Error::Etcd {
                code: NODE_EXIST, ..
            }) => Ok(lock),
            Err(e) => Err(e),
        }
    }

    /// The semaphore's etcd key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The endpoints, in order.
    pub fn endpoints(&self) -> &[String] {
        self.keys.endpoints()
    }

    /// The semaphore now, with its `modifiedIndex` in [`Semaphore::index`].
    pub fn get(&self) -> Result<Semaphore, Error> {
        let node = self.keys.get(&self.key)?;
        let mut semaphore: Semaphore =
            serde_json::from_str(&node.value).map_err(|source| Error::BadSemaphoreJson {
                key: self.key.clone(),
                value: node.value.clone(),
                source,
            })?;
        semaphore.index = node.modified_index;
        Ok(semaphore)
    }

    /// Takes a slot for `holder`; returns the semaphore as stored. Refusals are
    /// [`Error::Semaphore`]: full ([`Error::is_full`]), or already held
    /// ([`Error::is_already_held`], which `locksmithd` treats as having the lock).
    pub fn lock(&self, holder: &str) -> Result<Semaphore, Error> {
        self.update(|s| s.lock(holder)).map(|(s, ())| s)
    }

    /// Gives `holder`'s slot back; returns the semaphore as stored. [`Error::is_not_held`] if
    /// it held none.
    pub fn unlock(&self, holder: &str) -> Result<Semaphore, Error> {
        self.update(|s| s.unlock(holder)).map(|(s, ())| s)
    }

    /// What `locksmithd` counts as having the lock: takes a slot for `holder`, or finds it
    /// holding one already ("holder exists", and also "semaphore is at N" when `holder` is
    /// among the holders, which locksmith checks first). Returns the semaphore; a full
    /// semaphore held by others stays [`Error::is_full`].
    pub fn acquire(&self, holder: &str) -> Result<Semaphore, Error> {
        match self.lock(holder) {
            Ok(semaphore) => Ok(semaphore),
            Err(e) if e.is_already_held() || e.is_full() => {
                let semaphore = self.get()?;
                if semaphore.is_held_by(holder) {
                    Ok(semaphore)
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// `locksmithd`'s `unlockIfHeld`: unlocks `holder` if it holds a slot; returns whether it
    /// did.
    pub fn unlock_if_held(&self, holder: &str) -> Result<bool, Error> {
        match self.unlock(holder) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_held() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets the number of slots; returns the old max and the semaphore as stored.
    pub fn set_max(&self, max: i64) -> Result<(i64, Semaphore), Error> {
        self.update(|s| Ok(s.set_max(max))).map(|(s, old)| (old, s))
    }

    /// Read, change, compare-and-swap; again from a fresh read when another writer won.
    fn update<T>(
        &self,
        change: impl Fn(&mut Semaphore) -> Result<T, SemaphoreError>,
    ) -> Result<(Semaphore, T), Error> {
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let mut semaphore = self.get()?;
            let result = change(&mut semaphore).map_err(|source| Error::Semaphore {
                key: self.key.clone(),
                source,
            })?;
            match self.keys.put(
                &self.key,
                &semaphore.to_json(),
                Precondition::ModifiedIndex(semaphore.index),
            ) {
                Ok(node) => {
                    semaphore.index = node.modified_index;
                    return Ok((semaphore, result));
                }
                Err(Error::Etcd {
                    code: COMPARE_FAILED,
                    ..
                }) => {
                    tracing::debug!(key = %self.key, attempt, "compare-and-swap lost a race; retrying");
                    let ceiling = (1_u64 << attempt.min(7)).min(MAX_BACKOFF.as_millis() as u64);
                    std::thread::sleep(Duration::from_millis(fastrand::u64(0..=ceiling)));
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::CasConflictsExhausted {
            key: self.key.clone(),
            attempts: MAX_CAS_ATTEMPTS,
        })
    }
}

#[cfg(test)]
mod tests;
