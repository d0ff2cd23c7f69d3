//! Large-fleet read benchmark: seeds a database with a big fleet, then times what the dashboard
//! and the admin API read, on SQLite and PostgreSQL.
//!
//! `cargo bench -p wellcar-server --bench dashboard`
//! Environment: `WELLCAR_BENCH_INSTANCES` (default 100000), `WELLCAR_BENCH_EVENTS` (1000000),
//! `WELLCAR_BENCH_ACTIVITY` (events / 50), `WELLCAR_BENCH_REPEAT` (30 timed runs per row),
//! `WELLCAR_BENCH_BACKENDS` (`sqlite,postgres`).
//!
//! Seeding: 10 groups (the 3 seeded ones and 7 more), 40 packages through the admin API; then
//! instances, events (spread over 30 days, a machine's events in order 13, 14, 3) and activity
//! entries with one `INSERT … SELECT` each over a generated series, so 1,000,000 events take
//! seconds, not minutes.
//!
//! Pages: the admin API's GETs, and every dashboard page under `/ui/` (logged in with the
//! session cookie of `POST /ui/login`), each over a fresh loopback connection.
//!
//! Timing: each row runs `REPEAT` times after two warm-up runs and prints p50/p99 in ms and its
//! p50 as a multiple of a baseline measured in the same process: `GET /health` for HTTP rows,
//! a `SELECT 1` read transaction for query rows. HTTP rows are whole loopback round trips (the
//! server time plus the client's, which the baseline shows). Query rows are the aggregates the
//! dashboard reads (versions per group, rollout progress, activity of the last 24 h, instance
//! search with pagination, an instance's timeline, adoption over time), run through the server's
//! own database pool. Nothing here asserts a time.

use std::time::Instant;

use hyper::Method;
use serde_json::json;
use wellcar_omaha::WELLCAR_APP_ID;
use wellcar_server::client::ApiClient;
use wellcar_server::db::{Backend, Conn, Value};
use wellcar_server::store::{self, Scope};
use wellcar_server::Settings;

// This benchmark seeds rows directly and uses only part of the shared helpers.
#[allow(dead_code)]
mod common;
use common::{env_or, machine_id, percentile_ms};

const DAY_MS: i64 = 86_400_000;
/// The indexes the dashboard migration adds; dropped for the "without" comparison.
const DASHBOARD_INDEXES: [&str; 6] = [
    "instances_app_last_check",
    "instances_app_group_version",
    "instances_app_group_status_check",
    "instances_app_version_check",
    "activity_app_created",
    "events_app_created",
];
const GROUPS: usize = 10;

/// `WITH` prefix and `FROM` item of a series `i` = 0..n (BIGINT) on `backend`.
fn series(backend: Backend, n: usize) -> (String, String) {
    match backend {
        Backend::Sqlite => (
            format!(
                "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {})",
                n.saturating_sub(1)
            ),
            "s".into(),
        ),
        Backend::Postgres => (
            String::new(),
            format!(
                "generate_series(CAST(0 AS BIGINT), CAST({} AS BIGINT)) AS s(i)",
                n.saturating_sub(1)
            ),
        ),
    }
}

/// SQL for the 32-hex-digit machine id of series value `i` (as `common::machine_id`).
fn hex_id(backend: Backend, i: &str) -> String {
    match backend {
        Backend::Sqlite => format!("printf('%032x', {i})"),
        Backend::Postgres => format!("lpad(to_hex({i}), 32, '0')"),
    }
}

/// `CASE {expr} WHEN 0 THEN 'a' …` over `values`.
fn pick(expr: &str, values: &[String]) -> String {
    let mut sql = format!("CASE {expr}");
    for (i, v) in values.iter().enumerate() {
        sql.push_str(&format!(" WHEN {i} THEN '{v}'"));
    }
    sql.push_str(" END");
    sql
}

fn version_of(i: &str) -> String {
    format!("'4' || CAST({i} % 8 AS TEXT) || '.0.0'")
}

#[derive(Clone, Copy)]
struct Sizes {
    instances: usize,
    events: usize,
    activity: usize,
}

