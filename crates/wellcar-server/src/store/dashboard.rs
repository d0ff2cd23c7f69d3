//! The dashboard's reads (`/ui/`, [`crate::ui`]): counts and pages of rows, each an index range
//! scan or an aggregate over an index, never a load of the whole fleet into memory.
//!
//! Contract:
//! - Every function returns at most a page of rows (`limit` is clamped) or one row per group,
//!   version or status; counts are computed by the database (`COUNT(*) … GROUP BY`).
//! - The same SQL runs on SQLite and PostgreSQL. User text (search terms, filters) is only ever
//!   a bound parameter; `LIKE` patterns escape `%`, `_` and `\` ([`like_pattern`]).
//! - Indexes used: `instances_group_status_version` (per-group version and status counts,
//!   which also give the rollout's progress), `instances_app_last_check`,
//!   `instances_app_group_status_check` and `instances_app_version_check` (instance pages,
//!   walked in order; deep pages are capped by the caller), `events_app_created` (the last
//!   day's events, covering), `events_machine_created` (an instance's timeline),
//!   `activity_created` (activity); completed updates per day are read from the table
//!   `version_adoption_daily`. Only the filters asked for go into the SQL. Each choice is checked
//!   on SQLite by `query_plan_tests`.

use super::instances::{instance_from, INSTANCE_COLUMNS};
use super::{require_app, Scope};
use crate::db::{query_one, Conn, Value};
use crate::model::{Activity, Instance};
use crate::params;
use crate::StoreError;

/// Instances of one group, version and status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionStatusCount {
    /// Group id.
    pub group_id: String,
    /// Installed version.
    pub version: String,
    /// Instance status.
    pub status: String,
    /// How many instances.
    pub count: i64,
}

/// Instance counts per group, version and status for every group of `app_id` (instances in no
/// group are not counted).
pub fn group_version_status_counts(
    conn: &mut dyn Conn,
    app_id: &str,
) -> Result<Vec<VersionStatusCount>, StoreError> {
    let app = require_app(conn, app_id)?;
    conn.query(
        "SELECT group_id, status, version, COUNT(*) FROM instances
         WHERE group_id IN (SELECT id FROM update_groups WHERE app_id = $1)
         GROUP BY group_id, status, version",
        &params![&app.id],
    )?
    .iter()
    .map(|r| {
        Ok(VersionStatusCount {
            group_id: r.text(0)?,
            status: r.text(1)?,
            version: r.text(2)?,
            count: r.int(3)?,
        })
    })
    .collect()
}

/// Events per group, type and result since `since` (unix ms).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventCount {
    /// Group id (empty: none).
    pub group_id: String,
    /// Omaha event type.
    pub event_type: i64,
    /// Omaha event result.
    pub event_result: i64,
    /// How many.
    pub count: i64,
}

/// Events of `app_id` since `since`, counted per group, type and result.
pub fn event_counts_since(
    conn: &mut dyn Conn,
    app_id: &str,
    since: i64,
) -> Result<Vec<EventCount>, StoreError> {
    let app = require_app(conn, app_id)?;
    conn.query(
        "SELECT COALESCE(group_id, ''), event_type, event_result, COUNT(*) FROM events
         WHERE created_at >= $1 AND app_id = $2
         GROUP BY COALESCE(group_id, ''), event_type, event_result",
        &params![since, &app.id],
    )?
    .iter()
    .map(|r| {
        Ok(EventCount {
            group_id: r.text(0)?,
            event_type: r.int(1)?,
            event_result: r.int(2)?,
            count: r.int(3)?,
        })
    })
    .collect()
}

/// The `LIKE` pattern matching `text` anywhere, with `%`, `_` and `\` escaped (used with
/// `ESCAPE '\'`).
pub fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// Which instances an instance page lists. Empty strings mean "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceSearch {
    /// Group id.
    pub group_id: String,
    /// Installed version.
    pub version: String,
    /// Status.
    pub status: String,
    /// Matched against machine id (exactly or in part), alias and IP (in part, any case).
    pub text: String,
    /// Rows skipped.
    pub offset: i64,
    /// Rows returned (1 to 500).
    pub limit: i64,
}

