//! The FleetLock protocol endpoints (Zincati's `docs/development/fleetlock/protocol.md`):
//! `POST /fleetlock/v1/pre-reboot` (RecursiveLock) and `POST /fleetlock/v1/steady-state`
//! (UnlockIfHeld).
//!
//! Contract:
//! - Checks, in order; the first that fails answers and nothing is stored:
//!   1. admission as for Omaha requests ([`crate::admission::admit_omaha`]): the client IP's
//!      rate limit (429 `rate_limited`, with `Retry-After`) and, when the server has a fleet
//!      token, header `X-Wellcar-Fleet-Token` (401 `fleet_token_required`);
//!   2. header `fleet-lock-protocol: true` (400 `missing_protocol_header`);
//!   3. a body of at most [`MAX_BODY_BYTES`] (413 `request_too_large`) holding JSON
//!      `{"client_params":{"id":…,"group":…}}` (any content type; unknown fields ignored), with
//!      `id` 1–255 bytes without control characters and `group` matching `^[a-zA-Z0-9.-]+$`,
//!      at most 64 bytes (400 `invalid_client_params`, the value naming the field);
//!   4. the group exists ([`super`]: `default`, Omaha tracks, admin-created) (400
//!      `unknown_group`).
//! - pre-reboot: 200 when the id holds a slot (new grant, or its existing hold renewed for a
//!   fresh lease); 409 `failed_lock_semaphore_full` when all slots are taken.
//! - steady-state: 200 whether or not the id held a slot (idempotent).
//! - A storage failure is 500 `failed_lock` (pre-reboot) or `failed_unlock` (steady-state).
//! - Every error body is `{"kind": …, "value": …}`; the kinds are the fixed set above.
//!   A 200 has an empty JSON object body.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use crate::admission::Refusal;
use crate::server::ServerState;
use crate::store::{self, LockError, LockOutcome, LockRequest};

pub use wellcar_contract::fleetlock::{ClientParams, FleetLockRequest, PROTOCOL_HEADER};

/// Largest request body accepted (a valid one is well under 400 bytes).
pub const MAX_BODY_BYTES: usize = 4096;

/// A FleetLock failure: its `kind` is one of a fixed set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetLockError {
    /// No `fleet-lock-protocol: true` header.
    MissingProtocolHeader,
    /// The body is larger than [`MAX_BODY_BYTES`].
    RequestTooLarge,
    /// The body is not the protocol's JSON, or a field is invalid.
    InvalidClientParams(String),
    /// The group does not exist.
    UnknownGroup(String),
    /// All slots of the group are taken.
    SemaphoreFull {
        /// The group.
        group: String,
        /// Holders now.
        holders: i64,
        /// Slots.
        max_holders: i64,
    },
    /// The server requires the fleet token and it was missing or wrong.
    FleetTokenRequired,
    /// Too many requests from this client IP.
    RateLimited {
        /// Seconds until a retry may pass.
        retry_after_secs: u64,
    },
    /// Storage failed while locking.
    FailedLock(String),
    /// Storage failed while unlocking.
    FailedUnlock(String),
}

impl FleetLockError {
    /// The protocol's error `kind` (a small fixed set).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MissingProtocolHeader => "missing_protocol_header",
            Self::RequestTooLarge => "request_too_large",
            Self::InvalidClientParams(_) => "invalid_client_params",
            Self::UnknownGroup(_) => "unknown_group",
            Self::SemaphoreFull { .. } => wellcar_contract::fleetlock::KIND_SEMAPHORE_FULL,
            Self::FleetTokenRequired => "fleet_token_required",
            Self::RateLimited { .. } => "rate_limited",
            Self::FailedLock(_) => "failed_lock",
            Self::FailedUnlock(_) => "failed_unlock",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingProtocolHeader | Self::InvalidClientParams(_) | Self::UnknownGroup(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::SemaphoreFull { .. } => StatusCode::CONFLICT,
            Self::FleetTokenRequired => StatusCode::UNAUTHORIZED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::FailedLock(_) | Self::FailedUnlock(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The human-readable `value`.
    pub fn value(&self) -> String {
        match self {
            Self::MissingProtocolHeader => {
                format!("request lacks header '{PROTOCOL_HEADER}: true'")
            }
            Self::RequestTooLarge => format!("request body exceeds {MAX_BODY_BYTES} bytes"),
            Self::InvalidClientParams(why) => format!("invalid client_params: {why}"),
            Self::UnknownGroup(g) => format!(
                "unknown group {g:?}: use 'default', an update group's track, or create it with 'wellcar server locks set-max'"
            ),
            Self::SemaphoreFull {
                group,
                holders,
                max_holders,
            } => format!(
                "semaphore of group {group} currently full: {holders} of {max_holders} slots locked"
            ),
            Self::FleetTokenRequired => format!(
                "this server requires the fleet token: send header {}",
                wellcar_omaha::headers::FLEET_TOKEN
            ),
            Self::RateLimited { retry_after_secs } => {
                format!("too many requests; retry after {retry_after_secs} s")
            }
            Self::FailedLock(e) => format!("failed to lock: {e}"),
            Self::FailedUnlock(e) => format!("failed to unlock: {e}"),
        }
    }
}

impl IntoResponse for FleetLockError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "kind": self.kind(), "value": self.value() }));
        match self {
            Self::RateLimited { retry_after_secs } => (
                self.status(),
                [(header::RETRY_AFTER, retry_after_secs.to_string())],
                body,
            )
                .into_response(),
            _ => (self.status(), body).into_response(),
        }
    }
}

