//! The admin JSON API under `/api/v1`, described by `/api/v1/openapi.json`.
//!
//! Contract: every route but the OpenAPI document needs `Authorization: Bearer <token>`
//! (401 without a known token). `GET`s accept read-only and admin tokens; everything else needs
//! an admin token (403 otherwise). Errors are `{"error": "…"}` with 400 (bad value), 404, 409
//! (exists) or 500. Changes are written to the activity log under the token's name.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde::Deserialize;
use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;

use crate::model::{App, GroupPatch, Policy};
use crate::server::ServerState;
use crate::store::{self, InstanceFilter, NewPackage, Role};
use crate::StoreError;

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// An API failure: HTTP status plus a message.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
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

/// Checks the bearer token; returns the token's name (the actor for the activity log).
async fn authorize(
    state: &Arc<ServerState>,
    headers: &HeaderMap,
    need_admin: bool,
) -> ApiResult<String> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "missing bearer token".into()))?
        .to_owned();
    let found = state
        .db
        .read(move |conn| store::check_token(conn, &token))
        .await?;
    match found {
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unknown api token".into(),
        )),
        Some((name, Role::ReadOnly)) if need_admin => Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("token {name:?} is read-only; this needs an admin token"),
        )),
        Some((name, _)) => Ok(name),
    }
}

/// Routes of the admin API.
pub fn routes(state: Arc<ServerState>) -> Router<Arc<ServerState>> {
    let upload_limit = usize::try_from(state.settings.max_upload_bytes).unwrap_or(usize::MAX);
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
            put(upload_package).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/api/v1/apps/{app}/instances", get(list_instances))
        .route(
            "/api/v1/apps/{app}/instances/{machine}/events",
            get(list_instance_events),
        )
        .route("/api/v1/activity", get(list_activity))
        .route("/api/v1/retention/prune", post(prune))
}

async fn after_change(state: &Arc<ServerState>) -> ApiResult<()> {
    state.refresh_config(true).await?;
    Ok(())
}

async fn list_apps(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<App>>> {
    authorize(&state, &headers, false).await?;
    Ok(Json(state.db.read(store::list_apps).await?))
}

async fn create_app(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Json(app): Json<App>,
) -> ApiResult<(StatusCode, Json<App>)> {
    let actor = authorize(&state, &headers, true).await?;
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
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<crate::model::Channel>>> {
    authorize(&state, &headers, false).await?;
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
    headers: HeaderMap,
    Path(app): Path<String>,
    Json(body): Json<NewChannel>,
) -> ApiResult<(StatusCode, Json<crate::model::Channel>)> {
    let actor = authorize(&state, &headers, true).await?;
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
    headers: HeaderMap,
    Path((app, channel)): Path<(String, String)>,
    Json(body): Json<PublishBody>,
) -> ApiResult<Json<crate::model::Channel>> {
    let actor = authorize(&state, &headers, true).await?;
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
    headers: HeaderMap,
    Path((app, channel)): Path<(String, String)>,
    Json(body): Json<FloorBody>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let actor = authorize(&state, &headers, true).await?;
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
    headers: HeaderMap,
    Path((app, channel, arch, version)): Path<(String, String, String, String)>,
) -> ApiResult<StatusCode> {
    let actor = authorize(&state, &headers, true).await?;
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
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<crate::model::Group>>> {
    authorize(&state, &headers, false).await?;
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
    headers: HeaderMap,
    Path(app): Path<String>,
    Json(body): Json<NewGroup>,
) -> ApiResult<(StatusCode, Json<crate::model::Group>)> {
    let actor = authorize(&state, &headers, true).await?;
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
    headers: HeaderMap,
    Path((app, track)): Path<(String, String)>,
) -> ApiResult<Json<crate::model::Group>> {
    authorize(&state, &headers, false).await?;
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
    headers: &HeaderMap,
    app: String,
    track: String,
    patch: GroupPatch,
) -> ApiResult<Json<crate::model::Group>> {
    let actor = authorize(state, headers, true).await?;
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
    headers: HeaderMap,
    Path((app, track)): Path<(String, String)>,
    Json(patch): Json<GroupPatch>,
) -> ApiResult<Json<crate::model::Group>> {
    change_group(&state, &headers, app, track, patch).await
}

async fn pause_group(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path((app, track)): Path<(String, String)>,
) -> ApiResult<Json<crate::model::Group>> {
    let patch = GroupPatch {
        updates_enabled: Some(false),
        ..GroupPatch::default()
    };
    change_group(&state, &headers, app, track, patch).await
}

async fn resume_group(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path((app, track)): Path<(String, String)>,
) -> ApiResult<Json<crate::model::Group>> {
    let patch = GroupPatch {
        updates_enabled: Some(true),
        ..GroupPatch::default()
    };
    change_group(&state, &headers, app, track, patch).await
}

async fn list_packages(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<crate::model::Package>>> {
    authorize(&state, &headers, false).await?;
    Ok(Json(
        state
            .db
            .read(move |c| store::list_packages(c, &app))
            .await?,
    ))
}

async fn create_package(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(app): Path<String>,
    Json(body): Json<NewPackage>,
) -> ApiResult<(StatusCode, Json<crate::model::Package>)> {
    let actor = authorize(&state, &headers, true).await?;
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

/// Streams an upload to `dir/filename` via a temporary file: hash while writing, fsync, rename,
/// fsync the directory. Returns (size, sha256, sha1).
async fn store_payload(
    dir: &std::path::Path,
    filename: &str,
    body: Body,
) -> Result<(i64, [u8; 32], [u8; 20]), ApiError> {
    let io_err = |what: &str, e: std::io::Error| {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"))
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io_err(&format!("creating {}", dir.display()), e))?;
    let tmp = dir.join(format!(
        ".{filename}.{}.part",
        uuid::Uuid::new_v4().simple()
    ));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io_err(&format!("creating {}", tmp.display()), e))?;
        let mut sha256 = sha2::Sha256::new();
        let mut sha1 = sha1::Sha1::new();
        let mut size: i64 = 0;
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("reading upload: {e}")))?;
            if let Ok(data) = frame.into_data() {
                sha256.update(&data);
                sha1.update(&data);
                size += data.len() as i64;
                file.write_all(&data)
                    .await
                    .map_err(|e| io_err(&format!("writing {}", tmp.display()), e))?;
            }
        }
        file.sync_all()
            .await
            .map_err(|e| io_err(&format!("syncing {}", tmp.display()), e))?;
        Ok::<_, ApiError>((size, sha256.finalize().into(), sha1.finalize().into()))
    }
    .await;
    let (size, sha256, sha1) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    let dest = dir.join(filename);
    tokio::fs::rename(&tmp, &dest)
        .await
        .map_err(|e| io_err(&format!("renaming to {}", dest.display()), e))?;
    let dir_owned = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir_owned).and_then(|d| d.sync_all()))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| io_err(&format!("syncing {}", dir.display()), e))?;
    Ok((size, sha256, sha1))
}

