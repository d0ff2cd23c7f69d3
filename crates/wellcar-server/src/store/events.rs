//! Events (`events`): the Omaha events machines report, one row each.
//!
//! Contract:
//! - Events are only appended (and deleted by retention); the caller stores an event before
//!   acknowledging it.

use crate::db::{query_one, Conn};
use crate::params;
use crate::StoreError;

/// Stores one event row.
pub fn insert_event(
    conn: &mut dyn Conn,
    app_id: &str,
    machine_id: &str,
    group_id: Option<&str>,
    event: &wellcar_omaha::Event,
    version: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO events (id, app_id, machine_id, group_id, event_type, event_result,
            error_code, previous_version, version, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &params![
            uuid::Uuid::new_v4().to_string(),
            app_id,
            machine_id,
            group_id,
            i64::from(event.event_type),
            i64::from(event.event_result),
            event.error_code.map(|c| i64::from(c.raw)),
            event.previous_version.clone(),
            version,
            now
        ],
    )?;
    Ok(())
}

/// Number of stored events (for tests and metrics).
pub fn count_events(conn: &mut dyn Conn) -> Result<i64, StoreError> {
    Ok(query_one(conn, "SELECT COUNT(*) FROM events", &[])?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0))
}
