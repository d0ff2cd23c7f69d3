//! The semaphore's value and its rules, exactly as locksmith's `lock/semaphore.go`: the JSON
//! stored at the key, and what lock, unlock and set-max do to it (pure; [`crate::EtcdLock`]
//! stores the result).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The JSON at the semaphore key: `{"semaphore":1,"max":1,"holders":null}`.
///
/// Field names, order and types are locksmith's (Go `int` is 64-bit); unknown fields are
/// ignored and missing ones are zero / `null`, as Go's decoder does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Semaphore {
    /// etcd's `modifiedIndex` of the value this was read from (never in the JSON); the
    /// compare-and-swap that stores a change names it.
    #[serde(skip)]
    pub index: u64,
    /// Free slots (`max` minus the number of holders, unless `max` changed while held).
    #[serde(default)]
    pub semaphore: i64,
    /// Slots.
    #[serde(default)]
    pub max: i64,
    /// Holder ids, sorted; `None` is JSON `null` (never locked), `Some(vec![])` is `[]`.
    #[serde(default)]
    pub holders: Option<Vec<String>>,
}

/// Why a change to the semaphore is refused (locksmith's errors, same wording first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SemaphoreError {
    /// No free slot.
    #[error("semaphore is at {available}: all {max} slots are held")]
    Full {
        /// The semaphore's value (free slots, 0 or less).
        available: i64,
        /// Its max.
        max: i64,
    },
    /// The holder holds it already (locksmith's `ErrExist`; `locksmithd` takes this as
    /// success).
    #[error("holder exists: {holder} holds the semaphore already")]
    AlreadyHeld {
        /// The holder id.
        holder: String,
    },
    /// The holder does not hold it (locksmith's `ErrNotExist`).
    #[error("holder does not exist: {holder} does not hold the semaphore")]
    NotHeld {
        /// The holder id.
        holder: String,
    },
}

impl Default for Semaphore {
    /// The value locksmith's Init writes: one slot, free, no holders.
    fn default() -> Self {
        Semaphore {
            index: 0,
            semaphore: 1,
            max: 1,
            holders: None,
        }
    }
}

impl Semaphore {
    /// The holders (empty for `null`).
    pub fn holders(&self) -> &[String] {
        self.holders.as_deref().unwrap_or_default()
    }

    /// Whether `holder` holds it.
    pub fn is_held_by(&self, holder: &str) -> bool {
        self.holders().iter().any(|h| h == holder)
    }

    /// The JSON locksmith writes (no spaces, this field order).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a semaphore always serializes")
    }

    /// Where `holder` sits in the sorted list (Go's `sort.SearchStrings`).
    fn search(&self, holder: &str) -> usize {
        self.holders().partition_point(|h| h.as_str() < holder)
    }

    /// Takes a slot for `holder`: [`SemaphoreError::Full`] if none is free (checked first),
    /// [`SemaphoreError::AlreadyHeld`] if it holds one; else inserts it in order and takes one
    /// off `semaphore`.
    pub fn lock(&mut self, holder: &str) -> Result<(), SemaphoreError> {
        if self.semaphore <= 0 {
            return Err(SemaphoreError::Full {
                available: self.semaphore,
                max: self.max,
            });
        }
        let at = self.search(holder);
        let holders = self.holders.get_or_insert_with(Vec::new);
        if holders.get(at).is_some_and(|h| h == holder) {
            return Err(SemaphoreError::AlreadyHeld {
                holder: holder.to_owned(),
            });
        }
        holders.insert(at, holder.to_owned());
        self.semaphore -= 1;
        Ok(())
    }

    /// Gives `holder`'s slot back: [`SemaphoreError::NotHeld`] if it holds none; else removes
    /// it and adds one to `semaphore`.
    pub fn unlock(&mut self, holder: &str) -> Result<(), SemaphoreError> {
        let at = self.search(holder);
        match self.holders.as_mut() {
            Some(holders) if holders.get(at).is_some_and(|h| h == holder) => {
                holders.remove(at);
                self.semaphore += 1;
                Ok(())
            }
            _ => Err(SemaphoreError::NotHeld {
                holder: holder.to_owned(),
            }),
        }
    }

    /// Sets the number of slots to `max`, moving `semaphore` by the same amount (holders keep
    /// their slots); returns the old max.
    pub fn set_max(&mut self, max: i64) -> i64 {
        let old = self.max;
        let diff = self.max - max;
        self.semaphore -= diff;
        self.max -= diff;
        old
    }
}