/// Matches counted at most: beyond this a page says "more than".
pub const MATCH_COUNT_CAP: i64 = 10_000;

/// A `WHERE` clause of the conditions actually asked for (no `($n = '' OR col = $n)`, which
/// no index can serve) and its parameters, numbered from `$1`.
#[derive(Debug, Default)]
struct Filter {
    clauses: Vec<String>,
    params: Vec<Value>,
}

impl Filter {
    /// Adds `column = value`, or nothing when `value` is empty ("any").
    fn equals(&mut self, column: &str, value: &str) {
        if !value.is_empty() {
            self.params.push(Value::from(value));
            self.clauses
                .push(format!("{column} = ${}", self.params.len()));
        }
    }

    /// Adds a condition written with `$?` for one new parameter.
    fn with_param(&mut self, clause: &str, value: Value) {
        self.params.push(value);
        self.clauses
            .push(clause.replace("$?", &format!("${}", self.params.len())));
    }

    fn sql(&self) -> String {
        self.clauses.join(" AND ")
    }

    /// The next free parameter number.
    fn next(&self) -> usize {
        self.params.len() + 1
    }
}

/// The instance filter; `like` is `LIKE` (SQLite: ASCII case-insensitive) or `ILIKE`.
fn instance_filter(app_id: &str, search: &InstanceSearch, like: &str) -> Filter {
    let mut f = Filter::default();
    f.equals("app_id", app_id);
    f.equals("group_id", &search.group_id);
    f.equals("version", &search.version);
    f.equals("status", &search.status);
    let text = search.text.trim();
    if !text.is_empty() {
        f.params.push(Value::from(text));
        f.params.push(Value::from(like_pattern(text)));
        let (exact, pattern) = (f.params.len() - 1, f.params.len());
        f.clauses.push(format!(
            "(machine_id = ${exact} OR machine_id {like} ${pattern} ESCAPE '\\' \
             OR alias {like} ${pattern} ESCAPE '\\' OR ip {like} ${pattern} ESCAPE '\\')"
        ));
    }
    f
}

/// One page of the instances matching `search`, most recently seen first (ties: machine id,
/// descending), and how many match, counted up to [`MATCH_COUNT_CAP`] + 1. Text matches in
/// any case on both backends.
pub fn search_instances(
    conn: &mut dyn Conn,
    app_id: &str,
    search: &InstanceSearch,
) -> Result<(Vec<Instance>, i64), StoreError> {
    let like = match conn.backend() {
        crate::db::Backend::Sqlite => "LIKE",
        crate::db::Backend::Postgres => "ILIKE",
    };
    let app = require_app(conn, app_id)?;
    let filter = instance_filter(&app.id, search, like);
    let search_where = filter.sql();
    let limit = search.limit.clamp(1, 500);
    let offset = search.offset.clamp(0, i64::MAX / 2);
    let (limit_at, offset_at) = (filter.next(), filter.next() + 1);
    let page: Vec<Value> = filter
        .params
        .iter()
        .cloned()
        .chain(params![limit, offset])
        .collect();
    let rows = conn
        .query(
            &format!(
                "SELECT {INSTANCE_COLUMNS} FROM instances WHERE {search_where}
                 ORDER BY app_id DESC, last_check DESC, machine_id DESC
                 LIMIT ${limit_at} OFFSET ${offset_at}"
            ),
            &page,
        )?
        .iter()
        .map(instance_from)
        .collect::<Result<Vec<_>, _>>()?;
    // A short first page is every match: no second scan to count them.
    if offset == 0 && (rows.len() as i64) < limit {
        let total = rows.len() as i64;
        return Ok((rows, total));
    }
    let total = query_one(
        conn,
        &format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM instances WHERE {search_where} LIMIT {}) AS matches",
            MATCH_COUNT_CAP + 1
        ),
        &filter.params,
    )?
    .map(|r| r.int(0))
    .transpose()?
    .unwrap_or(0);
    Ok((rows, total))
}

