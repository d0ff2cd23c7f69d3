//! The grant: whether an update check is offered the package its hop chose. Cheap refusals come
//! from the in-memory snapshot ([`may_grant`]); the authoritative decision runs in one database
//! transaction ([`grant`]: group policy, limits, safe mode, the grant record and the rollout's
//! first activity entry), and in the same transaction the payload to offer, full or delta
//! ([`crate::deltas::choose_in_grant`]).

use std::sync::Arc;

use crate::model::{status, Group, Package};
use crate::server::ServerState;
use crate::store::{self, Sighting};
use crate::StoreError;

/// Cheap refusals from the snapshot (no machine id, paused, halted, window closed, limits known
/// to be reached); the grant transaction re-checks them authoritatively.
pub(super) fn may_grant(state: &ServerState, group: &Group, sighting: &Sighting, now: i64) -> bool {
    !sighting.facts.machine_id.is_empty()
        && group.policy.updates_enabled
        && !group.halted
        && crate::policy::window_open(&group.policy.timezone, &group.policy.windows, now)
        && !state.group_saturated(&group.id, now)
}

/// Decides whether to offer `package` (chosen by [`next_hop`], or by
/// [`crate::pinning::pinned_hop`] for a check with `targetversionprefix` `pin`); `Some` means the
/// update is granted (or re-served), with the payload to offer ([`crate::deltas`], chosen in the
/// same transaction). A pinned grant goes through the same policy and counts against the same
/// limits.
pub(super) async fn decide(
    state: &Arc<ServerState>,
    group: &Group,
    package: Package,
    sighting: &Sighting,
    pin: Option<&str>,
    now: i64,
) -> Result<Option<(Package, crate::deltas::PayloadChoice)>, StoreError> {
    if !may_grant(state, group, sighting, now) {
        return Ok(None);
    }
    let s = sighting.clone();
    let group_id = group.id.clone();
    let version = package.version.clone();
    let pin = pin.map(str::to_owned);
    let granted = package.clone();
    let (verdict, payload) = state
        .db
        .write_combined(move |conn| {
            let verdict = grant(conn, &group_id, &s, &version, pin.as_deref(), now)?;
            let payload = match verdict {
                Verdict::Granted => Some(crate::deltas::choose_in_grant(conn, &s, &granted, now)?),
                _ => None,
            };
            Ok((verdict, payload))
        })
        .await?;
    match (verdict, payload) {
        (Verdict::Granted, payload) => Ok(Some((
            package,
            payload.unwrap_or(crate::deltas::PayloadChoice::Full),
        ))),
        (Verdict::Refused, _) => Ok(None),
        (Verdict::Saturated, _) => {
            state.mark_saturated(&group.id, now);
            Ok(None)
        }
    }
}

/// Outcome of the grant transaction.
enum Verdict {
    /// Update granted (or re-served).
    Granted,
    /// Not for this instance.
    Refused,
    /// The group's limits are reached: nobody else gets an update until something changes.
    Saturated,
}

/// The grant transaction: lock the group, re-read its policy and counters, grant or refuse.
fn grant(
    conn: &mut dyn crate::db::Conn,
    group_id: &str,
    s: &Sighting,
    version: &str,
    pin: Option<&str>,
    now: i64,
) -> Result<Verdict, StoreError> {
    let Some(group) = store::lock_group(conn, group_id)? else {
        return Ok(Verdict::Refused);
    };
    if let Some(inst) = store::find_instance(conn, &s.facts.app_id, &s.facts.machine_id, true)? {
        let same_version = inst.granted_version.as_deref() == Some(version);
        if same_version && status::IN_PROGRESS.contains(&inst.status.as_str()) {
            return Ok(Verdict::Granted); // the client asked again: re-serve its grant
        }
        // Never re-offer a version that rolled back or timed out on this machine; in safe mode,
        // never re-offer one that failed at all.
        let rolled_back =
            inst.last_error_code == Some(i64::from(wellcar_omaha::ErrorCode::ROLLBACK));
        if same_version
            && (inst.status == status::TIMEOUT
                || (inst.status == status::ERROR && (rolled_back || group.policy.safe_mode)))
        {
            return Ok(Verdict::Refused);
        }
    }
    let counters = store::rollout_counters(conn, &group, version, now)?;
    if let Err(denial) = crate::policy::decide(&group.policy, group.halted, counters, now) {
        tracing::debug!(machine = %s.facts.machine_id, group = %group.track, reason = denial.as_str(), "update withheld");
        return Ok(match denial {
            crate::policy::Denial::PeriodLimit
            | crate::policy::Denial::ConcurrencyLimit
            | crate::policy::Denial::SafeModeFirstInProgress => Verdict::Saturated,
            _ => Verdict::Refused,
        });
    }
    let first = !store::version_granted_before(conn, &group.id, version)?;
    store::record_grant(conn, s, version, now)?;
    if let Some(prefix) = pin {
        tracing::info!(machine = %s.facts.machine_id, group = %group.track, version, prefix, "pinned update granted");
    }
    if first {
        store::log_activity(
            conn,
            now,
            &store::NewActivity {
                actor: "system",
                kind: "rollout-started",
                app_id: Some(&s.facts.app_id),
                group_id: Some(&group.id),
                severity: "info",
                message: &format!(
                    "rollout of {version} to group {} started with instance {}{}",
                    group.track,
                    s.facts.machine_id,
                    pin.map(|p| format!(" (pinned: targetversionprefix={p})"))
                        .unwrap_or_default()
                ),
            },
        )?;
    }
    Ok(Verdict::Granted)
}
