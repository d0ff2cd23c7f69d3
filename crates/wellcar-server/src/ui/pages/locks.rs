//! `GET /ui/locks`: FleetLock reboot lock groups (`crate::fleetlock`) with their holders and
//! leases; `GET /ui/locks/release?group&id` asks for confirmation; `POST /ui/locks/release`
//! (admin scope, CSRF token) force-releases a holder's slot and logs it under the token's name.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{query_string, Chrome};
use crate::store::{self, Scope};
use crate::ui::render::{self, UiError};
use crate::ui::{csrf, UiState, Viewer};

/// A release request (query of the confirmation, form of the POST, notice after it).
#[derive(Debug, Default, Deserialize)]
pub struct ReleaseForm {
    #[serde(default)]
    group: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    done: String,
}

/// The reboot locks page.
pub async fn show(
    State(ui): State<Arc<UiState>>,
    viewer: Viewer,
    Query(q): Query<ReleaseForm>,
) -> Result<Response, UiError> {
    let groups = crate::fleetlock::list_groups(&ui.server).await?;
    let notice = (q.done == "released").then(|| {
        format!(
            "Released the slot of {} in reboot lock group {}.",
            q.id, q.group
        )
    });
    let release_links: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            g.holders
                .iter()
                .map(|h| {
                    format!(
                        "/ui/locks/release?{}",
                        query_string(&[("group", &g.name), ("id", &h.id)])
                    )
                })
                .collect()
        })
        .collect();
    render::page(
        "locks.html",
        minijinja::context! {
            chrome => Chrome::new(&viewer, "locks", "Reboot locks"),
            groups,
            release_links,
            now => ui.server.now(),
            notice,
        },
    )
}

/// The confirmation page of a force-release.
pub async fn confirm(
    State(ui): State<Arc<UiState>>,
    viewer: Viewer,
    Query(form): Query<ReleaseForm>,
) -> Result<Response, UiError> {
    viewer.require(Scope::Admin, "force-release a reboot lock")?;
    let (group, id) = (form.group.clone(), form.id.clone());
    let holders = ui
        .server
        .db
        .read(move |conn| store::fleetlock_holders(conn, &group))
        .await?;
    let holder = holders.iter().find(|h| h.id == id).ok_or_else(|| {
        UiError::not_found(format!(
            "{:?} holds no slot of reboot lock group {:?}.",
            form.id, form.group
        ))
    })?;
    let consequences = vec![
        format!(
            "The slot {:?} holds in reboot lock group {} (granted {}) is released now, before its lease ends.",
            holder.id,
            form.group,
            crate::ui::render::format_time(holder.acquired_at)
        ),
        "Another machine of the group may take the slot and reboot at once. If the holder is still rebooting, more machines than the group's limit may be down together.".into(),
        "The holder is not told: if it is still running it may ask again.".into(),
    ];
    render::page(
        "confirm.html",
        minijinja::context! {
            chrome => Chrome::new(&viewer, "locks", "Force-release?"),
            heading => format!("Force-release {} from {}?", form.id, form.group),
            consequences,
            action => "/ui/locks/release",
            fields => vec![("group", form.group.clone()), ("id", form.id.clone())],
            button => format!("Release {}", form.id),
            cancel => "/ui/locks",
        },
    )
}

/// Force-releases a holder's slot.
pub async fn release(
    State(ui): State<Arc<UiState>>,
    viewer: Viewer,
    axum::Form(form): axum::Form<ReleaseForm>,
) -> Result<Response, UiError> {
    csrf::check(&viewer, &form.csrf)?;
    viewer.require(Scope::Admin, "force-release a reboot lock")?;
    let actor = viewer.name.clone();
    let now = ui.server.now();
    let (group, id) = (form.group.clone(), form.id.clone());
    ui.server
        .db
        .write(move |c| store::fleetlock_force_release(c, &group, &id, &actor, now))
        .await?;
    let q = query_string(&[
        ("done", "released"),
        ("group", &form.group),
        ("id", &form.id),
    ]);
    Ok(Redirect::to(&format!("/ui/locks?{q}")).into_response())
}
