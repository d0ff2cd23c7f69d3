//! The admin JSON API under `/api/v1`, described by `/api/v1/openapi.json`.
//!
//! Contract:
//! - Every route but the OpenAPI document needs `Authorization: Bearer <token>` ([`crate::auth`]):
//!   401 without a valid (known, unexpired, unrevoked) token, 403 when the token's scope is too
//!   small. The token is checked before the body is read or parsed.
//! - Scopes: `GET`s need `read`; creating and uploading packages, publishing to a channel and
//!   floors need `publish`; everything else (apps, channels, groups, retention, tokens) needs
//!   `admin`. A higher scope includes the lower ones.
//! - Tokens: `GET /api/v1/tokens` lists them (ids, names, scopes, expiry, revocation, last use;
//!   never secrets), `POST /api/v1/tokens` `{"name", "scope", "expires_in_secs"?}` creates one
//!   and answers its secret once, `DELETE /api/v1/tokens/{id}` revokes one (by id or name).
//! - Errors are `{"error": "…"}` with 400 (bad value), 401, 403, 404, 409 (exists), 413 (upload
//!   too large) or 500. Changes are written to the activity log under the token's name.
//! - Uploads (`PUT …/packages/{arch}/{version}/{filename}`) follow [`crate::payload_files`].

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;

use crate::auth::{Authorized, NeedsAdmin, NeedsPublish, NeedsRead};
use crate::model::{App, GroupPatch, Policy};
use crate::server::ServerState;
use crate::store::{self, InstanceFilter, NewPackage};
use crate::StoreError;

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// An API failure: HTTP status plus a message.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    /// A failure with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError(status, message.into())
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.1 }));
        if self.0 == StatusCode::UNAUTHORIZED {
            return (self.0, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
        }
        (self.0, body).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            StoreError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        ApiError(code, msg)
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Routes of the admin API.
pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/api/v1/apps", get(list_apps).post(create_app))
        .route(
            "/api/v1/apps/{app}/channels",
            get(list_channels).post(create_channel),
        )
        .route(
            "/api/v1/apps/{app}/channels/{channel}/publish",
            post(publish),
        )
        .route(
            "/api/v1/apps/{app}/channels/{channel}/floors",
            post(add_floor),
        )
        .route(
            "/api/v1/apps/{app}/channels/{channel}/floors/{arch}/{version}",
            axum::routing::delete(remove_floor),
        )
        .route(
            "/api/v1/apps/{app}/groups",
            get(list_groups).post(create_group),
        )
        .route(
            "/api/v1/apps/{app}/groups/{track}",
            get(get_group).patch(patch_group),
        )
        .route("/api/v1/apps/{app}/groups/{track}/pause", post(pause_group))
        .route(
            "/api/v1/apps/{app}/groups/{track}/resume",
            post(resume_group),
        )
        .route(
            "/api/v1/apps/{app}/packages",
            get(list_packages).post(create_package),
        )
        .route(
            "/api/v1/apps/{app}/packages/{arch}/{version}/{filename}",
            put(crate::payload_files::upload),
        )
        .route("/api/v1/apps/{app}/instances", get(list_instances))
        .route(
            "/api/v1/apps/{app}/instances/{machine}/events",
            get(list_instance_events),
        )
        .route("/api/v1/activity", get(list_activity))
        .route("/api/v1/retention/prune", post(prune))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
}

async fn after_change(state: &Arc<ServerState>) -> ApiResult<()> {
    state.refresh_config(true).await?;
    Ok(())
}

async fn list_apps(
    State(state): State<Arc<ServerState>>,
    _auth: Authorized<NeedsRead>,
) -> ApiResult<Json<Vec<App>>> {
    Ok(Json(state.db.read(store::list_apps).await?))
}

