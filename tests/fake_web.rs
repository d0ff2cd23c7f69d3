//! Fake web services for the platform VM tests, on the host's loopback: an Ignition config
//! server (plain HTTP, or HTTPS with a throw-away CA) and the cloud metadata services, built
//! from each platform's documented requests. Each records what the guest sent and refuses what
//! the real service refuses:
//! - AWS IMDSv2: `PUT /latest/api/token` must carry `X-aws-ec2-metadata-token-ttl-seconds`;
//!   every other request must carry the token it returned in `X-aws-ec2-metadata-token` (401
//!   otherwise);
//! - GCP: every request must carry `Metadata-Flavor: Google` (403 otherwise), and answers carry
//!   it back.
//!
//! The guest reaches a fake only through a QEMU `guestfwd` relay (one connection per guest
//! connection, `wellcar_vm::MachineConfig::guest_relays`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use wellcar_test_support::pki::TestPki;

/// The IMDSv2 token the AWS fake hands out.
pub const AWS_TOKEN: &str = "AQAEAFakeImdsV2Token==";

/// What a fake enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// No header rules (config servers, DigitalOcean, OpenStack).
    Open,
    /// AWS IMDSv2: a session token on every request.
    AwsImdsV2,
    /// GCP: `Metadata-Flavor: Google` on every request.
    Gcp,
}

/// One request the guest made.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, `PUT`, …
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lower case.
    pub headers: Vec<(String, String)>,
    /// The status answered.
    pub status: u16,
}

impl Seen {
    /// The value of header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    rules: Rules,
    routes: Mutex<HashMap<String, (u16, Vec<u8>)>>,
    seen: Mutex<Vec<Seen>>,
}

/// A running fake.
pub struct FakeWeb {
    port: u16,
    state: Arc<State>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeWeb {
    /// Starts a fake on a free loopback port; HTTPS with `tls`'s server certificate if given.
    pub fn start(rules: Rules, tls: Option<&TestPki>) -> FakeWeb {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binding a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let state = Arc::new(State {
            rules,
            routes: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
        });
        let acceptor = tls.map(|pki| {
            let chain = vec![
                CertificateDer::from_pem_slice(pki.server_cert_pem.as_bytes())
                    .expect("server certificate"),
            ];
            let key =
                PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).expect("server key");
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate and key");
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let shared = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (state, acceptor) = (shared.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, request)) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        FakeWeb {
            port,
            state,
            _runtime: runtime,
        }
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Answers `path` with `status` and `body` from now on.
    pub fn route(&self, path: &str, status: u16, body: impl Into<Vec<u8>>) {
        self.state
            .routes
            .lock()
            .expect("routes")
            .insert(path.to_owned(), (status, body.into()));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("requests").clone()
    }

    /// The requests for `path`.
    pub fn requests_for(&self, path: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.path == path)
            .collect()
    }
}

fn answer(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let (status, body) = match state.rules {
        Rules::AwsImdsV2 if path == "/latest/api/token" => {
            if method == "PUT" && header("x-aws-ec2-metadata-token-ttl-seconds").is_some() {
                (200, AWS_TOKEN.as_bytes().to_vec())
            } else {
                (400, b"token requests are PUT with a TTL".to_vec())
            }
        }
        Rules::AwsImdsV2 if header("x-aws-ec2-metadata-token") != Some(AWS_TOKEN) => {
            (401, b"IMDSv2 only: no valid token".to_vec())
        }
        Rules::Gcp if header("metadata-flavor") != Some("Google") => {
            (403, b"Missing Metadata-Flavor:Google header".to_vec())
        }
        _ => match state.routes.lock().expect("routes").get(&path) {
            Some((status, body)) => (*status, body.clone()),
            None => (404, b"not found".to_vec()),
        },
    };
    state.seen.lock().expect("requests").push(Seen {
        method,
        path,
        headers,
        status,
    });
    let mut response = Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .header("content-length", body.len());
    if state.rules == Rules::Gcp {
        response = response.header("metadata-flavor", "Google");
    }
    response
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}
