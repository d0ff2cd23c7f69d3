//! Which Omaha events may change rollout state.
//!
//! Omaha requests are not authenticated per machine: anyone who can reach the server can send
//! any `machineid`. So an event only counts when it fits an update this server granted.
//!
//! Contract ([`classify`]):
//! - An event is verified only if its instance already exists, holds a grant (`granted_version`)
//!   made in the group its request's track selects, and the event fits that grant:
//!   - `3/2` (rebooted into the update, with a `previousversion`): the machine reports running
//!     the granted version, and the grant is in progress, timed out or already complete (a
//!     check-in on the new version may have completed it first);
//!   - failures (result 0, including the agent's rollback report, errorcode 44): the machine
//!     reports a version other than the granted one (it is still on, or back on, its old one),
//!     and the grant is in progress or timed out;
//!   - progress (`13/1`, `14/1`, `3/1`, `800/1`, anything else): the same, but only while the
//!     grant is in progress (a late download report does not revive a timed-out update).
//! - Everything else is [`Unverified`], with one of a fixed set of reasons (a metrics label):
//!   stored for the operator, counted, never acted on (no status change, no halt, no activity).
//! - Flatcar's routine `3/2` with an empty `previousversion` is filtered before this (acked,
//!   not stored).

use wellcar_omaha::{event_result, event_type, Event};

use crate::model::{status, Instance};

/// Why an event was not verified. The set is fixed: [`Unverified::as_str`] is a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unverified {
    /// No instance with this machine id existed before the request.
    UnknownInstance,
    /// The instance was never granted an update.
    NoGrant,
    /// The request's track selects another group (or none) than the one that granted it.
    OtherGroup,
    /// The version the machine reports does not fit the event and the granted version.
    WrongVersion,
    /// The grant is not in a state this event can follow (e.g. a failure after completion).
    GrantNotLive,
}

impl Unverified {
    /// Every reason, in [`Unverified::index`] order.
    pub const ALL: [Unverified; 5] = [
        Unverified::UnknownInstance,
        Unverified::NoGrant,
        Unverified::OtherGroup,
        Unverified::WrongVersion,
        Unverified::GrantNotLive,
    ];

    /// Short machine-readable reason (metrics label, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Unverified::UnknownInstance => "unknown-instance",
            Unverified::NoGrant => "no-grant",
            Unverified::OtherGroup => "other-group",
            Unverified::WrongVersion => "wrong-version",
            Unverified::GrantNotLive => "grant-not-live",
        }
    }

    /// Position in [`Unverified::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What [`classify`] needs to know about an instance: its stored row, with the status as the
/// events of the same request so far have moved it.
#[derive(Debug, Clone, Copy)]
pub struct GrantState<'a> {
    /// The stored instance.
    pub instance: &'a Instance,
    /// Its status now (after earlier verified events of the same request).
    pub status: &'a str,
}