/// The routes, relative to the server root.
pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/fleetlock/v1/pre-reboot", post(pre_reboot))
        .route("/fleetlock/v1/steady-state", post(steady_state))
}

/// Checks 1–3 of the contract; returns the validated client params.
async fn admit(
    state: &ServerState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
) -> Result<ClientParams, FleetLockError> {
    let ip = crate::peer::client_ip(&state.settings.trusted_proxies, headers, peer);
    if let Err(refused) = crate::admission::admit_omaha(state, ip, headers) {
        state.metrics.refused(refused.why);
        return Err(match refused.why {
            Refusal::FleetToken => FleetLockError::FleetTokenRequired,
            _ => FleetLockError::RateLimited {
                retry_after_secs: refused.retry_after_secs,
            },
        });
    }
    let flagged = headers
        .get(PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if !flagged {
        return Err(FleetLockError::MissingProtocolHeader);
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| FleetLockError::RequestTooLarge)?;
    let request: FleetLockRequest = serde_json::from_slice(&bytes)
        .map_err(|e| FleetLockError::InvalidClientParams(format!("body: {e}")))?;
    let params = request.client_params;
    wellcar_contract::fleetlock::check_id(&params.id)
        .map_err(FleetLockError::InvalidClientParams)?;
    wellcar_contract::fleetlock::check_group(&params.group)
        .map_err(FleetLockError::InvalidClientParams)?;
    Ok(params)
}

/// The store's request for `params`, with this server's group and lease settings.
fn lock_request(state: &ServerState, params: &ClientParams) -> LockRequest {
    let settings = &state.settings.fleetlock;
    LockRequest {
        group: params.group.clone(),
        id: params.id.clone(),
        implicit_group: super::is_implicit_group(state, &params.group),
        default_max: settings.default_max(),
        lease_ms: settings.lease_ms(),
    }
}

fn ok() -> Response {
    (StatusCode::OK, Json(serde_json::json!({}))).into_response()
}

/// `POST /fleetlock/v1/pre-reboot`: RecursiveLock.
pub async fn pre_reboot(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, FleetLockError> {
    let params = admit(&state, peer, &headers, body).await?;
    let now = state.now();
    let req = lock_request(&state, &params);
    let result = state
        .db
        .write(move |conn| {
            // An unknown group fails the transaction, so nothing it did is kept.
            store::fleetlock_acquire(conn, &req, now).map_err(LockError::into_store)
        })
        .await;
    let (outcome, expired) = match result {
        Ok(v) => v,
        Err(crate::StoreError::NotFound(g)) => return Err(FleetLockError::UnknownGroup(g)),
        Err(e) => return Err(FleetLockError::FailedLock(e.to_string())),
    };
    state.metrics.fleetlock_leases_expired(expired as u64);
    match outcome {
        LockOutcome::Granted { new, expires_at } => {
            tracing::info!(
                group = params.group,
                id = params.id,
                new,
                expires_at,
                "reboot lock held"
            );
            Ok(ok())
        }
        LockOutcome::Full {
            holders,
            max_holders,
        } => Err(FleetLockError::SemaphoreFull {
            group: params.group,
            holders,
            max_holders,
        }),
    }
}

/// `POST /fleetlock/v1/steady-state`: UnlockIfHeld.
pub async fn steady_state(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, FleetLockError> {
    let params = admit(&state, peer, &headers, body).await?;
    let now = state.now();
    let req = lock_request(&state, &params);
    let result = state
        .db
        .write(move |conn| store::fleetlock_release(conn, &req, now).map_err(LockError::into_store))
        .await;
    match result {
        Ok(released) => {
            if released {
                tracing::info!(group = params.group, id = params.id, "reboot lock released");
            }
            Ok(ok())
        }
        Err(crate::StoreError::NotFound(g)) => Err(FleetLockError::UnknownGroup(g)),
        Err(e) => Err(FleetLockError::FailedUnlock(e.to_string())),
    }
}
