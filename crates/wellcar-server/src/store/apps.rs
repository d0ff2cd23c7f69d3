//! Applications (`apps`).
//!
//! Contract:
//! - An app id is a GUID, stored normalized (lowercase, no braces); lookups normalize the id
//!   they are given the same way.
//! - Creating an app bumps the configuration generation.

use super::bump_generation;
use crate::db::{query_one, Conn};
use crate::model::App;
use crate::params;
use crate::StoreError;

/// Creates an application; the id is normalized (lowercase, no braces).
pub fn create_app(conn: &mut dyn Conn, app: &App, now: i64) -> Result<App, StoreError> {
    let id = wellcar_omaha::normalize_app_id(&app.id);
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(StoreError::Invalid(format!(
            "app id {:?} is not a guid",
            app.id
        )));
    }
    if find_app(conn, &id)?.is_some() {
        return Err(StoreError::Conflict(format!("app {id} already exists")));
    }
    conn.execute(
        "INSERT INTO apps (id, name, description, created_at) VALUES ($1, $2, $3, $4)",
        &params![&id, &app.name, &app.description, now],
    )?;
    bump_generation(conn)?;
    Ok(App { id, ..app.clone() })
}

/// Looks an app up by normalized id.
pub fn find_app(conn: &mut dyn Conn, id: &str) -> Result<Option<App>, StoreError> {
    let row = query_one(
        conn,
        "SELECT id, name, description FROM apps WHERE id = $1",
        &params![wellcar_omaha::normalize_app_id(id)],
    )?;
    row.map(|r| -> Result<App, StoreError> {
        Ok(App {
            id: r.text(0)?,
            name: r.text(1)?,
            description: r.text(2)?,
        })
    })
    .transpose()
}

/// Like [`find_app`] but an absent app is [`StoreError::NotFound`].
pub fn require_app(conn: &mut dyn Conn, id: &str) -> Result<App, StoreError> {
    find_app(conn, id)?.ok_or_else(|| StoreError::NotFound(format!("app {id}")))
}

/// All apps.
pub fn list_apps(conn: &mut dyn Conn) -> Result<Vec<App>, StoreError> {
    conn.query(
        "SELECT id, name, description FROM apps ORDER BY created_at, id",
        &[],
    )?
    .into_iter()
    .map(|r| {
        Ok(App {
            id: r.text(0)?,
            name: r.text(1)?,
            description: r.text(2)?,
        })
    })
    .collect()
}