/// Bulk rows: instances, events, activity. `groups` are the group ids.
fn seed_rows(
    conn: &mut dyn Conn,
    sizes: &Sizes,
    groups: &[String],
    now: i64,
) -> Result<(), wellcar_server::StoreError> {
    let b = conn.backend();
    let app = WELLCAR_APP_ID;
    let n = sizes.instances;
    let group_of = |i: &str| pick(&format!("{i} % {GROUPS}"), groups);
    let statuses: Vec<String> = [
        "granted",
        "downloading",
        "downloaded",
        "installed",
        "error",
        "timeout",
        "undefined",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(std::iter::repeat_n("complete".to_owned(), 13))
    .collect();
    let (with, from) = series(b, n);
    conn.batch(&format!(
        "{with} INSERT INTO instances (app_id, machine_id, alias, ip, oem, version, track, group_id,
            arch, status, first_seen, last_check, granted_version, granted_at, status_changed_at,
            last_error_code)
         SELECT '{app}', {id}, 'host-' || CAST(i AS TEXT),
            '10.' || CAST(i / 65536 % 256 AS TEXT) || '.' || CAST(i / 256 % 256 AS TEXT) || '.'
                || CAST(i % 256 AS TEXT),
            'qemu', {version}, 'track', {group}, 'amd64', {status}, {first_seen},
            {now} - (i * 7919 % 604800) * 1000, '5.0.0', {now} - (i % 86400) * 1000,
            {now} - (i % 86400) * 1000, CASE WHEN i % 20 = 4 THEN 7 END
         FROM {from}",
        id = hex_id(b, "i"),
        first_seen = now - 30 * DAY_MS,
        version = version_of("i"),
        group = group_of("i"),
        status = pick("i % 20", &statuses),
    ))?;
    let (with, from) = series(b, sizes.events);
    // Event j belongs to machine j % n, its (j / n)-th event; times rise with j over 30 days.
    conn.batch(&format!(
        "{with} INSERT INTO events (id, app_id, machine_id, group_id, event_type, event_result,
            error_code, previous_version, version, created_at, verified)
         SELECT 'e' || CAST(i AS TEXT), '{app}', {id}, {group},
            CASE (i / {n}) % 3 WHEN 0 THEN 13 WHEN 1 THEN 14 ELSE 3 END,
            CASE WHEN i % 97 = 0 THEN 0 WHEN (i / {n}) % 3 = 2 THEN 2 ELSE 1 END,
            NULL, NULL, {version}, {start} + i * {step}, 1
         FROM {from}",
        id = hex_id(b, &format!("(i % {n})")),
        group = group_of(&format!("(i % {n})")),
        version = version_of(&format!("(i % {n})")),
        start = now - 30 * DAY_MS,
        step = 30 * DAY_MS / sizes.events.max(1) as i64,
    ))?;
    let kinds: Vec<String> = [
        "rollout-started",
        "channel-published",
        "group-paused",
        "group-resumed",
        "group-halted",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (with, from) = series(b, sizes.activity);
    conn.batch(&format!(
        "{with} INSERT INTO activity (id, created_at, actor, kind, app_id, group_id, severity,
            message)
         SELECT 'a' || CAST(i AS TEXT),
            {start} + i * {step}, 'system', {kind}, '{app}',
            {group}, CASE WHEN i % 5 = 4 THEN 'warning' ELSE 'info' END,
            'entry ' || CAST(i AS TEXT)
         FROM {from}",
        start = now - 30 * DAY_MS,
        step = 30 * DAY_MS / sizes.activity.max(1) as i64,
        kind = pick("i % 5", &kinds),
        group = group_of("i"),
    ))?;
    // What the migration's backfill and `insert_event` keep.
    conn.batch(
        "INSERT INTO version_adoption_daily (app_id, day, version, completions)
         SELECT app_id, created_at / 86400000, version, COUNT(*) FROM events
         WHERE event_type = 3 AND event_result = 2 AND verified = 1
         GROUP BY app_id, created_at / 86400000, version",
    )?;
    if b == Backend::Postgres {
        // What autovacuum would do soon after a bulk load.
        conn.batch("ANALYZE")?;
    }
    Ok(())
}

/// One HTTP/1.1 request over a fresh loopback connection (`Connection: close`): status line's
/// code, the headers and the body. The UI needs a cookie the API client does not send.
async fn raw_http(addr: std::net::SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (status, head, answer[split + 4..].to_vec())
}

/// Logs in to the dashboard with `secret` and answers the session cookie (`name=value`).
async fn ui_login(addr: std::net::SocketAddr, secret: &str) -> String {
    let body = format!("token={secret}");
    let (status, head, _) = raw_http(
        addr,
        &format!(
            "POST /ui/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert_eq!(status, 303, "login: {head}");
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim().split(';').next().unwrap_or("").to_owned())
        })
        .expect("a session cookie")
}

