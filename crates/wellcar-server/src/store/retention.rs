//! Data retention: deleting old events, old activity and instances that stopped checking in.
//!
//! Contract:
//! - An instance with an update in progress is never deleted, however old its last check.

use crate::db::Conn;
use crate::params;
use crate::StoreError;

/// Retention cut-offs (unix ms); rows older than these are deleted.
#[derive(Debug, Clone, Copy)]
pub struct RetentionCutoffs {
    /// Events created before this.
    pub events_before: i64,
    /// Activity created before this.
    pub activity_before: i64,
    /// Instances not seen since this (and not updating).
    pub instances_before: i64,
}

/// Rows deleted by [`prune`].
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct Pruned {
    /// Events deleted.
    pub events: u64,
    /// Activity entries deleted.
    pub activity: u64,
    /// Instances deleted.
    pub instances: u64,
}

/// Deletes old events, activity and instances that stopped checking in.
pub fn prune(conn: &mut dyn Conn, cut: RetentionCutoffs) -> Result<Pruned, StoreError> {
    Ok(Pruned {
        events: conn.execute(
            "DELETE FROM events WHERE created_at < $1",
            &params![cut.events_before],
        )?,
        activity: conn.execute(
            "DELETE FROM activity WHERE created_at < $1",
            &params![cut.activity_before],
        )?,
        instances: conn.execute(
            "DELETE FROM instances WHERE last_check < $1
               AND status NOT IN ('granted', 'downloading', 'downloaded', 'installed')",
            &params![cut.instances_before],
        )?,
    })
}
