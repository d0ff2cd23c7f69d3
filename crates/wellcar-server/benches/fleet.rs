//! Fleet simulator: N distinct machines check in over loopback against a real server, SQLite and
//! PostgreSQL. 1% of the machines run an old version, are granted the update and report
//! events 13/1, 14/1 and 3/1. Reports throughput, p50/p99 latency and database writes per check,
//! for the first contact (registration) and for a second, unchanged round (the steady state).
//!
//! `cargo bench -p wellcar-server --bench fleet`
//! Environment: `WELLCAR_BENCH_MACHINES` (default 100000), `WELLCAR_BENCH_CONCURRENCY` (64),
//! `WELLCAR_BENCH_BACKENDS` (`sqlite,postgres`), `WELLCAR_BENCH_RATE` (4000),
//! `WELLCAR_BENCH_OUTDATED_EVERY` (100).
//!
//! Rounds: "first contact" and "steady" run closed-loop (as fast as the server answers, so they
//! show capacity; latency there includes queueing at saturation). "new fleet @rate" starts a
//! second set of machines open-loop at a fixed rate and shows latency at that load.
//! The server and the simulated clients share this machine's cores.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::json;
use wellcar_omaha::{UpdateDecision, WELLCAR_APP_ID};
use wellcar_server::client::ApiClient;
use wellcar_server::store::{self, Role};
use wellcar_server::Settings;

mod common;
use common::{env_or, event, percentile_ms, request};

/// Every n-th machine is outdated (`WELLCAR_BENCH_OUTDATED_EVERY`, default 100).
static OLD_SHARE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

fn old_share() -> usize {
    *OLD_SHARE.get_or_init(|| env_or("WELLCAR_BENCH_OUTDATED_EVERY", 100).max(1))
}

struct Round {
    requests: usize,
    checks: usize,
    elapsed: Duration,
    /// Sorted latencies of update checks.
    checks_us: Vec<u32>,
    /// Sorted latencies of event posts.
    events_us: Vec<u32>,
    granted: usize,
}

impl Round {
    fn new(
        requests: usize,
        checks: usize,
        granted: usize,
        elapsed: Duration,
        lat: Vec<(u32, bool)>,
    ) -> Self {
        let mut checks_us: Vec<u32> = lat.iter().filter(|l| l.1).map(|l| l.0).collect();
        let mut events_us: Vec<u32> = lat.iter().filter(|l| !l.1).map(|l| l.0).collect();
        checks_us.sort_unstable();
        events_us.sort_unstable();
        Round {
            requests,
            checks,
            elapsed,
            checks_us,
            events_us,
            granted,
        }
    }
}

async fn round(client: &ApiClient, machines: usize, concurrency: usize, steady: bool) -> Round {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut requests, mut checks, mut granted) = (0, 0, 0);
            loop {
                let m = next.fetch_add(1, Ordering::Relaxed);
                if m >= machines {
                    return (lat, requests, checks, granted);
                }
                let (l, c, g) = conversation(&client, m, steady, None, None).await;
                requests += l.len();
                lat.extend(l);
                checks += c;
                granted += g;
            }
        }));
    }
    let mut all = Vec::new();
    let (mut requests, mut checks, mut granted) = (0, 0, 0);
    for t in tasks {
        let (lat, r, c, g) = t.await.unwrap();
        all.extend(lat);
        requests += r;
        checks += c;
        granted += g;
    }
    Round::new(requests, checks, granted, started.elapsed(), all)
}

/// One machine's conversation in a round: the check, and for outdated machines on first
/// contact the events 13/1, 14/1, 3/1. Returns ((latency, is check) per request, checks, granted).
async fn conversation(
    client: &ApiClient,
    m: usize,
    steady: bool,
    scheduled: Option<Instant>,
    connections: Option<&tokio::sync::Semaphore>,
) -> (Vec<(u32, bool)>, usize, usize) {
    let old = m.is_multiple_of(old_share());
    let version = if old { "1.0.0" } else { "2.0.0" };
    let mut posts = vec![(request(m, version, true, Vec::new()), true)];
    if old && !steady {
        for (t, r) in [(13, 1), (14, 1), (3, 1)] {
            posts.push((request(m, version, false, vec![event(t, r)]), false));
        }
    }
    let (mut lat, mut checks, mut granted) = (Vec::new(), 0, 0);
    for (n, (xml, is_check)) in posts.into_iter().enumerate() {
        // Open loop: the first request's latency counts from when it was due, so time spent
        // waiting for a free connection is not hidden (no coordinated omission).
        let t = match scheduled {
            Some(due) if n == 0 => due,
            _ => Instant::now(),
        };
        // Open loop: one connection slot per request, so a slow event post does not hold
        // up other machines' checks.
        let _slot = match connections {
            Some(c) => Some(c.acquire().await.unwrap()),
            None => None,
        };
        let (status, body) = client.omaha(&xml).await.expect("request failed");
        lat.push((t.elapsed().as_micros() as u32, is_check));
        assert_eq!(status, StatusCode::OK, "{body}");
        if is_check {
            checks += 1;
            let resp = wellcar_omaha::Response::parse(body.as_bytes()).unwrap();
            if matches!(resp.update_decision(), Ok(UpdateDecision::Update(_))) {
                granted += 1;
            }
        }
    }
    (lat, checks, granted)
}

