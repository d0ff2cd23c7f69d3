//! Regression tests for issue 20's admin, metrics and upload findings: a real server on SQLite
//! on a loopback port, driven over real HTTP. Each test's doc comment names its finding.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;
use sha2::Digest as _;
use wellcar_omaha::WELLCAR_APP_ID;

use crate::client::{ApiClient, Body};
use crate::model::Package;
use crate::store::{self, Scope};
use crate::{RunningServer, Settings};

struct Setup {
    server: RunningServer,
    admin: ApiClient,
    anonymous: ApiClient,
    clock: Arc<AtomicI64>,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start(tune: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite:{}", dir.path().join("server.db").display());
        let mut settings = Settings::new(&database, "127.0.0.1:0".parse().unwrap());
        settings.payload_dir = dir.path().join("payloads");
        settings.flush_interval = Duration::from_millis(50);
        let clock = Arc::new(AtomicI64::new(crate::now_ms()));
        let c = clock.clone();
        settings.clock = Arc::new(move || c.load(Ordering::SeqCst));
        tune(&mut settings);
        let server = crate::spawn(settings).await.unwrap();
        let secret = self::token(&server, "admin", Scope::Admin, None).await;
        Setup {
            admin: ApiClient::new(&server.url(), Some(&secret)),
            anonymous: ApiClient::new(&server.url(), None),
            server,
            clock,
            dir,
        }
    }

    fn client(&self, secret: &str) -> ApiClient {
        ApiClient::new(&self.server.url(), Some(secret))
    }

    fn payload_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("payloads")
    }

    async fn stop(self) {
        self.server.shutdown().await.unwrap();
    }
}

async fn token(
    server: &RunningServer,
    name: &str,
    scope: Scope,
    expires_at: Option<i64>,
) -> String {
    let name = name.to_owned();
    let now = server.state.now();
    server
        .state
        .db
        .write(move |c| {
            let new = store::NewToken {
                name: &name,
                scope,
                expires_at,
                actor: "test",
            };
            store::create_scoped_token(c, &new, now)
        })
        .await
        .unwrap()
        .secret
}

fn full(bytes: impl Into<Vec<u8>>) -> Body {
    Body::Bytes(bytes.into())
}

/// A request body fed chunk by chunk from the test: reading blocks until the next chunk, and
/// ends when the sender is dropped.
struct ChunkReader {
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
    current: std::io::Cursor<Vec<u8>>,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            match self.chunks.recv() {
                Ok(chunk) => self.current = std::io::Cursor::new(chunk),
                Err(_) => return Ok(0),
            }
        }
    }
}

fn upload_path(arch: &str, version: &str, filename: &str) -> String {
    format!("/api/v1/apps/{WELLCAR_APP_ID}/packages/{arch}/{version}/{filename}")
}

fn served_path(arch: &str, version: &str, filename: &str) -> String {
    format!("/packages/{WELLCAR_APP_ID}/{arch}/{version}/{filename}")
}

async fn put(client: &ApiClient, path: &str, body: &[u8]) -> (StatusCode, Bytes) {
    client
        .send(
            Method::PUT,
            path,
            Some("application/octet-stream"),
            full(body.to_vec()),
        )
        .await
        .unwrap()
}

