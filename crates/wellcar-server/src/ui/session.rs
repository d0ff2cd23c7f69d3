//! Dashboard sessions: an opaque id in a cookie, the session itself in this process's memory.
//!
//! Contract:
//! - A session is created by a successful login and names the token's id, name and scope, a
//!   per-session CSRF token and two deadlines: [`IDLE_TIMEOUT_MS`] after the last request and
//!   [`MAX_SESSION_MS`] after login, on the server's clock. Past either, the session is gone
//!   and the request gets the "session expired" page.
//! - The cookie holds only the random session id (256 bits); it is `HttpOnly`,
//!   `SameSite=Strict`, `Path=/ui`, and `Secure` when the server speaks HTTPS.
//! - [`Viewer`] (an extractor) resolves the cookie on every request and re-checks the token
//!   in the database ([`crate::store::live_token`]): a revoked or expired token ends the
//!   session at once.
//! - Sessions live in one process: behind several server processes, use sticky sessions (or
//!   log in again). A restart logs everyone out. At most [`MAX_SESSIONS`] exist; the oldest is
//!   dropped beyond that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Method};

use super::render::UiError;
use super::UiState;
use crate::store::{self, Scope};

/// The session cookie's name.
pub const COOKIE: &str = "wellcar_ui";
/// A session unused this long (ms) has expired.
pub const IDLE_TIMEOUT_MS: i64 = 30 * 60 * 1000;
/// A session this old (ms) has expired, however busy.
pub const MAX_SESSION_MS: i64 = 12 * 3600 * 1000;
/// Sessions kept at most.
pub const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone)]
struct Session {
    token_id: String,
    csrf: String,
    created_at: i64,
    last_seen: i64,
}

/// The logged-in sessions of this process.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

/// 256 random bits, hex.
pub(super) fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// What a session lookup found.
enum Lookup {
    Live(Session),
    Expired,
    Unknown,
}

impl Sessions {
    /// Starts a session for token `token_id`; returns the session id (the cookie's value).
    pub fn create(&self, token_id: &str, now: i64) -> String {
        let id = random_secret();
        let session = Session {
            token_id: token_id.to_owned(),
            csrf: random_secret(),
            created_at: now,
            last_seen: now,
        };
        if let Ok(mut map) = self.by_id.lock() {
            map.retain(|_, s| !expired(s, now));
            if map.len() >= MAX_SESSIONS {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, s)| s.last_seen)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
            }
            map.insert(id.clone(), session);
        }
        id
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        if let Ok(mut map) = self.by_id.lock() {
            map.remove(id);
        }
    }

    fn touch(&self, id: &str, now: i64) -> Lookup {
        let Ok(mut map) = self.by_id.lock() else {
            return Lookup::Unknown;
        };
        match map.get_mut(id) {
            None => Lookup::Unknown,
            Some(s) if expired(s, now) => {
                map.remove(id);
                Lookup::Expired
            }
            Some(s) => {
                s.last_seen = now;
                Lookup::Live(s.clone())
            }
        }
    }
}

fn expired(s: &Session, now: i64) -> bool {
    now - s.last_seen >= IDLE_TIMEOUT_MS || now - s.created_at >= MAX_SESSION_MS
}

/// The `Set-Cookie` value that starts a session.
pub(super) fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        MAX_SESSION_MS / 1000,
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub(super) fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The session id in the request's cookies, if any.
pub(super) fn session_cookie(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty())
}

/// A request from a logged-in session whose token is still valid.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The session id.
    pub session_id: String,
    /// The token's name (the actor in the activity log).
    pub name: String,
    /// The token's scope.
    pub scope: Scope,
    /// The session's CSRF token.
    pub csrf: String,
}

impl Viewer {
    /// Refuses (403 page, nothing changed) unless the scope includes `needed`; `what` names
    /// the refused action ("pause a group").
    pub fn require(&self, needed: Scope, what: &str) -> Result<(), UiError> {
        if self.scope.allows(needed) {
            return Ok(());
        }
        Err(UiError::forbidden(format!(
            "Your token {:?} has scope {}; to {what} a token needs scope {needed}. Nothing was changed.",
            self.name, self.scope
        )))
    }

    /// Whether the session may publish.
    pub fn can_publish(&self) -> bool {
        self.scope.allows(Scope::Publish)
    }

    /// Whether the session may change groups.
    pub fn can_admin(&self) -> bool {
        self.scope.allows(Scope::Admin)
    }
}

impl FromRequestParts<Arc<UiState>> for Viewer {
    type Rejection = UiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<UiState>,
    ) -> Result<Self, Self::Rejection> {
        let changing = parts.method != Method::GET && parts.method != Method::HEAD;
        let secure = state.server.settings.tls.is_some();
        let Some(id) = session_cookie(parts) else {
            return Err(if changing {
                UiError::unauthenticated("You are not logged in. Nothing was changed.", secure)
            } else {
                UiError::to_login()
            });
        };
        let now = state.server.now();
        let session = match state.sessions.touch(&id, now) {
            Lookup::Live(s) => s,
            Lookup::Expired => {
                return Err(UiError::unauthenticated(
                    "Your session has expired. Log in again; nothing was changed.",
                    secure,
                ))
            }
            Lookup::Unknown => {
                return Err(UiError::unauthenticated(
                    "This session is not known (it ended, or the server restarted). Log in again; nothing was changed.",
                    secure,
                ))
            }
        };
        let token_id = session.token_id.clone();
        let live = state
            .server
            .db
            .read(move |conn| store::live_token(conn, &token_id, now))
            .await
            .map_err(UiError::from)?;
        let Some((name, scope)) = live else {
            state.sessions.remove(&id);
            return Err(UiError::unauthenticated(
                "The token this session logged in with has been revoked or has expired. Nothing was changed.",
                secure,
            ));
        };
        Ok(Viewer {
            session_id: id,
            name,
            scope,
            csrf: session.csrf,
        })
    }
}
