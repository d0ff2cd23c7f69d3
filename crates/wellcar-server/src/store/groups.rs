//! Update groups (`update_groups`): the channel a track follows, its rollout policy and the
//! safe-mode halt flag.
//!
//! Contract:
//! - A group is found by app and track (or id); (app, track) is unique and the id is derived
//!   from it.
//! - Every stored policy passed [`crate::policy::validate`]; windows are stored as JSON.
//! - `safe_mode_failures` is how many distinct granted instances must fail (or time out) on
//!   the target version before safe mode halts the group ([`count_failed_on_version`]).
//! - Every change bumps the configuration generation. Updates and halts are logged in the
//!   activity log here (naming who changed what); creating a group is logged by the caller.
//!   Resuming a group releases the halt.
//! - [`lock_group`] and [`update_group`] read the row `FOR UPDATE` on PostgreSQL, so concurrent
//!   server processes serialize on a group.

use super::{bump_generation, check_name, log_activity, require_app, stable_id, NewActivity};
use crate::db::{query_one, Conn, Row};
use crate::model::{Group, GroupPatch, Policy};
use crate::params;
use crate::StoreError;

const GROUP_COLUMNS: &str =
    "id, app_id, name, track, channel, description, updates_enabled, safe_mode,
    max_updates_per_period, period_secs, max_concurrent, update_timeout_secs, allow_downgrade,
    timezone, windows, halted, halted_reason, safe_mode_failures";

fn group_from(r: &Row) -> Result<Group, StoreError> {
    let windows_json = r.text(14)?;
    Ok(Group {
        id: r.text(0)?,
        app_id: r.text(1)?,
        name: r.text(2)?,
        track: r.text(3)?,
        channel: r.text(4)?,
        description: r.text(5)?,
        policy: Policy {
            updates_enabled: r.bool(6)?,
            safe_mode: r.bool(7)?,
            safe_mode_failures: r.int(17)?,
            max_updates_per_period: r.int(8)?,
            period_secs: r.int(9)?,
            max_concurrent: r.int(10)?,
            update_timeout_secs: r.int(11)?,
            allow_downgrade: r.bool(12)?,
            timezone: r.text(13)?,
            windows: serde_json::from_str(&windows_json).map_err(|e| {
                StoreError::Invalid(format!("stored windows {windows_json:?}: {e}"))
            })?,
        },
        halted: r.bool(15)?,
        halted_reason: r.opt_text(16)?,
    })
}

/// A group to create ([`create_group`]).
#[derive(Debug, Clone, Copy)]
pub struct GroupSpec<'a> {
    /// Display name.
    pub name: &'a str,
    /// Omaha track that selects the group.
    pub track: &'a str,
    /// Channel the group follows.
    pub channel: &'a str,
    /// Description.
    pub description: &'a str,
    /// Rollout policy.
    pub policy: &'a Policy,
}

/// Creates a group following `spec.channel`, selected by `spec.track`.
pub fn create_group(
    conn: &mut dyn Conn,
    app_id: &str,
    spec: &GroupSpec<'_>,
    now: i64,
) -> Result<Group, StoreError> {
    let GroupSpec {
        name,
        track,
        channel,
        description,
        policy,
    } = *spec;
    let app = require_app(conn, app_id)?;
    check_name("group", name)?;
    check_name("track", track)?;
    check_name("channel", channel)?;
    crate::policy::validate(policy).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let id = stable_id(&["group", &app.id, track]);
    let windows =
        serde_json::to_string(&policy.windows).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let n = conn.execute(
        "INSERT INTO update_groups (id, app_id, name, track, channel, description, updates_enabled,
            safe_mode, max_updates_per_period, period_secs, max_concurrent, update_timeout_secs,
            allow_downgrade, timezone, windows, halted, halted_reason, created_at,
            safe_mode_failures)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 0, NULL, $16,
            $17)
         ON CONFLICT DO NOTHING",
        &params![
            &id,
            &app.id,
            name,
            track,
            channel,
            description,
            policy.updates_enabled,
            policy.safe_mode,
            policy.max_updates_per_period,
            policy.period_secs,
            policy.max_concurrent,
            policy.update_timeout_secs,
            policy.allow_downgrade,
            &policy.timezone,
            windows,
            now,
            policy.safe_mode_failures
        ],
    )?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "group with track {track:?} already exists in app {} (use group update)",
            app.id
        )));
    }
    bump_generation(conn)?;
    find_group(conn, &app.id, track)?.ok_or_else(|| StoreError::NotFound(format!("group {track}")))
}

