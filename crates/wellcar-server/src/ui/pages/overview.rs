//! `GET /ui/`: per group, the version chart, the current rollout's progress, the paused or
//! halted state, and the last 24 hours of events and activity.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;

use super::summary::{self, GroupSummary};
use super::{Chrome, APP_ID, DAY_MS};
use crate::model::Activity;
use crate::store::{self, ActivitySearch};
use crate::ui::render::{self, UiError};
use crate::ui::{UiState, Viewer};

/// Activity entries shown per group.
const ACTIVITY_PER_GROUP: usize = 5;

#[derive(Debug, Serialize)]
struct Card {
    group: GroupSummary,
    day: DaySummary,
    activity: Vec<Activity>,
}

/// A group's events in the last 24 hours.
#[derive(Debug, Default, Serialize)]
struct DaySummary {
    events: i64,
    downloads: i64,
    completed: i64,
    errors: i64,
}

/// The overview page.
pub async fn show(State(ui): State<Arc<UiState>>, viewer: Viewer) -> Result<Response, UiError> {
    let now = ui.server.now();
    let since = now - DAY_MS;
    let (groups, channels, counts, events, activity) = ui
        .server
        .db
        .read(move |conn| {
            let groups = store::list_groups(conn, APP_ID)?;
            let channels = store::list_channels(conn, APP_ID)?;
            let counts = store::group_version_status_counts(conn, APP_ID)?;
            let events = store::event_counts_since(conn, APP_ID, since)?;
            let search = ActivitySearch {
                since,
                limit: 200,
                ..ActivitySearch::default()
            };
            let activity = store::search_activity(conn, &search)?;
            Ok((groups, channels, counts, events, activity))
        })
        .await?;
    let cards: Vec<Card> = groups
        .iter()
        .map(|g| {
            let mut day = DaySummary::default();
            for e in events.iter().filter(|e| e.group_id == g.id) {
                day.events += e.count;
                if e.event_type == 13 {
                    day.downloads += e.count;
                }
                if e.event_type == 3 && e.event_result == 2 {
                    day.completed += e.count;
                }
                if e.event_result == 0 {
                    day.errors += e.count;
                }
            }
            Card {
                group: summary::summarize(g, &channels, &counts),
                day,
                activity: activity
                    .iter()
                    .filter(|a| a.group_id.as_deref() == Some(g.id.as_str()))
                    .take(ACTIVITY_PER_GROUP)
                    .cloned()
                    .collect(),
            }
        })
        .collect();
    let total: i64 = cards.iter().map(|c| c.group.total).sum();
    let other_activity: Vec<&Activity> = activity
        .iter()
        .filter(|a| a.group_id.is_none())
        .take(10)
        .collect();
    render::page(
        "overview.html",
        minijinja::context! {
            chrome => Chrome::new(&viewer, "overview", "Overview"),
            cards,
            total,
            other_activity,
            progress => summary::PROGRESS.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
        },
    )
}
