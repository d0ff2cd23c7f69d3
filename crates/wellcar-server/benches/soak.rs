//! Soak test: mixed traffic from a large simulated fleet against a real server process that is
//! `kill -9`ed and restarted twice, on SQLite and on PostgreSQL. What it proves: every event the
//! server acknowledged (HTTP 200) is in the database afterwards, whatever the crashes.
//!
//! `cargo bench -p wellcar-server --bench soak`
//!
//! Environment: `WELLCAR_SOAK_SECS` (600, shared by the backends), `WELLCAR_SOAK_MACHINES`
//! (20000), `WELLCAR_SOAK_CONCURRENCY` (64 connections), `WELLCAR_SOAK_BACKENDS`
//! (`sqlite,postgres`), `WELLCAR_SOAK_PUBLISH_SECS` (60: a new version is uploaded and published
//! this often).
//!
//! The traffic: each client repeatedly picks a machine at random and runs its conversation: an
//! update check and, when granted, the events 13/1, 14/1 and 3/1, then (running the granted
//! version) 3/2 naming the previous version, as `update_engine` reports an update. One conversation in 100 is an admin read instead. A publisher uploads and
//! publishes a new version every `WELLCAR_SOAK_PUBLISH_SECS`, so the fleet keeps updating.
//!
//! The server is this same benchmark binary re-executed with `WELLCAR_SOAK_SERVER` set (a
//! separate process, so `kill -9` is real). At a third and at two thirds of the time it is
//! killed with SIGKILL and started again on the same database and port; the clients' requests
//! fail meanwhile and are counted as errors, never retried. At the end the acknowledged events
//! of each machine are compared with the rows stored for it: "lost" must be 0.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::json;
use wellcar_omaha::{UpdateDecision, WELLCAR_APP_ID};
use wellcar_server::client::ApiClient;
use wellcar_server::store::{self, Role};
use wellcar_server::Settings;

mod common;
use common::{env_or, event, machine_id, percentile_ms, request};

/// Set in the re-executed server process: the database URL.
const SERVER_DATABASE_ENV: &str = "WELLCAR_SOAK_SERVER";
/// The server process's listen address.
const SERVER_LISTEN_ENV: &str = "WELLCAR_SOAK_LISTEN";
/// The server process's payload directory.
const SERVER_PAYLOADS_ENV: &str = "WELLCAR_SOAK_PAYLOADS";