/// Where the machine-id is, under a root directory.
pub fn machine_id_path(root: &Path) -> PathBuf {
    root.join("etc/machine-id")
}

/// The holder id locksmith uses: `<root>/etc/machine-id`, trimmed.
pub fn machine_id(root: &Path) -> Result<String, crate::Error> {
    let path = machine_id_path(root);
    let text = std::fs::read_to_string(&path).map_err(|e| crate::Error::MachineId {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let id = text.trim();
    if id.is_empty() {
        return Err(crate::Error::MachineId {
            path,
            reason: "the file is empty".into(),
        });
    }
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Semaphore {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn json_is_locksmiths() {
        assert_eq!(
            Semaphore::default().to_json(),
            r#"{"semaphore":1,"max":1,"holders":null}"#
        );
        // As locksmith's etcd_test.go: missing fields are zero, an "index" in the JSON is
        // ignored (the index comes from etcd).
        assert_eq!(
            parse(r#"{"semaphore": 1}"#),
            Semaphore {
                index: 0,
                semaphore: 1,
                max: 0,
                holders: None
            }
        );
        assert_eq!(parse(r#"{"semaphore": 89, "index": 4567}"#).index, 0);
        let s = parse(r#"{"semaphore": 1, "max": 2, "holders": ["foo", "bar"]}"#);
        assert_eq!(s.holders(), ["foo", "bar"]);
        assert!(serde_json::from_str::<Semaphore>("asdf").is_err());
        assert!(serde_json::from_str::<Semaphore>(r#"{"semaphore:"#).is_err());
    }

    #[test]
    fn lock_and_unlock_as_locksmith() {
        let mut s = Semaphore::default();
        s.lock("a").unwrap();
        assert_eq!((s.semaphore, s.holders()), (0, &["a".to_owned()][..]));
        // Full is checked before "holder exists".
        assert_eq!(
            s.lock("a"),
            Err(SemaphoreError::Full {
                available: 0,
                max: 1
            })
        );
        assert_eq!(
            s.lock("b").unwrap_err().to_string(),
            "semaphore is at 0: all 1 slots are held"
        );
        assert_eq!(
            s.unlock("b"),
            Err(SemaphoreError::NotHeld { holder: "b".into() })
        );
        s.unlock("a").unwrap();
        // Emptied, the list is `[]`, not `null` (Go's append keeps a non-nil slice).
        assert_eq!(s.to_json(), r#"{"semaphore":1,"max":1,"holders":[]}"#);
        assert!(s
            .unlock("a")
            .unwrap_err()
            .to_string()
            .starts_with("holder does not exist"));

        s.set_max(2);
        s.lock("a").unwrap();
        assert_eq!(
            s.lock("a"),
            Err(SemaphoreError::AlreadyHeld { holder: "a".into() })
        );
    }

    #[test]
    fn holders_stay_sorted() {
        let mut s = Semaphore::default();
        s.set_max(3);
        s.lock("c").unwrap();
        s.lock("b").unwrap();
        assert_eq!(s.holders(), ["b", "c"]);
        s.lock("a").unwrap();
        assert_eq!(s.holders(), ["a", "b", "c"]);
        s.unlock("b").unwrap();
        assert_eq!(s.holders(), ["a", "c"]);
        s.unlock("c").unwrap();
        s.lock("b").unwrap();
        assert_eq!(s.holders(), ["a", "b"]);
    }

    #[test]
    fn set_max_moves_the_semaphore_by_the_same_amount() {
        // locksmith's TestSetMax: one holder, then max i gives semaphore i-1.
        let mut s = Semaphore::default();
        s.lock("a").unwrap();
        for i in [3, 2, 1, 0, -1, 0, 1, 2, 3] {
            let old = s.max;
            assert_eq!(s.set_max(i), old);
            assert_eq!((s.semaphore, s.max), (i - 1, i));
        }
    }

    #[test]
    fn machine_id_is_read_and_trimmed() {
        let root = tempfile::tempdir().unwrap();
        let e = machine_id(root.path()).unwrap_err();
        assert!(e.to_string().contains("etc/machine-id"), "{e}");
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(machine_id_path(root.path()), "  \n").unwrap();
        assert!(machine_id(root.path())
            .unwrap_err()
            .to_string()
            .contains("empty"));
        std::fs::write(machine_id_path(root.path()), "0123abcd\n").unwrap();
        assert_eq!(machine_id(root.path()).unwrap(), "0123abcd");
    }
}