/// Which activity entries an activity page lists. Empty strings mean "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivitySearch {
    /// Kind (`group-paused`, `channel-published`, …).
    pub kind: String,
    /// Severity.
    pub severity: String,
    /// Group id.
    pub group_id: String,
    /// Only entries at or after this time (unix ms; 0: any).
    pub since: i64,
    /// Rows skipped.
    pub offset: i64,
    /// Rows returned (1 to 500).
    pub limit: i64,
}

/// One page of the activity log, newest first.
pub fn search_activity(
    conn: &mut dyn Conn,
    search: &ActivitySearch,
) -> Result<Vec<Activity>, StoreError> {
    let mut filter = Filter::default();
    filter.with_param("created_at >= $?", Value::from(search.since));
    filter.equals("kind", &search.kind);
    filter.equals("severity", &search.severity);
    filter.equals("group_id", &search.group_id);
    let (limit_at, offset_at) = (filter.next(), filter.next() + 1);
    let values: Vec<Value> = filter
        .params
        .iter()
        .cloned()
        .chain(params![
            search.limit.clamp(1, 500),
            search.offset.clamp(0, i64::MAX / 2)
        ])
        .collect();
    conn.query(
        &format!(
            "SELECT {} FROM activity
             WHERE {} ORDER BY created_at DESC, id LIMIT ${limit_at} OFFSET ${offset_at}",
            super::activity::ACTIVITY_COLUMNS,
            filter.sql()
        ),
        &values,
    )?
    .iter()
    .map(super::activity::activity_from)
    .collect()
}

/// Completed updates (verified events 3/2) of `app_id` since the UTC day of `since`, per UTC
/// day (days since the epoch) and version, from `version_adoption_daily` (kept by
/// `insert_event`), so the chart never scans events.
pub fn completions_per_day(
    conn: &mut dyn Conn,
    app_id: &str,
    since: i64,
) -> Result<Vec<(i64, String, i64)>, StoreError> {
    let app = require_app(conn, app_id)?;
    conn.query(
        "SELECT day, version, completions FROM version_adoption_daily
         WHERE app_id = $1 AND day >= $2",
        &params![&app.id, since.div_euclid(86_400_000)],
    )?
    .iter()
    .map(|r| Ok((r.int(0)?, r.text(1)?, r.int(2)?)))
    .collect()
}