fn main() {
    if let Ok(database) = std::env::var(SERVER_DATABASE_ENV) {
        run_server_process(&database);
        return;
    }
    let secs = env_or("WELLCAR_SOAK_SECS", 600) as u64;
    let machines = env_or("WELLCAR_SOAK_MACHINES", 20_000);
    let concurrency = env_or("WELLCAR_SOAK_CONCURRENCY", 64);
    let publish_every = Duration::from_secs(env_or("WELLCAR_SOAK_PUBLISH_SECS", 60) as u64);
    let backends =
        std::env::var("WELLCAR_SOAK_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let backends: Vec<&str> = backends.split(',').map(str::trim).collect();
    let each = Duration::from_secs(secs / backends.len() as u64);
    println!(
        "soak: {machines} machines, {concurrency} connections, {} s per backend, a publish every {} s, two kill -9 restarts per backend",
        each.as_secs(),
        publish_every.as_secs()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut lost_total = 0;
    for backend in backends {
        let report = rt.block_on(soak(backend, machines, concurrency, each, publish_every));
        report.print(backend);
        lost_total += report.lost;
    }
    assert_eq!(lost_total, 0, "acknowledged events were lost");
}

/// The server side: serve until killed.
fn run_server_process(database: &str) {
    let listen: SocketAddr = std::env::var(SERVER_LISTEN_ENV)
        .expect("listen address")
        .parse()
        .expect("listen address");
    let payloads = PathBuf::from(std::env::var_os(SERVER_PAYLOADS_ENV).expect("payload dir"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut settings = Settings::new(database, listen);
        settings.payload_dir = payloads;
        // One loopback client stands for the whole fleet, and each simulated machine checks far
        // more often than a real one: the rate limits would measure themselves.
        let off = wellcar_server::rate_limit::Limit::OFF;
        settings.rate_limits.omaha_per_ip = off;
        settings.rate_limits.omaha_per_instance = off;
        settings.rate_limits.admin_per_ip = off;
        let server = wellcar_server::spawn(settings).await.expect("server start");
        println!("ready {}", server.addr);
        server.run_until_signal().await.expect("server run");
    });
}

/// The server process under test.
struct ServerProcess {
    child: Child,
    database: String,
    listen: SocketAddr,
    payloads: PathBuf,
}

impl ServerProcess {
    /// Starts the server and waits until it says it accepts connections.
    fn start(database: &str, listen: SocketAddr, payloads: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("own executable"))
            .env(SERVER_DATABASE_ENV, database)
            .env(SERVER_LISTEN_ENV, listen.to_string())
            .env(SERVER_PAYLOADS_ENV, payloads)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the server process");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reading the server's ready line");
        assert!(
            line.starts_with("ready "),
            "server process did not start: {line:?}"
        );
        ServerProcess {
            child,
            database: database.to_owned(),
            listen,
            payloads: payloads.to_owned(),
        }
    }

    /// `kill -9`, then starts again on the same database and port; returns the downtime.
    fn crash_and_restart(&mut self) -> Duration {
        let down = Instant::now();
        self.child.kill().expect("SIGKILL to the server");
        self.child.wait().expect("reaping the server");
        *self = ServerProcess::start(&self.database, self.listen, &self.payloads);
        down.elapsed()
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the clients saw, shared between them.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    errors: AtomicU64,
    granted: AtomicU64,
    publishes: AtomicU64,
    /// Latencies in microseconds: checks, events, admin reads.
    checks_us: Mutex<Vec<u32>>,
    events_us: Mutex<Vec<u32>>,
    admin_us: Mutex<Vec<u32>>,
}

impl Tally {
    fn record(&self, into: &Mutex<Vec<u32>>, started: Instant) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        into.lock()
            .expect("latency list")
            .push(started.elapsed().as_micros() as u32);
    }
}

/// The simulated fleet: each machine's version (0 is "1.0.0", n is "2.0.{n-1}") and the events
/// the server acknowledged to it.
struct Fleet {
    version: Vec<AtomicU32>,
    acked: Vec<AtomicU32>,
}

fn version_name(n: u32) -> String {
    match n {
        0 => "1.0.0".into(),
        n => format!("2.0.{}", n - 1),
    }
}

fn version_number(name: &str) -> Option<u32> {
    name.strip_prefix("2.0.")?
        .parse::<u32>()
        .ok()
        .map(|n| n + 1)
}

struct Report {
    elapsed: Duration,
    tally: Arc<Tally>,
    downtimes: Vec<Duration>,
    acked: u64,
    stored: u64,
    lost: u64,
}

