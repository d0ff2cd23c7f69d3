//! Bearer-token authentication as an axum extractor: `Authorized<NeedsPublish>` in a handler's
//! arguments admits only tokens whose scope includes `publish`.
//!
//! Contract:
//! - The token comes from `Authorization: Bearer <secret>` (scheme case-insensitive). Missing,
//!   unknown, expired or revoked: 401 with `WWW-Authenticate: Bearer`; known but its scope
//!   does not include the one needed: 403. The error body never says which of the 401 causes
//!   it was, so probing reveals nothing.
//! - It runs from the request head alone ([`FromRequestParts`]). Handlers take it before any
//!   body extractor (`Json`, `Body`), so a request with a bad token is refused before its body
//!   is read or parsed: a malformed body from an unauthenticated client gets 401, never 400.
//! - A successful use refreshes the token's `last_used_at` at most every
//!   [`store::LAST_USED_RESOLUTION_MS`]; failing to record it does not fail the request.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};

use crate::admin::ApiError;
use crate::server::ServerState;
use crate::store::{self, ApiToken, Scope};

/// The scope a route needs, as a type (`NeedsRead`, `NeedsPublish`, `NeedsAdmin`).
pub trait Needs: Send + Sync + 'static {
    /// The scope needed.
    const SCOPE: Scope;
}

/// Routes any valid token may use: reads.
#[derive(Debug)]
pub struct NeedsRead;
impl Needs for NeedsRead {
    const SCOPE: Scope = Scope::Read;
}

/// Routes that add packages and move channels.
#[derive(Debug)]
pub struct NeedsPublish;
impl Needs for NeedsPublish {
    const SCOPE: Scope = Scope::Publish;
}

/// Routes that change apps, groups, tokens and retention.
#[derive(Debug)]
pub struct NeedsAdmin;
impl Needs for NeedsAdmin {
    const SCOPE: Scope = Scope::Admin;
}

/// A request whose bearer token is valid and whose scope includes `N::SCOPE`.
#[derive(Debug)]
pub struct Authorized<N> {
    /// The token (its name is the actor in the activity log).
    pub token: ApiToken,
    needs: PhantomData<N>,
}

impl<N> Authorized<N> {
    /// The token's name: the actor for the activity log.
    pub fn actor(&self) -> String {
        self.token.name.clone()
    }
}

/// The secret of an `Authorization: Bearer …` header, if there is one.
pub fn bearer_secret(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.split_once(' ')?;
    let secret = secret.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty()).then_some(secret)
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing, unknown, expired or revoked api token",
    )
}

/// Resolves the request's token and checks it includes `needed`.
pub async fn authorize(
    state: &Arc<ServerState>,
    parts: &Parts,
    needed: Scope,
) -> Result<ApiToken, ApiError> {
    let secret = bearer_secret(parts).ok_or_else(unauthorized)?.to_owned();
    let now = state.now();
    let token = state
        .db
        .read(move |conn| store::check_token(conn, &secret, now))
        .await?
        .ok_or_else(unauthorized)?;
    if !token.scope.allows(needed) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} has scope {}; this needs scope {needed}",
                token.name, token.scope
            ),
        ));
    }
    let stale = token
        .last_used_at
        .is_none_or(|at| at < now - store::LAST_USED_RESOLUTION_MS);
    if stale {
        let id = token.id.clone();
        if let Err(e) = state
            .db
            .write(move |conn| store::touch_token(conn, &id, now))
            .await
        {
            tracing::warn!("recording the use of token {:?}: {e}", token.name);
        }
    }
    Ok(token)
}

impl<N: Needs> FromRequestParts<Arc<ServerState>> for Authorized<N> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ServerState>,
    ) -> Result<Self, Self::Rejection> {
        let token = authorize(state, parts, N::SCOPE).await?;
        Ok(Authorized {
            token,
            needs: PhantomData,
        })
    }
}
