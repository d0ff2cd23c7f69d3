//! Admin API routes for tokens and retention (see [`crate::admin`] for the shared contract).
//!
//! - `GET /api/v1/tokens` lists tokens (ids, names, scopes, expiry, revocation, last use; never
//!   secrets); `POST /api/v1/tokens` `{"name", "scope", "expires_in_secs"?}` creates one and
//!   answers its secret once; `DELETE /api/v1/tokens/{id}` revokes one (by id or name).
//! - `POST /api/v1/retention/prune` deletes data past retention now.
//! - All of them need an `admin` token.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::admin::{ApiError, ApiResult, ErrorBody};
use crate::auth::{Authorized, NeedsAdmin};
use crate::server::ServerState;
use crate::store;

/// The routes of this module.
pub(crate) fn routes() -> crate::openapi::DocumentedRoutes {
    crate::openapi::DocumentedRoutes::new()
        .routes(utoipa_axum::routes!(prune))
        .routes(utoipa_axum::routes!(list_tokens, create_token))
        .routes(utoipa_axum::routes!(revoke_token))
}

#[utoipa::path(post, path = "/api/v1/retention/prune", tag = "retention",
    summary = "Delete data past retention now", security(("bearer" = ["admin"])),
    responses((status = 200, description = "Rows deleted", body = store::Pruned)))]
async fn prune(
    State(state): State<Arc<ServerState>>,
    _auth: Authorized<NeedsAdmin>,
) -> ApiResult<Json<store::Pruned>> {
    Ok(Json(state.prune().await?))
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    summary = "List API tokens; never their secrets", security(("bearer" = ["admin"])),
    responses((status = 200, description = "The tokens", body = Vec<store::ApiToken>)))]
async fn list_tokens(
    State(state): State<Arc<ServerState>>,
    _auth: Authorized<NeedsAdmin>,
) -> ApiResult<Json<Vec<store::ApiToken>>> {
    Ok(Json(state.db.read(store::list_tokens).await?))
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, ToSchema)]
pub struct NewTokenBody {
    /// Unique name.
    pub name: String,
    /// `read`, `publish` or `admin`.
    pub scope: store::Scope,
    /// Lifetime in seconds from now; absent: never expires.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens",
    summary = "Create an API token; its secret is answered once",
    security(("bearer" = ["admin"])), request_body = NewTokenBody,
    responses((status = 201, description = "Created", body = store::CreatedToken),
        (status = 409, description = "The name is taken", body = ErrorBody)))]
async fn create_token(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsAdmin>,
    Json(body): Json<NewTokenBody>,
) -> ApiResult<(StatusCode, Json<store::CreatedToken>)> {
    let actor = auth.actor();
    let now = state.now();
    let expires_at = match body.expires_in_secs {
        None => None,
        Some(secs) => Some(expiry_after(now, secs).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("expires_in_secs {secs} is out of range"),
            )
        })?),
    };
    let created = state
        .db
        .write(move |c| {
            let new = store::NewToken {
                name: &body.name,
                scope: body.scope,
                expires_at,
                actor: &actor,
            };
            store::create_scoped_token(c, &new, now)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `now` (unix ms) plus `secs`, if that fits.
pub fn expiry_after(now: i64, secs: u64) -> Option<i64> {
    i64::try_from(secs)
        .ok()?
        .checked_mul(1000)?
        .checked_add(now)
        .filter(|_| secs > 0)
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    summary = "Revoke an API token for good",
    params(("id" = String, Path, description = "Token id, or name")),
    security(("bearer" = ["admin"])),
    responses((status = 200, description = "The revoked token", body = store::ApiToken),
        (status = 404, description = "No such token", body = ErrorBody)))]
async fn revoke_token(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsAdmin>,
    Path(id): Path<String>,
) -> ApiResult<Json<store::ApiToken>> {
    let actor = auth.actor();
    let now = state.now();
    let revoked = state
        .db
        .write(move |c| store::revoke_token(c, &id, &actor, now))
        .await?;
    Ok(Json(revoked))
}