/// `GET path` with `cookie` over a fresh connection; answers the status.
async fn ui_get(addr: std::net::SocketAddr, cookie: &str, path: &str) -> u16 {
    raw_http(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
    .0
}

/// A timed row: its name and sorted latencies in microseconds.
struct Timed {
    name: String,
    sorted_us: Vec<u32>,
}

async fn time<F, Fut>(name: &str, repeat: usize, mut f: F) -> Timed
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..2 {
        f().await;
    }
    let mut us = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let started = Instant::now();
        f().await;
        us.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    us.sort_unstable();
    Timed {
        name: name.to_owned(),
        sorted_us: us,
    }
}

/// A dashboard aggregate: a name, SQL with `$1` = app id, `$2` = a time cut-off (unix ms) or
/// text filter, as the row says.
struct Aggregate {
    name: &'static str,
    sql: String,
    params: Vec<Value>,
}

fn aggregates(now: i64, group: &str) -> Vec<Aggregate> {
    let app = || Value::from(WELLCAR_APP_ID);
    let cols = "machine_id, alias, ip, version, status, last_check";
    vec![
        Aggregate {
            name: "versions per group",
            sql: "SELECT group_id, version, COUNT(*) FROM instances WHERE app_id = $1
                  GROUP BY group_id, version"
                .into(),
            params: vec![app()],
        },
        Aggregate {
            name: "rollout progress by status",
            sql: "SELECT group_id, status, COUNT(*) FROM instances WHERE app_id = $1
                  GROUP BY group_id, status"
                .into(),
            params: vec![app()],
        },
        Aggregate {
            name: "one group's status counts",
            sql: "SELECT status, COUNT(*) FROM instances WHERE group_id = $1 GROUP BY status"
                .into(),
            params: vec![Value::from(group)],
        },
        Aggregate {
            name: "activity, last 24 h (page)",
            sql: "SELECT created_at, actor, kind, group_id, severity, message FROM activity
                  WHERE app_id = $1 AND created_at >= $2 ORDER BY created_at DESC LIMIT 100"
                .into(),
            params: vec![app(), Value::from(now - DAY_MS)],
        },
        Aggregate {
            name: "activity, last 24 h per group",
            sql: "SELECT group_id, COUNT(*) FROM activity WHERE created_at >= $1
                  GROUP BY group_id"
                .into(),
            params: vec![Value::from(now - DAY_MS)],
        },
        Aggregate {
            name: "events, last 24 h by type",
            sql: "SELECT event_type, event_result, COUNT(*) FROM events WHERE created_at >= $1
                  GROUP BY event_type, event_result"
                .into(),
            params: vec![Value::from(now - DAY_MS)],
        },
        Aggregate {
            name: "instances: group+status, page 3",
            sql: format!(
                "SELECT {cols} FROM instances WHERE app_id = $1 AND group_id = $2
                   AND status = 'complete' ORDER BY last_check DESC, machine_id LIMIT 50 OFFSET 100"
            ),
            params: vec![app(), Value::from(group)],
        },
        Aggregate {
            name: "instances: group+status count",
            sql: "SELECT COUNT(*) FROM instances WHERE app_id = $1 AND group_id = $2
                  AND status = 'complete'"
                .into(),
            params: vec![app(), Value::from(group)],
        },
        Aggregate {
            name: "instances: version filter, page 1",
            sql: format!(
                "SELECT {cols} FROM instances WHERE app_id = $1 AND version = '43.0.0'
                 ORDER BY last_check DESC, machine_id LIMIT 50"
            ),
            params: vec![app()],
        },
        Aggregate {
            name: "instances: search alias/id/ip",
            sql: format!(
                "SELECT {cols} FROM instances WHERE app_id = $1
                   AND (machine_id LIKE $2 OR alias LIKE $2 OR ip LIKE $2)
                 ORDER BY last_check DESC, machine_id LIMIT 50"
            ),
            params: vec![app(), Value::from("host-4242%")],
        },
        Aggregate {
            name: "adoption over time (daily table)",
            sql: "SELECT day, version, completions FROM version_adoption_daily
                  WHERE app_id = $1 AND day >= $2"
                .into(),
            params: vec![app(), Value::from((now - 30 * DAY_MS) / DAY_MS)],
        },
        Aggregate {
            name: "adoption over time (raw events)",
            sql: format!(
                "SELECT created_at / {DAY_MS}, version, COUNT(*) FROM events
                 WHERE app_id = $1 AND event_type = 3 AND event_result = 2 AND created_at >= $2
                 GROUP BY created_at / {DAY_MS}, version"
            ),
            params: vec![app(), Value::from(now - 30 * DAY_MS)],
        },
    ]
}

