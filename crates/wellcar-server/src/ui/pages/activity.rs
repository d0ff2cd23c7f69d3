//! `GET /ui/activity`: the activity log, newest first, filtered by kind, severity, group and
//! age, one page at a time.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::{query_string, Chrome, APP_ID, DAY_MS};
use crate::store::{self, ActivitySearch};
use crate::ui::render::{self, UiError};
use crate::ui::{UiState, Viewer};

/// Entries per page.
pub const PAGE: i64 = 100;

/// Kinds offered in the filter (any text is accepted).
pub const KINDS: [&str; 19] = [
    "group-paused",
    "group-resumed",
    "group-updated",
    "group-halted",
    "group-created",
    "channel-published",
    "floor-added",
    "floor-removed",
    "package-created",
    "update-timeout",
    "app-created",
    "token-created",
    "token-revoked",
    "seeded",
    "fleetlock-granted",
    "fleetlock-released",
    "fleetlock-lease-expired",
    "fleetlock-force-released",
    "fleetlock-max-set",
];

/// The filter form.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Filter {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    group: String,
    /// `24h`, `7d`, `30d` or empty (any age).
    #[serde(default)]
    age: String,
    #[serde(default)]
    page: i64,
}

/// The activity page.
pub async fn list(
    State(ui): State<Arc<UiState>>,
    viewer: Viewer,
    Query(filter): Query<Filter>,
) -> Result<Response, UiError> {
    let now = ui.server.now();
    let since = match filter.age.as_str() {
        "24h" => now - DAY_MS,
        "7d" => now - 7 * DAY_MS,
        "30d" => now - 30 * DAY_MS,
        _ => 0,
    };
    let page = filter.page.max(0);
    let mut search = ActivitySearch {
        kind: filter.kind.trim().to_owned(),
        severity: filter.severity.clone(),
        since,
        offset: page * PAGE,
        limit: PAGE + 1,
        ..ActivitySearch::default()
    };
    let group_track = filter.group.clone();
    let (groups, mut entries) = ui
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
            Ok((groups, store::search_activity(conn, &search)?))
        })
        .await?;
    let more = entries.len() as i64 > PAGE;
    entries.truncate(PAGE as usize);
    #[derive(Serialize)]
    struct Entry {
        entry: crate::model::Activity,
        group: String,
    }
    let entries: Vec<Entry> = entries
        .into_iter()
        .map(|a| Entry {
            group: groups
                .iter()
                .find(|g| Some(&g.id) == a.group_id.as_ref())
                .map(|g| g.track.clone())
                .unwrap_or_default(),
            entry: a,
        })
        .collect();
    let keep = |p: i64| {
        let p = p.to_string();
        format!(
            "/ui/activity?{}",
            query_string(&[
                ("kind", &filter.kind),
                ("severity", &filter.severity),
                ("group", &filter.group),
                ("age", &filter.age),
                ("page", &p),
            ])
        )
    };
    render::page(
        "activity.html",
        minijinja::context! {
            chrome => Chrome::new(&viewer, "activity", "Activity"),
            groups => groups.iter().map(|g| g.track.clone()).collect::<Vec<_>>(),
            kinds => KINDS,
            filter,
            entries,
            page => page + 1,
            prev => (page > 0).then(|| keep(page - 1)),
            next => more.then(|| keep(page + 1)),
        },
    )
}
