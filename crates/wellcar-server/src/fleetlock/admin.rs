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
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::admin::{ApiError, ErrorBody};
use crate::auth::{Authorized, NeedsAdmin, NeedsRead};
use crate::openapi::DocumentedRoutes;
use crate::server::ServerState;
use crate::store::{self, RebootLockGroup, RebootLockHolder};

/// Body of `PUT /api/v1/fleetlock/groups/{group}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
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

/// The routes, with their documentation.
pub fn routes() -> DocumentedRoutes {
    DocumentedRoutes::new()
        .routes(routes!(list))
        .routes(routes!(set_max))
        .routes(routes!(release))
}

#[utoipa::path(get, path = "/api/v1/fleetlock/groups", tag = "reboot locks",
    summary = "Every FleetLock reboot-lock group with its holders, by name",
    security(("bearer" = ["read"])),
    responses((status = 200, description = "The lock groups", body = Vec<RebootLockGroup>)))]
async fn list(
    State(state): State<Arc<ServerState>>,
    _auth: Authorized<NeedsRead>,
) -> Result<Json<Vec<RebootLockGroup>>, ApiError> {
    Ok(Json(super::list_groups(&state).await?))
}

#[utoipa::path(put, path = "/api/v1/fleetlock/groups/{group}", tag = "reboot locks",
    summary = "Set how many machines of a lock group may reboot at once (creates the group)",
    params(("group" = String, Path, description = "Lock group name (FleetLock `group`)")),
    security(("bearer" = ["admin"])), request_body = SetMaxBody,
    responses((status = 200, description = "The lock group", body = RebootLockGroup)))]
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

#[utoipa::path(delete, path = "/api/v1/fleetlock/groups/{group}/holders/{id}",
    tag = "reboot locks", summary = "Force-release a holder's reboot lock",
    params(("group" = String, Path, description = "Lock group name"),
        ("id" = String, Path, description = "Holder id (FleetLock `id`), percent-encoded")),
    security(("bearer" = ["admin"])),
    responses((status = 200, description = "The released holder", body = RebootLockHolder),
        (status = 404, description = "It holds no lock in that group", body = ErrorBody)))]
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
