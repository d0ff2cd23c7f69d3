//! The activity log (`activity`): who changed what, and why a group halted.
//!
//! Contract:
//! - Entries are only appended (and deleted by retention), each also written to the trace log.
//! - The actor is a token name or `system`; the severity is `info`, `warning` or `error`.

use crate::db::{Conn, Row};
use crate::model::Activity;
use crate::params;
use crate::StoreError;

/// One activity-log entry, as [`log_activity`] appends it.
#[derive(Debug, Clone, Copy)]
pub struct NewActivity<'a> {
    /// Who: a token name, or `system`.
    pub actor: &'a str,
    /// What happened, e.g. `group-halted`.
    pub kind: &'a str,
    /// The app concerned, if any.
    pub app_id: Option<&'a str>,
    /// The group concerned, if any.
    pub group_id: Option<&'a str>,
    /// `info`, `warning` or `error`.
    pub severity: &'a str,
    /// What to tell the operator.
    pub message: &'a str,
}

impl<'a> NewActivity<'a> {
    /// An `info` entry about a change to app `app_id`'s configuration.
    pub fn app_info(actor: &'a str, kind: &'a str, app_id: &'a str, message: &'a str) -> Self {
        Self {
            actor,
            kind,
            app_id: Some(app_id),
            group_id: None,
            severity: "info",
            message,
        }
    }
}

/// Appends to the activity log.
pub fn log_activity(
    conn: &mut dyn Conn,
    now: i64,
    entry: &NewActivity<'_>,
) -> Result<(), StoreError> {
    let NewActivity {
        actor,
        kind,
        app_id,
        group_id,
        severity,
        message,
    } = *entry;
    conn.execute(
        "INSERT INTO activity (id, created_at, actor, kind, app_id, group_id, severity, message)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &params![
            uuid::Uuid::new_v4().to_string(),
            now,
            actor,
            kind,
            app_id,
            group_id,
            severity,
            message
        ],
    )?;
    tracing::info!(actor, kind, severity, "{message}");
    Ok(())
}

/// The activity log, newest first.
pub fn list_activity(
    conn: &mut dyn Conn,
    app_id: Option<&str>,
    limit: i64,
) -> Result<Vec<Activity>, StoreError> {
    conn.query(
        "SELECT created_at, actor, kind, app_id, group_id, severity, message FROM activity
         WHERE ($1 = '' OR app_id = $1) ORDER BY created_at DESC, id LIMIT $2",
        &params![
            app_id
                .map(wellcar_omaha::normalize_app_id)
                .unwrap_or_default(),
            limit.clamp(1, 100_000)
        ],
    )?
    .iter()
    .map(activity_from)
    .collect()
}

/// The columns an [`Activity`] is read from, in [`activity_from`]'s order.
pub(super) const ACTIVITY_COLUMNS: &str =
    "created_at, actor, kind, app_id, group_id, severity, message";

/// An activity entry from a row of [`ACTIVITY_COLUMNS`].
pub(super) fn activity_from(r: &Row) -> Result<Activity, StoreError> {
    Ok(Activity {
        created_at: r.int(0)?,
        actor: r.text(1)?,
        kind: r.text(2)?,
        app_id: r.opt_text(3)?,
        group_id: r.opt_text(4)?,
        severity: r.text(5)?,
        message: r.text(6)?,
    })
}