async fn create_app(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsAdmin>,
    Json(app): Json<App>,
) -> ApiResult<(StatusCode, Json<App>)> {
    let actor = auth.actor();
    let now = state.now();
    let created = state
        .db
        .write(move |conn| {
            let created = store::create_app(conn, &app, now)?;
            store::log_activity(
                conn,
                now,
                &store::NewActivity {
                    actor: &actor,
                    kind: "app-created",
                    app_id: Some(&created.id),
                    group_id: None,
                    severity: "info",
                    message: &format!("application {} ({}) created", created.id, created.name),
                },
            )?;
            Ok(created)
        })
        .await?;
    after_change(&state).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn list_channels(
    State(state): State<Arc<ServerState>>,
    _auth: Authorized<NeedsRead>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<crate::model::Channel>>> {
    Ok(Json(
        state
            .db
            .read(move |c| store::list_channels(c, &app))
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
struct NewChannel {
    name: String,
    #[serde(default = "default_arch")]
    arch: String,
}

fn default_arch() -> String {
    "amd64".into()
}

async fn create_channel(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsAdmin>,
    Path(app): Path<String>,
    Json(body): Json<NewChannel>,
) -> ApiResult<(StatusCode, Json<crate::model::Channel>)> {
    let actor = auth.actor();
    let now = state.now();
    let ch = state
        .db
        .write(move |conn| {
            let ch = store::create_channel(conn, &app, &body.name, &body.arch, now)?;
            store::log_activity(
                conn,
                now,
                &store::NewActivity {
                    actor: &actor,
                    kind: "channel-created",
                    app_id: Some(&ch.app_id),
                    group_id: None,
                    severity: "info",
                    message: &format!("channel {} ({}) created", ch.name, ch.arch),
                },
            )?;
            Ok(ch)
        })
        .await?;
    after_change(&state).await?;
    Ok((StatusCode::CREATED, Json(ch)))
}

#[derive(Debug, Deserialize)]
struct PublishBody {
    version: String,
    #[serde(default = "default_arch")]
    arch: String,
}

async fn publish(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsPublish>,
    Path((app, channel)): Path<(String, String)>,
    Json(body): Json<PublishBody>,
) -> ApiResult<Json<crate::model::Channel>> {
    let actor = auth.actor();
    let now = state.now();
    let ch = state
        .db
        .write(move |c| {
            let target = store::ChannelPackage {
                channel: &channel,
                version: &body.version,
                arch: &body.arch,
            };
            store::publish(c, &app, &target, &actor, now)
        })
        .await?;
    after_change(&state).await?;
    Ok(Json(ch))
}

#[derive(Debug, Deserialize)]
struct FloorBody {
    version: String,
    #[serde(default = "default_arch")]
    arch: String,
    reason: String,
}

async fn add_floor(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsPublish>,
    Path((app, channel)): Path<(String, String)>,
    Json(body): Json<FloorBody>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let actor = auth.actor();
    let now = state.now();
    let reply = serde_json::json!({
        "channel": channel, "version": body.version, "arch": body.arch, "reason": body.reason
    });
    state
        .db
        .write(move |c| {
            let floor = store::NewFloor {
                channel: &channel,
                version: &body.version,
                arch: &body.arch,
                reason: &body.reason,
            };
            store::add_floor(c, &app, &floor, &actor, now)
        })
        .await?;
    after_change(&state).await?;
    Ok((StatusCode::CREATED, Json(reply)))
}

async fn remove_floor(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsPublish>,
    Path((app, channel, arch, version)): Path<(String, String, String, String)>,
) -> ApiResult<StatusCode> {
    let actor = auth.actor();
    let now = state.now();
    state
        .db
        .write(move |c| {
            let floor = store::ChannelPackage {
                channel: &channel,
                version: &version,
                arch: &arch,
            };
            store::remove_floor(c, &app, &floor, &actor, now)
        })
        .await?;
    after_change(&state).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_groups(
    State(state): State<Arc<ServerState>>,
    _auth: Authorized<NeedsRead>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<crate::model::Group>>> {
    Ok(Json(
        state.db.read(move |c| store::list_groups(c, &app)).await?,
    ))
}

/// Body of `POST /api/v1/apps/{app}/groups`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct NewGroup {
    /// Display name.
    pub name: String,
    /// Track (defaults to the name).
    #[serde(default)]
    pub track: Option<String>,
    /// Channel name.
    pub channel: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Policy (defaults: enabled, no limits, no windows, 1 h timeout).
    #[serde(default)]
    pub policy: Option<Policy>,
}

async fn create_group(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsAdmin>,
    Path(app): Path<String>,
    Json(body): Json<NewGroup>,
) -> ApiResult<(StatusCode, Json<crate::model::Group>)> {
    let actor = auth.actor();
    let now = state.now();
    let group = state
        .db
        .write(move |conn| {
            let track = body.track.clone().unwrap_or_else(|| body.name.clone());
            let policy = body.policy.clone().unwrap_or_default();
            let spec = store::GroupSpec {
                name: &body.name,
                track: &track,
                channel: &body.channel,
                description: &body.description,
                policy: &policy,
            };
            let g = store::create_group(conn, &app, &spec, now)?;
            store::log_activity(
                conn,
                now,
                &store::NewActivity {
                    actor: &actor,
                    kind: "group-created",
                    app_id: Some(&g.app_id),
                    group_id: Some(&g.id),
                    severity: "info",
                    message: &format!(
                        "group {} created (channel {}, safe mode {})",
                        g.track, g.channel, g.policy.safe_mode
                    ),
                },
            )?;
            Ok(g)
        })
        .await?;
    after_change(&state).await?;
    Ok((StatusCode::CREATED, Json(group)))
}

async fn get_group(
    State(state): State<Arc<ServerState>>,
    _auth: Authorized<NeedsRead>,
    Path((app, track)): Path<(String, String)>,
) -> ApiResult<Json<crate::model::Group>> {
    let g = state
        .db
        .read(move |c| {
            store::find_group(c, &app, &track)?
                .ok_or_else(|| StoreError::NotFound(format!("group {track} in app {app}")))
        })
        .await?;
    Ok(Json(g))
}

async fn change_group(
    state: &Arc<ServerState>,
    actor: String,
    app: String,
    track: String,
    patch: GroupPatch,
) -> ApiResult<Json<crate::model::Group>> {
    let now = state.now();
    let g = state
        .db
        .write(move |c| store::update_group(c, &app, &track, &patch, &actor, now))
        .await?;
    after_change(state).await?;
    Ok(Json(g))
}

async fn patch_group(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsAdmin>,
    Path((app, track)): Path<(String, String)>,
    Json(patch): Json<GroupPatch>,
) -> ApiResult<Json<crate::model::Group>> {
    change_group(&state, auth.actor(), app, track, patch).await
}

async fn pause_group(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsAdmin>,
    Path((app, track)): Path<(String, String)>,
) -> ApiResult<Json<crate::model::Group>> {
    let patch = GroupPatch {
        updates_enabled: Some(false),
        ..GroupPatch::default()
    };
    change_group(&state, auth.actor(), app, track, patch).await
}

async fn resume_group(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsAdmin>,
    Path((app, track)): Path<(String, String)>,
) -> ApiResult<Json<crate::model::Group>> {
    let patch = GroupPatch {
        updates_enabled: Some(true),
        ..GroupPatch::default()
    };
    change_group(&state, auth.actor(), app, track, patch).await
}

async fn list_packages(
    State(state): State<Arc<ServerState>>,
    _auth: Authorized<NeedsRead>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<crate::model::Package>>> {
    Ok(Json(
        state
            .db
            .read(move |c| store::list_packages(c, &app))
            .await?,
    ))
}

async fn create_package(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsPublish>,
    Path(app): Path<String>,
    Json(body): Json<NewPackage>,
) -> ApiResult<(StatusCode, Json<crate::model::Package>)> {
    let actor = auth.actor();
    if body.url.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "url is required for an external package; upload hosted payloads with PUT …/packages/{arch}/{version}/{filename}".into(),
        ));
    }
    let now = state.now();
    let p = state
        .db
        .write(move |c| store::create_package(c, &app, &body, &actor, now))
        .await?;
    Ok((StatusCode::CREATED, Json(p)))
}

async fn list_instances(
    State(state): State<Arc<ServerState>>,
    _auth: Authorized<NeedsRead>,
    Path(app): Path<String>,
    Query(filter): Query<InstanceFilter>,
) -> ApiResult<Json<Vec<crate::model::Instance>>> {
    // Make the listing include sightings still queued in memory.
    state.flush_sightings().await?;
    Ok(Json(
        state
            .db
            .read(move |c| store::list_instances(c, &app, &filter))
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    limit: Option<i64>,
}

async fn list_instance_events(
    State(state): State<Arc<ServerState>>,
    _auth: Authorized<NeedsRead>,
    Path((app, machine)): Path<(String, String)>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Vec<crate::model::InstanceEvent>>> {
    Ok(Json(
        state
            .db
            .read(move |c| store::list_instance_events(c, &app, &machine, q.limit.unwrap_or(100)))
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
struct ActivityQuery {
    app: Option<String>,
    limit: Option<i64>,
}

async fn list_activity(
    State(state): State<Arc<ServerState>>,
    _auth: Authorized<NeedsRead>,
    Query(q): Query<ActivityQuery>,
) -> ApiResult<Json<Vec<crate::model::Activity>>> {
    Ok(Json(
        state
            .db
            .read(move |c| store::list_activity(c, q.app.as_deref(), q.limit.unwrap_or(100)))
            .await?,
    ))
}

async fn prune(
    State(state): State<Arc<ServerState>>,
    _auth: Authorized<NeedsAdmin>,
) -> ApiResult<Json<store::Pruned>> {
    Ok(Json(state.prune().await?))
}

async fn list_tokens(
    State(state): State<Arc<ServerState>>,
    _auth: Authorized<NeedsAdmin>,
) -> ApiResult<Json<Vec<store::ApiToken>>> {
    Ok(Json(state.db.read(store::list_tokens).await?))
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct NewTokenBody {
    /// Unique name.
    pub name: String,
    /// `read`, `publish` or `admin`.
    pub scope: store::Scope,
    /// Lifetime in seconds from now; absent: never expires.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

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
