//! The fetcher against real servers on loopback: a small HTTP/1.1 server (plain, or TLS with a
//! throw-away CA), a CONNECT proxy, and dnsmasq's TFTP server.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha512};
use wellcar_test_support::pki::TestPki;

use super::*;
use crate::model::{HttpHeader, Verification};

/// What the test server answers for a path.
#[derive(Clone)]
pub(crate) enum Reply {
    /// Status and body (Content-Length set).
    Body(u16, Vec<u8>),
    /// Status with a Location header.
    Redirect(String),
    /// Raw bytes, then the connection closes.
    Raw(Vec<u8>),
    /// Reads the request and never answers.
    Hang,
    /// Answers with the first status for the first `n` requests, then the reply.
    FailFirst(usize, u16, Box<Reply>),
}

/// A loopback HTTP(S) server with fixed routes that records each request head.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) requests: Arc<Mutex<Vec<String>>>,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
}

impl Server {
    pub(crate) fn start(routes: Vec<(&str, Reply)>, tls: Option<&TestPki>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let routes: HashMap<String, Reply> = routes
            .into_iter()
            .map(|(p, r)| (p.to_string(), r))
            .collect();
        let routes = Arc::new(Mutex::new(routes));
        let tls = tls.map(|pki| {
            let chain =
                vec![CertificateDer::from_pem_slice(pki.server_cert_pem.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).unwrap();
            Arc::new(
                rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
            )
        });
        let seen = requests.clone();
        let shared = routes.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (seen, routes, tls) = (seen.clone(), routes.clone(), tls.clone());
                std::thread::spawn(move || {
                    let io: Box<dyn ReadWrite> = match tls {
                        Some(config) => Box::new(rustls::StreamOwned::new(
                            rustls::ServerConnection::new(config).unwrap(),
                            stream,
                        )),
                        None => Box::new(stream),
                    };
                    serve_connection(io, &seen, &routes);
                });
            }
        });
        Self {
            addr,
            requests,
            routes: shared,
        }
    }

    /// Sets (or replaces) the reply for `path`.
    pub(crate) fn route(&self, path: &str, reply: Reply) {
        self.routes.lock().unwrap().insert(path.to_string(), reply);
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn count(&self, path: &str) -> usize {
        let line = format!(" {path} HTTP");
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.lines().next().is_some_and(|l| l.contains(&line)))
            .count()
    }
}

pub(crate) trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

fn serve_connection(
    io: Box<dyn ReadWrite>,
    seen: &Mutex<Vec<String>>,
    routes: &Mutex<HashMap<String, Reply>>,
) {
    let mut reader = BufReader::new(io);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        seen.lock().unwrap().push(head.clone());
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let reply = {
            let mut routes = routes.lock().unwrap();
            match routes.get_mut(&path) {
                Some(Reply::FailFirst(n, status, _)) if *n > 0 => {
                    *n -= 1;
                    Reply::Body(*status, b"try again".to_vec())
                }
                Some(Reply::FailFirst(_, _, then)) => (**then).clone(),
                Some(r) => r.clone(),
                None => Reply::Body(404, b"no such path".to_vec()),
            }
        };
        let io = reader.get_mut();
        let keep = match reply {
            Reply::Body(status, body) => {
                let _ = write!(
                    io,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = io.write_all(&body);
                true
            }
            Reply::Redirect(to) => {
                let _ = write!(
                    io,
                    "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"
                );
                true
            }
            Reply::Raw(bytes) => {
                let _ = io.write_all(&bytes);
                false
            }
            Reply::Hang => {
                // Hold the connection open without answering until the client leaves.
                let mut sink = [0_u8; 64];
                while reader.read(&mut sink).is_ok_and(|n| n > 0) {}
                false
            }
            Reply::FailFirst(..) => unreachable!("resolved above"),
        };
        let _ = reader.get_mut().flush();
        if !keep {
            return;
        }
    }
}

/// A CONNECT proxy that tunnels every target to `to` and records the CONNECT lines.
pub(crate) fn connect_proxy(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                log.lock().unwrap().push(first.trim_end().to_string());
                let mut client = client;
                let upstream = TcpStream::connect(to).unwrap();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let (mut up_read, mut up_write) = (upstream.try_clone().unwrap(), upstream);
                let mut client_write = client.try_clone().unwrap();
                let buffered = reader.buffer().to_vec();
                up_write.write_all(&buffered).unwrap();
                let mut client_read = reader.into_inner();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client_read, &mut up_write);
                });
                let _ = std::io::copy(&mut up_read, &mut client_write);
            });
        }
    });
    (addr, seen)
}

pub(crate) fn resource(url: &str) -> Resource {
    Resource {
        source: Some(url.to_string()),
        ..Resource::default()
    }
}

