//! The template environment (templates compiled into the binary, HTML auto-escaped) and the
//! dashboard's error pages.
//!
//! Contract: every template name ends in `.html`, so minijinja escapes every value it prints;
//! nothing is marked safe. Times print as UTC (`time` filter); sizes in binary units (`bytes`).

use std::sync::OnceLock;

use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use minijinja::Environment;
use serde::Serialize;

use crate::StoreError;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("charts.html", include_str!("templates/charts.html")),
    ("error.html", include_str!("templates/error.html")),
    ("login.html", include_str!("templates/login.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("group.html", include_str!("templates/group.html")),
    ("confirm.html", include_str!("templates/confirm.html")),
    ("channels.html", include_str!("templates/channels.html")),
    ("instances.html", include_str!("templates/instances.html")),
    ("timeline.html", include_str!("templates/timeline.html")),
    ("activity.html", include_str!("templates/activity.html")),
    ("adoption.html", include_str!("templates/adoption.html")),
    ("locks.html", include_str!("templates/locks.html")),
];

/// `YYYY-MM-DD HH:MM:SS UTC` for unix milliseconds.
pub fn format_time(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        Err(_) => ms.to_string(),
    }
}

fn format_bytes(n: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[unit])
    }
}

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            if let Err(e) = env.add_template(name, source) {
                // A template that does not parse is a build mistake the tests catch.
                tracing::error!("dashboard template {name}: {e}");
            }
        }
        env.add_filter("time", |ms: i64| format_time(ms));
        env.add_filter("bytes", |n: i64| format_bytes(n));
        env
    })
}

/// Renders template `name` with `context` into a page.
pub fn page(name: &str, context: impl Serialize) -> Result<Response, UiError> {
    let template = environment()
        .get_template(name)
        .map_err(|e| UiError::internal(format!("template {name}: {e}")))?;
    let html = template
        .render(context)
        .map_err(|e| UiError::internal(format!("rendering {name}: {e:#}")))?;
    Ok(Html(html).into_response())
}

/// A dashboard request that could not be served: a redirect to the login page, or an error
/// page with a status, a title and a sentence saying what happened.
#[derive(Debug)]
pub enum UiError {
    /// Not logged in (GET): go to the login page.
    ToLogin,
    /// An error page.
    Page {
        /// HTTP status.
        status: StatusCode,
        /// Page title.
        title: &'static str,
        /// What happened.
        message: String,
        /// Also end the session cookie (`Some(secure)`).
        clear_cookie: Option<bool>,
    },
}

impl UiError {
    /// Redirect to the login page.
    pub fn to_login() -> Self {
        UiError::ToLogin
    }

    /// 401: no valid session (expired, unknown, token revoked); the cookie is cleared.
    pub fn unauthenticated(message: impl Into<String>, secure: bool) -> Self {
        UiError::Page {
            status: StatusCode::UNAUTHORIZED,
            title: "Not logged in",
            message: message.into(),
            clear_cookie: Some(secure),
        }
    }

    /// 403: the session may not do this, or the form was forged.
    pub fn forbidden(message: impl Into<String>) -> Self {
        UiError::Page {
            status: StatusCode::FORBIDDEN,
            title: "Not allowed",
            message: message.into(),
            clear_cookie: None,
        }
    }

    /// 400: a value in the request was wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        UiError::Page {
            status: StatusCode::BAD_REQUEST,
            title: "Cannot do that",
            message: message.into(),
            clear_cookie: None,
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        UiError::Page {
            status: StatusCode::NOT_FOUND,
            title: "Not found",
            message: message.into(),
            clear_cookie: None,
        }
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!("dashboard: {message}");
        UiError::Page {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            title: "Server error",
            message,
            clear_cookie: None,
        }
    }
}

impl From<StoreError> for UiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => UiError::not_found(format!("{what} not found.")),
            StoreError::Conflict(m) | StoreError::Invalid(m) => {
                UiError::bad_request(format!("{m}. Nothing was changed."))
            }
            StoreError::Db(e) => UiError::internal(format!("database: {e}")),
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            UiError::ToLogin => Redirect::to("/ui/login").into_response(),
            UiError::Page {
                status,
                title,
                message,
                clear_cookie,
            } => {
                let context = minijinja::context! { title, message, status => status.as_u16() };
                let body = match environment().get_template("error.html") {
                    Ok(t) => t.render(context).unwrap_or_else(|_| message.clone()),
                    Err(_) => message.clone(),
                };
                let mut response = (status, Html(body)).into_response();
                if let Some(secure) = clear_cookie {
                    if let Ok(v) = super::session::clear_cookie(secure).parse() {
                        response.headers_mut().insert(header::SET_COOKIE, v);
                    }
                }
                response
            }
        }
    }
}
