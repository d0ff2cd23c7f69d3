//! The admin JSON API under `/api/v1`, described by the OpenAPI document at
//! `/api/v1/openapi.json` and the page `/api/v1/docs` ([`crate::openapi`]).
//!
//! Contract:
//! - Every route but the documentation needs `Authorization: Bearer <token>` ([`crate::auth`]):
//!   401 without a valid (known, unexpired, unrevoked) token, 403 when the token's scope is too
//!   small. The token is checked before the body is read or parsed.
//! - Scopes: `GET`s need `read`; creating and uploading packages, publishing to a channel and
//!   floors need `publish`; everything else (apps, channels, groups, retention, tokens) needs
//!   `admin`. A higher scope includes the lower ones. Each route's `#[utoipa::path]` names its
//!   scope; `openapi::tests` checks the name against what the handler enforces.
//! - Every route is added through [`DocumentedRoutes`], which takes only handlers with a
//!   `#[utoipa::path]` attribute: a route cannot exist without its documentation.
//! - Tokens and retention: [`crate::admin_tokens`].
//! - Errors are [`ErrorBody`] `{"error": "…"}` with 400 (bad value), 401, 403, 404, 409 (exists),
//!   413 (upload too large) or 500. Changes are written to the activity log under the token's
//!   name.
//! - Uploads (`PUT …/packages/{arch}/{version}/{filename}`) follow [`crate::payload_files`].

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

pub use crate::admin_tokens::{expiry_after, NewTokenBody};
use crate::auth::{Authorized, NeedsAdmin, NeedsPublish, NeedsRead};
use crate::model::{App, GroupPatch, Policy};
use crate::openapi::DocumentedRoutes;
use crate::server::ServerState;
use crate::store::{self, InstanceFilter, NewPackage};
use crate::StoreError;

/// The body of every admin API error.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong, naming the object or value.
    pub error: String,
}

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
        let body = Json(ErrorBody { error: self.1 });
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

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Routes of the admin API, with the documentation pages.
pub fn routes() -> Router<Arc<ServerState>> {
    documented_routes().into_router()
}

/// Every admin route with its documentation: the one list both the router and the OpenAPI
/// document are built from.
pub(crate) fn documented_routes() -> DocumentedRoutes {
    DocumentedRoutes::new()
        .routes(routes!(crate::openapi::openapi_json))
        .routes(routes!(crate::openapi::api_docs_page))
        .routes(routes!(list_apps, create_app))
        .routes(routes!(list_channels, create_channel))
        .routes(routes!(publish))
        .routes(routes!(add_floor))
        .routes(routes!(remove_floor))
        .routes(routes!(list_groups, create_group))
        .routes(routes!(get_group, patch_group))
        .routes(routes!(pause_group))
        .routes(routes!(resume_group))
        .routes(routes!(list_packages, create_package))
        .routes(routes!(crate::payload_files::upload))
        .routes(routes!(crate::deltas::upload_delta))
        .routes(routes!(list_instances))
        .routes(routes!(list_instance_events))
        .routes(routes!(list_activity))
        .merge(crate::admin_tokens::routes())
        .merge(crate::fleetlock::admin_routes())
}

async fn after_change(state: &Arc<ServerState>) -> ApiResult<()> {
    state.refresh_config(true).await?;
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/apps", tag = "apps", summary = "List applications",
    security(("bearer" = ["read"])),
    responses((status = 200, description = "The applications", body = Vec<App>)))]
async fn list_apps(
    State(state): State<Arc<ServerState>>,
    _auth: Authorized<NeedsRead>,
) -> ApiResult<Json<Vec<App>>> {
    Ok(Json(state.db.read(store::list_apps).await?))
}

#[utoipa::path(post, path = "/api/v1/apps", tag = "apps",
    summary = "Create an application (Flatcar's app id is accepted)",
    security(("bearer" = ["admin"])), request_body = App,
    responses((status = 201, description = "Created", body = App),
        (status = 409, description = "The id exists", body = ErrorBody)))]
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

#[utoipa::path(get, path = "/api/v1/apps/{app}/channels", tag = "channels",
    summary = "List channels", params(("app" = String, Path, description = "Application id (GUID; braces and case are normalized)")), security(("bearer" = ["read"])),
    responses((status = 200, description = "The app's channels", body = Vec<crate::model::Channel>),
        (status = 404, description = "Unknown app", body = ErrorBody)))]
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

/// Body of `POST /api/v1/apps/{app}/channels`.
#[derive(Debug, Deserialize, ToSchema)]
struct NewChannel {
    /// Channel name (`stable`, `beta`, …).
    name: String,
    /// Architecture.
    #[serde(default = "default_arch")]
    #[schema(default = "amd64")]
    arch: String,
}

