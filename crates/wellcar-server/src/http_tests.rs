//! End-to-end tests: a real server on an ephemeral loopback port, driven over real HTTP, each
//! test run against SQLite and against a real PostgreSQL (see [`wellcar_test_support::pg_cluster`]).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::json;
use wellcar_omaha::{
    ErrorCode, Event, Request, Response, UpdateDecision, FLATCAR_APP_ID, WELLCAR_APP_ID,
};

use crate::client::{ApiClient, PackageRef};
use crate::model::{Activity, Group, Instance, InstanceEvent, Package};
use crate::store::{self, Role};
use crate::{RunningServer, Settings};

/// The database a test server runs on; [`both_backends!`] runs a test on each.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

struct Harness {
    server: Option<RunningServer>,
    api: ApiClient,
    omaha: ApiClient,
    clock: Arc<AtomicI64>,
    database_url: String,
    _dir: tempfile::TempDir,
}

/// A fresh database of `backend` (SQLite below `dir`, PostgreSQL on the shared test cluster).
pub(crate) fn database_url(backend: Backend, dir: &std::path::Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite:{}", dir.join("server.db").display()),
        Backend::Postgres => {
            let cluster = wellcar_test_support::pg_cluster::shared_cluster()
                .unwrap_or_else(|e| panic!("postgresql tests need a server: {e}"));
            cluster.create_database().expect("creating a test database")
        }
    }
}

fn settings(url: &str, dir: &std::path::Path, clock: &Arc<AtomicI64>) -> Settings {
    let mut s = Settings::new(url, "127.0.0.1:0".parse().unwrap());
    s.payload_dir = dir.join("payloads");
    s.flush_interval = Duration::from_millis(100);
    s.sweep_interval = Duration::from_secs(3600);
    s.config_refresh = Duration::from_millis(200);
    s.poll_interval_secs = 1800;
    let c = clock.clone();
    s.clock = Arc::new(move || c.load(Ordering::SeqCst));
    s
}

impl Harness {
    async fn start(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let url = tokio::task::spawn_blocking(move || database_url(backend, &path))
            .await
            .unwrap();
        let clock = Arc::new(AtomicI64::new(crate::now_ms()));
        let server = crate::spawn(settings(&url, dir.path(), &clock))
            .await
            .unwrap();
        let now = clock.load(Ordering::SeqCst);
        let token = crate::test_server::token(&server, "test-admin", Role::Admin, now).await;
        let api = ApiClient::new(&server.url(), Some(&token));
        let omaha = ApiClient::new(&server.url(), None);
        Harness {
            server: Some(server),
            api,
            omaha,
            clock,
            database_url: url,
            _dir: dir,
        }
    }

    fn state(&self) -> &Arc<crate::server::ServerState> {
        &self.server.as_ref().unwrap().state
    }

    fn advance(&self, d: Duration) {
        self.clock.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }

    async fn post(&self, xml: &str) -> Response {
        let (status, body) = self.omaha.omaha(xml).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        Response::parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// Sends one Omaha request for the Wellcar app (see [`request`]) and parses the answer.
    async fn send(
        &self,
        machine: &str,
        version: &str,
        track: &str,
        check: bool,
        events: &[Event],
    ) -> Response {
        self.post(&request(
            WELLCAR_APP_ID,
            machine,
            version,
            track,
            check,
            events,
        ))
        .await
    }

    async fn check(&self, machine: &str, version: &str, track: &str) -> UpdateDecision {
        self.send(machine, version, track, true, &[])
            .await
            .update_decision()
            .unwrap()
    }

    async fn event(&self, machine: &str, version: &str, track: &str, ev: Event) {
        let r = self.send(machine, version, track, false, &[ev]).await;
        assert_eq!(r.apps[0].event_acks, 1);
    }

    async fn instance(&self, machine: &str) -> Instance {
        let list: Vec<Instance> = self
            .api
            .get(&format!(
                "/api/v1/apps/{WELLCAR_APP_ID}/instances?limit=100000"
            ))
            .await
            .unwrap();
        list.into_iter()
            .find(|i| i.facts.machine_id == machine)
            .unwrap_or_else(|| panic!("instance {machine} not listed"))
    }

    async fn activity(&self) -> Vec<Activity> {
        self.api.get("/api/v1/activity?limit=1000").await.unwrap()
    }

    /// POSTs `body` to the admin API at `path` and decodes the answer.
    async fn admin_post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> T {
        self.api.call(Method::POST, path, &body).await.unwrap()
    }

    /// Pauses (`action` "pause") or resumes (`"resume"`) the Wellcar group of `track`.
    async fn group_action(&self, track: &str, action: &str) -> Group {
        self.admin_post(
            &format!("/api/v1/apps/{WELLCAR_APP_ID}/groups/{track}/{action}"),
            json!({}),
        )
        .await
    }

    async fn patch_group(&self, track: &str, patch: serde_json::Value) -> Group {
        self.api
            .call(
                Method::PATCH,
                &format!("/api/v1/apps/{WELLCAR_APP_ID}/groups/{track}"),
                &patch,
            )
            .await
            .unwrap()
    }

    /// Uploads a payload for `version` and points `channel` at it.
    async fn publish(&self, version: &str, channel: &str) -> (Package, Vec<u8>) {
        let payload: Vec<u8> = (0..300_000u32)
            .map(|i| (i * 7 + version.len() as u32) as u8)
            .collect();
        let file = self._dir.path().join(format!("payload-{version}.bin"));
        std::fs::write(&file, &payload).unwrap();
        let package = PackageRef {
            app: WELLCAR_APP_ID,
            version,
            arch: "amd64",
        };
        let pkg: Package = self
            .api
            .upload_package(&package, "wellcar_update.bin", &file, Arc::new(|_| {}))
            .await
            .unwrap();
        let _: serde_json::Value = self.api.publish(&package, channel).await.unwrap();
        (pkg, payload)
    }

    async fn stop(mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
    }
}

fn request(
    app: &str,
    machine: &str,
    version: &str,
    track: &str,
    check: bool,
    events: &[Event],
) -> String {
    Request {
        updater_version: "wellcar-test-0.1".into(),
        install_source: "scheduler".into(),
        os: None,
        apps: vec![wellcar_omaha::AppRequest {
            app_id: app.into(),
            version: version.into(),
            track: track.into(),
            board: "amd64-usr".into(),
            machine_id: machine.into(),
            ping: check,
            update_check: check.then(Default::default),
            events: events.to_vec(),
            ..Default::default()
        }],
    }
    .to_xml()
}

fn ev(t: u32, r: u32) -> Event {
    Event {
        event_type: t,
        event_result: r,
        ..Event::default()
    }
}

fn ev_err(code: u32) -> Event {
    Event {
        event_type: 3,
        event_result: 0,
        error_code: Some(ErrorCode { raw: code }),
        previous_version: None,
    }
}

fn ev_rebooted(previous: &str) -> Event {
    Event {
        event_type: 3,
        event_result: 2,
        error_code: None,
        previous_version: Some(previous.into()),
    }
}

fn is_update(d: &UpdateDecision) -> bool {
    matches!(d, UpdateDecision::Update(_))
}

/// Runs each `async fn name(backend: Backend)` of the calling module as `name::sqlite` and
/// `name::postgres`.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(crate::http_tests::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(crate::http_tests::Backend::Postgres).await
            }
        }
    )*};
}
pub(crate) use both_backends;

