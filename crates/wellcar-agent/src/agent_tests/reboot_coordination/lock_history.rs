//! The lock services' own records of who held a reboot lock, as histories of holder sets in
//! commit order, and what the fleet tests compute from them.
//!
//! - FleetLock ([`from_activity`]): the server's activity log (`fleetlock-granted`,
//!   `fleetlock-released`, `fleetlock-lease-expired`, `fleetlock-force-released`), each entry
//!   naming the holder id as a quoted string. The log orders entries by millisecond only, so
//!   entries of the same millisecond are taken releases first (the order that never shows an
//!   overlap the server did not commit); in addition each grant's message carries the holders
//!   the server counted under the group lock ("slot N of M"), which [`Fleetlock::slots`] keeps
//!   so that the test checks the server's own count as well.
//! - etcd-lock ([`etcd_v2_history`]): every version of locksmith's semaphore document, read
//!   back from etcd's v2 event history (`?wait=true&waitIndex=`): each compare-and-swap is one
//!   entry, in etcd's index order, none left out.

use std::collections::BTreeSet;

use wellcar_server::model::Activity;

/// What changed the holders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    Granted(String),
    Released(String),
    LeaseExpired(String),
    ForceReleased(String),
}

impl Change {
    pub(super) fn id(&self) -> &str {
        match self {
            Self::Granted(id)
            | Self::Released(id)
            | Self::LeaseExpired(id)
            | Self::ForceReleased(id) => id,
        }
    }
}

/// One change and the holders right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Step {
    /// When the lock service recorded it (unix ms), if it records times.
    pub(super) at_ms: Option<i64>,
    pub(super) change: Change,
    pub(super) holders: BTreeSet<String>,
}

/// The most holders at once.
pub(super) fn peak(steps: &[Step]) -> usize {
    steps.iter().map(|s| s.holders.len()).max().unwrap_or(0)
}

/// Grants that left more than `max` holders.
pub(super) fn over_grants(steps: &[Step], max: usize) -> usize {
    steps
        .iter()
        .filter(|s| matches!(s.change, Change::Granted(_)) && s.holders.len() > max)
        .count()
}

/// Applies `changes` in order, starting from no holder.
fn fold(changes: impl IntoIterator<Item = (Option<i64>, Change)>) -> Vec<Step> {
    let mut holders = BTreeSet::new();
    changes
        .into_iter()
        .map(|(at_ms, change)| {
            match &change {
                Change::Granted(id) => holders.insert(id.clone()),
                other => holders.remove(other.id()),
            };
            Step {
                at_ms,
                change,
                holders: holders.clone(),
            }
        })
        .collect()
}

/// A FleetLock group's history from the activity log.
#[derive(Debug)]
pub(super) struct Fleetlock {
    pub(super) steps: Vec<Step>,
    /// Per grant: (holder, slot N, of M) as the server counted them.
    pub(super) slots: Vec<(String, usize, usize)>,
}

/// The first `"…"` of `message`.
fn quoted(message: &str) -> Option<&str> {
    let start = message.find('"')? + 1;
    let len = message[start..].find('"')?;
    Some(&message[start..start + len])
}

/// `N of M` after `slot ` in a grant message.
fn slot_of(message: &str) -> Option<(usize, usize)> {
    let rest = &message[message.find("(slot ")? + "(slot ".len()..];
    let mut words = rest.split([' ', ',']);
    let n = words.next()?.parse().ok()?;
    (words.next()? == "of").then_some(())?;
    let m = words.next()?.parse().ok()?;
    Some((n, m))
}

/// The history of lock group `group` in `entries` (the activity log, any order).
pub(super) fn from_activity(entries: &[Activity], group: &str) -> Fleetlock {
    let mine = format!("reboot lock {group} ");
    let also_mine = format!("reboot lock {group}:");
    let mut changes: Vec<(i64, u8, Change, &str)> = entries
        .iter()
        .filter(|e| e.message.starts_with(&mine) || e.message.starts_with(&also_mine))
        .filter_map(|e| {
            let id = quoted(&e.message)?.to_owned();
            let (rank, change) = match e.kind.as_str() {
                "fleetlock-granted" => (1, Change::Granted(id)),
                "fleetlock-released" => (0, Change::Released(id)),
                "fleetlock-lease-expired" => (0, Change::LeaseExpired(id)),
                "fleetlock-force-released" => (0, Change::ForceReleased(id)),
                _ => return None,
            };
            Some((e.created_at, rank, change, e.message.as_str()))
        })
        .collect();
    changes.sort_by_key(|c| (c.0, c.1));
    let slots = changes
        .iter()
        .filter_map(|(_, _, change, message)| match change {
            Change::Granted(id) => {
                let (n, m) = slot_of(message).expect("a grant names its slot");
                Some((id.clone(), n, m))
            }
            _ => None,
        })
        .collect();
    let steps = fold(changes.into_iter().map(|(t, _, c, _)| (Some(t), c)));
    Fleetlock { steps, slots }
}

