//! `GET /ui/instances`: instances filtered by group, version and status, searched by id, alias
//! or IP (a bound `LIKE` parameter, metacharacters escaped), one page at a time;
//! `GET /ui/instances/{machine}`: one instance and its timeline of events.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::{path_segment, query_string, Chrome, APP_ID};
use crate::model::{status, InstanceEvent};
use crate::store::{self, InstanceSearch};
use crate::ui::render::{self, UiError};
use crate::ui::{UiState, Viewer};

/// Rows per page.
pub const PAGE: i64 = 50;
/// Pages reachable by paging (deeper: refine the filter); keeps every page an index walk of
/// at most this many rows.
pub const MAX_PAGES: i64 = 200;
/// Events shown on a timeline.
pub const TIMELINE_EVENTS: i64 = 200;

/// The filter form.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Filter {
    #[serde(default)]
    group: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    page: i64,
}

const STATUSES: [&str; 8] = [
    status::UNDEFINED,
    status::GRANTED,
    status::DOWNLOADING,
    status::DOWNLOADED,
    status::INSTALLED,
    status::COMPLETE,
    status::ERROR,
    status::TIMEOUT,
];

#[derive(Debug, Serialize)]
struct Row {
    machine_id: String,
    link: String,
    alias: String,
    ip: String,
    group: String,
    version: String,
    status: String,
    last_check: i64,
}

/// The instances page.
pub async fn list(
    State(ui): State<Arc<UiState>>,
    viewer: Viewer,
    Query(filter): Query<Filter>,
) -> Result<Response, UiError> {
    let page = filter.page.clamp(0, MAX_PAGES - 1);
    let group_track = filter.group.clone();
    let mut search = InstanceSearch {
        version: filter.version.trim().to_owned(),
        status: filter.status.clone(),
        text: filter.q.trim().to_owned(),
        offset: page * PAGE,
        limit: PAGE,
        ..InstanceSearch::default()
    };
    let (groups, versions, rows, total) = ui
        .server
        .db
        .read(move |conn| {
            let groups = store::list_groups(conn, APP_ID)?;
            if !group_track.is_empty() {
                search.group_id = groups
                    .iter()
                    .find(|g| g.track == group_track)
                    .map(|g| g.id.clone())
                    .ok_or_else(|| crate::StoreError::NotFound(format!("group {group_track}")))?;
            }
            let mut versions: Vec<String> = store::list_packages(conn, APP_ID)?
                .into_iter()
                .map(|p| p.version)
                .collect();
            versions.sort();
            versions.dedup();
            let (rows, total) = store::search_instances(conn, APP_ID, &search)?;
            Ok((groups, versions, rows, total))
        })
        .await?;
    let rows: Vec<Row> = rows
        .into_iter()
        .map(|i| Row {
            link: format!("/ui/instances/{}", path_segment(&i.facts.machine_id)),
            group: groups
                .iter()
                .find(|g| Some(&g.id) == i.facts.group_id.as_ref())
                .map(|g| g.track.clone())
                .unwrap_or_default(),
            machine_id: i.facts.machine_id,
            alias: i.facts.alias,
            ip: i.facts.ip,
            version: i.facts.version,
            status: i.status,
            last_check: i.last_check,
        })
        .collect();
    let keep = |p: i64| {
        let p = p.to_string();
        format!(
            "/ui/instances?{}",
            query_string(&[
                ("group", &filter.group),
                ("version", &filter.version),
                ("status", &filter.status),
                ("q", &filter.q),
                ("page", &p),
            ])
        )
    };
    let more = total > store::MATCH_COUNT_CAP;
    let total = total.min(store::MATCH_COUNT_CAP);
    let pages = ((total + PAGE - 1) / PAGE).min(MAX_PAGES);
    render::page(
        "instances.html",
        minijinja::context! {
            chrome => Chrome::new(&viewer, "instances", "Instances"),
            groups => groups.iter().map(|g| g.track.clone()).collect::<Vec<_>>(),
            versions,
            statuses => STATUSES,
            filter,
            rows,
            total,
            more,
            page => page + 1,
            pages,
            first => if total == 0 { 0 } else { page * PAGE + 1 },
            last => (page * PAGE + PAGE).min(total),
            prev => (page > 0).then(|| keep(page - 1)),
            next => (page + 1 < pages).then(|| keep(page + 1)),
        },
    )
}

/// An event as the timeline shows it.
#[derive(Debug, Serialize)]
struct TimelineEvent {
    at: i64,
    what: String,
    result: &'static str,
    failed: bool,
    event: InstanceEvent,
}

/// What an Omaha event type means.
pub fn event_name(event_type: i64) -> String {
    match event_type {
        1 => "download complete".into(),
        2 => "install complete".into(),
        3 => "update complete".into(),
        13 => "download started".into(),
        14 => "download finished".into(),
        800 => "installed, reboot pending".into(),
        other => format!("event {other}"),
    }
}

fn result_name(result: i64) -> &'static str {
    match result {
        0 => "error",
        1 => "success",
        2 => "success, rebooted",
        4 => "cancelled",
        9 => "deferred",
        _ => "other",
    }
}

/// The timeline page of one instance.
pub async fn timeline(
    State(ui): State<Arc<UiState>>,
    viewer: Viewer,
    Path(machine): Path<String>,
) -> Result<Response, UiError> {
    let (instance, events, groups) = ui
        .server
        .db
        .read(move |conn| {
            let instance = store::find_instance(conn, APP_ID, &machine, false)?;
            let events = store::list_instance_events(conn, APP_ID, &machine, TIMELINE_EVENTS)?;
            Ok((instance, events, store::list_groups(conn, APP_ID)?))
        })
        .await?;
    let instance = instance.ok_or_else(|| UiError::not_found("There is no such instance."))?;
    let group = groups
        .iter()
        .find(|g| Some(&g.id) == instance.facts.group_id.as_ref())
        .map(|g| g.track.clone());
    let mut timeline: Vec<TimelineEvent> = events
        .into_iter()
        .map(|e| TimelineEvent {
            at: e.created_at,
            what: event_name(e.event_type),
            result: result_name(e.event_result),
            failed: e.event_result == 0,
            event: e,
        })
        .collect();
    timeline.reverse();
    render::page(
        "timeline.html",
        minijinja::context! {
            chrome => Chrome::new(&viewer, "instances", format!("Instance {}", instance.facts.machine_id)),
            instance,
            group,
            timeline,
        },
    )
}