both_backends!(
    fresh_server_seeds_and_answers,
    corpus_requests_get_flatcar_acceptable_answers,
    update_conversation_and_rollback,
    safe_mode_halts_on_first_failure,
    safe_mode_halts_on_timeout,
    period_and_concurrency_limits,
    maintenance_windows,
    pause_and_resume,
    unchanged_checks_do_not_write,
    bad_requests_get_400,
    admin_tokens_and_flatcar_app,
    retention_prunes_old_data,
    downgrades_only_when_allowed,
    floors_are_mandatory_steps,
    instance_events_list_in_the_order_machines_sent_them,
);

async fn fresh_server_seeds_and_answers(backend: Backend) {
    let h = Harness::start(backend).await;
    let groups: Vec<Group> = h
        .api
        .get(&format!("/api/v1/apps/{WELLCAR_APP_ID}/groups"))
        .await
        .unwrap();
    let mut tracks: Vec<_> = groups.iter().map(|g| g.track.as_str()).collect();
    tracks.sort();
    assert_eq!(tracks, ["alpha", "beta", "stable"]);
    let decision = h.check("m1", "1.0.0", "stable").await;
    assert_eq!(
        decision,
        UpdateDecision::NoUpdate {
            poll_interval: Some(1800)
        }
    );
    h.state().flush_sightings().await.unwrap();
    let metrics = h.api.get_text("/metrics").await.unwrap().1;
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert_eq!(
        crate::metrics::sample(&metrics, "wellcar_server_update_checks_total"),
        Some(1.0)
    );
    let gauge = format!(
        "wellcar_server_instances{{app=\"{WELLCAR_APP_ID}\",version=\"other\",group=\"stable\",status=\"undefined\"}}"
    );
    assert_eq!(
        crate::metrics::sample(&metrics, &gauge),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("wellcar_server_request_duration_seconds_count 1"),
        "{metrics}"
    );
    h.stop().await;
}

/// A file of the shared Omaha corpus: `$WELLCAR_CORPUS/omaha/`, by default
/// `<checkout>/../shared/corpus/omaha/`.
fn corpus(name: &str) -> String {
    let dir = std::env::var_os("WELLCAR_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
        });
    let path = dir.join("omaha").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {} (set WELLCAR_CORPUS): {e}", path.display()))
}

