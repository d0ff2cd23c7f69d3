//! The listener side over real loopback sockets: connection timeouts and cap, TLS with reload,
//! and which headers are believed (issue 20, parts 2, 3 and 5).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use wellcar_omaha::{Response, UpdateDecision, WELLCAR_APP_ID};
use wellcar_test_support::wait::{wait_until, wait_until_async};

use crate::client::{ApiClient, PackageRef};
use crate::model::Instance;
use crate::store::Role;
use crate::{RunningServer, Settings};

/// How long a test waits for something the server should do within a fraction of it.
const PATIENCE: Duration = Duration::from_secs(10);

/// A server on SQLite in a fresh directory, `configure`d first.
async fn start(configure: impl FnOnce(&mut Settings)) -> (RunningServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite:{}", dir.path().join("server.db").display());
    let mut settings = Settings::new(&database, "127.0.0.1:0".parse().unwrap());
    settings.payload_dir = dir.path().join("payloads");
    settings.flush_interval = Duration::from_millis(50);
    configure(&mut settings);
    (crate::spawn(settings).await.unwrap(), dir)
}

/// Whether the server has closed `stream` (EOF or reset); `None` while it is still open.
/// Bytes the server sent first (a response) are read and dropped.
fn closed_by_server(stream: &mut TcpStream) -> Option<()> {
    received_until_closed(stream, &mut Vec::new())
}

/// Like [`closed_by_server`], keeping the bytes received in `received`.
fn received_until_closed(stream: &mut TcpStream, received: &mut Vec<u8>) -> Option<()> {
    let mut buf = [0u8; 4096];
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(()),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(_) => return Some(()),
        }
    }
}

/// Sends `request` (with `Connection: close`) on a fresh connection and reads the whole answer.
fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Finding "half-sent requests were never closed": a client that sends half a request head and
/// stops is disconnected once the header timeout passes, and others are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_request_head_is_closed_after_the_header_timeout() {
    let (server, _dir) = start(|s| {
        s.connection_limits.header_timeout = Duration::from_millis(200);
    })
    .await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        wait_until("the half-sent request to be closed", PATIENCE, || {
            closed_by_server(&mut slow)
        });
        let answer = exchange(addr, "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    })
    .await
    .unwrap();
    server.shutdown().await.unwrap();
}

/// Finding "no idle timeout": a connection that never sends a byte, and a keep-alive connection
/// after its response, are closed once the idle timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let (server, _dir) = start(|s| {
        s.connection_limits.idle_timeout = Duration::from_millis(200);
    })
    .await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let mut silent = TcpStream::connect(addr).unwrap();
        let mut kept_alive = TcpStream::connect(addr).unwrap();
        kept_alive
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        kept_alive.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut first = [0u8; 12];
        kept_alive.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        wait_until("the silent connection to be closed", PATIENCE, || {
            closed_by_server(&mut silent)
        });
        wait_until("the kept-alive connection to be closed", PATIENCE, || {
            closed_by_server(&mut kept_alive)
        });
    })
    .await
    .unwrap();
    server.shutdown().await.unwrap();
}

/// Finding "no body timeout": a request whose body stops arriving gets no success, and its
/// connection is closed once the body timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_is_cut_off() {
    let (server, _dir) = start(|s| {
        s.connection_limits.body_timeout = Duration::from_millis(200);
    })
    .await;
    let addr = server.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let mut stalled = TcpStream::connect(addr).unwrap();
        stalled
            .write_all(
                b"POST /v1/update/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n<request",
            )
            .unwrap();
        // The server answers (or just closes) on its own; the body never completes.
        let mut answer = Vec::new();
        wait_until("the stalled request to be closed", PATIENCE, || {
            received_until_closed(&mut stalled, &mut answer)
        });
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "a stalled body must not succeed: {answer}"
    );
    server.shutdown().await.unwrap();
}

/// Finding "connections are unlimited" (300 idle sockets made `/health` time out): with a cap
/// of 20 and twice as many idle sockets, the server holds at most 20 connections, closes the
/// longest-idle ones to make room, and `/health` is answered long before any timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_beyond_the_cap_cannot_starve_health() {
    const CAP: usize = 20;
    let (server, _dir) = start(|s| {
        s.connection_limits.max_connections = Some(CAP);
        s.connection_limits.header_timeout = Duration::from_secs(600);
        s.connection_limits.idle_timeout = Duration::from_secs(600);
    })
    .await;
    assert_eq!(server.connections.cap(), CAP);
    let addr = server.addr;
    let connections = server.connections.clone();
    tokio::task::spawn_blocking(move || {
        let mut idle: Vec<TcpStream> = (0..2 * CAP)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let answer = exchange(addr, "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        let closed = wait_until("idle sockets beyond the cap to be closed", PATIENCE, || {
            let closed = idle.iter_mut().filter_map(closed_by_server).count();
            (closed >= CAP).then_some(closed)
        });
        assert!(closed <= 2 * CAP);
        assert!(connections.open() <= CAP, "{} open", connections.open());
    })
    .await
    .unwrap();
    server.shutdown().await.unwrap();
}

