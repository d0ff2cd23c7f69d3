//! Per-group summaries built from aggregate counts: instance totals, the version chart and
//! the current rollout's progress.

use std::collections::BTreeMap;

use serde::Serialize;
use wellcar_contract::OsVersion;

use crate::model::{Channel, Group};
use crate::store::VersionStatusCount;
use crate::ui::chart::{self, BarChart, Stack};

/// Versions shown in a chart before the rest are summed as "other".
const CHART_VERSIONS: usize = 6;

/// The rollout-progress buckets: (CSS key, label, statuses counted). `complete` is counted
/// differently: instances running a current target version, whatever their status.
pub const PROGRESS: [(&str, &str, &[&str]); 5] = [
    ("granted", "granted", &["granted"]),
    ("downloading", "downloading", &["downloading", "downloaded"]),
    ("installed", "installed", &["installed"]),
    ("complete", "complete", &[]),
    ("error", "error", &["error", "timeout"]),
];

/// What the overview and the group page show about one group.
#[derive(Debug, Serialize)]
pub struct GroupSummary {
    /// Track (the group's key in URLs).
    pub track: String,
    /// Display name.
    pub name: String,
    /// Channel followed.
    pub channel: String,
    /// Paused by an operator.
    pub paused: bool,
    /// Halted by safe mode.
    pub halted: bool,
    /// Why it halted.
    pub halted_reason: Option<String>,
    /// Instances in the group.
    pub total: i64,
    /// The channel's target per arch: `1.2.0 (amd64)`.
    pub targets: Vec<String>,
    /// Instances per installed version.
    pub versions: BarChart,
    /// Instances granted a current target, by progress bucket.
    pub progress: Stack,
    /// Instances per status (all of the group).
    pub statuses: Vec<(String, i64)>,
}

/// The target versions (with arch) of the channel `group` follows.
pub fn targets(group: &Group, channels: &[Channel]) -> Vec<(String, String)> {
    channels
        .iter()
        .filter(|c| c.name == group.channel)
        .filter_map(|c| {
            c.package
                .as_ref()
                .map(|p| (p.version.clone(), c.arch.clone()))
        })
        .collect()
}

fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (OsVersion::parse(a), OsVersion::parse(b)) {
        (Ok(a), Ok(b)) => b.cmp(&a),
        _ => b.cmp(a),
    }
}

/// Builds a group's summary from the per-group version and status counts. The rollout's
/// progress: instances in progress by status (granted, downloading, installed), instances
/// running a current target version (complete), instances whose update failed or timed out
/// (error).
pub fn summarize(
    group: &Group,
    channels: &[Channel],
    counts: &[VersionStatusCount],
) -> GroupSummary {
    let target_versions: Vec<String> = targets(group, channels).into_iter().map(|t| t.0).collect();
    let mine = counts.iter().filter(|c| c.group_id == group.id);
    let mut per_version: BTreeMap<String, i64> = BTreeMap::new();
    let mut per_status: BTreeMap<String, i64> = BTreeMap::new();
    for c in mine {
        *per_version.entry(c.version.clone()).or_default() += c.count;
        *per_status.entry(c.status.clone()).or_default() += c.count;
    }
    let total = per_version.values().sum();
    let on_target: i64 = per_version
        .iter()
        .filter(|(v, _)| target_versions.contains(v))
        .map(|(_, n)| n)
        .sum();
    let mut versions: Vec<(String, i64)> = per_version.into_iter().collect();
    versions.sort_by(|a, b| version_order(&a.0, &b.0));
    if versions.len() > CHART_VERSIONS {
        let other: i64 = versions[CHART_VERSIONS - 1..].iter().map(|v| v.1).sum();
        versions.truncate(CHART_VERSIONS - 1);
        versions.push(("other".into(), other));
    }
    let summary = versions
        .iter()
        .map(|(v, n)| format!("{v}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let parts: Vec<(&str, &str, i64)> = PROGRESS
        .iter()
        .map(|(key, label, statuses)| {
            let n = if *key == "complete" {
                on_target
            } else {
                per_status
                    .iter()
                    .filter(|(s, _)| statuses.contains(&s.as_str()))
                    .map(|(_, n)| n)
                    .sum()
            };
            (*key, *label, n)
        })
        .collect();
    GroupSummary {
        track: group.track.clone(),
        name: group.name.clone(),
        channel: group.channel.clone(),
        paused: !group.policy.updates_enabled,
        halted: group.halted,
        halted_reason: group.halted_reason.clone(),
        total,
        targets: targets(group, channels)
            .into_iter()
            .map(|(v, arch)| format!("{v} ({arch})"))
            .collect(),
        versions: chart::bars(
            &versions,
            format!("Instances of group {} per version: {summary}", group.track),
        ),
        progress: chart::stack(&parts),
        statuses: per_status.into_iter().collect(),
    }
}