/// Options that give up quickly, for failure cases.
pub(crate) fn quick_options() -> FetchOptions {
    FetchOptions {
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            give_up_after: Some(Duration::from_secs(2)),
        },
        ..FetchOptions::default()
    }
}

/// A fetcher with [`quick_options`].
pub(crate) fn quick_fetcher() -> Fetcher {
    Fetcher::new(quick_options()).unwrap()
}

fn chain(e: &dyn std::error::Error) -> String {
    wellcar_contract::error_chain(e)
}

#[test]
fn not_found_is_not_retried_and_names_url_and_status() {
    let server = Server::start(vec![], None);
    let url = server.url("/missing.ign");
    let err = quick_fetcher()
        .fetch_bytes(&resource(&url), 1024)
        .unwrap_err();
    assert!(matches!(err, FetchError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&url) && msg.contains("404"), "{msg}");
    assert_eq!(server.count("/missing.ign"), 1);
}

#[test]
fn server_errors_are_retried_with_backoff_until_success() {
    let server = Server::start(
        vec![(
            "/flaky",
            Reply::FailFirst(2, 503, Box::new(Reply::Body(200, b"finally".to_vec()))),
        )],
        None,
    );
    let got = quick_fetcher()
        .fetch_bytes(&resource(&server.url("/flaky")), 1024)
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"finally"[..]));
    assert_eq!(server.count("/flaky"), 3);
}

#[test]
fn wrong_hash_names_url_and_both_digests() {
    let server = Server::start(vec![("/f", Reply::Body(200, b"payload".to_vec()))], None);
    let mut r = resource(&server.url("/f"));
    r.verification = Verification {
        hash: Some(format!("sha512-{}", "ab".repeat(64))),
    };
    let err = quick_fetcher().fetch_bytes(&r, 1024).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::HashMismatch { .. }), "{err:?}");
    assert!(
        msg.contains(&server.url("/f")) && msg.contains(&"ab".repeat(64)),
        "{msg}"
    );
    let right = stream::hex_lower(&Sha512::digest(b"payload"));
    r.verification.hash = Some(format!("sha512-{right}"));
    assert_eq!(
        quick_fetcher().fetch_bytes(&r, 1024).unwrap().unwrap(),
        b"payload"
    );
}

#[test]
fn truncated_body_is_an_error_naming_the_url() {
    let server = Server::start(
        vec![(
            "/short",
            Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b".to_vec()),
        )],
        None,
    );
    let url = server.url("/short");
    let err = quick_fetcher()
        .fetch_bytes(&resource(&url), 1024)
        .unwrap_err();
    let msg = chain(&err);
    assert!(matches!(err, FetchError::Body { after: 10, .. }), "{msg}");
    assert!(msg.contains(&url), "{msg}");
}

#[test]
fn a_server_that_never_answers_hits_the_configured_timeouts() {
    let server = Server::start(vec![("/hang", Reply::Hang)], None);
    let url = server.url("/hang");
    let ignition: crate::model::Ignition = crate::parse_config(
        br#"{"ignition":{"version":"3.6.0","timeouts":{"httpResponseHeaders":1,"httpTotal":3}}}"#,
    )
    .unwrap()
    .config
    .ignition;
    let fetcher = Fetcher::default().with_config(&ignition).unwrap();
    assert_eq!(
        fetcher.options().timeouts.response_headers,
        Some(Duration::from_secs(1))
    );
    let err = fetcher.fetch_bytes(&resource(&url), 1024).unwrap_err();
    let msg = err.to_string();
    match &err {
        FetchError::GaveUp {
            attempts,
            seconds,
            last,
            ..
        } => {
            assert_eq!(*seconds, 3, "{msg}");
            assert!(*attempts >= 2, "retried: {msg}");
            assert!(last.contains("timeout"), "{msg}");
        }
        other => panic!("wanted GaveUp, got {other:?}"),
    }
    assert!(msg.contains(&url), "{msg}");
}

#[test]
fn an_unresolvable_name_gives_up_naming_the_url() {
    let url = "http://wellcar-fetch-test.invalid/config.ign";
    let err = quick_fetcher()
        .fetch_bytes(&resource(url), 1024)
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::GaveUp { .. }), "{err:?}");
    assert!(msg.contains(url) && msg.contains("last error"), "{msg}");
}

#[test]
fn a_redirect_loop_stops_at_the_limit() {
    let server = Server::start(vec![], None);
    let looping = server.url("/loop");
    server.route("/loop", Reply::Redirect(looping.clone()));
    let err = quick_fetcher()
        .fetch_bytes(&resource(&looping), 1024)
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Redirects { limit: 10, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&looping), "{err}");
    assert_eq!(
        server.count("/loop"),
        11,
        "the first request and 10 redirects"
    );
}