/// A connection cap the open-file limit cannot hold is refused at start, naming both numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_beyond_the_open_file_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite:{}", dir.path().join("server.db").display());
    let mut settings = Settings::new(&database, "127.0.0.1:0".parse().unwrap());
    settings.payload_dir = dir.path().join("payloads");
    settings.connection_limits.max_connections = Some(usize::MAX);
    let e = crate::spawn(settings).await.unwrap_err().to_string();
    assert!(
        e.contains(&usize::MAX.to_string()) && e.contains("open-file limit"),
        "{e}"
    );
}

/// A CA and two server certificates for `localhost` it signed, written as PEM files.
struct TestPki {
    ca: CertificateDer<'static>,
    first: (String, String),
    second: (String, String),
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl TestPki {
    fn new(dir: &Path) -> Self {
        let ca = wellcar_test_support::pki::TestCa::new("wellcar test CA").unwrap();
        let leaf = |name: &str| ca.issue(&["localhost"], name).unwrap();
        let pki = Self {
            ca: der_of(&ca.pem()),
            first: leaf("first"),
            second: leaf("second"),
            cert_file: dir.join("server.crt"),
            key_file: dir.join("server.key"),
        };
        pki.install(&pki.first);
        pki
    }

    /// Writes `pair` as the server's certificate and key files.
    fn install(&self, pair: &(String, String)) {
        std::fs::write(&self.cert_file, &pair.0).unwrap();
        std::fs::write(&self.key_file, &pair.1).unwrap();
    }

    fn files(&self) -> crate::tls::TlsFiles {
        crate::tls::TlsFiles {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
        }
    }
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// GET /health over https trusting only `ca`; returns the answer and the leaf it was served.
async fn https_health(addr: SocketAddr, ca: &CertificateDer<'static>) -> (String, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.unwrap();
    (String::from_utf8_lossy(&answer).into_owned(), leaf)
}

/// Finding "there is no TLS in the server": with `--tls-cert`/`--tls-key` the listener speaks
/// https with the given chain; a bad reload keeps the old certificate; a good one (through
/// [`RunningServer::reload_tls`], the function SIGHUP calls) serves the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_configured_certificate_and_reloads_it() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(pki_dir.path());
    let (server, _dir) = start(|s| s.tls = Some(pki.files())).await;
    assert!(server.url().starts_with("https://127.0.0.1:"));

    let (answer, leaf) = https_health(server.addr, &pki.ca).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(leaf, der_of(&pki.first.0).to_vec());

    // A key that does not match the certificate: refused, the old pair stays.
    std::fs::write(&pki.cert_file, &pki.second.0).unwrap();
    let refused = server.reload_tls().unwrap().unwrap_err();
    assert!(
        refused.to_string().contains("server.key"),
        "the error names the key file: {refused}"
    );
    assert_eq!(
        https_health(server.addr, &pki.ca).await.1,
        der_of(&pki.first.0).to_vec()
    );

    pki.install(&pki.second);
    server.reload_tls().unwrap().unwrap();
    let (answer, leaf) = https_health(server.addr, &pki.ca).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(leaf, der_of(&pki.second.0).to_vec());
    server.shutdown().await.unwrap();
}

/// Finding "there is no TLS in the server", reload half: a real SIGHUP to this process reaches
/// the server's own handler, which loads the replaced certificate files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(pki_dir.path());
    let (server, _dir) = start(|s| s.tls = Some(pki.files())).await;
    assert_eq!(
        https_health(server.addr, &pki.ca).await.1,
        der_of(&pki.first.0).to_vec()
    );
    pki.install(&pki.second);
    // The handler was installed before spawn returned, so SIGHUP cannot kill the test process.
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP).unwrap();
    let second = der_of(&pki.second.0).to_vec();
    let addr = server.addr;
    wait_until_async(
        "the SIGHUP reload to serve the new certificate",
        PATIENCE,
        || {
            let (ca, second) = (pki.ca.clone(), second.clone());
            async move { (https_health(addr, &ca).await.1 == second).then_some(()) }
        },
    )
    .await;
    server.shutdown().await.unwrap();
}