/// Looks a group up by app and track (or group id).
pub fn find_group(
    conn: &mut dyn Conn,
    app_id: &str,
    track_or_id: &str,
) -> Result<Option<Group>, StoreError> {
    let sql = format!(
        "SELECT {GROUP_COLUMNS} FROM update_groups WHERE app_id = $1 AND (track = $2 OR id = $2)"
    );
    query_one(
        conn,
        &sql,
        &params![wellcar_omaha::normalize_app_id(app_id), track_or_id],
    )?
    .map(|r| group_from(&r))
    .transpose()
}

/// Groups of an app.
pub fn list_groups(conn: &mut dyn Conn, app_id: &str) -> Result<Vec<Group>, StoreError> {
    let app = require_app(conn, app_id)?;
    let sql = format!("SELECT {GROUP_COLUMNS} FROM update_groups WHERE app_id = $1 ORDER BY track");
    conn.query(&sql, &params![&app.id])?
        .iter()
        .map(group_from)
        .collect()
}

/// Every group of every app (for the in-memory configuration).
pub fn all_groups(conn: &mut dyn Conn) -> Result<Vec<Group>, StoreError> {
    let sql = format!("SELECT {GROUP_COLUMNS} FROM update_groups");
    conn.query(&sql, &[])?.iter().map(group_from).collect()
}

/// Applies a patch to a group, logging who changed what. Resuming (`updates_enabled: true`)
/// also releases the safe-mode brake.
pub fn update_group(
    conn: &mut dyn Conn,
    app_id: &str,
    track: &str,
    patch: &GroupPatch,
    actor: &str,
    now: i64,
) -> Result<Group, StoreError> {
    let sql = format!(
        "SELECT {GROUP_COLUMNS} FROM update_groups WHERE app_id = $1 AND (track = $2 OR id = $2){}",
        conn.for_update()
    );
    let old = query_one(
        conn,
        &sql,
        &params![wellcar_omaha::normalize_app_id(app_id), track],
    )?
    .map(|r| group_from(&r))
    .transpose()?
    .ok_or_else(|| StoreError::NotFound(format!("group {track} in app {app_id}")))?;
    let mut g = old.clone();
    let p = &mut g.policy;
    if let Some(v) = &patch.name {
        check_name("group", v)?;
        g.name = v.clone();
    }
    if let Some(v) = &patch.channel {
        check_name("channel", v)?;
        g.channel = v.clone();
    }
    if let Some(v) = &patch.description {
        g.description = v.clone();
    }
    if let Some(v) = patch.updates_enabled {
        p.updates_enabled = v;
    }
    if let Some(v) = patch.safe_mode {
        p.safe_mode = v;
    }
    if let Some(v) = patch.safe_mode_failures {
        p.safe_mode_failures = v;
    }
    if let Some(v) = patch.max_updates_per_period {
        p.max_updates_per_period = v;
    }
    if let Some(v) = patch.period_secs {
        p.period_secs = v;
    }
    if let Some(v) = patch.max_concurrent {
        p.max_concurrent = v;
    }
    if let Some(v) = patch.update_timeout_secs {
        p.update_timeout_secs = v;
    }
    if let Some(v) = patch.allow_downgrade {
        p.allow_downgrade = v;
    }
    if let Some(v) = &patch.timezone {
        p.timezone = v.clone();
    }
    if let Some(v) = &patch.windows {
        p.windows = v.clone();
    }
    crate::policy::validate(&g.policy).map_err(|e| StoreError::Invalid(e.to_string()))?;
    if patch.updates_enabled == Some(true) {
        g.halted = false;
        g.halted_reason = None;
    }
    let windows =
        serde_json::to_string(&g.policy.windows).map_err(|e| StoreError::Invalid(e.to_string()))?;
    conn.execute(
        "UPDATE update_groups SET name = $1, channel = $2, description = $3, updates_enabled = $4,
            safe_mode = $5, max_updates_per_period = $6, period_secs = $7, max_concurrent = $8,
            update_timeout_secs = $9, allow_downgrade = $10, timezone = $11, windows = $12,
            halted = $13, halted_reason = $14, safe_mode_failures = $16
         WHERE id = $15",
        &params![
            &g.name,
            &g.channel,
            &g.description,
            g.policy.updates_enabled,
            g.policy.safe_mode,
            g.policy.max_updates_per_period,
            g.policy.period_secs,
            g.policy.max_concurrent,
            g.policy.update_timeout_secs,
            g.policy.allow_downgrade,
            &g.policy.timezone,
            windows,
            g.halted,
            g.halted_reason.clone(),
            &g.id,
            g.policy.safe_mode_failures
        ],
    )?;
    let changes = describe_changes(&old, &g);
    let kind = match patch.updates_enabled {
        Some(true) if !old.policy.updates_enabled || old.halted => "group-resumed",
        Some(false) if old.policy.updates_enabled => "group-paused",
        _ => "group-updated",
    };
    log_activity(
        conn,
        now,
        &NewActivity {
            actor,
            kind,
            app_id: Some(&g.app_id),
            group_id: Some(&g.id),
            severity: "info",
            message: &format!("group {} changed: {changes}", g.track),
        },
    )?;
    bump_generation(conn)?;
    Ok(g)
}

