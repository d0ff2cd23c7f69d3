//! `GET /ui/channels`: channels with their packages and floors, the packages, the publish
//! history and (publish scope) a publish form; `GET /ui/channels/publish?channel&arch&version`
//! asks for confirmation, saying what will change; `POST` the same path (publish scope, CSRF
//! token) points the channel at the package and logs it under the token's name.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{query_string, Chrome, APP_ID};
use crate::model::Package;
use crate::store::{self, ActivitySearch, ChannelPackage, Scope};
use crate::ui::render::{self, UiError};
use crate::ui::{csrf, UiState, Viewer};

/// A publish request (query of the confirmation, form of the POST).
#[derive(Debug, Default, Deserialize)]
pub struct PublishForm {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    arch: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    done: String,
}

/// The channels page.
pub async fn show(
    State(ui): State<Arc<UiState>>,
    viewer: Viewer,
    Query(q): Query<PublishForm>,
) -> Result<Response, UiError> {
    let (channels, packages, history) = ui
        .server
        .db
        .read(|conn| {
            let channels = store::list_channels(conn, APP_ID)?;
            let packages = store::list_packages(conn, APP_ID)?;
            let search = ActivitySearch {
                kind: "channel-published".into(),
                limit: 25,
                ..ActivitySearch::default()
            };
            Ok((channels, packages, store::search_activity(conn, &search)?))
        })
        .await?;
    let mut names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    names.dedup();
    let mut versions: Vec<&str> = packages.iter().map(|p| p.version.as_str()).collect();
    versions.sort();
    versions.dedup();
    versions.reverse();
    let notice = (q.done == "published").then(|| {
        format!(
            "Channel {} ({}) now points at {}.",
            q.channel, q.arch, q.version
        )
    });
    render::page(
        "channels.html",
        minijinja::context! {
            chrome => Chrome::new(&viewer, "channels", "Channels and packages"),
            channels,
            packages,
            history,
            names,
            versions,
            notice,
        },
    )
}

async fn resolve(
    ui: &UiState,
    form: &PublishForm,
) -> Result<(Package, Option<String>, i64), UiError> {
    if form.channel.is_empty() || form.arch.is_empty() || form.version.is_empty() {
        return Err(UiError::bad_request(
            "Choose a channel, an architecture and a version to publish. Nothing was changed.",
        ));
    }
    let (channel, arch, version) = (
        form.channel.clone(),
        form.arch.clone(),
        form.version.clone(),
    );
    ui.server
        .db
        .read(move |conn| {
            let channels = store::list_channels(conn, APP_ID)?;
            let Some(target) = channels
                .iter()
                .find(|c| c.name == channel && c.arch == arch)
            else {
                return Err(crate::StoreError::NotFound(format!(
                    "channel {channel} ({arch})"
                )));
            };
            let package = store::list_packages(conn, APP_ID)?
                .into_iter()
                .find(|p| p.version == version && p.arch == arch)
                .ok_or_else(|| {
                    crate::StoreError::NotFound(format!("package {version} for {arch}"))
                })?;
            let current = target.package.as_ref().map(|p| p.version.clone());
            let groups: Vec<String> = store::list_groups(conn, APP_ID)?
                .into_iter()
                .filter(|g| g.channel == channel)
                .map(|g| g.id)
                .collect();
            let counts = store::group_version_status_counts(conn, APP_ID)?;
            let following = counts
                .iter()
                .filter(|c| groups.contains(&c.group_id))
                .map(|c| c.count)
                .sum();
            Ok((package, current, following))
        })
        .await
        .map_err(UiError::from)
}

/// The confirmation page of a publish.
pub async fn confirm(
    State(ui): State<Arc<UiState>>,
    viewer: Viewer,
    Query(form): Query<PublishForm>,
) -> Result<Response, UiError> {
    viewer.require(Scope::Publish, "publish a package")?;
    let (package, current, following) = resolve(&ui, &form).await?;
    let mut consequences = vec![format!(
        "Channel {} ({}) will point at {} (now: {}).",
        form.channel,
        form.arch,
        package.version,
        current.as_deref().unwrap_or("nothing")
    )];
    consequences.push(format!(
        "The {following} instance(s) in groups following channel {} may be offered {} at their next check, as each group's rollout policy allows (paused or halted groups get nothing).",
        form.channel, package.version
    ));
    consequences.push(format!(
        "Payload: {} ({} bytes, sha256 {}).",
        package.filename, package.size, package.sha256_hex
    ));
    render::page(
        "confirm.html",
        minijinja::context! {
            chrome => Chrome::new(&viewer, "channels", "Publish?"),
            heading => format!("Publish {} to {} ({})?", package.version, form.channel, form.arch),
            consequences,
            action => "/ui/channels/publish",
            fields => vec![
                ("channel", form.channel.clone()),
                ("arch", form.arch.clone()),
                ("version", form.version.clone()),
            ],
            button => format!("Publish {} to {}", package.version, form.channel),
            cancel => "/ui/channels",
        },
    )
}

/// Publishes a package to a channel.
pub async fn publish(
    State(ui): State<Arc<UiState>>,
    viewer: Viewer,
    axum::Form(form): axum::Form<PublishForm>,
) -> Result<Response, UiError> {
    csrf::check(&viewer, &form.csrf)?;
    viewer.require(Scope::Publish, "publish a package")?;
    let actor = viewer.name.clone();
    let now = ui.server.now();
    let (channel, arch, version) = (
        form.channel.clone(),
        form.arch.clone(),
        form.version.clone(),
    );
    ui.server
        .db
        .write(move |conn| {
            let target = ChannelPackage {
                channel: &channel,
                version: &version,
                arch: &arch,
            };
            store::publish(conn, APP_ID, &target, &actor, now)
        })
        .await?;
    ui.server.refresh_config(true).await?;
    let q = query_string(&[
        ("done", "published"),
        ("channel", &form.channel),
        ("arch", &form.arch),
        ("version", &form.version),
    ]);
    Ok(Redirect::to(&format!("/ui/channels?{q}")).into_response())
}