async fn corpus_requests_get_flatcar_acceptable_answers(backend: Backend) {
    let h = Harness::start(backend).await;
    // Serve a Flatcar fleet: Flatcar's app id, stable channel at 3815.2.0 (external URL).
    for app in [
        json!({"id": FLATCAR_APP_ID, "name": "Flatcar Container Linux"}),
        json!({"id": "{87EFFACE-864D-49A5-9BB3-4B050A7C227A}", "name": "corpus test app"}),
        json!({"id": "{8A69D345-D564-463C-AFF1-A69D9E530F96}", "name": "google spec app"}),
    ] {
        let _: serde_json::Value = h.admin_post("/api/v1/apps", app).await;
    }
    let base = format!("/api/v1/apps/{FLATCAR_APP_ID}");
    let _: serde_json::Value = h
        .admin_post(
            &format!("{base}/channels"),
            json!({"name": "stable", "arch": "amd64"}),
        )
        .await;
    let _: serde_json::Value = h
        .admin_post(
            &format!("{base}/groups"),
            json!({"name": "stable", "channel": "stable"}),
        )
        .await;
    // Only OS versions (the version `wellcar build` stamps) can be published.
    for bad in ["1.2", "v3815.2.0", "3815.2.0-rc1"] {
        let err = h
            .api
            .call::<_, serde_json::Value>(
                Method::POST,
                &format!("{base}/packages"),
                &json!({"version": bad, "arch": "amd64", "filename": "flatcar_production_update.gz",
                        "url": "https://update.release.flatcar-linux.net/amd64-usr/3815.2.0/", "size": 382137917,
                        "sha256_hex": "b2d2c6dd4fe8e00afc4cc1c5c13fd1581d22364696383ba90b4baeabebe00705",
                        "sha1_base64": "I6DGNAOrJRUxPbCuLw+AITfiVMo="}),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("400") && err.contains("package version") && err.contains(bad),
            "{bad}: {err}"
        );
    }
    let file = h._dir.path().join("bad-version.bin");
    std::fs::write(&file, b"not read").unwrap();
    let err = h
        .api
        .put_file::<serde_json::Value>(&format!("{base}/packages/amd64/1.2/update.bin"), &file)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("400") && err.contains("package version"),
        "{err}"
    );
    let _: serde_json::Value = h
        .admin_post(
            &format!("{base}/packages"),
            json!({"version": "3815.2.0", "arch": "amd64", "filename": "flatcar_production_update.gz",
                    "url": "https://update.release.flatcar-linux.net/amd64-usr/3815.2.0/", "size": 382137917,
                    "sha256_hex": "b2d2c6dd4fe8e00afc4cc1c5c13fd1581d22364696383ba90b4baeabebe00705",
                    "sha1_base64": "I6DGNAOrJRUxPbCuLw+AITfiVMo="}),
        )
        .await;
    let _: serde_json::Value = h
        .admin_post(
            &format!("{base}/channels/stable/publish"),
            json!({"version": "3815.2.0"}),
        )
        .await;

    struct Want {
        file: &'static str,
        status: &'static str,
        ping: bool,
        check: Option<&'static str>,
        acks: usize,
    }
    let cases = [
        Want {
            file: "01-request-goomaha-omaha-client-multiapp.xml",
            status: "error-unknownApplication",
            ping: true,
            check: Some("error-internal"),
            acks: 0,
        },
        Want {
            file: "04-request-goomaha-ue-event-only-3-1.xml",
            status: "ok",
            ping: false,
            check: None,
            acks: 1,
        },
        Want {
            file: "10-request-nebraska-apitest-check-with-event-TEMPLATED.xml",
            status: "ok",
            ping: true,
            check: Some("ok"),
            acks: 1,
        },
        Want {
            file: "11-request-nebraska-apisecret-ping-only-TEMPLATED.xml",
            status: "ok",
            ping: true,
            check: None,
            acks: 0,
        },
        Want {
            file: "27-request-google-v3-event-report.xml",
            status: "ok",
            ping: false,
            check: None,
            acks: 3,
        },
        Want {
            file: "30-request-ue-recon-b-routine-check.xml",
            status: "ok",
            ping: true,
            check: Some("ok"),
            acks: 1,
        },
        Want {
            file: "31-request-ue-recon-c-event-download-started-13-1.xml",
            status: "ok",
            ping: false,
            check: None,
            acks: 1,
        },
        Want {
            file: "32-request-ue-recon-d-event-download-finished-14-1.xml",
            status: "ok",
            ping: false,
            check: None,
            acks: 1,
        },
        Want {
            file: "34-request-ue-recon-ping-only-need-reboot.xml",
            status: "ok",
            ping: true,
            check: None,
            acks: 0,
        },
        Want {
            file: "35-request-ue-recon-first-check-after-update-3-2.xml",
            status: "ok",
            ping: true,
            check: Some("noupdate"),
            acks: 1,
        },
        Want {
            file: "37-request-ue-recon-event-update-failed-3-0-hash-mismatch-custom-server.xml",
            status: "ok",
            ping: false,
            check: None,
            acks: 1,
        },
        Want {
            file: "38-request-nebraska-recon-syncer-arm64-multi-manifest.xml",
            status: "ok",
            ping: false,
            check: Some("noupdate"),
            acks: 0,
        },
    ];
    for (i, want) in cases.iter().enumerate() {
        let mut body = corpus(want.file);
        if want.file.contains("TEMPLATED") {
            for value in [FLATCAR_APP_ID, "stable", &format!("templated-machine-{i}")] {
                body = body.replacen("%s", value, 1);
            }
        }
        let resp = h.post(&body).await;
        let expected_apps = Request::parse(body.as_bytes()).unwrap().apps.len();
        assert_eq!(resp.apps.len(), expected_apps, "{}", want.file);
        for app in &resp.apps {
            assert_eq!(app.status, want.status, "{}", want.file);
            assert_eq!(app.ping_ok, want.ping, "{}", want.file);
            assert_eq!(
                app.update_check.as_ref().map(|u| u.status.as_str()),
                want.check,
                "{}",
                want.file
            );
            assert_eq!(app.event_acks, want.acks, "{}", want.file);
        }
        if want.check == Some("ok") {
            // What update_engine reads must be usable: URL, size, base64 sha256.
            let UpdateDecision::Update(info) = resp.update_decision().unwrap() else {
                panic!()
            };
            assert_eq!(info.version, "3815.2.0");
            assert_eq!(
                info.urls,
                ["https://update.release.flatcar-linux.net/amd64-usr/3815.2.0/flatcar_production_update.gz"]
            );
            assert_eq!(info.size, 382137917);
            assert_eq!(
                hex::encode(info.sha256),
                "b2d2c6dd4fe8e00afc4cc1c5c13fd1581d22364696383ba90b4baeabebe00705"
            );
        }
        if want.check == Some("noupdate") {
            assert!(
                matches!(resp.update_decision(), Ok(UpdateDecision::NoUpdate { .. })),
                "{}",
                want.file
            );
        }
    }
    // The recon conversation moved the corpus machine: granted (30), downloading, downloaded,
    // complete on 3815.2.0 (35). The error report (37, from another capture: it claims
    // 3760.2.0) fits no live grant, so it is stored unverified and changes nothing.
    let list: Vec<Instance> = h
        .api
        .get(&format!("/api/v1/apps/{FLATCAR_APP_ID}/instances"))
        .await
        .unwrap();
    let m = list
        .iter()
        .find(|i| i.facts.machine_id == "0f6a2d3b9c8e4f1aa7b6c5d4e3f2a1b0")
        .unwrap();
    assert_eq!(m.status, "complete");
    assert_eq!(m.facts.version, "3815.2.0");
    assert_eq!(m.last_error_code, None);
    h.stop().await;
}

