//! Events (`events`): the Omaha events machines report, one row each.
//!
//! Contract:
//! - Events are only appended (and deleted by retention); the caller stores an event before
//!   acknowledging it.
//! - Every event is stored with `verified`: whether it came from an instance the server granted
//!   that update to, for the version it was granted ([`crate::event_trust`]). Unverified events
//!   are kept for the operator and never change rollout state.
//! - Event ids are time-ordered (UUIDv7, monotonic within a server process), so the events of
//!   one request, which share a `created_at`, list in the order the machine sent them.
//! - A verified 3/2 (update complete, running the new version) also counts one completion for
//!   its version and UTC day in `version_adoption_daily`, in the same transaction: the
//!   dashboard's adoption chart reads that table, never the events (retention does not prune it).

use crate::db::{query_one, Conn};
use crate::model::InstanceEvent;
use crate::params;
use crate::StoreError;

use super::require_app;

/// One event to store ([`insert_event`]).
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    /// App.
    pub app_id: &'a str,
    /// Machine that sent it.
    pub machine_id: &'a str,
    /// The group it is attributed to, if any.
    pub group_id: Option<&'a str>,
    /// The event as sent.
    pub event: &'a wellcar_omaha::Event,
    /// The version the machine was running when it sent it.
    pub version: &'a str,
    /// Whether it came from an instance granted that update ([`crate::event_trust`]).
    pub verified: bool,
}

/// Stores one event row.
pub fn insert_event(conn: &mut dyn Conn, e: &NewEvent<'_>, now: i64) -> Result<(), StoreError> {
    let NewEvent {
        app_id,
        machine_id,
        group_id,
        event,
        version,
        verified,
    } = *e;
    conn.execute(
        "INSERT INTO events (id, app_id, machine_id, group_id, event_type, event_result,
            error_code, previous_version, version, created_at, verified)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &params![
            uuid::Uuid::now_v7().to_string(),
            app_id,
            machine_id,
            group_id,
            i64::from(event.event_type),
            i64::from(event.event_result),
            event.error_code.map(|c| i64::from(c.raw)),
            event.previous_version.clone(),
            version,
            now,
            verified
        ],
    )?;
    if verified && event.event_type == 3 && event.event_result == 2 {
        // Version adoption per UTC day, so the dashboard's chart reads a few rows, not events.
        conn.execute(
            "INSERT INTO version_adoption_daily (app_id, day, version, completions)
             VALUES ($1, $2, $3, 1)
             ON CONFLICT (app_id, day, version)
             DO UPDATE SET completions = version_adoption_daily.completions + 1",
            &params![app_id, now / 86_400_000, version],
        )?;
    }
    Ok(())
}

/// Number of stored events (for tests and metrics).
pub fn count_events(conn: &mut dyn Conn) -> Result<i64, StoreError> {
    Ok(query_one(conn, "SELECT COUNT(*) FROM events", &[])?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0))
}

/// The latest `limit` (1 to 100000) events of one machine, oldest first. A machine with no
/// stored events (unknown, or pruned by retention) has an empty list; an unknown app is
/// [`StoreError::NotFound`].
pub fn list_instance_events(
    conn: &mut dyn Conn,
    app_id: &str,
    machine_id: &str,
    limit: i64,
) -> Result<Vec<InstanceEvent>, StoreError> {
    let app = require_app(conn, app_id)?;
    let mut events = conn
        .query(
            "SELECT created_at, event_type, event_result, error_code, previous_version, version,
                verified
             FROM events WHERE app_id = $1 AND machine_id = $2
             ORDER BY created_at DESC, id DESC LIMIT $3",
            &params![&app.id, machine_id, limit.clamp(1, 100_000)],
        )?
        .iter()
        .map(|r| {
            Ok(InstanceEvent {
                created_at: r.int(0)?,
                event_type: r.int(1)?,
                event_result: r.int(2)?,
                error_code: r.opt_int(3)?,
                previous_version: r.opt_text(4)?,
                version: r.text(5)?,
                verified: r.bool(6)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    events.reverse();
    Ok(events)
}
