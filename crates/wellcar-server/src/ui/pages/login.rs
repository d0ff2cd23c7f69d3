//! `GET /ui/login` (the form), `POST /ui/login` (token → session cookie) and `POST
//! /ui/logout` (CSRF token → session ended, cookie cleared).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::store;
use crate::ui::render::{self, UiError};
use crate::ui::session::{clear_cookie, set_cookie};
use crate::ui::{csrf, UiState, Viewer};

/// The login form's fields.
#[derive(Debug, Default, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

fn login_page(status: StatusCode, error: Option<&str>) -> Result<Response, UiError> {
    let mut page = render::page(
        "login.html",
        minijinja::context! { error, title => "Log in" },
    )?;
    *page.status_mut() = status;
    Ok(page)
}

/// The login form.
pub async fn form() -> Result<Response, UiError> {
    login_page(StatusCode::OK, None)
}

/// Checks the token and starts a session.
pub async fn submit(
    State(ui): State<Arc<UiState>>,
    axum::Form(form): axum::Form<LoginForm>,
) -> Result<Response, UiError> {
    let secret = form.token.trim().to_owned();
    if secret.is_empty() {
        return login_page(StatusCode::BAD_REQUEST, Some("Enter an API token."));
    }
    let now = ui.server.now();
    let token = ui
        .server
        .db
        .read(move |conn| store::check_token(conn, &secret, now))
        .await?;
    let Some(token) = token else {
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("That token is unknown, expired or revoked. Nothing was changed."),
        );
    };
    let id = ui.sessions.create(&token.id, now);
    let cookie = set_cookie(&id, ui.server.settings.tls.is_some());
    tracing::info!(token = %token.name, scope = %token.scope, "dashboard login");
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/ui/")).into_response())
}

/// The logout form's fields.
#[derive(Debug, Default, Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// Ends the session.
pub async fn logout(
    State(ui): State<Arc<UiState>>,
    viewer: Viewer,
    axum::Form(form): axum::Form<LogoutForm>,
) -> Result<Response, UiError> {
    csrf::check(&viewer, &form.csrf)?;
    ui.sessions.remove(&viewer.session_id);
    let cookie = clear_cookie(ui.server.settings.tls.is_some());
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/ui/login")).into_response())
}