/// A live token by id: its name and scope, if it exists, is not revoked and has not expired
/// at `now` (a dashboard session re-checks its token with this on every request).
pub fn live_token(
    conn: &mut dyn Conn,
    id: &str,
    now: i64,
) -> Result<Option<(String, Scope)>, StoreError> {
    let Some(row) = query_one(
        conn,
        "SELECT name, scope FROM api_tokens WHERE id = $1 AND revoked_at IS NULL
           AND (expires_at IS NULL OR expires_at > $2)",
        &params![id, now],
    )?
    else {
        return Ok(None);
    };
    let scope = row.text(1)?;
    let scope = Scope::parse(&scope)
        .ok_or_else(|| StoreError::Invalid(format!("api_tokens.scope {scope:?} is not a scope")))?;
    Ok(Some((row.text(0)?, scope)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceFacts;
    use crate::store::{self, NewEvent, Sighting};

    const APP: &str = wellcar_omaha::WELLCAR_APP_ID;

    /// Every dashboard query on one database: a small fleet, then each count checked.
    fn queries_answer_on(url: &str) {
        let db = crate::db::Db::open(url, 2).unwrap();
        let now = 100 * 86_400_000;
        db.write_blocking(|c| {
            store::migrate(c, now)?;
            let beta = store::find_group(c, APP, "beta")?.unwrap().id;
            let sightings: Vec<Sighting> = (0..5)
                .map(|i| Sighting {
                    facts: InstanceFacts {
                        app_id: APP.into(),
                        machine_id: format!("m{i}"),
                        alias: ["50% off", "a_b", "x' OR 1=1", "plain", "PLAIN"][i].into(),
                        ip: format!("10.0.0.{i}"),
                        oem: String::new(),
                        version: if i < 2 { "2.0.0" } else { "1.0.0" }.into(),
                        track: "beta".into(),
                        group_id: Some(beta.clone()),
                        arch: "amd64".into(),
                    },
                    at: now - i as i64,
                })
                .collect();
            store::upsert_sightings(c, &sightings)?;
            c.execute(
                "UPDATE instances SET granted_version = '2.0.0', status = 'complete' WHERE machine_id IN ('m0', 'm1')",
                &[],
            )?;
            let event = wellcar_omaha::Event {
                event_type: 3,
                event_result: 2,
                error_code: None,
                previous_version: Some("1.0.0".into()),
            };
            for (i, m) in ["m0", "m1"].iter().enumerate() {
                let e = NewEvent {
                    app_id: APP,
                    machine_id: m,
                    group_id: Some(&beta),
                    event: &event,
                    version: "2.0.0",
                    verified: true,
                };
                store::insert_event(c, &e, now - i as i64 * 86_400_000)?;
            }

            let counts = group_version_status_counts(c, APP)?;
            let n = |v: &str, s: &str| {
                counts
                    .iter()
                    .filter(|x| x.group_id == beta && x.version == v && x.status == s)
                    .map(|x| x.count)
                    .sum::<i64>()
            };
            assert_eq!((n("2.0.0", "complete"), n("1.0.0", "undefined")), (2, 3));
            let events = event_counts_since(c, APP, now - 3_600_000)?;
            assert_eq!(events.iter().map(|e| e.count).sum::<i64>(), 1, "{events:?}");
            let mut search = |text: &str| -> Result<i64, StoreError> {
                let q = InstanceSearch {
                    text: text.into(),
                    limit: 2,
                    ..InstanceSearch::default()
                };
                let (rows, total) = search_instances(c, APP, &q)?;
                assert!(rows.len() <= 2);
                Ok(total)
            };
            assert_eq!(search("%")?, 1, "% is literal");
            assert_eq!(search("_")?, 1, "_ is literal");
            assert_eq!(search("x' OR 1=1")?, 1);
            assert_eq!(search("plain")?, 2, "any case");
            assert_eq!(search("PLAIN")?, 2, "any case, upper-case text");
            assert_eq!(search("m3")?, 1, "by id");
            assert_eq!(search("10.0.0.")?, 5, "by ip");
            assert_eq!(search("")?, 5);
            let paged = InstanceSearch {
                version: "1.0.0".into(),
                offset: 2,
                limit: 10,
                ..InstanceSearch::default()
            };
            assert_eq!(search_instances(c, APP, &paged)?.0.len(), 1);
            let per_day = completions_per_day(c, APP, now - 10 * 86_400_000)?;
            assert_eq!(per_day.len(), 2, "{per_day:?}");
            assert!(per_day.iter().all(|(_, v, n)| v == "2.0.0" && *n == 1));
            let seeded = ActivitySearch {
                kind: "seeded".into(),
                limit: 10,
                ..ActivitySearch::default()
            };
            assert_eq!(search_activity(c, &seeded)?.len(), 1);
            let secret = store::create_token(c, "t", Scope::Publish, now)?;
            let id = store::check_token(c, &secret, now)?.unwrap().id;
            assert_eq!(live_token(c, &id, now)?, Some(("t".into(), Scope::Publish)));
            store::revoke_token(c, "t", "test", now)?;
            assert_eq!(live_token(c, &id, now)?, None);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn queries_answer_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        queries_answer_on(&format!("sqlite:{}", dir.path().join("d.db").display()));
    }

    #[test]
    fn queries_answer_on_postgres() {
        let cluster = wellcar_test_support::pg_cluster::shared_cluster()
            .unwrap_or_else(|e| panic!("postgresql tests need a server: {e}"));
        queries_answer_on(&cluster.create_database().unwrap());
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("a%b_c\\"), "%a\\%b\\_c\\\\%");
        assert_eq!(like_pattern("ABC"), "%ABC%");
    }
}
