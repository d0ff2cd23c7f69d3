//! Instances (`instances`): one row per machine and app, with the facts of its last check-in
//! and its update status.
//!
//! Contract:
//! - Check-ins arrive as [`Sighting`]s, written in batches by [`upsert_sightings`]; a sighting
//!   never moves `last_check` backwards, and completes an in-progress update once the machine
//!   reports the granted version.
//! - Status changes from events go through [`set_instance_status`]; grants and timeouts live in
//!   `rollout`.

use super::{find_group, require_app};
use crate::db::{query_one, Conn, Row, Value};
use crate::model::{status, Instance, InstanceFacts};
use crate::params;
use crate::StoreError;

pub(super) const INSTANCE_COLUMNS: &str =
    "app_id, machine_id, alias, ip, oem, version, track, group_id, arch,
    status, last_check, granted_version, granted_at, last_error_code";

pub(super) fn instance_from(r: &Row) -> Result<Instance, StoreError> {
    Ok(Instance {
        facts: InstanceFacts {
            app_id: r.text(0)?,
            machine_id: r.text(1)?,
            alias: r.text(2)?,
            ip: r.text(3)?,
            oem: r.text(4)?,
            version: r.text(5)?,
            track: r.text(6)?,
            group_id: r.opt_text(7)?,
            arch: r.text(8)?,
        },
        status: r.text(9)?,
        last_check: r.int(10)?,
        granted_version: r.opt_text(11)?,
        granted_at: r.opt_int(12)?,
        last_error_code: r.opt_int(13)?,
    })
}

/// Reads one instance.
pub fn find_instance(
    conn: &mut dyn Conn,
    app_id: &str,
    machine_id: &str,
    lock: bool,
) -> Result<Option<Instance>, StoreError> {
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE app_id = $1 AND machine_id = $2{}",
        if lock { conn.for_update() } else { "" }
    );
    query_one(conn, &sql, &params![app_id, machine_id])?
        .map(|r| instance_from(&r))
        .transpose()
}

/// Filter for listing instances.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstanceFilter {
    /// Only this group (track or id).
    pub group: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// At most this many (default 1000).
    pub limit: Option<i64>,
}

/// Lists instances of an app, most recently seen first.
pub fn list_instances(
    conn: &mut dyn Conn,
    app_id: &str,
    filter: &InstanceFilter,
) -> Result<Vec<Instance>, StoreError> {
    let app = require_app(conn, app_id)?;
    let group_id = match &filter.group {
        Some(g) => Some(
            find_group(conn, &app.id, g)?
                .ok_or_else(|| StoreError::NotFound(format!("group {g}")))?
                .id,
        ),
        None => None,
    };
    // Only the filters given become conditions, so the indexes on (app_id, group_id, status,
    // last_check) and (app_id, last_check) serve them on a large fleet.
    let mut sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE app_id = $1");
    let mut args = vec![Value::from(&app.id)];
    if let Some(group_id) = &group_id {
        args.push(Value::from(group_id));
        sql.push_str(&format!(" AND group_id = ${}", args.len()));
    }
    if let Some(status) = filter.status.as_deref().filter(|s| !s.is_empty()) {
        args.push(Value::from(status));
        sql.push_str(&format!(" AND status = ${}", args.len()));
    }
    args.push(Value::from(filter.limit.unwrap_or(1000).clamp(1, 100_000)));
    sql.push_str(&format!(
        " ORDER BY last_check DESC, machine_id LIMIT ${}",
        args.len()
    ));
    conn.query(&sql, &args)?.iter().map(instance_from).collect()
}

/// Instance facts from one check-in, queued for a batched write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// What the machine told.
    pub facts: InstanceFacts,
    /// When (unix ms).
    pub at: i64,
}

impl Sighting {
    /// The values of an `instances` row's first nine columns (`app_id` to `arch`, in table
    /// order), followed by `rest`: the parameters of an insert of this sighting.
    pub(crate) fn row_values(&self, rest: impl IntoIterator<Item = Value>) -> Vec<Value> {
        let f = &self.facts;
        let facts = params![
            &f.app_id,
            &f.machine_id,
            &f.alias,
            &f.ip,
            &f.oem,
            &f.version,
            &f.track,
            f.group_id.clone(),
            &f.arch,
        ];
        facts.into_iter().chain(rest).collect()
    }
}

/// Writes queued sightings: creates new instances, refreshes facts and `last_check` of known
/// ones, and completes an in-progress update once the instance reports the granted version.
pub fn upsert_sightings(conn: &mut dyn Conn, sightings: &[Sighting]) -> Result<(), StoreError> {
    for s in sightings {
        conn.execute(
            "INSERT INTO instances (app_id, machine_id, alias, ip, oem, version, track, group_id,
                arch, status, first_seen, last_check, status_changed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $11)
             ON CONFLICT (app_id, machine_id) DO UPDATE SET
                alias = excluded.alias, ip = excluded.ip, oem = excluded.oem,
                version = excluded.version, track = excluded.track, group_id = excluded.group_id,
                arch = excluded.arch,
                last_check = CASE WHEN excluded.last_check > instances.last_check
                    THEN excluded.last_check ELSE instances.last_check END,
                status = CASE WHEN instances.status IN ('granted', 'downloading', 'downloaded', 'installed')
                    AND instances.granted_version = excluded.version THEN 'complete' ELSE instances.status END",
            &s.row_values(params![status::UNDEFINED, s.at]),
        )?;
    }
    Ok(())
}

/// Sets an instance's status (and optionally version and error code).
pub fn set_instance_status(
    conn: &mut dyn Conn,
    app_id: &str,
    machine_id: &str,
    new_status: &str,
    version: Option<&str>,
    error_code: Option<i64>,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE instances SET status = $1, status_changed_at = $2,
            version = CASE WHEN $3 = '' THEN version ELSE $3 END,
            last_error_code = CASE WHEN $4 < 0 THEN last_error_code ELSE $4 END
         WHERE app_id = $5 AND machine_id = $6",
        &params![
            new_status,
            now,
            version.unwrap_or(""),
            error_code.unwrap_or(-1),
            app_id,
            machine_id
        ],
    )?;
    Ok(())
}

/// One `/metrics` sample: app, version, group track, status, instance count.
pub type InstanceCount = (String, String, String, String, i64);

/// Instance counts by app, version, group track and status (for `/metrics`).
pub fn instance_breakdown(conn: &mut dyn Conn) -> Result<Vec<InstanceCount>, StoreError> {
    conn.query(
        "SELECT i.app_id, i.version, COALESCE(g.track, ''), i.status, COUNT(*)
         FROM instances i LEFT JOIN update_groups g ON g.id = i.group_id
         GROUP BY i.app_id, i.version, g.track, i.status",
        &[],
    )?
    .iter()
    .map(|r| Ok((r.text(0)?, r.text(1)?, r.text(2)?, r.text(3)?, r.int(4)?)))
    .collect()
}