fn default_arch() -> String {
    "amd64".into()
}

#[utoipa::path(post, path = "/api/v1/apps/{app}/channels", tag = "channels",
    summary = "Create a channel", params(("app" = String, Path, description = "Application id (GUID; braces and case are normalized)")), security(("bearer" = ["admin"])),
    request_body = NewChannel,
    responses((status = 201, description = "Created", body = crate::model::Channel),
        (status = 409, description = "The channel exists for that arch", body = ErrorBody)))]
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

/// Body of `POST …/channels/{channel}/publish`.
#[derive(Debug, Deserialize, ToSchema)]
struct PublishBody {
    /// Version of an existing package.
    version: String,
    /// Architecture.
    #[serde(default = "default_arch")]
    #[schema(default = "amd64")]
    arch: String,
}

#[utoipa::path(post, path = "/api/v1/apps/{app}/channels/{channel}/publish",
    tag = "channels", summary = "Point the channel (for an arch) at a package version",
    params(("app" = String, Path, description = "Application id (GUID; braces and case are normalized)"), ("channel" = String, Path, description = "Channel name")), security(("bearer" = ["publish"])), request_body = PublishBody,
    responses((status = 200, description = "The channel", body = crate::model::Channel),
        (status = 404, description = "Unknown app, channel or package", body = ErrorBody)))]
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

/// Body of `POST …/channels/{channel}/floors`.
#[derive(Debug, Deserialize, ToSchema)]
struct FloorBody {
    /// Version of an existing package.
    version: String,
    /// Architecture.
    #[serde(default = "default_arch")]
    #[schema(default = "amd64")]
    arch: String,
    /// Why machines must pass through it.
    reason: String,
}

/// Answer of `POST …/channels/{channel}/floors`: the floor added.
#[derive(Debug, Serialize, ToSchema)]
struct AddedFloor {
    /// Channel name.
    channel: String,
    /// Floor version.
    version: String,
    /// Architecture.
    arch: String,
    /// Why machines must pass through it.
    reason: String,
}

#[utoipa::path(post, path = "/api/v1/apps/{app}/channels/{channel}/floors",
    tag = "channels",
    summary = "Make a package a mandatory intermediate version (floor) of the channel",
    params(("app" = String, Path, description = "Application id (GUID; braces and case are normalized)"), ("channel" = String, Path, description = "Channel name")), security(("bearer" = ["publish"])), request_body = FloorBody,
    responses((status = 201, description = "Added", body = AddedFloor),
        (status = 409, description = "Already a floor", body = ErrorBody)))]
async fn add_floor(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsPublish>,
    Path((app, channel)): Path<(String, String)>,
    Json(body): Json<FloorBody>,
) -> ApiResult<(StatusCode, Json<AddedFloor>)> {
    let actor = auth.actor();
    let now = state.now();
    let reply = AddedFloor {
        channel: channel.clone(),
        version: body.version.clone(),
        arch: body.arch.clone(),
        reason: body.reason.clone(),
    };
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

#[utoipa::path(delete,
    path = "/api/v1/apps/{app}/channels/{channel}/floors/{arch}/{version}", tag = "channels",
    summary = "Remove a floor", security(("bearer" = ["publish"])),
    params(("app" = String, Path, description = "Application id (GUID; braces and case are normalized)"), ("channel" = String, Path, description = "Channel name"), ("arch" = String, Path, description = "Architecture"),
        ("version" = String, Path, description = "Floor version")),
    responses((status = 204, description = "Removed"),
        (status = 404, description = "No such floor", body = ErrorBody)))]
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

#[utoipa::path(get, path = "/api/v1/apps/{app}/groups", tag = "groups",
    summary = "List groups", params(("app" = String, Path, description = "Application id (GUID; braces and case are normalized)")), security(("bearer" = ["read"])),
    responses((status = 200, description = "The app's groups", body = Vec<crate::model::Group>),
        (status = 404, description = "Unknown app", body = ErrorBody)))]
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
#[derive(Debug, Clone, Deserialize, serde::Serialize, ToSchema)]
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

#[utoipa::path(post, path = "/api/v1/apps/{app}/groups", tag = "groups",
    summary = "Create a group", params(("app" = String, Path, description = "Application id (GUID; braces and case are normalized)")), security(("bearer" = ["admin"])),
    request_body = NewGroup,
    responses((status = 201, description = "Created", body = crate::model::Group),
        (status = 409, description = "The track exists", body = ErrorBody)))]
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

