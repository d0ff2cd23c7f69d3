//! Cross-site request forgery defences for the dashboard's forms.
//!
//! Contract:
//! - Every form that changes something carries the session's CSRF token in a hidden `csrf`
//!   field (pages also expose it in `<meta name="csrf-token">`). [`check`] compares it in
//!   constant time; a missing or different token is refused with a 403 page before anything
//!   is read or written.
//! - [`same_origin_posts`] refuses any non-GET request whose `Origin` header (sent by
//!   browsers on POST) names another origin than the request's `Host`; it covers the login
//!   form too, which has no session yet. The session cookie is also `SameSite=Strict`.

use axum::extract::Request;
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq as _;

use super::render::UiError;
use super::session::Viewer;

/// Accepts `submitted` only if it is the session's CSRF token.
pub fn check(viewer: &Viewer, submitted: &str) -> Result<(), UiError> {
    let expected = viewer.csrf.as_bytes();
    if !submitted.is_empty() && bool::from(submitted.as_bytes().ct_eq(expected)) {
        return Ok(());
    }
    Err(UiError::forbidden(
        "The form's security token does not match this session: the form was forged, or is from an earlier session. Nothing was changed; reload the page and try again.",
    ))
}

/// Whether `origin` (`scheme://host[:port]`) names `host` (the `Host` header).
fn same_origin(origin: &str, host: &str) -> bool {
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host))
}

/// Middleware: refuses a state-changing request from another origin.
pub async fn same_origin_posts(request: Request, next: Next) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let h = request.headers();
        let origin = h.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
        if let Some(origin) = origin {
            if !host.is_some_and(|host| same_origin(origin, host)) {
                return UiError::forbidden(format!(
                    "This form was sent from another site ({origin}). Nothing was changed."
                ))
                .into_response();
            }
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_must_name_the_host() {
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(same_origin("https://Fleet.example", "fleet.example"));
        assert!(!same_origin("https://evil.example", "fleet.example"));
        assert!(!same_origin("null", "fleet.example"));
        assert!(!same_origin("http://fleet.example.evil", "fleet.example"));
    }
}
