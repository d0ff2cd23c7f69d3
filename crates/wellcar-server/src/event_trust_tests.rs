//! Regression tests for issue 20, part 1 ("events that mean something"): a real server on a
//! loopback port and real SQLite (one test also on PostgreSQL), driven over raw HTTP so the
//! tests control every header (the fleet token).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wellcar_omaha::{headers::FLEET_TOKEN, Response, UpdateDecision, WELLCAR_APP_ID};

use crate::admission::FleetToken;
use crate::model::{GroupPatch, Instance, InstanceEvent};
use crate::rate_limit::Limit;
use crate::store::{self, ChannelPackage, NewPackage};
use crate::{RunningServer, Settings};

/// One HTTP answer: status, headers (lowercase names), body.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// An Omaha request of the Wellcar app from `machine` running `version` on `track`: an update
/// check, or `events` (raw `<event …/>` elements) without one.
fn omaha_xml(machine: &str, version: &str, track: &str, events: &str) -> String {
    let body = if events.is_empty() {
        r#"<ping r="1"/><updatecheck/>"#.to_owned()
    } else {
        events.to_owned()
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" updater="wellcar-test" installsource="scheduler">
<app appid="{WELLCAR_APP_ID}" version="{version}" track="{track}" board="amd64-usr" machineid="{machine}">{body}</app>
</request>"#
    )
}

/// The exact event the review sent: "rolled back" (3/0, error code 44).
const ROLLBACK: &str = r#"<event eventtype="3" eventresult="0" errorcode="44"/>"#;

struct Fleet {
    server: Option<RunningServer>,
    clock: Arc<AtomicI64>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// A server on SQLite (or `database`), with `tune` applied to its settings, serving
    /// version 2.0.0 (an external URL) on channel `stable`.
    async fn start(database: Option<String>, tune: impl FnOnce(&mut Settings)) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let url =
            database.unwrap_or_else(|| format!("sqlite:{}", dir.path().join("s.db").display()));
        let clock = Arc::new(AtomicI64::new(crate::now_ms()));
        let mut s = Settings::new(&url, "127.0.0.1:0".parse().unwrap());
        s.payload_dir = dir.path().join("payloads");
        s.flush_interval = Duration::from_millis(50);
        s.sweep_interval = Duration::from_secs(3600);
        let c = clock.clone();
        s.clock = Arc::new(move || c.load(Ordering::SeqCst));
        tune(&mut s);
        let server = crate::spawn(s).await.unwrap();
        let fleet = Fleet {
            server: Some(server),
            clock,
            _dir: dir,
        };
        let now = fleet.now();
        fleet
            .write(move |c| {
                store::create_package(
                    c,
                    WELLCAR_APP_ID,
                    &NewPackage {
                        version: "2.0.0".into(),
                        arch: "amd64".into(),
                        filename: "wellcar_update.bin".into(),
                        url: "https://updates.example.invalid/2.0.0/".into(),
                        size: 1000,
                        sha256_hex: "ab".repeat(32),
                        sha1_base64: "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
                    },
                    "test",
                    now,
                )?;
                store::publish(
                    c,
                    WELLCAR_APP_ID,
                    &ChannelPackage {
                        channel: "stable",
                        version: "2.0.0",
                        arch: "amd64",
                    },
                    "test",
                    now,
                )
                .map(|_| ())
            })
            .await;
        fleet
    }

    fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    fn now(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn crate::db::Conn) -> Result<T, crate::StoreError> + Send + 'static,
    ) -> T {
        let v = self.server().state.db.write(f).await.unwrap();
        self.server().state.refresh_config(true).await.unwrap();
        v
    }

    /// Applies `patch` to the group of `track`, as the admin API does.
    async fn patch_group(&self, track: &'static str, patch: GroupPatch) {
        let now = self.now();
        self.write(move |c| {
            store::update_group(c, WELLCAR_APP_ID, track, &patch, "test", now).map(|_| ())
        })
        .await;
    }

    async fn omaha(&self, xml: &str, headers: &[(&str, &str)]) -> Answer {
        http(self.server().addr, "POST", "/v1/update/", headers, xml).await
    }

    /// Sends an Omaha request that must be answered 200, and parses the answer.
    async fn omaha_ok(&self, xml: &str, headers: &[(&str, &str)]) -> Response {
        let a = self.omaha(xml, headers).await;
        assert_eq!(a.status, 200, "{}", a.body);
        Response::parse(a.body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {}", a.body))
    }

    async fn granted(&self, machine: &str, track: &str, headers: &[(&str, &str)]) -> bool {
        let r = self
            .omaha_ok(&omaha_xml(machine, "1.0.0", track, ""), headers)
            .await;
        matches!(r.update_decision(), Ok(UpdateDecision::Update(_)))
    }

    /// Sends `events` from `machine` running `version`; they must be acked.
    async fn report(&self, machine: &str, version: &str, track: &str, events: &str) {
        let r = self
            .omaha_ok(&omaha_xml(machine, version, track, events), &[])
            .await;
        assert_eq!(r.apps[0].event_acks, events.matches("<event").count());
    }

    async fn halted(&self, track: &'static str) -> bool {
        self.server()
            .state
            .db
            .read(move |c| store::find_group(c, WELLCAR_APP_ID, track))
            .await
            .unwrap()
            .unwrap()
            .halted
    }

    async fn instance(&self, machine: &str) -> Option<Instance> {
        let m = machine.to_owned();
        self.server()
            .state
            .db
            .read(move |c| store::find_instance(c, WELLCAR_APP_ID, &m, false))
            .await
            .unwrap()
    }

    async fn events(&self, machine: &str) -> Vec<InstanceEvent> {
        let m = machine.to_owned();
        self.server()
            .state
            .db
            .read(move |c| store::list_instance_events(c, WELLCAR_APP_ID, &m, 100))
            .await
            .unwrap()
    }

    /// One sample of `/metrics`, read with a read-scoped token.
    async fn metric(&self, sample: &str) -> f64 {
        let now = self.server().state.now();
        let token = self
            .server()
            .state
            .db
            .write(move |c| {
                let name = format!("metrics-{}", uuid::Uuid::now_v7());
                store::create_token(c, &name, store::Scope::Read, now)
            })
            .await
            .unwrap();
        let bearer = format!("Bearer {token}");
        let auth = [("authorization", bearer.as_str())];
        let a = http(self.server().addr, "GET", "/metrics", &auth, "").await;
        a.body
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {sample} in /metrics"))
    }

    async fn stop(mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
    }
}