async fn update_conversation_and_rollback(backend: Backend) {
    let h = Harness::start(backend).await;
    let (pkg, payload) = h.publish("1.2.3", "stable").await;
    assert_eq!(pkg.size, payload.len() as i64);

    let UpdateDecision::Update(info) = h.check("m1", "1.0.0", "stable").await else {
        panic!("expected an update")
    };
    assert_eq!(info.version, "1.2.3");
    assert_eq!(info.size, payload.len() as u64);
    use sha2::Digest as _;
    assert_eq!(
        info.sha256.as_slice(),
        sha2::Sha256::digest(&payload).as_slice()
    );
    assert_eq!(h.instance("m1").await.status, "granted");
    // The payload is served with Range support.
    let path = info.urls[0].strip_prefix(h.api.base()).unwrap().to_owned();
    let (status, part) = h.omaha.get_range(&path, "bytes=1000-1999").await.unwrap();
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&part[..], &payload[1000..2000]);
    let (status, whole) = h.omaha.get_text(&path).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&whole[..], &payload[..]);
    // Asking again re-serves the same grant.
    assert!(is_update(&h.check("m1", "1.0.0", "stable").await));

    h.event("m1", "1.0.0", "stable", ev(13, 1)).await;
    assert_eq!(h.instance("m1").await.status, "downloading");
    h.event("m1", "1.0.0", "stable", ev(14, 1)).await;
    assert_eq!(h.instance("m1").await.status, "downloaded");
    h.event("m1", "1.0.0", "stable", ev(3, 1)).await;
    assert_eq!(h.instance("m1").await.status, "installed");
    // After the reboot: check plus 3/2 in one app, as update_engine sends it.
    let r = h
        .send("m1", "1.2.3", "stable", true, &[ev_rebooted("1.0.0")])
        .await;
    assert!(matches!(
        r.update_decision(),
        Ok(UpdateDecision::NoUpdate { .. })
    ));
    assert_eq!(r.apps[0].event_acks, 1);
    let m1 = h.instance("m1").await;
    assert_eq!(
        (m1.status.as_str(), m1.facts.version.as_str()),
        ("complete", "1.2.3")
    );

    // Rollback: m2 installs, reboots, comes back on the old version with 3/0 error 44.
    assert!(is_update(&h.check("m2", "1.0.0", "stable").await));
    for e in [ev(13, 1), ev(14, 1), ev(3, 1)] {
        h.event("m2", "1.0.0", "stable", e).await;
    }
    let r = h.send("m2", "1.0.0", "stable", true, &[ev_err(44)]).await;
    assert_eq!(r.apps[0].event_acks, 1);
    assert!(
        matches!(r.update_decision(), Ok(UpdateDecision::NoUpdate { .. })),
        "a version that rolled back must not be offered again to the same machine"
    );
    let m2 = h.instance("m2").await;
    assert_eq!(
        (m2.status.as_str(), m2.last_error_code),
        ("error", Some(44))
    );
    assert!(h
        .activity()
        .await
        .iter()
        .any(|a| a.kind == "instance-update-failed"
            && a.message.contains("m2 rolled back from 1.2.3")));
    h.stop().await;
}