#[utoipa::path(get, path = "/api/v1/apps/{app}/groups/{track}", tag = "groups",
    summary = "Show a group", params(("app" = String, Path, description = "Application id (GUID; braces and case are normalized)"), ("track" = String, Path, description = "Group track")), security(("bearer" = ["read"])),
    responses((status = 200, description = "The group", body = crate::model::Group),
        (status = 404, description = "Unknown app or group", body = ErrorBody)))]
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

#[utoipa::path(patch, path = "/api/v1/apps/{app}/groups/{track}", tag = "groups",
    summary = "Change a group's name, channel or policy; absent fields stay",
    description = "`updates_enabled: true` also releases the safe-mode brake.",
    params(("app" = String, Path, description = "Application id (GUID; braces and case are normalized)"), ("track" = String, Path, description = "Group track")), security(("bearer" = ["admin"])), request_body = GroupPatch,
    responses((status = 200, description = "The changed group", body = crate::model::Group),
        (status = 404, description = "Unknown app or group", body = ErrorBody)))]
async fn patch_group(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsAdmin>,
    Path((app, track)): Path<(String, String)>,
    Json(patch): Json<GroupPatch>,
) -> ApiResult<Json<crate::model::Group>> {
    change_group(&state, auth.actor(), app, track, patch).await
}

#[utoipa::path(post, path = "/api/v1/apps/{app}/groups/{track}/pause", tag = "groups",
    summary = "Pause updates for the group", params(("app" = String, Path, description = "Application id (GUID; braces and case are normalized)"), ("track" = String, Path, description = "Group track")),
    security(("bearer" = ["admin"])),
    responses((status = 200, description = "The paused group", body = crate::model::Group),
        (status = 404, description = "Unknown app or group", body = ErrorBody)))]
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

#[utoipa::path(post, path = "/api/v1/apps/{app}/groups/{track}/resume", tag = "groups",
    summary = "Resume updates (also releases the safe-mode brake)", params(("app" = String, Path, description = "Application id (GUID; braces and case are normalized)"), ("track" = String, Path, description = "Group track")),
    security(("bearer" = ["admin"])),
    responses((status = 200, description = "The resumed group", body = crate::model::Group),
        (status = 404, description = "Unknown app or group", body = ErrorBody)))]
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

#[utoipa::path(get, path = "/api/v1/apps/{app}/packages", tag = "packages",
    summary = "List packages", params(("app" = String, Path, description = "Application id (GUID; braces and case are normalized)")), security(("bearer" = ["read"])),
    responses((status = 200, description = "The app's packages", body = Vec<crate::model::Package>),
        (status = 404, description = "Unknown app", body = ErrorBody)))]
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

#[utoipa::path(post, path = "/api/v1/apps/{app}/packages", tag = "packages",
    summary = "Register a package hosted at an external URL", params(("app" = String, Path, description = "Application id (GUID; braces and case are normalized)")),
    security(("bearer" = ["publish"])), request_body = NewPackage,
    responses((status = 201, description = "Created", body = crate::model::Package),
        (status = 409, description = "The version exists for that arch", body = ErrorBody)))]
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

#[utoipa::path(get, path = "/api/v1/apps/{app}/instances", tag = "instances",
    summary = "List instances, most recently seen first", params(("app" = String, Path, description = "Application id (GUID; braces and case are normalized)"), InstanceFilter),
    security(("bearer" = ["read"])),
    responses((status = 200, description = "The instances", body = Vec<crate::model::Instance>),
        (status = 404, description = "Unknown app or group", body = ErrorBody)))]
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

/// Query of `GET …/instances/{machine}/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// At most this many, the latest (default 100).
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/apps/{app}/instances/{machine}/events",
    tag = "instances",
    summary = "The latest events a machine reported, oldest first (an unknown machine has none)",
    params(("app" = String, Path, description = "Application id (GUID; braces and case are normalized)"), ("machine" = String, Path, description = "Omaha machine id"), EventsQuery),
    security(("bearer" = ["read"])),
    responses((status = 200, description = "The events", body = Vec<crate::model::InstanceEvent>),
        (status = 404, description = "Unknown app", body = ErrorBody)))]
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

/// Query of `GET /api/v1/activity`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ActivityQuery {
    /// Only entries about this app.
    app: Option<String>,
    /// At most this many (default 100).
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/activity", tag = "activity",
    summary = "Activity log, newest first", params(ActivityQuery),
    security(("bearer" = ["read"])),
    responses((status = 200, description = "The entries", body = Vec<crate::model::Activity>)))]
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