fn safe_mode(failures: Option<i64>) -> GroupPatch {
    GroupPatch {
        safe_mode: Some(true),
        safe_mode_failures: failures,
        ..GroupPatch::default()
    }
}

/// Finding "Anyone can halt a rollout": one unauthenticated rollback event from a machine id
/// the server never saw halted a safe-mode group. Now it, and other events that do not fit a
/// grant (a machine that was never granted anything, a granted one reporting a version that
/// does not fit), are stored unverified and counted, never acted on; the granted machine's own
/// rollback report still halts the group.
async fn forged_events_do_not_halt_a_safe_mode_group(database: Option<String>) {
    let f = Fleet::start(database, |_| {}).await;
    f.patch_group("stable", safe_mode(None)).await;

    // The review's attack, verbatim: a never-seen machine id.
    f.report("intruder", "1.0.0", "stable", ROLLBACK).await;
    assert!(!f.halted("stable").await, "a forged event halted the group");
    assert!(
        f.instance("intruder").await.is_none(),
        "an event made up an instance"
    );
    let stored = f.events("intruder").await;
    assert_eq!(stored.len(), 1, "the forged event is kept for the operator");
    assert!(!stored[0].verified);

    // A known machine that was never granted anything (it is current) is no better.
    let r = f
        .omaha_ok(&omaha_xml("current", "2.0.0", "stable", ""), &[])
        .await;
    assert!(matches!(
        r.update_decision(),
        Ok(UpdateDecision::NoUpdate { .. })
    ));
    f.server().state.flush_sightings().await.unwrap();
    f.report("current", "2.0.0", "stable", ROLLBACK).await;
    assert!(!f.halted("stable").await);
    assert_eq!(f.instance("current").await.unwrap().status, "undefined");

    // The first machine is granted 2.0.0; a forged "rolled back" claiming it runs 2.0.0 does
    // not fit that grant.
    assert!(f.granted("real", "stable", &[]).await);
    f.report("real", "2.0.0", "stable", ROLLBACK).await;
    assert!(!f.halted("stable").await);
    assert_eq!(f.instance("real").await.unwrap().status, "granted");
    assert_eq!(
        f.metric(r#"wellcar_server_events_unverified_total{reason="unknown-instance"}"#)
            .await,
        1.0
    );
    assert_eq!(
        f.metric(r#"wellcar_server_events_unverified_total{reason="no-grant"}"#)
            .await,
        1.0
    );
    assert_eq!(
        f.metric(r#"wellcar_server_events_unverified_total{reason="wrong-version"}"#)
            .await,
        1.0
    );

    // The real machine's own conversation: download, install, reboot fails, back on 1.0.0 it
    // reports the rollback, as the agent does. That halts the group.
    f.report(
        "real",
        "1.0.0",
        "stable",
        r#"<event eventtype="13" eventresult="1"/><event eventtype="14" eventresult="1"/><event eventtype="3" eventresult="1"/>"#,
    )
    .await;
    assert_eq!(f.instance("real").await.unwrap().status, "installed");
    f.report("real", "1.0.0", "stable", ROLLBACK).await;
    let real = f.instance("real").await.unwrap();
    assert_eq!(
        (real.status.as_str(), real.last_error_code),
        ("error", Some(44))
    );
    assert!(
        f.halted("stable").await,
        "the granted machine's rollback halts"
    );
    let verified: Vec<bool> = f.events("real").await.iter().map(|e| e.verified).collect();
    assert_eq!(
        verified,
        [false, true, true, true, true],
        "only the forged one is not"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_events_do_not_halt_a_safe_mode_group_sqlite() {
    forged_events_do_not_halt_a_safe_mode_group(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_events_do_not_halt_a_safe_mode_group_postgres() {
    let url = tokio::task::spawn_blocking(|| {
        wellcar_test_support::pg_cluster::shared_cluster()
            .unwrap_or_else(|e| panic!("postgresql tests need a server: {e}"))
            .create_database()
            .expect("creating a test database")
    })
    .await
    .unwrap();
    forged_events_do_not_halt_a_safe_mode_group(Some(url)).await;
}

/// Finding "Anyone can halt a rollout", second half: safe mode halts on a configurable number
/// of distinct granted instances failing (`safe_mode_failures`, default 1), and a machine that
/// failed once does not count twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_mode_halts_after_the_configured_number_of_distinct_failures() {
    let f = Fleet::start(None, |_| {}).await;
    f.patch_group("stable", safe_mode(Some(2))).await;
    let failed = r#"<event eventtype="3" eventresult="0" errorcode="10"/>"#;

    assert!(f.granted("first", "stable", &[]).await);
    f.report("first", "1.0.0", "stable", failed).await;
    assert_eq!(f.instance("first").await.unwrap().status, "error");
    assert!(!f.halted("stable").await, "one failure of two allowed");
    // The same machine again: its grant is no longer live, so nothing more counts.
    f.report("first", "1.0.0", "stable", failed).await;
    assert!(!f.halted("stable").await);

    assert!(f.granted("second", "stable", &[]).await);
    f.report("second", "1.0.0", "stable", failed).await;
    assert!(f.halted("stable").await, "two distinct machines failed");
    let reason = f
        .server()
        .state
        .db
        .read(|c| store::find_group(c, WELLCAR_APP_ID, "stable"))
        .await
        .unwrap()
        .unwrap()
        .halted_reason
        .unwrap();
    assert!(
        reason.contains("2 of the 2 failures allowed on 2.0.0"),
        "{reason}"
    );
    f.stop().await;
}

/// Safe mode's failure count includes timeouts: with `safe_mode_failures` 2, one machine
/// timing out does not halt the group, a second distinct machine failing does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_count_toward_safe_mode_failures() {
    let f = Fleet::start(None, |_| {}).await;
    f.patch_group(
        "stable",
        GroupPatch {
            update_timeout_secs: Some(600),
            ..safe_mode(Some(2))
        },
    )
    .await;
    assert!(f.granted("slow", "stable", &[]).await);
    f.clock.fetch_add(601_000, Ordering::SeqCst);
    assert_eq!(f.server().state.sweep_timeouts().await.unwrap(), 1);
    assert!(
        !f.halted("stable").await,
        "one timeout of two failures allowed"
    );
    assert!(f.granted("next", "stable", &[]).await);
    f.report(
        "next",
        "1.0.0",
        "stable",
        r#"<event eventtype="3" eventresult="0" errorcode="10"/>"#,
    )
    .await;
    assert!(f.halted("stable").await);
    f.stop().await;
}

/// Finding "Fake instances spend the rollout budget": two fake ids took both slots of a group
/// limited to 2 a day, and the real machine got `noupdate`. With a fleet token, requests
/// without it (or with a wrong one) get 401 and record nothing; the real machine is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_token_keeps_fake_instances_from_spending_the_budget() {
    let f = Fleet::start(None, |s| {
        s.fleet_token = FleetToken::new("fleet-secret\n");
    })
    .await;
    f.patch_group(
        "stable",
        GroupPatch {
            max_updates_per_period: Some(2),
            period_secs: Some(86_400),
            ..GroupPatch::default()
        },
    )
    .await;
    for (fake, headers) in [("fake-1", vec![]), ("fake-2", vec![(FLEET_TOKEN, "guess")])] {
        let a = f
            .omaha(&omaha_xml(fake, "1.0.0", "stable", ""), &headers)
            .await;
        assert_eq!(a.status, 401, "{fake}: {}", a.body);
        assert!(a.body.contains(FLEET_TOKEN), "{}", a.body);
        let a = f
            .omaha(&omaha_xml(fake, "1.0.0", "stable", ROLLBACK), &headers)
            .await;
        assert_eq!(a.status, 401);
    }
    f.server().state.flush_sightings().await.unwrap();
    for fake in ["fake-1", "fake-2"] {
        assert!(f.instance(fake).await.is_none(), "{fake} was recorded");
        assert!(f.events(fake).await.is_empty(), "{fake}'s event was stored");
    }
    let token = [(FLEET_TOKEN, "fleet-secret")];
    assert!(f.granted("real", "stable", &token).await);
    assert!(f.granted("real-2", "stable", &token).await);
    assert!(
        !f.granted("real-3", "stable", &token).await,
        "the limit still holds"
    );
    assert_eq!(
        f.metric(r#"wellcar_server_requests_refused_total{reason="fleet-token"}"#)
            .await,
        4.0
    );
    f.stop().await;
}

/// Finding "Fake instances spend the rollout budget", rate limits: per client IP and per
/// machine id on Omaha, per client IP on the admin API; 429 with `Retry-After` past the burst,
/// again allowed once the bucket refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_past_their_burst() {
    let f = Fleet::start(None, |s| {
        s.rate_limits.omaha_per_ip = Limit {
            burst: 4,
            per_minute: 1,
        };
        s.rate_limits.omaha_per_instance = Limit {
            burst: 2,
            per_minute: 1,
        };
        s.rate_limits.admin_per_ip = Limit {
            burst: 2,
            per_minute: 1,
        };
    })
    .await;
    // Per machine id: two, then 429; another id still passes.
    for _ in 0..2 {
        assert_eq!(
            f.omaha(&omaha_xml("m1", "2.0.0", "stable", ""), &[])
                .await
                .status,
            200
        );
    }
    let a = f.omaha(&omaha_xml("m1", "2.0.0", "stable", ""), &[]).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.headers.get("retry-after").map(String::as_str), Some("60"));
    // The IP had 4: three spent above, one left.
    assert_eq!(
        f.omaha(&omaha_xml("m2", "2.0.0", "stable", ""), &[])
            .await
            .status,
        200
    );
    let a = f.omaha(&omaha_xml("m3", "2.0.0", "stable", ""), &[]).await;
    assert_eq!(a.status, 429, "per IP: {}", a.body);
    assert!(a.body.contains("omaha-ip-rate"), "{}", a.body);
    // A minute later the IP may send one more.
    f.clock.fetch_add(60_000, Ordering::SeqCst);
    assert_eq!(
        f.omaha(&omaha_xml("m3", "2.0.0", "stable", ""), &[])
            .await
            .status,
        200
    );
    // Admin API: limited before authentication, so unauthenticated floods are cut too.
    let addr = f.server().addr;
    for _ in 0..2 {
        assert_eq!(http(addr, "GET", "/api/v1/apps", &[], "").await.status, 401);
    }
    let a = http(addr, "GET", "/api/v1/apps", &[], "").await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(
        http(addr, "GET", "/health", &[], "").await.status,
        200,
        "health is not limited"
    );
    assert_eq!(
        f.metric(r#"wellcar_server_requests_refused_total{reason="omaha-instance-rate"}"#)
            .await,
        1.0
    );
    assert_eq!(
        f.metric(r#"wellcar_server_requests_refused_total{reason="admin-ip-rate"}"#)
            .await,
        1.0
    );
    f.stop().await;
}

/// Per-request limits: a request with more apps or events than allowed is refused whole (400)
/// and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_too_many_events_are_refused_whole() {
    let f = Fleet::start(None, |_| {}).await;
    let events = r#"<event eventtype="13" eventresult="1"/>"#.repeat(500);
    let a = f
        .omaha(&omaha_xml("many", "1.0.0", "stable", &events), &[])
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(f.events("many").await.is_empty());
    f.stop().await;
}

/// Test-only gate in the Omaha parser: a request whose body contains the armed marker waits
/// in the parser until the test opens the gate.
pub(crate) mod parse_gate {
    use std::sync::{Condvar, Mutex};

    #[derive(Default)]
    struct Gate {
        marker: Option<Vec<u8>>,
        entered: bool,
        open: bool,
    }

    static GATE: Mutex<Gate> = Mutex::new(Gate {
        marker: None,
        entered: false,
        open: false,
    });
    static CHANGED: Condvar = Condvar::new();

    /// Called by the parser with the body it is about to parse.
    pub(crate) fn pass(body: &[u8]) {
        let mut g = GATE.lock().unwrap_or_else(|p| p.into_inner());
        let marked = g
            .marker
            .as_ref()
            .is_some_and(|m| body.windows(m.len()).any(|w| w == m.as_slice()));
        if !marked {
            return;
        }
        g.entered = true;
        CHANGED.notify_all();
        while !g.open {
            g = CHANGED.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Arms the gate for bodies containing `marker`; dropping the guard opens it.
    pub(crate) fn arm(marker: &str) -> Guard {
        let mut g = GATE.lock().unwrap_or_else(|p| p.into_inner());
        *g = Gate {
            marker: Some(marker.as_bytes().to_vec()),
            ..Gate::default()
        };
        Guard
    }

    /// Opens the gate when dropped (also when a test fails).
    pub(crate) struct Guard;

    impl Guard {
        /// Whether a marked request is waiting in the parser.
        pub(crate) fn entered(&self) -> bool {
            GATE.lock().unwrap_or_else(|p| p.into_inner()).entered
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            let mut g = GATE.lock().unwrap_or_else(|p| p.into_inner());
            g.open = true;
            g.marker = None;
            CHANGED.notify_all();
        }
    }
}

/// Finding "CPU-heavy work kept off the async workers": while one Omaha request is being
/// parsed (held in the parser by a test gate), a server with a single async worker still
/// answers `/health`. Parsing on the async worker would block it.
#[test]
fn omaha_parsing_runs_off_the_async_workers() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let f = rt.block_on(Fleet::start(None, |_| {}));
    let addr = f.server().addr;
    let marker = "parse-gate-machine";
    let gate = parse_gate::arm(marker);
    let xml = omaha_xml(marker, "2.0.0", "stable", "");
    let held = std::thread::spawn(move || {
        let client = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        client
            .block_on(http(addr, "POST", "/v1/update/", &[], &xml))
            .status
    });
    wellcar_test_support::wait::wait_until(
        "the marked request to reach the parser",
        Duration::from_secs(30),
        || gate.entered().then_some(()),
    );
    let health = std::thread::spawn(move || {
        let client = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        client
            .block_on(http(addr, "GET", "/health", &[], ""))
            .status
    });
    wellcar_test_support::wait::wait_until(
        "/health to answer while a request is in the parser",
        Duration::from_secs(30),
        || health.is_finished().then_some(()),
    );
    assert_eq!(health.join().unwrap(), 200);
    drop(gate);
    assert_eq!(held.join().unwrap(), 200);
    rt.block_on(f.stop());
}
