//! The FleetLock admin API (bearer tokens, [`crate::auth`]; errors as the admin API's
//! `{"error": …}`):
//! - `GET /api/v1/fleetlock/groups` (read): every lock group ([`RebootLockGroup`]) with its
//!   holders, their grant and lease expiry times (unix ms), by name.
//! - `PUT /api/v1/fleetlock/groups/{group}` `{"max_holders": N}` (admin): sets the group's slots,
//!   creating the group; 400 for a bad name or N outside 0–100000. Answers the group.
//! - `DELETE /api/v1/fleetlock/groups/{group}/holders/{id}` (admin): releases that holder's
//!   slot (`id` percent-encoded); 404 if it holds none. Answers the released holder.
//!
//! Changes are written to the activity log under the token's name.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::admin::ApiError;
use crate::auth::{Authorized, NeedsAdmin, NeedsRead};
use crate::server::ServerState;
use crate::store::{self, RebootLockGroup, RebootLockHolder};

/// Body of `PUT /api/v1/fleetlock/groups/{group}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct SetMaxBody {
    /// Holders allowed at once.
    pub max_holders: i64,
}

/// The admin path of lock group `group`.
pub fn group_path(group: &str) -> String {
    format!("/api/v1/fleetlock/groups/{}", encode(group))
}

/// The admin path of `id`'s hold on `group`.
pub fn holder_path(group: &str, id: &str) -> String {
    format!("{}/holders/{}", group_path(group), encode(id))
}

fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The routes.
pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/v1/fleetlock/groups", get(list))
        .route(
            "/api/v1/fleetlock/groups/{group}",
            axum::routing::put(set_max),
        )
        .route(
            "/api/v1/fleetlock/groups/{group}/holders/{id}",
            delete(release),
        )
}

async fn list(
    State(state): State<Arc<ServerState>>,
    _auth: Authorized<NeedsRead>,
) -> Result<Json<Vec<RebootLockGroup>>, ApiError> {
    Ok(Json(super::list_groups(&state).await?))
}

async fn set_max(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsAdmin>,
    Path(group): Path<String>,
    Json(body): Json<SetMaxBody>,
) -> Result<Json<RebootLockGroup>, ApiError> {
    let actor = auth.actor();
    let now = state.now();
    let g = state
        .db
        .write(move |c| store::fleetlock_set_max(c, &group, body.max_holders, &actor, now))
        .await?;
    Ok(Json(g))
}

async fn release(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsAdmin>,
    Path((group, id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<RebootLockHolder>), ApiError> {
    let actor = auth.actor();
    let now = state.now();
    let released = state
        .db
        .write(move |c| store::fleetlock_force_release(c, &group, &id, &actor, now))
        .await?;
    Ok((StatusCode::OK, Json(released)))
}