/// Open-loop round: starts machines `first..first+count` at `rate` conversations per second,
/// whatever the answers' latency (as a fleet does), and measures latency at that load.
async fn paced_round(
    client: &ApiClient,
    first: usize,
    count: usize,
    rate: usize,
    concurrency: usize,
) -> Round {
    let started = Instant::now();
    let connections = Arc::new(tokio::sync::Semaphore::new(concurrency * 4));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let due = Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let client = client.clone();
        let connections = connections.clone();
        let scheduled = started + due;
        tasks.push(tokio::spawn(async move {
            conversation(
                &client,
                first + i,
                false,
                Some(scheduled),
                Some(&connections),
            )
            .await
        }));
    }
    let mut all = Vec::new();
    let (mut checks, mut granted) = (0, 0);
    for t in tasks {
        let (lat, c, g) = t.await.unwrap();
        all.extend(lat);
        checks += c;
        granted += g;
    }
    Round::new(all.len(), checks, granted, started.elapsed(), all)
}

async fn bench(backend: &str, machines: usize, concurrency: usize) {
    let dir = tempfile::tempdir().unwrap();
    let url = common::database_url(backend, dir.path()).await;
    let mut settings = Settings::new(&url, "127.0.0.1:0".parse().unwrap());
    settings.payload_dir = dir.path().join("payloads");
    // Every simulated machine shares the loopback address: no per-IP limit.
    settings.rate_limits.omaha_per_ip = wellcar_server::rate_limit::Limit::OFF;
    let server = wellcar_server::spawn(settings).await.unwrap();
    let now = wellcar_server::now_ms();
    let token = server
        .state
        .db
        .write(move |c| store::create_token(c, "bench", Role::Admin, now))
        .await
        .unwrap();
    let admin = ApiClient::new(&server.url(), Some(&token));
    let payload = dir.path().join("wellcar_update.bin");
    std::fs::write(&payload, vec![7_u8; 4096]).unwrap();
    let _: serde_json::Value = admin
        .put_file(
            &format!("/api/v1/apps/{WELLCAR_APP_ID}/packages/amd64/2.0.0/wellcar_update.bin"),
            &payload,
        )
        .await
        .unwrap();
    let _: serde_json::Value = admin
        .call(
            Method::POST,
            &format!("/api/v1/apps/{WELLCAR_APP_ID}/channels/stable/publish"),
            &json!({"version": "2.0.0"}),
        )
        .await
        .unwrap();
    let client = ApiClient::new(&server.url(), None);

    let rate = env_or("WELLCAR_BENCH_RATE", 4000);
    let mut rows = Vec::new();
    for (name, steady) in [
        ("first contact", Some(false)),
        ("steady (no change)", Some(true)),
        ("new fleet @rate", None),
    ] {
        server.state.flush_sightings().await.unwrap();
        let before = server.state.db.write_counts();
        let r = match steady {
            Some(steady) => round(&client, machines, concurrency, steady).await,
            None => paced_round(&client, machines, machines, rate, concurrency).await,
        };
        // Include the batched writes this round caused.
        tokio::time::sleep(Duration::from_millis(50)).await;
        server.state.flush_sightings().await.unwrap();
        let after = server.state.db.write_counts();
        rows.push((
            name,
            r,
            after.transactions - before.transactions,
            after.rows - before.rows,
        ));
    }
    for (name, r, tx, rows_written) in &rows {
        println!(
            "{backend:8} {name:20} {:>7} req {:>8.0} req/s  checks p50 {:>6.2} ms p99 {:>7.2} ms  events p50 {:>6.2} ms p99 {:>7.2} ms  granted {:>5}  db write tx {:>5} ({:.4}/check)  rows {:>6} ({:.4}/check)",
            r.requests,
            r.requests as f64 / r.elapsed.as_secs_f64(),
            percentile_ms(&r.checks_us, 0.50),
            percentile_ms(&r.checks_us, 0.99),
            percentile_ms(&r.events_us, 0.50),
            percentile_ms(&r.events_us, 0.99),
            r.granted,
            tx,
            *tx as f64 / r.checks as f64,
            rows_written,
            *rows_written as f64 / r.checks as f64,
        );
    }
    let steady = &rows[1].1;
    let paced = &rows[2].1;
    println!(
        "{backend:8} capacity vs goal 4000 checks/s: {:.2}x (steady, saturated); at {rate} conversations/s of new machines: check p99 {:.2} ms vs goal 50 ms",
        steady.checks as f64 / steady.elapsed.as_secs_f64() / 4000.0,
        percentile_ms(&paced.checks_us, 0.99)
    );
    server.shutdown().await.unwrap();
}

fn main() {
    let machines = env_or("WELLCAR_BENCH_MACHINES", 100_000);
    let concurrency = env_or("WELLCAR_BENCH_CONCURRENCY", 64);
    let backends =
        std::env::var("WELLCAR_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    // `cargo bench` passes `--bench`; there are no filters to honour.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "fleet simulator: {machines} machines, {concurrency} concurrent connections, 1/{} outdated",
        old_share()
    );
    for backend in backends.split(',') {
        rt.block_on(bench(backend.trim(), machines, concurrency));
    }
}
