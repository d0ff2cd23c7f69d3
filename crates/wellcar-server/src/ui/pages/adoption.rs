//! `GET /ui/adoption?days=N`: version adoption over time, a line chart of completed updates
//! per version, cumulative per UTC day over the last N days (7 to 90, default 30), from an
//! per-day table `version_adoption_daily` (`store::completions_per_day`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::{Chrome, APP_ID, DAY_MS};
use crate::store;
use crate::ui::chart;
use crate::ui::render::{self, UiError};
use crate::ui::{UiState, Viewer};

/// Versions drawn (the most adopted); the rest are summed as "other".
const LINES: usize = 6;

/// The query.
#[derive(Debug, Default, Deserialize)]
pub struct Range {
    #[serde(default)]
    days: Option<i64>,
}

/// The adoption page.
pub async fn show(
    State(ui): State<Arc<UiState>>,
    viewer: Viewer,
    Query(range): Query<Range>,
) -> Result<Response, UiError> {
    let days = range.days.unwrap_or(30).clamp(7, 90);
    let today = ui.server.now().div_euclid(DAY_MS);
    let first = today - days + 1;
    let rows = ui
        .server
        .db
        .read(move |conn| store::completions_per_day(conn, APP_ID, first * DAY_MS))
        .await?;
    let mut per_version: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (day, version, n) in rows {
        let i = (day - first).clamp(0, days - 1) as usize;
        per_version
            .entry(version)
            .or_insert_with(|| vec![0; days as usize])[i] += n;
    }
    let mut series: Vec<(String, Vec<i64>)> = per_version
        .into_iter()
        .map(|(v, daily)| {
            let cumulative = daily
                .iter()
                .scan(0, |sum, n| {
                    *sum += n;
                    Some(*sum)
                })
                .collect();
            (v, cumulative)
        })
        .collect();
    series.sort_by_key(|s| std::cmp::Reverse(s.1.last().copied().unwrap_or(0)));
    if series.len() > LINES {
        let rest = series.split_off(LINES - 1);
        let mut other = vec![0; days as usize];
        for (_, values) in rest {
            for (o, v) in other.iter_mut().zip(values) {
                *o += v;
            }
        }
        series.push(("other".into(), other));
    }
    let labels: Vec<String> = (first..=today)
        .map(|d| {
            jiff::Timestamp::from_millisecond(d * DAY_MS)
                .map(|t| t.strftime("%m-%d").to_string())
                .unwrap_or_default()
        })
        .collect();
    render::page(
        "adoption.html",
        minijinja::context! {
            chrome => Chrome::new(&viewer, "adoption", "Version adoption"),
            chart => chart::lines(&labels, &series),
            days,
            choices => [7, 30, 90],
            from => labels.first().cloned().unwrap_or_default(),
        },
    )
}