fn describe_changes(old: &Group, new: &Group) -> String {
    let a = serde_json::to_value(old).unwrap_or_default();
    let b = serde_json::to_value(new).unwrap_or_default();
    let mut out = Vec::new();
    let flatten = |v: &serde_json::Value| -> Vec<(String, serde_json::Value)> {
        let mut items = Vec::new();
        if let Some(map) = v.as_object() {
            for (k, v) in map {
                match v.as_object() {
                    Some(inner) => {
                        for (ik, iv) in inner {
                            items.push((ik.clone(), iv.clone()));
                        }
                    }
                    None => items.push((k.clone(), v.clone())),
                }
            }
        }
        items
    };
    let before = flatten(&a);
    for (k, v) in flatten(&b) {
        if let Some((_, old_v)) = before.iter().find(|(ok, _)| *ok == k) {
            if *old_v != v {
                out.push(format!("{k} {old_v} -> {v}"));
            }
        }
    }
    if out.is_empty() {
        "nothing".into()
    } else {
        out.join(", ")
    }
}

/// Sets the safe-mode brake on a group if it is not set yet. Returns whether this call halted it.
pub fn halt_group(
    conn: &mut dyn Conn,
    group_id: &str,
    app_id: &str,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let n = conn.execute(
        "UPDATE update_groups SET halted = 1, halted_reason = $1 WHERE id = $2 AND halted = 0",
        &params![reason, group_id],
    )?;
    if n == 1 {
        log_activity(
            conn,
            now,
            &NewActivity {
                actor: "system",
                kind: "group-halted",
                app_id: Some(app_id),
                group_id: Some(group_id),
                severity: "error",
                message: &format!("group halted: {reason}"),
            },
        )?;
        bump_generation(conn)?;
    }
    Ok(n == 1)
}

/// Re-reads a group's rollout state with a row lock (PostgreSQL) inside the grant transaction.
pub fn lock_group(conn: &mut dyn Conn, group_id: &str) -> Result<Option<Group>, StoreError> {
    let sql = format!(
        "SELECT {GROUP_COLUMNS} FROM update_groups WHERE id = $1{}",
        conn.for_update()
    );
    query_one(conn, &sql, &params![group_id])?
        .map(|r| group_from(&r))
        .transpose()
}

/// How many distinct instances of the group were granted `version` and failed or timed out on
/// it: what safe mode compares with the group's `safe_mode_failures`. Instances granted another
/// version since are not counted. An index range scan (`instances_group_granted_version`).
pub fn count_failed_on_version(
    conn: &mut dyn Conn,
    group_id: &str,
    version: &str,
) -> Result<i64, StoreError> {
    Ok(query_one(
        conn,
        "SELECT COUNT(*) FROM instances WHERE group_id = $1 AND granted_version = $2
           AND status IN ('error', 'timeout')",
        &params![group_id, version],
    )?
    .map(|r| r.int(0))
    .transpose()?
    .unwrap_or(0))
}