async fn bench(backend_name: &str, sizes: &Sizes, repeat: usize) {
    let dir = tempfile::tempdir().unwrap();
    let url = common::database_url(backend_name, dir.path()).await;
    let mut settings = Settings::new(&url, "127.0.0.1:0".parse().unwrap());
    settings.payload_dir = dir.path().join("payloads");
    settings.rate_limits.admin_per_ip = wellcar_server::rate_limit::Limit::OFF;
    let server = wellcar_server::spawn(settings).await.unwrap();
    let now = server.state.now();
    let secret = server
        .state
        .db
        .write(move |c| {
            let new = store::NewToken {
                name: "bench",
                scope: Scope::Admin,
                expires_at: None,
                actor: "bench",
            };
            store::create_scoped_token(c, &new, now)
        })
        .await
        .unwrap()
        .secret;
    let api = ApiClient::new(&server.url(), Some(&secret));
    let app = format!("/api/v1/apps/{WELLCAR_APP_ID}");

    let started = Instant::now();
    for g in 3..GROUPS {
        let _: serde_json::Value = api
            .call(
                Method::POST,
                &format!("{app}/groups"),
                &json!({"name": format!("group-{g}"), "channel": "stable"}),
            )
            .await
            .unwrap();
    }
    for p in 0..40 {
        let _: serde_json::Value = api
            .call(
                Method::POST,
                &format!("{app}/packages"),
                &json!({"version": format!("{}.{}.0", 40 + p / 10, p % 10), "arch": "amd64",
                    "filename": "wellcar.raw", "url": "https://example.com/p/", "size": 4,
                    "sha256_hex": "ab".repeat(32), "sha1_base64": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="}),
            )
            .await
            .unwrap();
    }
    let groups: Vec<String> = server
        .state
        .db
        .read(|c| {
            Ok(c.query("SELECT id FROM update_groups ORDER BY track", &[])?
                .iter()
                .map(|r| r.text(0))
                .collect::<Result<_, _>>()?)
        })
        .await
        .unwrap();
    assert_eq!(groups.len(), GROUPS);
    let seed_groups = groups.clone();
    let seed_sizes = *sizes;
    server
        .state
        .db
        .write(move |c| seed_rows(c, &seed_sizes, &seed_groups, now))
        .await
        .unwrap();
    println!(
        "{backend_name:8} seeded {} instances, {} events, {} activity entries in {:.1} s",
        sizes.instances,
        sizes.events,
        sizes.activity,
        started.elapsed().as_secs_f64()
    );

    let anonymous = ApiClient::new(&server.url(), None);
    let health = time("GET /health (baseline)", repeat, || async {
        anonymous.get_text("/health").await.unwrap();
    })
    .await;
    let machine = machine_id(4242 % sizes.instances.max(1));
    let beta = "beta";
    let pages: Vec<(String, String)> = vec![
        ("GET apps".into(), "/api/v1/apps".into()),
        ("GET groups".into(), format!("{app}/groups")),
        ("GET channels".into(), format!("{app}/channels")),
        ("GET packages".into(), format!("{app}/packages")),
        ("GET instances (1000)".into(), format!("{app}/instances")),
        (
            "GET instances ?group&status&limit=50".into(),
            format!("{app}/instances?group={beta}&status=complete&limit=50"),
        ),
        (
            "GET instance events".into(),
            format!("{app}/instances/{machine}/events"),
        ),
        ("GET activity".into(), "/api/v1/activity".into()),
        (
            "GET fleetlock groups".into(),
            "/api/v1/fleetlock/groups".into(),
        ),
        ("GET openapi.json".into(), "/api/v1/openapi.json".into()),
    ];
    let mut http_rows = Vec::new();
    for (name, path) in &pages {
        http_rows.push(
            time(name, repeat, || async {
                let (status, _) = api.get_text(path).await.unwrap();
                assert!(status.is_success(), "{name}: {status}");
            })
            .await,
        );
    }
    // Every dashboard page, logged in, over a fresh connection each time (as the baseline).
    let addr = server.addr;
    let cookie = ui_login(addr, &secret).await;
    let raw_health = time("GET /health, new connection (baseline)", repeat, || async {
        assert_eq!(ui_get(addr, "", "/health").await, 200);
    })
    .await;
    let ui_pages: Vec<(&str, String)> = vec![
        ("UI overview /ui/", "/ui/".into()),
        ("UI group /ui/groups/beta", "/ui/groups/beta".into()),
        ("UI channels", "/ui/channels".into()),
        ("UI instances", "/ui/instances".into()),
        (
            "UI instances group+status, page 3",
            "/ui/instances?group=beta&status=complete&page=3".into(),
        ),
        (
            "UI instances version filter",
            "/ui/instances?version=43.0.0".into(),
        ),
        ("UI instances search", "/ui/instances?q=host-4242".into()),
        ("UI instance timeline", format!("/ui/instances/{machine}")),
        ("UI activity", "/ui/activity".into()),
        ("UI adoption", "/ui/adoption".into()),
        ("UI reboot locks", "/ui/locks".into()),
    ];
    let mut ui_rows = Vec::new();
    for (name, path) in &ui_pages {
        ui_rows.push(
            time(name, repeat, || async {
                let status = ui_get(addr, &cookie, path).await;
                assert_eq!(status, 200, "{name}");
            })
            .await,
        );
    }
    let db = server.state.db.clone();
    let select1 = time("SELECT 1 (baseline)", repeat, || {
        let db = db.clone();
        async move {
            db.read(|c| Ok(c.query("SELECT 1", &[])?)).await.unwrap();
        }
    })
    .await;
    let beta_id = groups[1].clone();
    let query_rows = time_queries(&db, now, &beta_id, &machine, repeat).await;
    report(backend_name, &health, &http_rows);
    report(backend_name, &raw_health, &ui_rows);
    report(backend_name, &select1, &query_rows);
    db.write(|c| {
        for index in DASHBOARD_INDEXES {
            c.batch(&format!("DROP INDEX {index}"))?;
        }
        Ok(())
    })
    .await
    .unwrap();
    let without = time_queries(&db, now, &beta_id, &machine, repeat).await;
    println!("{backend_name:8} the same queries without the dashboard indexes:");
    report(backend_name, &select1, &without);
    server.shutdown().await.unwrap();
    drop(dir);
}

async fn time_queries(
    db: &std::sync::Arc<wellcar_server::db::Db>,
    now: i64,
    group_id: &str,
    machine: &str,
    repeat: usize,
) -> Vec<Timed> {
    let mut query_rows = Vec::new();
    for a in aggregates(now, group_id) {
        let (sql, params) = (a.sql.clone(), a.params.clone());
        query_rows.push(
            time(a.name, repeat, || {
                let (db, sql, params) = (db.clone(), sql.clone(), params.clone());
                async move {
                    db.read(move |c| Ok(c.query(&sql, &params)?)).await.unwrap();
                }
            })
            .await,
        );
    }
    let timeline_machine = machine.to_owned();
    query_rows.push(
        time("instance timeline (store)", repeat, || {
            let (db, m) = (db.clone(), timeline_machine.clone());
            async move {
                db.read(move |c| store::list_instance_events(c, WELLCAR_APP_ID, &m, 100))
                    .await
                    .unwrap();
            }
        })
        .await,
    );
    query_rows
}
fn report(backend: &str, baseline: &Timed, rows: &[Timed]) {
    let base = percentile_ms(&baseline.sorted_us, 0.5).max(0.001);
    println!(
        "{backend:8} {:40} p50 {:>8.2} ms  p99 {:>8.2} ms  (baseline)",
        baseline.name,
        base,
        percentile_ms(&baseline.sorted_us, 0.99)
    );
    for r in rows {
        let p50 = percentile_ms(&r.sorted_us, 0.5);
        println!(
            "{backend:8} {:40} p50 {:>8.2} ms  p99 {:>8.2} ms  {:>8.1}x baseline",
            r.name,
            p50,
            percentile_ms(&r.sorted_us, 0.99),
            p50 / base
        );
    }
}

fn main() {
    let instances = env_or("WELLCAR_BENCH_INSTANCES", 100_000).max(1);
    let events = env_or("WELLCAR_BENCH_EVENTS", 1_000_000);
    let sizes = Sizes {
        instances,
        events,
        activity: env_or("WELLCAR_BENCH_ACTIVITY", events / 50),
    };
    let repeat = env_or("WELLCAR_BENCH_REPEAT", 30).max(1);
    let backends =
        std::env::var("WELLCAR_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "dashboard benchmark: {} instances, {} events, {} activity entries, {repeat} runs per row",
        sizes.instances, sizes.events, sizes.activity
    );
    for backend in backends.split(',') {
        rt.block_on(bench(backend.trim(), &sizes, repeat));
    }
}