/// Every regular file under `dir`, recursively (hidden ones included).
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Finding "tokens cannot be scoped": a read token can read but not publish (403), a publish
/// token can upload and publish but not change groups (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_scopes_limit_what_a_token_may_do() {
    let s = Setup::start(|_| {}).await;
    let reader = s.client(&token(&s.server, "reader", Scope::Read, None).await);
    let publisher = s.client(&token(&s.server, "ci", Scope::Publish, None).await);

    let apps: Vec<crate::model::App> = reader.get("/api/v1/apps").await.unwrap();
    assert_eq!(apps[0].id, WELLCAR_APP_ID);
    let (status, body) = put(&reader, &upload_path("amd64", "1.2.3", "u.bin"), b"payload").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body:?}");
    let err = reader
        .call::<_, serde_json::Value>(
            Method::POST,
            &format!("/api/v1/apps/{WELLCAR_APP_ID}/channels/stable/publish"),
            &json!({"version": "1.2.3"}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");

    let (status, body) = put(
        &publisher,
        &upload_path("amd64", "1.2.3", "u.bin"),
        b"payload",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    let _: serde_json::Value = publisher
        .call(
            Method::POST,
            &format!("/api/v1/apps/{WELLCAR_APP_ID}/channels/stable/publish"),
            &json!({"version": "1.2.3"}),
        )
        .await
        .unwrap();
    let err = publisher
        .call::<_, serde_json::Value>(
            Method::POST,
            &format!("/api/v1/apps/{WELLCAR_APP_ID}/groups/stable/pause"),
            &json!({}),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("403") && err.to_string().contains("needs scope admin"),
        "{err}"
    );
    let err = publisher
        .get::<serde_json::Value>("/api/v1/tokens")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    s.stop().await;
}

/// Finding "tokens cannot be expired": a token past its expiry is refused with 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused() {
    let s = Setup::start(|_| {}).await;
    let now = s.clock.load(Ordering::SeqCst);
    let client = s.client(&token(&s.server, "short", Scope::Read, Some(now + 60_000)).await);
    let _: serde_json::Value = client.get("/api/v1/apps").await.unwrap();
    s.clock.fetch_add(60_001, Ordering::SeqCst);
    let (status, _) = client.get_text("/api/v1/apps").await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

/// Finding "tokens cannot be listed or revoked": the admin API creates a token (secret shown
/// once), lists it without its secret, and after `DELETE` it is refused with 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_is_refused_and_listings_hold_no_secrets() {
    let s = Setup::start(|_| {}).await;
    let created = s
        .admin
        .create_token("laptop", Scope::Publish, Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(created.token.scope, Scope::Publish);
    let laptop = s.client(&created.secret);
    let _: serde_json::Value = laptop.get("/api/v1/apps").await.unwrap();

    let (status, listing) = s.admin.get_text("/api/v1/tokens").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&listing);
    assert!(!text.contains(&created.secret), "{text}");
    let tokens: Vec<store::ApiToken> = serde_json::from_slice(&listing).unwrap();
    let listed = tokens.iter().find(|t| t.name == "laptop").unwrap();
    assert_eq!(listed.id, created.token.id);
    assert!(listed.last_used_at.is_some(), "{listed:?}");

    s.admin.revoke_token(&created.token.id).await.unwrap();
    let (status, _) = laptop.get_text("/api/v1/apps").await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let tokens = s.admin.list_tokens().await.unwrap();
    let listed = tokens.iter().find(|t| t.name == "laptop").unwrap();
    assert!(listed.revoked_at.is_some(), "{listed:?}");
    s.stop().await;
}

/// Finding "JSON bodies are parsed before the token check": a malformed body without a valid
/// token gets 401, not 400; only an authenticated caller learns the body is bad.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_body_without_a_token_is_unauthorized() {
    let s = Setup::start(|_| {}).await;
    let bogus = s.client("wct_not-a-token");
    for client in [&s.anonymous, &bogus] {
        let (status, body) = client
            .send(
                Method::POST,
                "/api/v1/apps",
                Some("application/json"),
                full(&b"{not json"[..]),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body:?}");
    }
    let (status, _) = s
        .admin
        .send(
            Method::POST,
            "/api/v1/apps",
            Some("application/json"),
            full(&b"{not json"[..]),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    s.stop().await;
}

/// Finding "metrics leak" (no token): `/metrics` needs a read token on the main listener; with
/// `metrics_listen` it is served only there, without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_token_or_their_own_listener() {
    let s = Setup::start(|_| {}).await;
    let (status, _) = s.anonymous.get_text("/metrics").await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let reader = s.client(&token(&s.server, "prometheus", Scope::Read, None).await);
    let (status, body) = reader.get_text("/metrics").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("wellcar_server_update_checks_total"));
    s.stop().await;

    let s = Setup::start(|st| st.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let (status, _) = s.admin.get_text("/metrics").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "not on the main listener");
    let metrics_addr = s.server.metrics_addr.expect("a metrics listener");
    let scraper = ApiClient::new(&format!("http://{metrics_addr}"), None);
    let (status, body) = scraper.get_text("/metrics").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("wellcar_server_update_checks_total"));
    s.stop().await;
}