/// Whether `event`, sent by a machine reporting `running_version` on a track that selects
/// `request_group` (a group id), fits the grant of `state`'s instance (see the module docs).
pub fn classify(
    state: Option<GrantState<'_>>,
    request_group: Option<&str>,
    running_version: &str,
    event: &Event,
) -> Result<(), Unverified> {
    let Some(GrantState { instance, status }) = state else {
        return Err(Unverified::UnknownInstance);
    };
    let Some(granted) = instance.granted_version.as_deref() else {
        return Err(Unverified::NoGrant);
    };
    if request_group.is_none() || instance.facts.group_id.as_deref() != request_group {
        return Err(Unverified::OtherGroup);
    }
    let in_progress = status::IN_PROGRESS.contains(&status);
    let timed_out = status == status::TIMEOUT;
    let rebooted = event.event_type == event_type::UPDATE_COMPLETE
        && event.event_result == event_result::SUCCESS_REBOOT;
    let (version_fits, live) = if rebooted {
        (
            running_version == granted,
            in_progress || timed_out || status == status::COMPLETE,
        )
    } else if event.event_result == event_result::ERROR {
        (running_version != granted, in_progress || timed_out)
    } else {
        (running_version != granted, in_progress)
    };
    if !version_fits {
        return Err(Unverified::WrongVersion);
    }
    if !live {
        return Err(Unverified::GrantNotLive);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceFacts;
    use wellcar_omaha::ErrorCode;

    fn granted(version: &str) -> Instance {
        Instance {
            facts: InstanceFacts {
                app_id: "app".into(),
                machine_id: "m".into(),
                alias: String::new(),
                ip: "127.0.0.1".into(),
                oem: String::new(),
                version: "1.0.0".into(),
                track: "stable".into(),
                group_id: Some("g".into()),
                arch: "amd64".into(),
            },
            status: status::GRANTED.into(),
            last_check: 0,
            granted_version: Some(version.into()),
            granted_at: Some(0),
            last_error_code: None,
        }
    }

    fn ev(t: u32, r: u32, code: Option<u32>, previous: Option<&str>) -> Event {
        Event {
            event_type: t,
            event_result: r,
            error_code: code.map(|raw| ErrorCode { raw }),
            previous_version: previous.map(str::to_owned),
        }
    }

    #[test]
    fn only_events_fitting_a_live_grant_are_verified() {
        let i = granted("2.0.0");
        let st = |status| {
            Some(GrantState {
                instance: &i,
                status,
            })
        };
        let rollback = ev(3, 0, Some(44), None);
        let rebooted = ev(3, 2, None, Some("1.0.0"));
        let downloading = ev(13, 1, None, None);
        let g = Some("g");
        assert_eq!(
            classify(None, g, "1.0.0", &rollback),
            Err(Unverified::UnknownInstance)
        );
        let mut ungranted = granted("2.0.0");
        ungranted.granted_version = None;
        let s = Some(GrantState {
            instance: &ungranted,
            status: status::UNDEFINED,
        });
        assert_eq!(classify(s, g, "1.0.0", &rollback), Err(Unverified::NoGrant));
        assert_eq!(
            classify(st(status::INSTALLED), Some("h"), "1.0.0", &rollback),
            Err(Unverified::OtherGroup)
        );
        assert_eq!(
            classify(st(status::INSTALLED), None, "1.0.0", &rollback),
            Err(Unverified::OtherGroup)
        );
        // The agent's rollback report: back on 1.0.0 after being granted 2.0.0.
        assert_eq!(
            classify(st(status::INSTALLED), g, "1.0.0", &rollback),
            Ok(())
        );
        assert_eq!(classify(st(status::TIMEOUT), g, "1.0.0", &rollback), Ok(()));
        assert_eq!(
            classify(st(status::INSTALLED), g, "2.0.0", &rollback),
            Err(Unverified::WrongVersion)
        );
        assert_eq!(
            classify(st(status::COMPLETE), g, "1.0.0", &rollback),
            Err(Unverified::GrantNotLive)
        );
        assert_eq!(
            classify(st(status::ERROR), g, "1.0.0", &rollback),
            Err(Unverified::GrantNotLive)
        );
        // Rebooted into the update: running the granted version.
        assert_eq!(
            classify(st(status::INSTALLED), g, "2.0.0", &rebooted),
            Ok(())
        );
        assert_eq!(
            classify(st(status::COMPLETE), g, "2.0.0", &rebooted),
            Ok(())
        );
        assert_eq!(
            classify(st(status::INSTALLED), g, "1.5.0", &rebooted),
            Err(Unverified::WrongVersion)
        );
        // Progress only while in progress.
        assert_eq!(
            classify(st(status::GRANTED), g, "1.0.0", &downloading),
            Ok(())
        );
        assert_eq!(
            classify(st(status::TIMEOUT), g, "1.0.0", &downloading),
            Err(Unverified::GrantNotLive)
        );
    }

    #[test]
    fn reasons_are_a_fixed_label_set() {
        for (i, r) in Unverified::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(r
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-'));
        }
    }
}