/// A bad `--tls-key` stops the server at start with an error naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_tls_key_is_refused_at_start_naming_the_file() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(pki_dir.path());
    std::fs::write(&pki.key_file, "not a key").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite:{}", dir.path().join("server.db").display());
    let mut settings = Settings::new(&database, "127.0.0.1:0".parse().unwrap());
    settings.payload_dir = dir.path().join("payloads");
    settings.tls = Some(pki.files());
    let e = crate::spawn(settings).await.unwrap_err();
    assert!(format!("{e:#}").contains("server.key"), "{e:#}");
}

/// An Omaha request for the Wellcar app from `machine` on 1.0.0, stable, with an update check.
fn check_request(machine: &str) -> String {
    wellcar_omaha::Request {
        updater_version: "wellcar-test-0.1".into(),
        install_source: "scheduler".into(),
        os: None,
        apps: vec![wellcar_omaha::AppRequest {
            app_id: WELLCAR_APP_ID.into(),
            version: "1.0.0".into(),
            track: "stable".into(),
            board: "amd64-usr".into(),
            machine_id: machine.into(),
            ping: true,
            update_check: Some(Default::default()),
            ..Default::default()
        }],
    }
    .to_xml()
}

/// POSTs an Omaha request with extra raw header lines and parses the answer.
fn post_omaha(addr: SocketAddr, extra_headers: &str, xml: &str) -> Response {
    let answer = exchange(
        addr,
        &format!(
            "POST /v1/update/ HTTP/1.1\r\n{extra_headers}Content-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        ),
    );
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    Response::parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Finding "the download URL is built from the Host header": a check with a forged `Host` gets
/// URLs on the listener's own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_host_does_not_change_download_urls() {
    let (server, dir) = start(|_| {}).await;
    let token = crate::test_server::token(&server, "admin", Role::Admin, crate::now_ms()).await;
    let api = ApiClient::new(&server.url(), Some(&token));
    let file = dir.path().join("payload.bin");
    std::fs::write(&file, vec![7u8; 4096]).unwrap();
    let package = PackageRef {
        app: WELLCAR_APP_ID,
        version: "1.2.3",
        arch: "amd64",
    };
    let _: serde_json::Value = api
        .upload_package(&package, "wellcar_update.bin", &file, Arc::new(|_| {}))
        .await
        .unwrap();
    let _: serde_json::Value = api.publish(&package, "stable").await.unwrap();

    let addr = server.addr;
    let response = tokio::task::spawn_blocking(move || {
        post_omaha(
            addr,
            "Host: evil.example\r\n",
            &check_request("forged-host"),
        )
    })
    .await
    .unwrap();
    let UpdateDecision::Update(info) = response.update_decision().unwrap() else {
        panic!("expected an update")
    };
    let expected = format!("http://{addr}/packages/");
    assert!(info.urls[0].starts_with(&expected), "{:?}", info.urls);
    server.shutdown().await.unwrap();
}

/// The IP the server recorded for `machine`.
async fn recorded_ip(server: &RunningServer, machine: &str) -> String {
    let token = crate::test_server::token(server, "reader", Role::Admin, crate::now_ms()).await;
    let api = ApiClient::new(&server.url(), Some(&token));
    server.state.flush_sightings().await.unwrap();
    let list: Vec<Instance> = api
        .get(&format!(
            "/api/v1/apps/{WELLCAR_APP_ID}/instances?limit=100"
        ))
        .await
        .unwrap();
    list.into_iter()
        .find(|i| i.facts.machine_id == machine)
        .unwrap_or_else(|| panic!("instance {machine} not listed"))
        .facts
        .ip
}

/// Finding "X-Forwarded-For is believed from anyone": from an untrusted peer the header is
/// ignored and the TCP peer is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let (server, _dir) = start(|s| {
        s.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        post_omaha(
            addr,
            "X-Forwarded-For: 203.0.113.9\r\n",
            &check_request("untrusted"),
        )
    })
    .await
    .unwrap();
    assert_eq!(recorded_ip(&server, "untrusted").await, "127.0.0.1");
    server.shutdown().await.unwrap();
}

/// Finding "X-Forwarded-For is believed from anyone", positive half: from a `--trusted-proxy`
/// peer (127.0.0.0/8) the forwarded client address is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_a_trusted_proxy_is_honoured() {
    let (server, _dir) = start(|s| {
        s.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        post_omaha(
            addr,
            "X-Forwarded-For: 203.0.113.9\r\n",
            &check_request("proxied"),
        )
    })
    .await
    .unwrap();
    assert_eq!(recorded_ip(&server, "proxied").await, "203.0.113.9");
    server.shutdown().await.unwrap();
}