/// The holders of a locksmith semaphore document.
fn semaphore_holders(value: &str) -> BTreeSet<String> {
    let doc: serde_json::Value = serde_json::from_str(value).expect("semaphore JSON");
    doc["holders"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| h.as_str().expect("holder id").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every version of the etcd v2 key `key` at `endpoint` (locksmith's semaphore), from its
/// first write to its current value, as changes of its holders.
pub(super) fn etcd_v2_history(endpoint: &str, key: &str) -> Vec<Step> {
    let get = |query: &str| -> serde_json::Value {
        let url = format!("{endpoint}/v2/keys/{key}{query}");
        let mut response = ureq::get(&url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let text = response.body_mut().read_to_string().unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: {e}: {text}"))
    };
    let current = get("")["node"]["modifiedIndex"].as_u64().expect("index");
    let mut versions: Vec<BTreeSet<String>> = Vec::new();
    let mut index = 1;
    while index <= current {
        let event = get(&format!("?wait=true&waitIndex={index}"));
        let node = &event["node"];
        let modified = node["modifiedIndex"].as_u64().expect("event index");
        let value = node["value"].as_str().expect("a delete of the semaphore");
        versions.push(semaphore_holders(value));
        index = modified + 1;
    }
    let mut changes = Vec::new();
    let mut before = BTreeSet::new();
    for holders in versions {
        for gone in before.difference(&holders) {
            changes.push((None, Change::Released(gone.clone())));
        }
        for new in holders.difference(&before) {
            changes.push((None, Change::Granted(new.clone())));
        }
        before = holders;
    }
    // One CAS changes one holder (locksmith's lock and unlock), so this order is the
    // commit order.
    fold(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: i64, kind: &str, message: &str) -> Activity {
        Activity {
            created_at: at,
            actor: "system".into(),
            kind: kind.into(),
            app_id: None,
            group_id: None,
            severity: "info".into(),
            message: message.into(),
        }
    }

    #[test]
    fn activity_log_becomes_holder_sets_with_releases_first_in_a_millisecond() {
        let log = [
            entry(
                5,
                "fleetlock-granted",
                r#"reboot lock g granted to "b" (slot 1 of 1, lease until 99)"#,
            ),
            entry(
                5,
                "fleetlock-released",
                r#"reboot lock g released by "a" (steady state)"#,
            ),
            entry(
                1,
                "fleetlock-granted",
                r#"reboot lock g granted to "a" (slot 1 of 1, lease until 9)"#,
            ),
            entry(
                7,
                "fleetlock-granted",
                r#"reboot lock other granted to "z" (slot 1 of 1, lease until 9)"#,
            ),
            entry(
                8,
                "fleetlock-lease-expired",
                r#"reboot lock g: lease of "b" expired at 8 without steady-state; slot released"#,
            ),
        ];
        let h = from_activity(&log, "g");
        let sets: Vec<Vec<&str>> = h
            .steps
            .iter()
            .map(|s| s.holders.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(sets, [vec!["a"], vec![], vec!["b"], vec![]]);
        assert_eq!(h.steps[3].change, Change::LeaseExpired("b".into()));
        assert_eq!(peak(&h.steps), 1);
        assert_eq!(over_grants(&h.steps, 1), 0);
        assert_eq!(h.slots, [("a".into(), 1, 1), ("b".into(), 1, 1)]);
    }

    #[test]
    fn an_overlapping_grant_is_counted() {
        let log = [
            entry(
                1,
                "fleetlock-granted",
                r#"reboot lock g granted to "a" (slot 1 of 1, lease until 9)"#,
            ),
            entry(
                2,
                "fleetlock-granted",
                r#"reboot lock g granted to "b" (slot 2 of 1, lease until 9)"#,
            ),
            entry(
                3,
                "fleetlock-released",
                r#"reboot lock g released by "a" (steady state)"#,
            ),
        ];
        let h = from_activity(&log, "g");
        assert_eq!(peak(&h.steps), 2);
        assert_eq!(over_grants(&h.steps, 1), 1);
        assert_eq!(over_grants(&h.steps, 2), 0);
        assert_eq!(h.slots[1], ("b".into(), 2, 1));
    }

    /// Against a real etcd: every version written to the key comes back, in order, as
    /// holder changes.
    #[test]
    fn etcd_history_has_every_version_in_order() {
        let etcd = wellcar_test_support::etcd::Etcd::start();
        let key = "coreos.com/updateengine/rebootlock/semaphore";
        let url = format!("{}/v2/keys/{key}", etcd.url);
        let versions = [
            r#"{"semaphore":1,"max":2,"holders":[]}"#,
            r#"{"semaphore":0,"max":2,"holders":["a"]}"#,
            r#"{"semaphore":0,"max":2,"holders":["a","b"]}"#,
            r#"{"semaphore":0,"max":2,"holders":["b"]}"#,
            r#"{"semaphore":1,"max":2,"holders":null}"#,
        ];
        for v in versions {
            ureq::put(&url).send_form([("value", v)]).unwrap();
        }
        let steps = etcd_v2_history(&etcd.url, key);
        let changes: Vec<Change> = steps.iter().map(|s| s.change.clone()).collect();
        assert_eq!(
            changes,
            [
                Change::Granted("a".into()),
                Change::Granted("b".into()),
                Change::Released("a".into()),
                Change::Released("b".into()),
            ]
        );
        assert_eq!(peak(&steps), 2);
        assert_eq!(over_grants(&steps, 1), 1);
    }
}