async fn safe_mode_halts_on_first_failure(backend: Backend) {
    let h = Harness::start(backend).await;
    let _: Group = h
        .api
        .call(
            Method::POST,
            &format!("/api/v1/apps/{WELLCAR_APP_ID}/groups"),
            &json!({"name": "canary", "channel": "stable", "policy": {
                "updates_enabled": true, "safe_mode": true, "max_updates_per_period": 0, "period_secs": 3600,
                "max_concurrent": 0, "update_timeout_secs": 3600, "allow_downgrade": false,
                "timezone": "UTC", "windows": []}}),
        )
        .await
        .unwrap();
    h.publish("2.0.0", "stable").await;
    assert!(is_update(&h.check("first", "1.0.0", "canary").await));
    // One instance goes first: nobody else while it is in progress.
    assert!(!is_update(&h.check("second", "1.0.0", "canary").await));
    h.event("first", "1.0.0", "canary", ev(13, 1)).await;
    h.event("first", "1.0.0", "canary", ev_err(268435466)).await;
    for m in ["second", "third", "fourth"] {
        assert!(
            !is_update(&h.check(m, "1.0.0", "canary").await),
            "{m} must not be offered"
        );
    }
    let group: Group = h
        .api
        .get(&format!("/api/v1/apps/{WELLCAR_APP_ID}/groups/canary"))
        .await
        .unwrap();
    assert!(group.halted);
    assert!(group
        .halted_reason
        .unwrap()
        .contains("first failed updating to 2.0.0 (error code 10"));
    let halted = h
        .activity()
        .await
        .into_iter()
        .find(|a| a.kind == "group-halted")
        .unwrap();
    assert!(
        halted
            .message
            .starts_with("group halted: safe mode: instance first failed"),
        "{}",
        halted.message
    );
    // The other groups are unaffected; resuming releases the brake.
    assert!(is_update(&h.check("elsewhere", "1.0.0", "stable").await));
    h.group_action("canary", "resume").await;
    assert!(is_update(&h.check("second", "1.0.0", "canary").await));
    h.stop().await;
}

async fn safe_mode_halts_on_timeout(backend: Backend) {
    let h = Harness::start(backend).await;
    h.patch_group(
        "beta",
        json!({"safe_mode": true, "update_timeout_secs": 600}),
    )
    .await;
    h.publish("2.0.0", "beta").await;
    assert!(is_update(&h.check("slow", "1.0.0", "beta").await));
    assert_eq!(h.state().sweep_timeouts().await.unwrap(), 0);
    h.advance(Duration::from_secs(601));
    assert_eq!(h.state().sweep_timeouts().await.unwrap(), 1);
    assert_eq!(h.instance("slow").await.status, "timeout");
    assert!(!is_update(&h.check("next", "1.0.0", "beta").await));
    let group: Group = h
        .api
        .get(&format!("/api/v1/apps/{WELLCAR_APP_ID}/groups/beta"))
        .await
        .unwrap();
    assert!(group.halted_reason.unwrap().contains("slow timed out"));
    h.stop().await;
}

async fn period_and_concurrency_limits(backend: Backend) {
    let h = Harness::start(backend).await;
    h.publish("2.0.0", "stable").await;
    h.patch_group(
        "stable",
        json!({"max_updates_per_period": 2, "period_secs": 600}),
    )
    .await;
    assert!(is_update(&h.check("a", "1.0.0", "stable").await));
    assert!(is_update(&h.check("b", "1.0.0", "stable").await));
    assert!(!is_update(&h.check("c", "1.0.0", "stable").await));
    h.advance(Duration::from_secs(601));
    assert!(is_update(&h.check("c", "1.0.0", "stable").await));

    h.patch_group(
        "stable",
        json!({"max_updates_per_period": 0, "max_concurrent": 3}),
    )
    .await;
    // a, b, c are in progress (and not timed out): the fourth waits until one finishes.
    assert!(!is_update(&h.check("d", "1.0.0", "stable").await));
    h.send("a", "2.0.0", "stable", true, &[ev_rebooted("1.0.0")])
        .await;
    assert!(is_update(&h.check("d", "1.0.0", "stable").await));
    h.stop().await;
}