#[test]
fn http_headers_reach_the_server_and_override_the_user_agent() {
    let server = Server::start(vec![("/h", Reply::Body(200, b"ok".to_vec()))], None);
    let mut r = resource(&server.url("/h"));
    r.http_headers = vec![
        HttpHeader {
            name: "X-Wellcar-Token".into(),
            value: Some("s3cret".into()),
        },
        HttpHeader {
            name: "User-Agent".into(),
            value: Some("custom-agent/1".into()),
        },
    ];
    quick_fetcher().fetch_bytes(&r, 1024).unwrap();
    let head = server.requests.lock().unwrap()[0].to_ascii_lowercase();
    assert!(head.contains("x-wellcar-token: s3cret"), "{head}");
    assert!(head.contains("user-agent: custom-agent/1"), "{head}");
    assert!(!head.contains("wellcar-ignition/"), "{head}");
}

#[test]
fn the_configured_proxy_carries_the_request_and_no_proxy_bypasses_it() {
    let server = Server::start(
        vec![("/p.ign", Reply::Body(200, b"via proxy".to_vec()))],
        None,
    );
    let (proxy, connects) = connect_proxy(server.addr);
    let config = format!(
        r#"{{"ignition":{{"version":"3.6.0","proxy":{{"httpProxy":"http://{proxy}","noProxy":["bypass.wellcar.test"]}}}}}}"#
    );
    let ignition = crate::parse_config(config.as_bytes())
        .unwrap()
        .config
        .ignition;
    let fetcher = quick_fetcher().with_config(&ignition).unwrap();
    // A name only the proxy can "resolve": it tunnels every target to the server.
    let got = fetcher
        .fetch_bytes(&resource("http://config.wellcar.test/p.ign"), 1024)
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"via proxy"[..]));
    assert_eq!(
        connects.lock().unwrap().as_slice(),
        ["CONNECT config.wellcar.test:80 HTTP/1.1"]
    );
    // noProxy: the client resolves the name itself, which fails (not through the proxy).
    let err = fetcher
        .fetch_bytes(&resource("http://bypass.wellcar.test/p.ign"), 1024)
        .unwrap_err();
    assert!(matches!(err, FetchError::GaveUp { .. }), "{err:?}");
    assert_eq!(connects.lock().unwrap().len(), 1);
}

#[test]
fn https_trusts_the_ca_from_certificate_authorities() {
    let pki = TestPki::generate("wellcar fetch test CA", &["127.0.0.1"]).unwrap();
    let server = Server::start(
        vec![("/s.ign", Reply::Body(200, b"secure".to_vec()))],
        Some(&pki),
    );
    let url = format!("https://{}/s.ign", server.addr);
    let err = quick_fetcher()
        .fetch_bytes(&resource(&url), 1024)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, FetchError::Request { .. }),
        "not retried: {err:?}"
    );
    assert!(msg.contains(&url), "{msg}");

    let ca_url = format!(
        "data:;base64,{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &pki.ca_pem)
    );
    let config = format!(
        r#"{{"ignition":{{"version":"3.6.0","security":{{"tls":{{"certificateAuthorities":[{{"source":"{ca_url}"}}]}}}}}}}}"#
    );
    let ignition = crate::parse_config(config.as_bytes())
        .unwrap()
        .config
        .ignition;
    let fetcher = quick_fetcher().with_config(&ignition).unwrap();
    assert_eq!(
        fetcher
            .fetch_bytes(&resource(&url), 1024)
            .unwrap()
            .as_deref(),
        Some(&b"secure"[..])
    );

    let bad = r#"{"ignition":{"version":"3.6.0","security":{"tls":{"certificateAuthorities":[{"source":"data:,not%20a%20certificate"}]}}}}"#;
    let ignition = crate::parse_config(bad.as_bytes()).unwrap().config.ignition;
    let err = quick_fetcher().with_config(&ignition).unwrap_err();
    assert_eq!(err.field, "ignition.security.tls.certificateAuthorities.0");
    assert!(
        matches!(*err.source, FetchError::CaCertificate { .. }),
        "{err:?}"
    );
}

#[test]
fn cloud_storage_and_offline_are_refused_by_name() {
    let err = quick_fetcher()
        .fetch_bytes(&resource("s3://bucket/config.ign"), 1024)
        .unwrap_err();
    assert!(
        err.to_string().contains("s3://bucket/config.ign")
            && err.to_string().contains("credentials"),
        "{err}"
    );
    let offline = fetch(&resource("https://example.com/x")).unwrap_err();
    assert!(
        matches!(offline, FetchError::RemoteUnavailable { .. }),
        "{offline:?}"
    );
    assert!(offline.to_string().contains("https://example.com/x"));
    assert_eq!(fetch(&Resource::default()).unwrap(), None);
    assert_eq!(fetch(&resource("")).unwrap().unwrap(), b"");
    assert!(is_remote("tftp://h/x") && is_remote("HTTPS://h/") && !is_remote("data:,x"));
}

