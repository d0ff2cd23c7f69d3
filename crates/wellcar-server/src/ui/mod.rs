//! The fleet dashboard at `/ui/`: server-rendered HTML (minijinja templates compiled into the
//! binary, vendored CSS, no JavaScript needed) over the same store as the admin API.
//!
//! Contract:
//! - Log in at `/ui/login` with an API token. The token is checked once and never stored: the
//!   server keeps a session (in memory, `session`) naming the token's id, and the browser gets
//!   an opaque `wellcar_ui` cookie (`HttpOnly`, `SameSite=Strict`, `Path=/ui`, `Secure` behind
//!   TLS). Login attempts count against the admin API's per-IP rate limit. Every request
//!   re-checks that the token is neither revoked nor expired. A session ends after 30 minutes
//!   idle, 12 hours in all, or at logout.
//! - Every state-changing request is a `POST` carrying the session's CSRF token (`csrf`) and,
//!   when the browser sends `Origin`, a same-origin one. A forged token, a foreign origin, an
//!   expired session, a wrong token or too small a scope get a clear error page (401 or 403)
//!   and change nothing.
//! - Scopes are the API's: any token reads everything; `publish` may publish packages to
//!   channels; `admin` may pause and resume groups and force-release reboot locks. Pages show
//!   only the buttons the session's scope may use.
//! - Every page reads counts from aggregate queries (`store::group_version_status_counts`, …),
//!   never the whole fleet; every value is HTML-escaped by the templates.
//!
//! Layout: sessions (`session`), CSRF and origin checks (`csrf`), the template environment and
//! error pages (`render`), SVG charts (`chart`), one module per page area (`pages`).

mod chart;
mod csrf;
mod pages;
mod render;
mod session;

#[cfg(test)]
mod browser_tests;
#[cfg(test)]
mod test_fleet;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::server::ServerState;

pub use render::UiError;
pub use session::{Sessions, Viewer, COOKIE, IDLE_TIMEOUT_MS, MAX_SESSION_MS};

/// What the dashboard's handlers share.
pub struct UiState {
    /// The server.
    pub server: Arc<ServerState>,
    /// Logged-in sessions.
    pub sessions: Sessions,
}

/// The dashboard's routes, under `/ui`.
pub fn routes(server: Arc<ServerState>) -> Router {
    let state = Arc::new(UiState {
        server: server.clone(),
        sessions: Sessions::default(),
    });
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(pages::overview::show))
        .route(
            "/ui/login",
            get(pages::login::form).post(pages::login::submit).layer(
                axum::middleware::from_fn_with_state(
                    server.clone(),
                    crate::admission::admin_rate_limit,
                ),
            ),
        )
        .route("/ui/logout", axum::routing::post(pages::login::logout))
        .route("/ui/groups/{track}", get(pages::group::show))
        .route(
            "/ui/groups/{track}/{action}",
            get(pages::group::confirm).post(pages::group::apply),
        )
        .route("/ui/channels", get(pages::channels::show))
        .route(
            "/ui/channels/publish",
            get(pages::channels::confirm).post(pages::channels::publish),
        )
        .route("/ui/instances", get(pages::instances::list))
        .route("/ui/instances/{machine}", get(pages::instances::timeline))
        .route("/ui/activity", get(pages::activity::list))
        .route("/ui/adoption", get(pages::adoption::show))
        .route("/ui/locks", get(pages::locks::show))
        .route(
            "/ui/locks/release",
            get(pages::locks::confirm).post(pages::locks::release),
        )
        .route("/ui/assets/style.css", get(style))
        .route("/ui/assets/app.js", get(script))
        .layer(axum::middleware::from_fn(csrf::same_origin_posts))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/style.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
        .into_response()
}

/// Headers on every dashboard answer: no caching of pages, no framing, no inline script or
/// style, no MIME sniffing.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ];
    for (name, value) in set {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}