async fn maintenance_windows(backend: Backend) {
    let h = Harness::start(backend).await;
    h.publish("2.0.0", "stable").await;
    let now = h.clock.load(Ordering::SeqCst);
    let local = jiff::Timestamp::from_millisecond(now)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::get("Asia/Tokyo").unwrap());
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let today = days[local.weekday().to_monday_zero_offset() as usize];
    let tomorrow = days[(local.weekday().to_monday_zero_offset() as usize + 1) % 7];
    let start = format!("{:02}:{:02}", local.hour(), local.minute());
    // A window that opened this minute (Tokyo time) is open; one starting tomorrow is not.
    h.patch_group("stable", json!({"timezone": "Asia/Tokyo", "windows": [{"days": [tomorrow], "start": start, "minutes": 30}]})).await;
    assert!(!is_update(&h.check("w", "1.0.0", "stable").await));
    h.patch_group(
        "stable",
        json!({"windows": [{"days": [today], "start": start, "minutes": 30}]}),
    )
    .await;
    assert!(is_update(&h.check("w", "1.0.0", "stable").await));
    // Bad windows are refused with the reason.
    let err = h
        .api
        .call::<_, Group>(
            Method::PATCH,
            &format!("/api/v1/apps/{WELLCAR_APP_ID}/groups/stable"),
            &json!({"windows": [{"days": ["someday"], "start": "25:00", "minutes": 5}]}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    assert!(err.to_string().contains("someday"), "{err}");
    h.stop().await;
}

async fn pause_and_resume(backend: Backend) {
    let h = Harness::start(backend).await;
    h.publish("2.0.0", "alpha").await;
    let g = h.group_action("alpha", "pause").await;
    assert!(!g.policy.updates_enabled);
    assert!(!is_update(&h.check("p", "1.0.0", "alpha").await));
    h.group_action("alpha", "resume").await;
    assert!(is_update(&h.check("p", "1.0.0", "alpha").await));
    let log = h.activity().await;
    let paused = log.iter().find(|a| a.kind == "group-paused").unwrap();
    assert_eq!(paused.actor, "test-admin");
    assert!(
        paused.message.contains("updates_enabled true -> false"),
        "{}",
        paused.message
    );
    assert!(log.iter().any(|a| a.kind == "group-resumed"));
    h.stop().await;
}

async fn unchanged_checks_do_not_write(backend: Backend) {
    let h = Harness::start(backend).await;
    h.check("quiet", "1.0.0", "stable").await;
    h.state().flush_sightings().await.unwrap();
    let before = h.state().db.write_counts();
    for _ in 0..50 {
        // update_engine's routine check, with its no-op 3/2 "" event.
        let r = h
            .send("quiet", "1.0.0", "stable", true, &[ev_rebooted("")])
            .await;
        assert_eq!(r.apps[0].event_acks, 1);
    }
    h.state().flush_sightings().await.unwrap();
    assert_eq!(
        h.state().db.write_counts(),
        before,
        "unchanged checks wrote to the database"
    );
    // A changed fact (new version) is written, batched.
    h.check("quiet", "1.1.0", "stable").await;
    h.state().flush_sightings().await.unwrap();
    assert_eq!(
        h.state().db.write_counts().transactions,
        before.transactions + 1
    );
    assert_eq!(h.instance("quiet").await.facts.version, "1.1.0");
    h.stop().await;
}

async fn bad_requests_get_400(backend: Backend) {
    let h = Harness::start(backend).await;
    let (status, body) = h
        .omaha
        .omaha("<request protocol=\"3.0\"><app appid=\"x\">")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("malformed omaha request") && body.contains("unclosed element <app>"),
        "{body}"
    );
    let (status, body) = h
        .omaha
        .omaha("<request protocol=\"2.0\"></request>")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("unsupported omaha protocol \"2.0\""),
        "{body}"
    );
    let big = format!("<request protocol=\"3.0\">{}</request>", " ".repeat(70_000));
    let (status, body) = h.omaha.omaha(&big).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("over the 65536-byte limit"), "{body}");
    let (status, _) = h.omaha.omaha("").await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Unknown track: an Omaha error status, HTTP 200.
    let r = h.send("m", "1.0.0", "nosuchgroup", true, &[]).await;
    assert_eq!(r.apps[0].status, "error-unknownApplicationOrGroup");
    assert_eq!(
        r.apps[0].update_check.as_ref().unwrap().status,
        "error-internal"
    );
    h.stop().await;
}

async fn admin_tokens_and_flatcar_app(backend: Backend) {
    let h = Harness::start(backend).await;
    let anonymous = ApiClient::new(h.api.base(), None);
    let err = anonymous
        .get::<serde_json::Value>("/api/v1/apps")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let now = h.clock.load(Ordering::SeqCst);
    let ro_token =
        crate::test_server::token(h.server.as_ref().unwrap(), "viewer", Role::Read, now).await;
    let viewer = ApiClient::new(h.api.base(), Some(&ro_token));
    let apps: Vec<crate::model::App> = viewer.get("/api/v1/apps").await.unwrap();
    assert_eq!(apps[0].id, WELLCAR_APP_ID);
    let err = viewer
        .call::<_, serde_json::Value>(
            Method::POST,
            "/api/v1/apps",
            &json!({"id": FLATCAR_APP_ID, "name": "Flatcar"}),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("403") && err.to_string().contains("has scope read"),
        "{err}"
    );
    let created: crate::model::App = h
        .api
        .call(
            Method::POST,
            "/api/v1/apps",
            &json!({"id": "{E96281A6-D1AF-4BDE-9A0A-97B76E56DC57}", "name": "Flatcar"}),
        )
        .await
        .unwrap();
    assert_eq!(created.id, FLATCAR_APP_ID);
    let err = h
        .api
        .call::<_, serde_json::Value>(
            Method::POST,
            "/api/v1/apps",
            &json!({"id": FLATCAR_APP_ID, "name": "again"}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("409"), "{err}");
    let (status, doc) = anonymous.get_text("/api/v1/openapi.json").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&doc).unwrap();
    assert!(doc["paths"]["/api/v1/apps/{app}/groups/{track}/pause"].is_object());
    // The stored token is a hash, not the secret.
    let url = h.database_url.clone();
    let secret = ro_token.clone();
    let leaked = tokio::task::spawn_blocking(move || {
        let db = crate::db::Db::open(&url, 1).unwrap();
        db.write_blocking(|c| Ok(c.query("SELECT token_sha256 FROM api_tokens", &[])?))
            .unwrap()
            .iter()
            .any(|r| r.text(0).unwrap().contains(&secret))
    })
    .await
    .unwrap();
    assert!(!leaked);
    h.stop().await;
}