#[test]
fn gzip_over_http_is_decoded_while_streaming() {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(b"compressed file\n").unwrap();
    let server = Server::start(vec![("/z", Reply::Body(200, enc.finish().unwrap()))], None);
    let mut r = resource(&server.url("/z"));
    r.compression = Some("gzip".into());
    r.verification.hash = Some(format!(
        "sha512-{}",
        stream::hex_lower(&Sha512::digest(b"compressed file\n"))
    ));
    assert_eq!(
        quick_fetcher().fetch_bytes(&r, 1024).unwrap().unwrap(),
        b"compressed file\n"
    );
}

#[test]
fn merge_from_a_second_url_uses_the_same_fetcher() {
    let child = br#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/child","contents":{"source":"data:,from%20child"}}]}}"#;
    let server = Server::start(vec![("/child.ign", Reply::Body(200, child.to_vec()))], None);
    let parent = format!(
        r#"{{"ignition":{{"version":"3.6.0","config":{{"merge":[{{"source":"{}","httpHeaders":[{{"name":"X-Merge","value":"1"}}]}}]}}}},"storage":{{"files":[{{"path":"/etc/parent"}}]}}}}"#,
        server.url("/child.ign")
    );
    let config = crate::parse_config(parent.as_bytes()).unwrap().config;
    let merged = crate::resolve_references_with(config.clone(), &quick_fetcher()).unwrap();
    assert_eq!(merged.file_paths(), ["/etc/parent", "/etc/child"]);
    assert!(server.requests.lock().unwrap()[0]
        .to_ascii_lowercase()
        .contains("x-merge: 1"));

    // The offline form refuses the same reference, naming field and URL.
    let err = crate::resolve_references(config).unwrap_err();
    let msg = chain(&err);
    assert!(
        msg.contains("ignition.config.merge.0") && msg.contains(&server.url("/child.ign")),
        "{msg}"
    );

    // A 404 on the merge names the field, the URL and the status.
    let missing = format!(
        r#"{{"ignition":{{"version":"3.6.0","config":{{"merge":[{{"source":"{}"}}]}}}}}}"#,
        server.url("/gone.ign")
    );
    let config = crate::parse_config(missing.as_bytes()).unwrap().config;
    let err = crate::resolve_references_with(config, &quick_fetcher()).unwrap_err();
    let msg = chain(&err);
    assert!(
        msg.contains("ignition.config.merge.0") && msg.contains("/gone.ign") && msg.contains("404"),
        "{msg}"
    );
}

#[test]
fn tftp_fetches_from_dnsmasq() {
    let dnsmasq = wellcar_test_support::tools::require("dnsmasq");
    let dir = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = (0..3000_u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("config.ign"), &payload).unwrap();
    // Exactly one block: the transfer ends with an empty DATA packet.
    std::fs::write(dir.path().join("block.bin"), [7_u8; 512]).unwrap();
    // A loopback address of its own, so port 69 does not clash with other tests.
    let octet = 2 + (std::process::id() % 200) as u8;
    let ip = format!("127.69.{octet}.1");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = std::process::Command::new(dnsmasq)
        .args([
            "--keep-in-foreground",
            "--port=0",
            "--enable-tftp",
            "--tftp-single-port",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--user=root",
            "--log-facility=-",
            "--bind-dynamic",
        ])
        .arg(format!("--listen-address={ip}"))
        .arg(format!("--tftp-root={}", dir.path().display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(child);
    let fetcher = quick_fetcher();
    let url = format!("tftp://{ip}/config.ign");
    let got =
        wellcar_test_support::wait::wait_until("dnsmasq TFTP", Duration::from_secs(20), || {
            fetcher.fetch_bytes(&resource(&url), 1 << 20).ok()
        });
    assert_eq!(got.unwrap(), payload);
    let block = fetcher
        .fetch_bytes(&resource(&format!("tftp://{ip}/block.bin")), 1 << 20)
        .unwrap()
        .unwrap();
    assert_eq!(block, [7_u8; 512]);
    let missing = format!("tftp://{ip}/missing.ign");
    let err = fetcher
        .fetch_bytes(&resource(&missing), 1 << 20)
        .unwrap_err();
    assert!(matches!(err, FetchError::Tftp { .. }), "{err:?}");
    assert!(err.to_string().contains(&missing), "{err}");
    let err = fetcher.fetch_bytes(&resource(&url), 100).unwrap_err();
    assert!(
        matches!(err, FetchError::TooLarge { limit: 100, .. }),
        "{err:?}"
    );
}
