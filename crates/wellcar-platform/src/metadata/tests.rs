//! Fake metadata services on loopback, answering as each platform documents and refusing
//! requests a real service would refuse (IMDSv2 without a token: 401; GCP without
//! `Metadata-Flavor: Google`: 403).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};

use super::*;

/// What the fake enforces.
#[derive(Clone, Copy)]
enum Rules {
    /// IMDSv2 only: a token from `PUT /latest/api/token` must come with every GET.
    AwsV2,
    /// Every request needs `Metadata-Flavor: Google`.
    Gcp,
    /// No header rules.
    Open,
}

const TOKEN: &str = "AQAEAFake-token==";

struct Fake {
    rules: Rules,
    files: HashMap<String, (u16, Vec<u8>)>,
    requests: Mutex<Vec<String>>,
}

struct Server {
    fake: Arc<Fake>,
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start(rules: Rules, files: &[(&str, u16, &[u8])]) -> Server {
        let fake = Arc::new(Fake {
            rules,
            files: files
                .iter()
                .map(|(p, s, b)| (p.to_string(), (*s, b.to_vec())))
                .collect(),
            requests: Mutex::new(Vec::new()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(fake.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Server {
            fake,
            addr,
            _runtime: runtime,
        }
    }

    fn client(&self) -> MetadataClient {
        let agent = wellcar_http::system_client(&wellcar_http::ClientOptions::new("test"));
        let once = Retry {
            attempts: 1,
            ..Retry::default()
        };
        MetadataClient::new(format!("http://{}/", self.addr), agent, once)
    }

    fn requests(&self) -> Vec<String> {
        self.fake.requests.lock().unwrap().clone()
    }
}

async fn answer(
    State(fake): State<Arc<Fake>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> (StatusCode, Vec<u8>) {
    let path = uri.path().to_string();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    fake.requests
        .lock()
        .unwrap()
        .push(format!("{method} {path}"));
    match fake.rules {
        Rules::AwsV2 if method == Method::PUT && path == "/latest/api/token" => {
            let ttl: Option<u32> =
                header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|t| t.parse().ok());
            return match ttl {
                Some(1..=21600) => (StatusCode::OK, TOKEN.into()),
                _ => (StatusCode::BAD_REQUEST, b"missing or invalid TTL".to_vec()),
            };
        }
        Rules::AwsV2 if header("x-aws-ec2-metadata-token") != Some(TOKEN) => {
            return (StatusCode::UNAUTHORIZED, Vec::new());
        }
        Rules::Gcp if header("metadata-flavor") != Some("Google") => {
            return (
                StatusCode::FORBIDDEN,
                b"Missing Metadata-Flavor:Google header".to_vec(),
            );
        }
        _ => {}
    }
    if method != Method::GET {
        return (StatusCode::METHOD_NOT_ALLOWED, Vec::new());
    }
    match fake.files.get(&path) {
        Some((status, body)) => (StatusCode::from_u16(*status).unwrap(), body.clone()),
        None => (StatusCode::NOT_FOUND, Vec::new()),
    }
}

const CONFIG: &[u8] = br#"{"ignition":{"version":"3.4.0"}}"#;

#[test]
fn aws_imdsv2_token_then_user_data_and_keys() {
    let server = Server::start(
        Rules::AwsV2,
        &[
            ("/2009-04-04/user-data", 200, CONFIG),
            (
                "/2009-04-04/meta-data/hostname",
                200,
                b"ip-10-0-0-5.ec2.internal",
            ),
            (
                "/2009-04-04/meta-data/public-keys",
                200,
                b"0=my-key\n1=other",
            ),
            (
                "/2009-04-04/meta-data/public-keys/0/openssh-key",
                200,
                b"ssh-rsa K0 my-key\n",
            ),
            (
                "/2009-04-04/meta-data/public-keys/1/openssh-key",
                200,
                b"ssh-ed25519 K1 other",
            ),
        ],
    );
    let client = server.client();
    assert_eq!(client.user_data(Platform::Aws).unwrap().unwrap(), CONFIG);
    assert_eq!(
        server.requests()[..2],
        ["PUT /latest/api/token", "GET /2009-04-04/user-data"]
    );
    let attrs = client.attributes(Platform::Aws).unwrap();
    assert_eq!(attrs.hostname.as_deref(), Some("ip-10-0-0-5.ec2.internal"));
    assert_eq!(
        attrs.ssh_keys,
        ["ssh-rsa K0 my-key", "ssh-ed25519 K1 other"]
    );
}

#[test]
fn aws_without_user_data_is_no_config_and_an_imdsv1_only_service_still_answers() {
    let server = Server::start(Rules::AwsV2, &[]);
    assert_eq!(server.client().user_data(Platform::Aws).unwrap(), None);
    // IMDSv1 only: the token PUT is 405, the GET goes without a token.
    let v1 = Server::start(Rules::Open, &[("/2009-04-04/user-data", 200, CONFIG)]);
    assert_eq!(
        v1.client().user_data(Platform::Aws).unwrap().unwrap(),
        CONFIG
    );
}

#[test]
fn gcp_sends_metadata_flavor_and_reads_keys_unless_project_keys_are_blocked() {
    let files: &[(&str, u16, &[u8])] = &[
        (
            "/computeMetadata/v1/instance/attributes/user-data",
            200,
            CONFIG,
        ),
        (
            "/computeMetadata/v1/instance/hostname",
            200,
            b"vm-1.c.proj.internal",
        ),
        (
            "/computeMetadata/v1/instance/attributes/ssh-keys",
            200,
            b"core:ssh-rsa I core\n",
        ),
        (
            "/computeMetadata/v1/project/attributes/ssh-keys",
            200,
            b"alice:ssh-ed25519 P alice",
        ),
    ];
    let server = Server::start(Rules::Gcp, files);
    let client = server.client();
    assert_eq!(client.user_data(Platform::Gcp).unwrap().unwrap(), CONFIG);
    let attrs = client.attributes(Platform::Gcp).unwrap();
    assert_eq!(attrs.hostname.as_deref(), Some("vm-1.c.proj.internal"));
    assert_eq!(attrs.ssh_keys, ["ssh-rsa I core", "ssh-ed25519 P alice"]);

    let mut blocked = files.to_vec();
    blocked.push((
        "/computeMetadata/v1/instance/attributes/block-project-ssh-keys",
        200,
        b"true",
    ));
    let server = Server::start(Rules::Gcp, &blocked);
    let attrs = server.client().attributes(Platform::Gcp).unwrap();
    assert_eq!(attrs.ssh_keys, ["ssh-rsa I core"]);
}

#[test]
fn digitalocean_and_openstack_metadata_services() {
    let server = Server::start(
        Rules::Open,
        &[
            ("/metadata/v1/user-data", 200, CONFIG),
            (
                "/metadata/v1.json",
                200,
                br#"{"hostname":"drop-1","public_keys":["ssh-rsa D"]}"#,
            ),
            ("/openstack/latest/user_data", 200, CONFIG),
            (
                "/openstack/latest/meta_data.json",
                200,
                br#"{"hostname":"os-1","public_keys":{"k":"ssh-rsa O"}}"#,
            ),
        ],
    );
    let client = server.client();
    for platform in [Platform::DigitalOcean, Platform::OpenStack] {
        assert_eq!(client.user_data(platform).unwrap().unwrap(), CONFIG);
    }
    let attrs = client.attributes(Platform::DigitalOcean).unwrap();
    assert_eq!(
        (attrs.hostname.as_deref(), attrs.ssh_keys),
        (Some("drop-1"), vec!["ssh-rsa D".to_string()])
    );
    let attrs = client.attributes(Platform::OpenStack).unwrap();
    assert_eq!(attrs.hostname.as_deref(), Some("os-1"));
}

#[test]
fn errors_name_the_url_and_status() {
    let server = Server::start(Rules::Open, &[("/metadata/v1/user-data", 500, b"oops")]);
    let err = server
        .client()
        .user_data(Platform::DigitalOcean)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("http://{}/metadata/v1/user-data", server.addr))
            && msg.contains("HTTP status 500"),
        "{msg}"
    );
    // Nothing listening: a transport error naming the URL.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let agent = wellcar_http::system_client(&wellcar_http::ClientOptions::new("test"));
    let retry = Retry {
        attempts: 2,
        first_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(1),
    };
    let client = MetadataClient::new(format!("http://{addr}"), agent, retry);
    let err = client.user_data(Platform::OpenStack).unwrap_err();
    assert!(
        matches!(err, PlatformError::Http { .. })
            && err
                .to_string()
                .contains(&format!("http://{addr}/openstack/latest/user_data")),
        "{err}"
    );
}