impl Report {
    fn print(&self, backend: &str) {
        let sorted = |m: &Mutex<Vec<u32>>| {
            let mut v = m.lock().expect("latencies").clone();
            v.sort_unstable();
            v
        };
        let (c, e, a) = (
            sorted(&self.tally.checks_us),
            sorted(&self.tally.events_us),
            sorted(&self.tally.admin_us),
        );
        let requests = self.tally.requests.load(Ordering::Relaxed);
        println!(
            "{backend:8} {requests} requests in {:.0} s = {:.0} req/s; checks {} p50 {:.2} ms p99 {:.2} ms; events {} p50 {:.2} ms p99 {:.2} ms; admin reads {} p50 {:.2} ms p99 {:.2} ms",
            self.elapsed.as_secs_f64(),
            requests as f64 / self.elapsed.as_secs_f64(),
            c.len(),
            percentile_ms(&c, 0.5),
            percentile_ms(&c, 0.99),
            e.len(),
            percentile_ms(&e, 0.5),
            percentile_ms(&e, 0.99),
            a.len(),
            percentile_ms(&a, 0.5),
            percentile_ms(&a, 0.99),
        );
        println!(
            "{backend:8} updates granted {}, versions published {}, errors {} (requests that failed, mostly while the server was down), kill -9 restarts {} (downtime {})",
            self.tally.granted.load(Ordering::Relaxed),
            self.tally.publishes.load(Ordering::Relaxed),
            self.tally.errors.load(Ordering::Relaxed),
            self.downtimes.len(),
            self.downtimes
                .iter()
                .map(|d| format!("{} ms", d.as_millis()))
                .collect::<Vec<_>>()
                .join(", "),
        );
        println!(
            "{backend:8} events acknowledged {}, stored {}, acknowledged but lost {} (goal 0)",
            self.acked, self.stored, self.lost
        );
    }
}

fn free_loopback_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