async fn upload_package(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path((app, arch, version, filename)): Path<(String, String, String, String)>,
    body: Body,
) -> ApiResult<(StatusCode, Json<crate::model::Package>)> {
    let actor = authorize(&state, &headers, true).await?;
    let app_id = wellcar_omaha::normalize_app_id(&app);
    for (what, v) in [
        ("arch", &arch),
        ("version", &version),
        ("filename", &filename),
    ] {
        if v.is_empty() || v.contains('/') || v.contains('\\') || v.starts_with('.') {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("{what} {v:?} is not a plain path segment"),
            ));
        }
    }
    // An unpublishable version is refused before the body is read, like a duplicate.
    store::validate_package_version(&version)?;
    // Reject duplicates before accepting gigabytes.
    {
        let (a, v, ar) = (app_id.clone(), version.clone(), arch.clone());
        let exists = state
            .db
            .read(move |c| {
                store::require_app(c, &a)?;
                Ok(store::list_packages(c, &a)?
                    .into_iter()
                    .any(|p| p.version == v && p.arch == ar))
            })
            .await?;
        if exists {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("package {version} ({arch}) already exists in app {app_id}"),
            ));
        }
    }
    let dir = state
        .settings
        .payload_dir
        .join(&app_id)
        .join(&arch)
        .join(&version);
    let (size, sha256, sha1) = store_payload(&dir, &filename, body).await?;
    let new = NewPackage {
        version,
        arch,
        filename,
        url: String::new(),
        size,
        sha256_hex: hex::encode(sha256),
        sha1_base64: base64::engine::general_purpose::STANDARD.encode(sha1),
    };
    let now = state.now();
    let p = state
        .db
        .write(move |c| store::create_package(c, &app_id, &new, &actor, now))
        .await?;
    Ok((StatusCode::CREATED, Json(p)))
}

async fn list_instances(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(app): Path<String>,
    Query(filter): Query<InstanceFilter>,
) -> ApiResult<Json<Vec<crate::model::Instance>>> {
    authorize(&state, &headers, false).await?;
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
    headers: HeaderMap,
    Path((app, machine)): Path<(String, String)>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Vec<crate::model::InstanceEvent>>> {
    authorize(&state, &headers, false).await?;
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
    headers: HeaderMap,
    Query(q): Query<ActivityQuery>,
) -> ApiResult<Json<Vec<crate::model::Activity>>> {
    authorize(&state, &headers, false).await?;
    Ok(Json(
        state
            .db
            .read(move |c| store::list_activity(c, q.app.as_deref(), q.limit.unwrap_or(100)))
            .await?,
    ))
}

async fn prune(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> ApiResult<Json<store::Pruned>> {
    authorize(&state, &headers, true).await?;
    Ok(Json(state.prune().await?))
}