/// Finding "metrics leak" (labels): a client's ~64 KB version string (or one with a quote)
/// never becomes a label; the instances are counted under `version="other"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_versions_never_become_metric_labels() {
    let s = Setup::start(|_| {}).await;
    // As large as the Omaha body limit allows (the finding's "64 KB version").
    let huge = format!(
        "9.9.9+{}",
        "x".repeat(wellcar_omaha::MAX_REQUEST_BYTES - 1024)
    );
    for (machine, version) in [("m-huge", huge.as_str()), ("m-odd", "1.0.0-evil\"label")] {
        let xml = wellcar_omaha::Request {
            updater_version: "wellcar-test-0.1".into(),
            install_source: "scheduler".into(),
            os: None,
            apps: vec![wellcar_omaha::AppRequest {
                app_id: WELLCAR_APP_ID.into(),
                version: version.into(),
                track: "stable".into(),
                board: "amd64-usr".into(),
                machine_id: machine.into(),
                ping: true,
                update_check: Some(Default::default()),
                ..Default::default()
            }],
        }
        .to_xml();
        let (status, answer) = s.anonymous.omaha(&xml).await.unwrap();
        // The huge one may also be refused by request limits; the short one is a plain check.
        if machine == "m-odd" {
            assert_eq!(status, StatusCode::OK, "{machine}: {answer}");
        }
    }
    s.server.state.flush_sightings().await.unwrap();
    let (status, body) = s.admin.get_text("/metrics").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("xxxxxxxx"), "the huge version leaked");
    assert!(!text.contains("evil"), "{text}");
    assert!(text.len() < 16 << 10, "metrics are {} bytes", text.len());
    let stored = s
        .server
        .state
        .db
        .read(|c| store::instance_breakdown(c))
        .await
        .unwrap();
    let gauge = format!(
        "wellcar_server_instances{{app=\"{WELLCAR_APP_ID}\",version=\"other\",group=\"stable\",status=\"undefined\"}}"
    );
    let counted = crate::metrics::sample(&text, &gauge).unwrap_or(0.0);
    let instances: i64 = stored.iter().map(|row| row.4).sum();
    assert!(instances >= 1, "no instance was recorded");
    assert_eq!(counted as i64, instances, "{text}");
    s.stop().await;
}