async fn retention_prunes_old_data(backend: Backend) {
    let h = Harness::start(backend).await;
    h.publish("2.0.0", "stable").await;
    h.check("old", "1.0.0", "stable").await;
    h.event("old", "1.0.0", "stable", ev(13, 1)).await;
    h.send("old", "2.0.0", "stable", true, &[ev_rebooted("1.0.0")])
        .await;
    h.state().flush_sightings().await.unwrap();
    h.advance(Duration::from_secs(100 * 24 * 3600));
    h.check("new", "2.0.0", "stable").await;
    let pruned: store::Pruned = h
        .api
        .call(Method::POST, "/api/v1/retention/prune", &json!({}))
        .await
        .unwrap();
    assert_eq!(pruned.events, 2, "{pruned:?}");
    assert_eq!(pruned.instances, 1, "{pruned:?}");
    let list: Vec<Instance> = h
        .api
        .get(&format!("/api/v1/apps/{WELLCAR_APP_ID}/instances"))
        .await
        .unwrap();
    let ids: Vec<_> = list.iter().map(|i| i.facts.machine_id.as_str()).collect();
    assert_eq!(ids, ["new"]);
    // A pruned machine that checks in again is recorded again.
    h.check("old", "2.0.0", "stable").await;
    assert_eq!(h.instance("old").await.facts.version, "2.0.0");
    h.stop().await;
}

async fn downgrades_only_when_allowed(backend: Backend) {
    let h = Harness::start(backend).await;
    h.publish("1.5.0", "stable").await;
    assert!(!is_update(&h.check("ahead", "2.0.0", "stable").await));
    h.patch_group("stable", json!({"allow_downgrade": true}))
        .await;
    let UpdateDecision::Update(info) = h.check("ahead", "2.0.0", "stable").await else {
        panic!()
    };
    assert_eq!(info.version, "1.5.0");
    h.stop().await;
}

async fn instance_events_list_in_the_order_machines_sent_them(backend: Backend) {
    let h = Harness::start(backend).await;
    h.publish("1.2.3", "stable").await;
    assert!(is_update(&h.check("m1", "1.0.0", "stable").await));
    // The test clock stands still: these events share one created_at, and still list in order.
    h.event("m1", "1.0.0", "stable", ev(13, 1)).await;
    h.event("m1", "1.0.0", "stable", ev(14, 1)).await;
    // Two in one request, as an agent sends its outbox after an outage.
    let r = h
        .send("m1", "1.0.0", "stable", false, &[ev(3, 1), ev_err(44)])
        .await;
    assert_eq!(r.apps[0].event_acks, 2);
    h.advance(Duration::from_secs(60));
    h.send("m1", "1.2.3", "stable", true, &[ev_rebooted("1.0.0")])
        .await;
    h.event("m2", "1.0.0", "stable", ev(13, 1)).await;
    let path = format!("/api/v1/apps/{WELLCAR_APP_ID}/instances/m1/events");
    let events: Vec<InstanceEvent> = h.api.get(&path).await.unwrap();
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.event_type,
                e.event_result,
                e.error_code,
                e.previous_version.as_deref(),
                e.version.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (13, 1, None, None, "1.0.0"),
            (14, 1, None, None, "1.0.0"),
            (3, 1, None, None, "1.0.0"),
            (3, 0, Some(44), None, "1.0.0"),
            (3, 2, None, Some("1.0.0"), "1.2.3"),
        ]
    );
    assert_eq!(events[4].created_at - events[0].created_at, 60_000);
    // A limit keeps the latest, still oldest first.
    let latest: Vec<InstanceEvent> = h.api.get(&format!("{path}?limit=2")).await.unwrap();
    assert_eq!(latest, events[3..]);
    // Each machine has its own; an unknown one has none.
    let m2: Vec<InstanceEvent> = h
        .api
        .get(&format!(
            "/api/v1/apps/{WELLCAR_APP_ID}/instances/m2/events"
        ))
        .await
        .unwrap();
    assert_eq!(
        m2.iter()
            .map(|e| (e.event_type, e.event_result))
            .collect::<Vec<_>>(),
        [(13, 1)]
    );
    let none: Vec<InstanceEvent> = h
        .api
        .get(&format!(
            "/api/v1/apps/{WELLCAR_APP_ID}/instances/nobody/events"
        ))
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    let err = h
        .api
        .get::<Vec<InstanceEvent>>("/api/v1/apps/no-such-app/instances/m1/events")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    let err = h.omaha.get::<Vec<InstanceEvent>>(&path).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    h.stop().await;
}

/// Waits until server `b` has reloaded the configuration generation `a` is at: `a` reloads
/// at once after a change made through it, `b` on its own every `config_refresh`.
async fn b_reloads_what_a_wrote(a: &Harness, b: &RunningServer) {
    let want = a.state().config().generation;
    wellcar_test_support::wait::wait_until_async(
        &format!("the second server to reload configuration generation {want}"),
        Duration::from_secs(10),
        || async { (b.state.config().generation >= want).then_some(()) },
    )
    .await;
}

