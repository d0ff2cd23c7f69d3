//! `GET /ui/groups/{track}`: a group's policy, state, counts and recent activity;
//! `GET /ui/groups/{track}/{pause|resume}` asks for confirmation, saying what will happen;
//! `POST` the same path (admin scope, CSRF token) does it and logs it under the token's name.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};

use super::summary;
use super::{path_segment, Chrome, APP_ID};
use crate::model::{Group, GroupPatch};
use crate::store::{self, ActivitySearch, Scope};
use crate::ui::render::{self, UiError};
use crate::ui::{csrf, UiState, Viewer};

/// Which change a confirmation or a POST is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Pause,
    Resume,
}

impl Action {
    fn parse(s: &str) -> Result<Self, UiError> {
        match s {
            "pause" => Ok(Action::Pause),
            "resume" => Ok(Action::Resume),
            other => Err(UiError::not_found(format!(
                "There is no group action {other:?} (pause or resume)."
            ))),
        }
    }
}

/// A notice after a change (`?done=paused`).
#[derive(Debug, Default, Deserialize)]
pub struct Done {
    #[serde(default)]
    done: String,
}

async fn load_group(ui: &UiState, track: String) -> Result<Group, UiError> {
    ui.server
        .db
        .read(move |conn| store::find_group(conn, APP_ID, &track))
        .await?
        .ok_or_else(|| UiError::not_found("There is no such group."))
}

/// The group page.
pub async fn show(
    State(ui): State<Arc<UiState>>,
    viewer: Viewer,
    Path(track): Path<String>,
    Query(done): Query<Done>,
) -> Result<Response, UiError> {
    let group = load_group(&ui, track).await?;
    let g = group.clone();
    let (channels, counts, activity) = ui
        .server
        .db
        .read(move |conn| {
            let channels = store::list_channels(conn, APP_ID)?;
            let counts = store::group_version_status_counts(conn, APP_ID)?;
            let search = ActivitySearch {
                group_id: g.id.clone(),
                limit: 20,
                ..ActivitySearch::default()
            };
            let activity = store::search_activity(conn, &search)?;
            Ok((channels, counts, activity))
        })
        .await?;
    let notice = match done.done.as_str() {
        "paused" => Some(format!(
            "Group {} paused: no new updates are granted.",
            group.track
        )),
        "resumed" => Some(format!(
            "Group {} resumed: updates are granted again.",
            group.track
        )),
        _ => None,
    };
    render::page(
        "group.html",
        minijinja::context! {
            chrome => Chrome::new(&viewer, "overview", format!("Group {}", group.name)),
            summary => summary::summarize(&group, &channels, &counts),
            policy => &group.policy,
            track_path => path_segment(&group.track),
            activity,
            notice,
            progress => summary::PROGRESS.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
        },
    )
}

/// What pausing or resuming `group` will do, in words.
fn consequences(action: Action, group: &Group, total: i64, in_progress: i64) -> Vec<String> {
    let p = &group.policy;
    match action {
        Action::Pause => vec![
            format!(
                "The server stops granting updates to the {total} instance(s) of group {}.",
                group.track
            ),
            format!(
                "The {in_progress} update(s) already granted and in progress continue; their reports are still recorded."
            ),
            "The channel, the policy and the instances do not change. Resume from the group page.".into(),
        ],
        Action::Resume => {
            let mut v = vec![format!(
                "The server grants updates again to the {total} instance(s) of group {}, following channel {}.",
                group.track, group.channel
            )];
            v.push(if p.max_updates_per_period > 0 {
                format!(
                    "At most {} update(s) per {} s, {} at once ({}).",
                    p.max_updates_per_period,
                    p.period_secs,
                    if p.max_concurrent > 0 { p.max_concurrent.to_string() } else { "any number".into() },
                    if p.windows.is_empty() { "at any time".to_string() } else { format!("inside the update windows, time zone {}", p.timezone) }
                )
            } else {
                "Without a rate limit: every outdated instance may be offered the update at its next check.".into()
            });
            if group.halted {
                v.push(format!(
                    "This also releases the safe-mode halt ({}).",
                    group.halted_reason.as_deref().unwrap_or("no reason recorded")
                ));
            }
            v
        }
    }
}

/// The confirmation page of a pause or resume.
pub async fn confirm(
    State(ui): State<Arc<UiState>>,
    viewer: Viewer,
    Path((track, action)): Path<(String, String)>,
) -> Result<Response, UiError> {
    let action = Action::parse(&action)?;
    viewer.require(Scope::Admin, "pause or resume a group")?;
    let group = load_group(&ui, track).await?;
    let id = group.id.clone();
    let counts = ui
        .server
        .db
        .read(move |conn| store::group_version_status_counts(conn, APP_ID))
        .await?;
    let mine = counts.iter().filter(|c| c.group_id == id);
    let total: i64 = mine.clone().map(|c| c.count).sum();
    let in_progress: i64 = mine
        .filter(|c| crate::model::status::IN_PROGRESS.contains(&c.status.as_str()))
        .map(|c| c.count)
        .sum();
    let verb = match action {
        Action::Pause => "Pause",
        Action::Resume => "Resume",
    };
    render::page(
        "confirm.html",
        minijinja::context! {
            chrome => Chrome::new(&viewer, "overview", format!("{verb} group {}?", group.track)),
            heading => format!("{verb} group {}?", group.track),
            consequences => consequences(action, &group, total, in_progress),
            action => format!("/ui/groups/{}/{}", path_segment(&group.track), match action { Action::Pause => "pause", Action::Resume => "resume" }),
            fields => Vec::<(String, String)>::new(),
            button => format!("{verb} {}", group.track),
            cancel => format!("/ui/groups/{}", path_segment(&group.track)),
        },
    )
}

/// The fields of a confirmed change.
#[derive(Debug, Default, Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// Pauses or resumes a group.
pub async fn apply(
    State(ui): State<Arc<UiState>>,
    viewer: Viewer,
    Path((track, action)): Path<(String, String)>,
    axum::Form(form): axum::Form<CsrfOnly>,
) -> Result<Response, UiError> {
    csrf::check(&viewer, &form.csrf)?;
    let action = Action::parse(&action)?;
    viewer.require(Scope::Admin, "pause or resume a group")?;
    let patch = GroupPatch {
        updates_enabled: Some(action == Action::Resume),
        ..GroupPatch::default()
    };
    let actor = viewer.name.clone();
    let now = ui.server.now();
    let group = ui
        .server
        .db
        .write(move |conn| store::update_group(conn, APP_ID, &track, &patch, &actor, now))
        .await?;
    ui.server.refresh_config(true).await?;
    let done = match action {
        Action::Pause => "paused",
        Action::Resume => "resumed",
    };
    Ok(Redirect::to(&format!(
        "/ui/groups/{}?done={done}",
        path_segment(&group.track)
    ))
    .into_response())
}