/// Finding "uploads" (rejected upload stays): an upload refused for its arch, its version, an
/// empty body or its size leaves no file on disk and nothing served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_uploads_leave_nothing_stored_or_served() {
    let s = Setup::start(|st| st.max_upload_bytes = 1024).await;
    let cases: [(&str, &str, &[u8], StatusCode); 4] = [
        ("riscv", "1.0.0", b"payload", StatusCode::BAD_REQUEST),
        (
            "amd64",
            "not-a-version",
            b"payload",
            StatusCode::BAD_REQUEST,
        ),
        ("amd64", "1.0.1", b"", StatusCode::BAD_REQUEST),
        (
            "amd64",
            "1.0.2",
            &[7_u8; 4096],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (arch, version, body, expected) in cases {
        let (status, answer) = put(&s.admin, &upload_path(arch, version, "u.bin"), body).await;
        assert_eq!(status, expected, "{arch} {version}: {answer:?}");
        let (status, _) = s
            .anonymous
            .get_text(&served_path(arch, version, "u.bin"))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{arch} {version} is served");
    }
    let left = files_under(&s.payload_dir());
    assert!(left.is_empty(), "files left behind: {left:?}");
    let packages: Vec<Package> = s
        .admin
        .get(&format!("/api/v1/apps/{WELLCAR_APP_ID}/packages"))
        .await
        .unwrap();
    assert!(packages.is_empty(), "{packages:?}");
    s.stop().await;
}

/// Finding "uploads" (409 replaced the hosted file): of two overlapping uploads of one
/// version, exactly one is stored, and the hosted file is that one's, matching its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_upload_leaves_the_hosted_file_untouched() {
    let s = Setup::start(|_| {}).await;
    let path = upload_path("amd64", "2.0.0", "u.bin");
    let slow_content = vec![b's'; 300_000];
    let fast_content = vec![b'f'; 1000];

    // The slow upload sends its first half, then waits.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let slow_body = Body::Reader(Box::new(ChunkReader {
        chunks: rx,
        current: std::io::Cursor::new(Vec::new()),
    }));
    let slow_client = s.admin.clone();
    let slow_path = path.clone();
    let slow = tokio::spawn(async move {
        slow_client
            .send(
                Method::PUT,
                &slow_path,
                Some("application/octet-stream"),
                slow_body,
            )
            .await
            .unwrap()
    });
    tx.send(slow_content[..150_000].to_vec()).unwrap();
    let version_dir = s
        .payload_dir()
        .join(WELLCAR_APP_ID)
        .join("amd64")
        .join("2.0.0");
    wellcar_test_support::wait::wait_until_async(
        "the slow upload's temporary file",
        Duration::from_secs(30),
        || {
            let dir = version_dir.clone();
            async move { (!files_under(&dir).is_empty()).then_some(()) }
        },
    )
    .await;

    // The fast upload runs entirely while the slow one is in flight.
    let (fast_status, _) = put(&s.admin, &path, &fast_content).await;
    tx.send(slow_content[150_000..].to_vec()).unwrap();
    drop(tx);
    let (slow_status, _) = slow.await.unwrap();

    let mut statuses = [fast_status, slow_status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::CREATED, StatusCode::CONFLICT]);
    let winner = if fast_status == StatusCode::CREATED {
        &fast_content
    } else {
        &slow_content
    };
    let packages: Vec<Package> = s
        .admin
        .get(&format!("/api/v1/apps/{WELLCAR_APP_ID}/packages"))
        .await
        .unwrap();
    assert_eq!(packages.len(), 1);
    assert_eq!(
        packages[0].sha256_hex,
        hex::encode(sha2::Sha256::digest(winner))
    );
    let on_disk = std::fs::read(version_dir.join("u.bin")).unwrap();
    assert!(on_disk == *winner, "the hosted file is the losing upload's");
    let (status, served) = s
        .anonymous
        .get_text(&served_path("amd64", "2.0.0", "u.bin"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(served.as_ref() == winner.as_slice());
    s.stop().await;
}

/// Finding "uploads" (dotfiles and symlinks served): only published packages' files are
/// served; dotfiles, stray files, symlinks (also one swapped in for a published file) and
/// traversal get 404. Ranged GETs of a published file still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_published_payload_files_are_served() {
    let s = Setup::start(|_| {}).await;
    let content: Vec<u8> = (0..5000_u32).map(|i| i as u8).collect();
    for version in ["3.0.0", "3.0.1"] {
        let (status, body) = put(&s.admin, &upload_path("amd64", version, "u.bin"), &content).await;
        assert_eq!(status, StatusCode::CREATED, "{body:?}");
    }
    let (status, served) = s
        .anonymous
        .get_text(&served_path("amd64", "3.0.0", "u.bin"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(served.as_ref() == content.as_slice());
    let (status, part) = s
        .anonymous
        .get_range(&served_path("amd64", "3.0.0", "u.bin"), "bytes=1000-")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert!(part.as_ref() == &content[1000..]);

    let dir = s
        .payload_dir()
        .join(WELLCAR_APP_ID)
        .join("amd64")
        .join("3.0.0");
    let outside = s.dir.path().join("secret.txt");
    std::fs::write(&outside, vec![b'S'; content.len()]).unwrap();
    std::fs::write(dir.join(".hidden"), b"dotfile").unwrap();
    std::fs::write(dir.join("stray.bin"), b"stray").unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("link.bin")).unwrap();
    // A published file swapped for a symlink of the same size.
    let other = s
        .payload_dir()
        .join(WELLCAR_APP_ID)
        .join("amd64")
        .join("3.0.1");
    std::fs::remove_file(other.join("u.bin")).unwrap();
    std::os::unix::fs::symlink(&outside, other.join("u.bin")).unwrap();
    for path in [
        served_path("amd64", "3.0.0", ".hidden"),
        served_path("amd64", "3.0.0", "stray.bin"),
        served_path("amd64", "3.0.0", "link.bin"),
        served_path("amd64", "3.0.1", "u.bin"),
        "/packages/server.db".to_owned(),
        format!("/packages/{WELLCAR_APP_ID}/amd64/3.0.0/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt"),
    ] {
        let (status, body) = s.anonymous.get_text(&path).await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{path} served {body:?}");
    }
    s.stop().await;
}