/// Several server processes share one PostgreSQL: a concurrency limit of one holds across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_postgres() {
    let a = Harness::start(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let b_server = crate::spawn(settings(&a.database_url, a._dir.path(), &a.clock))
        .await
        .unwrap();
    let b = ApiClient::new(&b_server.url(), None);
    a.publish("2.0.0", "stable").await;
    a.patch_group("stable", json!({"max_concurrent": 1})).await;
    b_reloads_what_a_wrote(&a, &b_server).await;
    let first = a.check("x1", "1.0.0", "stable").await;
    assert!(is_update(&first));
    let (_, body) = b
        .omaha(&request(WELLCAR_APP_ID, "x2", "1.0.0", "stable", true, &[]))
        .await
        .unwrap();
    let via_b = Response::parse(body.as_bytes())
        .unwrap()
        .update_decision()
        .unwrap();
    assert!(
        !is_update(&via_b),
        "the second server granted past the shared limit"
    );
    // Pausing through one server stops the other once it reloads (it polls every
    // `config_refresh`).
    a.group_action("stable", "pause").await;
    a.send("x1", "2.0.0", "stable", true, &[ev_rebooted("1.0.0")])
        .await;
    b_reloads_what_a_wrote(&a, &b_server).await;
    let (_, body) = b
        .omaha(&request(WELLCAR_APP_ID, "x2", "1.0.0", "stable", true, &[]))
        .await
        .unwrap();
    assert!(!is_update(
        &Response::parse(body.as_bytes())
            .unwrap()
            .update_decision()
            .unwrap()
    ));
    b_server.shutdown().await.unwrap();
    drop(dir);
    a.stop().await;
}

/// Child side of the kill -9 test: serves until killed (run only by the parent test).
#[test]
#[ignore = "started as a child process by kill9_loses_no_acknowledged_event"]
fn kill9_child_server() {
    let Ok(url) = std::env::var("WELLCAR_KILL9_DB") else {
        return;
    };
    let port_file = std::env::var("WELLCAR_KILL9_PORT_FILE").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let clock = Arc::new(AtomicI64::new(crate::now_ms()));
        let dir = std::path::PathBuf::from(std::env::var("WELLCAR_KILL9_DIR").unwrap());
        let server = crate::spawn(settings(&url, &dir, &clock)).await.unwrap();
        std::fs::write(&port_file, server.addr.port().to_string()).unwrap();
        std::future::pending::<()>().await;
    });
}

/// `kill -9` during load, restart: every event acknowledged with HTTP 200 is in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("server.db").display());
    let start_child = |n: u32| {
        let port_file = dir.path().join(format!("port-{n}"));
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "http_tests::kill9_child_server",
                "--ignored",
                "--nocapture",
            ])
            .env("WELLCAR_KILL9_DB", &url)
            .env("WELLCAR_KILL9_PORT_FILE", &port_file)
            .env("WELLCAR_KILL9_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        (child, port_file)
    };
    let wait_port = |file: &std::path::Path| -> u16 {
        for _ in 0..600 {
            if let Ok(p) = std::fs::read_to_string(file) {
                if let Ok(p) = p.trim().parse() {
                    return p;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("child server did not start");
    };
    let (mut child, port_file) = start_child(1);
    let port = wait_port(&port_file);
    let client = ApiClient::new(&format!("http://127.0.0.1:{port}"), None);
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let client = client.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let machine = format!("k{worker}-{i}");
                let xml = request(
                    WELLCAR_APP_ID,
                    &machine,
                    "1.0.0",
                    "stable",
                    false,
                    &[ev(13, 1)],
                );
                match client.omaha(&xml).await {
                    Ok((StatusCode::OK, _)) => acked.lock().unwrap().push(machine),
                    _ => return,
                }
            }
        }));
    }
    // Let load build up, then kill the server without warning.
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = child.id();
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200);

    // Restart on the same file: it opens (WAL recovery) and every acked event is there.
    let (mut child2, port_file2) = start_child(2);
    wait_port(&port_file2);
    let db = crate::db::Db::open(&url, 1).unwrap();
    let stored: std::collections::HashSet<String> = db
        .write_blocking(|c| Ok(c.query("SELECT machine_id FROM events", &[])?))
        .unwrap()
        .iter()
        .map(|r| r.text(0).unwrap())
        .collect();
    let lost: Vec<_> = acked.iter().filter(|m| !stored.contains(*m)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );
    let _ = child2.kill();
    child2.wait().unwrap();
}

async fn floors_are_mandatory_steps(backend: Backend) {
    let h = Harness::start(backend).await;
    h.publish("1.5.0", "stable").await;
    let _: serde_json::Value = h
        .admin_post(
            &format!("/api/v1/apps/{WELLCAR_APP_ID}/channels/stable/floors"),
            json!({"version": "1.5.0", "reason": "partition migration"}),
        )
        .await;
    h.publish("2.0.0", "stable").await;
    let r = h.send("low", "1.0.0", "stable", true, &[]).await;
    let m = &r.apps[0].update_check.as_ref().unwrap().manifests[0];
    assert_eq!((m.version.as_str(), m.is_floor), ("1.5.0", true));
    assert_eq!(m.floor_reason.as_deref(), Some("partition migration"));
    let UpdateDecision::Update(info) = h.check("mid", "1.5.0", "stable").await else {
        panic!()
    };
    assert_eq!(info.version, "2.0.0");
    let UpdateDecision::Update(info) = h.check("above", "1.7.0", "stable").await else {
        panic!()
    };
    assert_eq!(info.version, "2.0.0");
    let status = h
        .api
        .delete(&format!(
            "/api/v1/apps/{WELLCAR_APP_ID}/channels/stable/floors/amd64/1.5.0"
        ))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let UpdateDecision::Update(info) = h.check("fresh", "1.0.0", "stable").await else {
        panic!()
    };
    assert_eq!(info.version, "2.0.0");
    h.stop().await;
}
