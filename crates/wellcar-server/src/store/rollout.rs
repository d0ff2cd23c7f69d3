//! The rollout's reads and writes on instances: the counters a grant decision needs, the grant
//! itself, and the sweep for updates that ran past their group's timeout.
//!
//! Contract:
//! - The counters, the grant and [`version_granted_before`] run inside the grant transaction,
//!   after the group is locked ([`super::lock_group`]); their lookups are index range scans,
//!   never a scan of the fleet.
//! - An update is in progress while the instance's status is `granted`, `downloading`,
//!   `downloaded` or `installed`; [`sweep_timeouts`] moves it to `timeout` at most once, and
//!   says whether that trips the group's safe-mode brake (timeouts count as failures).

use super::Sighting;
use crate::db::{query_one, Conn};
use crate::model::Group;
use crate::params;
use crate::StoreError;

/// Counters for the grant decision (see [`crate::policy::RolloutCounters`]).
pub fn rollout_counters(
    conn: &mut dyn Conn,
    group: &Group,
    target_version: &str,
    now: i64,
) -> Result<crate::policy::RolloutCounters, StoreError> {
    let p = &group.policy;
    let mut counters = crate::policy::RolloutCounters::default();
    // Each count is an index range scan over recent grants (instances_group_granted), never a
    // scan of the whole fleet; counts no limit needs are skipped.
    let count =
        |conn: &mut dyn Conn, sql: &str, params: &[crate::db::Value]| -> Result<i64, StoreError> {
            Ok(query_one(conn, sql, params)?
                .map(|r| r.int(0))
                .transpose()?
                .unwrap_or(0))
        };
    if p.max_updates_per_period > 0 {
        counters.granted_in_period = count(
            conn,
            "SELECT COUNT(*) FROM instances WHERE group_id = $1 AND granted_at >= $2",
            &params![&group.id, now - p.period_secs * 1000],
        )?;
    }
    if p.max_concurrent > 0 || p.safe_mode {
        counters.in_progress = count(
            conn,
            "SELECT COUNT(*) FROM instances WHERE group_id = $1 AND granted_at >= $2
               AND status IN ('granted', 'downloading', 'downloaded', 'installed')",
            &params![&group.id, now - p.update_timeout_secs * 1000],
        )?;
    }
    if p.safe_mode {
        // Only "has anyone succeeded yet" matters (instances_group_status_version).
        counters.succeeded_on_target = i64::from(
            query_one(
                conn,
                "SELECT 1 FROM instances WHERE group_id = $1 AND status = 'complete' AND version = $2 LIMIT 1",
                &params![&group.id, target_version],
            )?
            .is_some(),
        );
    }
    Ok(counters)
}

/// Records a grant on an instance (creating the row if this is its first check).
pub fn record_grant(
    conn: &mut dyn Conn,
    s: &Sighting,
    version: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO instances (app_id, machine_id, alias, ip, oem, version, track, group_id, arch,
            status, first_seen, last_check, granted_version, granted_at, status_changed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'granted', $10, $10, $11, $10, $10)
         ON CONFLICT (app_id, machine_id) DO UPDATE SET
            alias = excluded.alias, ip = excluded.ip, oem = excluded.oem, version = excluded.version,
            track = excluded.track, group_id = excluded.group_id, arch = excluded.arch,
            status = 'granted', last_check = excluded.last_check,
            granted_version = excluded.granted_version, granted_at = excluded.granted_at,
            status_changed_at = excluded.status_changed_at, last_error_code = NULL",
        &s.row_values(params![now, version]),
    )?;
    Ok(())
}

/// Whether any instance of the group was ever granted `version`.
pub fn version_granted_before(
    conn: &mut dyn Conn,
    group_id: &str,
    version: &str,
) -> Result<bool, StoreError> {
    Ok(query_one(
        conn,
        "SELECT 1 FROM instances WHERE group_id = $1 AND granted_version = $2 LIMIT 1",
        &params![group_id, version],
    )?
    .is_some())
}

/// An update that ran past its group's timeout.
#[derive(Debug, Clone)]
pub struct TimedOut {
    /// App.
    pub app_id: String,
    /// Machine.
    pub machine_id: String,
    /// Group.
    pub group_id: String,
    /// Version granted.
    pub granted_version: String,
    /// Whether the group is in safe mode.
    pub safe_mode: bool,
    /// Whether this timeout trips the safe-mode brake: the group is in safe mode and, with it,
    /// `safe_mode_failures` distinct instances failed or timed out on the granted version.
    pub halts_group: bool,
}

/// Marks updates that exceeded their group's timeout as `timeout`; returns them.
pub fn sweep_timeouts(conn: &mut dyn Conn, now: i64) -> Result<Vec<TimedOut>, StoreError> {
    let rows = conn.query(
        "SELECT i.app_id, i.machine_id, g.id, i.granted_version, g.safe_mode, g.safe_mode_failures
         FROM instances i JOIN update_groups g ON g.id = i.group_id
         WHERE i.status IN ('granted', 'downloading', 'downloaded', 'installed')
           AND i.granted_at < $1 - g.update_timeout_secs * 1000",
        &params![now],
    )?;
    let mut out = Vec::new();
    for r in rows {
        let mut t = TimedOut {
            app_id: r.text(0)?,
            machine_id: r.text(1)?,
            group_id: r.text(2)?,
            granted_version: r.opt_text(3)?.unwrap_or_default(),
            safe_mode: r.bool(4)?,
            halts_group: false,
        };
        let threshold = r.int(5)?;
        let n = conn.execute(
            "UPDATE instances SET status = 'timeout', status_changed_at = $1
             WHERE app_id = $2 AND machine_id = $3
               AND status IN ('granted', 'downloading', 'downloaded', 'installed')",
            &params![now, &t.app_id, &t.machine_id],
        )?;
        if n == 1 {
            t.halts_group = t.safe_mode
                && super::count_failed_on_version(conn, &t.group_id, &t.granted_version)?
                    >= threshold;
            out.push(t);
        }
    }
    Ok(out)
}