async fn soak(
    backend: &str,
    machines: usize,
    concurrency: usize,
    duration: Duration,
    publish_every: Duration,
) -> Report {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = common::database_url(backend, dir.path()).await;
    let payloads = dir.path().join("payloads");
    // Migrate and create the admin token before the server process starts.
    let state = wellcar_server::server::open_state(Settings::new(&url, free_loopback_port()))
        .await
        .expect("opening the database");
    let now = wellcar_server::now_ms();
    let token = state
        .db
        .write(move |c| store::create_token(c, "soak", Role::Admin, now))
        .await
        .expect("creating a token");
    drop(state);

    let listen = free_loopback_port();
    let mut server = ServerProcess::start(&url, listen, &payloads);
    let base = format!("http://{listen}");
    let admin = ApiClient::new(&base, Some(&token));
    let payload = dir.path().join("wellcar_update.bin");
    std::fs::write(&payload, vec![7_u8; 4096]).expect("writing the payload");
    let tally = Arc::new(Tally::default());
    publish(&admin, &payload, 1, &tally)
        .await
        .expect("first publish");

    let fleet = Arc::new(Fleet {
        version: (0..machines)
            .map(|m| AtomicU32::new(u32::from(m % 10 != 0)))
            .collect(),
        acked: (0..machines).map(|_| AtomicU32::new(0)).collect(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut clients = Vec::new();
    for worker in 0..concurrency {
        let (client, admin) = (ApiClient::new(&base, None), admin.clone());
        let (fleet, tally, stop) = (fleet.clone(), tally.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ (worker as u64 + 1);
            while !stop.load(Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let m = (rng % machines as u64) as usize;
                if rng.is_multiple_of(100) {
                    admin_read(&admin, &tally).await;
                } else {
                    conversation(&client, m, &fleet, &tally).await;
                }
            }
        }));
    }
    let publisher = {
        let (admin, tally, stop, payload) =
            (admin.clone(), tally.clone(), stop.clone(), payload.clone());
        tokio::spawn(async move {
            let mut next = 2;
            let mut tick = tokio::time::interval(publish_every);
            tick.tick().await;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if publish(&admin, &payload, next, &tally).await.is_ok() {
                    next += 1;
                }
            }
        })
    };
    let mut downtimes = Vec::new();
    for third in 1..=3 {
        let until = started + duration * third / 3;
        tokio::time::sleep_until(until.into()).await;
        if third < 3 {
            downtimes.push(tokio::task::block_in_place(|| server.crash_and_restart()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    publisher.abort();
    let elapsed = started.elapsed();
    server.stop();

    let stored = stored_events(&url).await;
    let (mut acked, mut stored_total, mut lost) = (0, 0, 0);
    for m in 0..machines {
        let a = u64::from(fleet.acked[m].load(Ordering::Relaxed));
        let s = stored.get(&machine_id(m)).copied().unwrap_or(0);
        acked += a;
        stored_total += s;
        lost += a.saturating_sub(s);
    }
    Report {
        elapsed,
        tally,
        downtimes,
        acked,
        stored: stored_total,
        lost,
    }
}

/// Uploads `wellcar_update.bin` as version number `n` and publishes it to `stable`.
async fn publish(admin: &ApiClient, payload: &Path, n: u32, tally: &Tally) -> Result<(), ()> {
    let version = version_name(n);
    let uploaded: Result<serde_json::Value, _> = admin
        .put_file(
            &format!("/api/v1/apps/{WELLCAR_APP_ID}/packages/amd64/{version}/wellcar_update.bin"),
            payload,
        )
        .await;
    let published = match uploaded {
        Ok(_) => admin
            .call::<_, serde_json::Value>(
                Method::POST,
                &format!("/api/v1/apps/{WELLCAR_APP_ID}/channels/stable/publish"),
                &json!({ "version": version }),
            )
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match published {
        Ok(()) => {
            tally.publishes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(_) => {
            tally.errors.fetch_add(1, Ordering::Relaxed);
            Err(())
        }
    }
}

async fn admin_read(admin: &ApiClient, tally: &Tally) {
    let t = Instant::now();
    match admin
        .get::<serde_json::Value>(&format!("/api/v1/apps/{WELLCAR_APP_ID}/groups"))
        .await
    {
        Ok(_) => tally.record(&tally.admin_us, t),
        Err(_) => {
            tally.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One machine's update check and, if granted, its progress events. A failed request ends the
/// conversation (the machine tries again at its next check, as `update_engine` does).
async fn conversation(client: &ApiClient, m: usize, fleet: &Fleet, tally: &Tally) {
    let current = version_name(fleet.version[m].load(Ordering::Relaxed));
    let t = Instant::now();
    let body = match client.omaha(&request(m, &current, true, Vec::new())).await {
        Ok((StatusCode::OK, body)) => body,
        _ => {
            tally.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    tally.record(&tally.checks_us, t);
    let granted = match wellcar_omaha::Response::parse(body.as_bytes()).map(|r| r.update_decision())
    {
        Ok(Ok(UpdateDecision::Update(info))) => info.version,
        _ => return,
    };
    tally.granted.fetch_add(1, Ordering::Relaxed);
    // Download started and finished, installed (from the old version); then, after the
    // reboot, "updated" from the new version, naming the old one.
    let rebooted = wellcar_omaha::Event {
        previous_version: Some(current.clone()),
        ..event(3, 2)
    };
    let posts = [
        (current.as_str(), event(13, 1)),
        (current.as_str(), event(14, 1)),
        (current.as_str(), event(3, 1)),
        (granted.as_str(), rebooted),
    ];
    for (version, ev) in posts {
        let t = Instant::now();
        match client.omaha(&request(m, version, false, vec![ev])).await {
            Ok((StatusCode::OK, _)) => {
                fleet.acked[m].fetch_add(1, Ordering::Relaxed);
                tally.record(&tally.events_us, t);
            }
            _ => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    if let Some(n) = version_number(&granted) {
        fleet.version[m].store(n, Ordering::Relaxed);
    }
}

/// Stored events per machine id, read from the database after the server stopped.
async fn stored_events(url: &str) -> std::collections::HashMap<String, u64> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let db = wellcar_server::db::Db::open(&url, 1).expect("reopening the database");
        db.write_blocking(|conn| {
            let rows = conn.query(
                "SELECT machine_id, COUNT(*) FROM events GROUP BY machine_id",
                &[],
            )?;
            rows.iter()
                .map(|r| Ok((r.text(0)?, r.int(1)? as u64)))
                .collect::<Result<std::collections::HashMap<_, _>, wellcar_server::StoreError>>()
        })
        .expect("counting stored events")
    })
    .await
    .expect("joining")
}
