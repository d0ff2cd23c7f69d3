//! A minimal client of etcd's **v2 keys API** (HTTP+JSON), the part locksmith uses: read a
//! key, create it if absent, compare-and-swap it. It runs over the workspace's `wellcar-http`
//! client (ureq over rustls); this is not a hand-written wire format but etcd's documented REST
//! API, which no maintained Rust crate speaks (`etcd-client` is the v3 gRPC API).
//!
//! Requests, as `go.etcd.io/etcd/client` sends them:
//! - read: `GET <endpoint>/v2/keys/<key>` → `200 {"action":"get","node":{"key","value",
//!   "modifiedIndex","createdIndex"}}`;
//! - create: `PUT <endpoint>/v2/keys/<key>?prevExist=false` with form body `value=<v>` →
//!   `201`, or `412 {"errorCode":105}` (node exists);
//! - compare-and-swap: `PUT <endpoint>/v2/keys/<key>?prevIndex=<n>` with `value=<v>` → `200`,
//!   or `412 {"errorCode":101}` (compare failed), `404 {"errorCode":100}` (key not found).
//!
//! Errors are `{"errorCode":N,"message":…,"cause":…,"index":…}`. The key goes into the URL
//! path percent-encoded (a group key's `%2F` is sent as `%252F`, so the key etcd stores holds
//! the literal `%2F`, as with Go's client).
//!
//! Endpoints are tried in order, starting from the last one that answered; only transport
//! failures (refused, reset, TLS, timeout) move on to the next. Every endpoint failing is
//! [`Error::Unreachable`] naming each URL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use crate::error::EndpointFailure;
use crate::{Error, EtcdConfig};

/// etcd v2 error code: key not found.
pub const KEY_NOT_FOUND: u32 = 100;
/// etcd v2 error code: compare failed (`prevIndex`/`prevValue` did not match).
pub const COMPARE_FAILED: u32 = 101;
/// etcd v2 error code: node exists (`prevExist=false` on an existing key).
pub const NODE_EXIST: u32 = 105;

/// Bytes of a body kept in an error.
const BODY_EXCERPT: usize = 200;

/// Characters left as they are in the key's URL path: unreserved ones and `/`.
const PATH_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// A key's node as etcd returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// The key, with a leading `/`.
    pub key: String,
    /// The value (empty for a directory).
    #[serde(default)]
    pub value: String,
    /// The etcd index of the last change: what `prevIndex` compares against.
    pub modified_index: u64,
    /// The etcd index of the creation.
    #[serde(default)]
    pub created_index: u64,
}

#[derive(Deserialize)]
struct Answer {
    node: Node,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EtcdErrorBody {
    error_code: u32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    cause: String,
}

/// What a PUT requires of the existing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The key must not exist (`prevExist=false`).
    Absent,
    /// The key's `modifiedIndex` must be this (`prevIndex=N`).
    ModifiedIndex(u64),
}

/// A v2 keys client over a list of endpoints.
pub struct KeysClient {
    agent: ureq::Agent,
    endpoints: Vec<String>,
    preferred: AtomicUsize,
    authorization: Option<String>,
}

impl std::fmt::Debug for KeysClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeysClient")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// Checks an endpoint is `http(s)://host[:port]` and drops a trailing `/`.
fn validate_endpoint(endpoint: &str) -> Result<String, Error> {
    let invalid = |reason: &str| Error::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: ureq::http::Uri = endpoint
        .parse()
        .map_err(|e: ureq::http::uri::InvalidUri| invalid(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid("must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("has no host"));
    }
    if uri.query().is_some() {
        return Err(invalid("must not have a query"));
    }
    Ok(endpoint.trim_end_matches('/').to_owned())
}

impl KeysClient {
    /// A client for `config` (validates the endpoints, reads the TLS files).
    pub fn new(config: &EtcdConfig) -> Result<Self, Error> {
        if config.endpoints.is_empty() {
            return Err(Error::InvalidConfig("no endpoint given".into()));
        }
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| validate_endpoint(e))
            .collect::<Result<Vec<_>, _>>()?;
        let client_identity = match (&config.cert_file, &config.key_file) {
            (Some(cert_file), Some(key_file)) => Some(wellcar_http::ClientIdentity {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            }),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(Error::InvalidConfig(format!(
                    "client certificate {} given without its key file",
                    cert.display()
                )))
            }
            (None, Some(key)) => {
                return Err(Error::InvalidConfig(format!(
                    "client key {} given without its certificate file",
                    key.display()
                )))
            }
        };
        let mut options = wellcar_http::ClientOptions::new(concat!(
            "wellcar-locksmith/",
            env!("CARGO_PKG_VERSION")
        ));
        options.ca_file = config.ca_file.clone();
        options.client_identity = client_identity;
        options.connect_timeout = Duration::from_secs(10);
        options.response_timeout = Duration::from_secs(30);
        let agent = wellcar_http::client(&options)?;
        let authorization = config.username.as_ref().map(|user| {
            let pair = format!("{user}:{}", config.password.as_deref().unwrap_or(""));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        Ok(KeysClient {
            agent,
            endpoints,
            preferred: AtomicUsize::new(0),
            authorization,
        })
    }

    /// The endpoints, in order.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Reads `key`.
    pub fn get(&self, key: &str) -> Result<Node, Error> {
        self.request(key, |agent, url, auth| {
            let mut request = agent.get(url);
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            request.call()
        })
    }

    /// Writes `value` at `key` if `precondition` holds.
    pub fn put(&self, key: &str, value: &str, precondition: Precondition) -> Result<Node, Error> {
        self.request(key, |agent, url, auth| {
            let mut request = agent.put(url);
            request = match precondition {
                Precondition::Absent => request.query("prevExist", "false"),
                Precondition::ModifiedIndex(index) => request.query("prevIndex", index.to_string()),
            };
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            request.send_form([("value", value)])
        })
    }

    /// The URL of `key` under `endpoint`.
    pub fn key_url(endpoint: &str, key: &str) -> String {
        let key = key.trim_start_matches('/');
        format!("{endpoint}/v2/keys/{}", utf8_percent_encode(key, PATH_KEEP))
    }

    /// Sends one request, failing over across endpoints on transport errors, and reads etcd's
    /// answer.
    fn request(
        &self,
        key: &str,
        send: impl Fn(
            &ureq::Agent,
            &str,
            Option<&str>,
        ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Node, Error> {
        let first = self.preferred.load(Ordering::Relaxed) % self.endpoints.len();
        let mut attempts = Vec::new();
        for i in 0..self.endpoints.len() {
            let at = (first + i) % self.endpoints.len();
            let url = Self::key_url(&self.endpoints[at], key);
            match send(&self.agent, &url, self.authorization.as_deref()) {
                Ok(response) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return read_answer(&url, response);
                }
                Err(e) => {
                    tracing::debug!(%url, error = %e, "etcd endpoint failed");
                    attempts.push(EndpointFailure {
                        url,
                        reason: e.to_string(),
                    });
                }
            }
        }
        Err(Error::Unreachable { attempts })
    }
}

/// etcd's answer: the node, or the error it names.
fn read_answer(url: &str, response: ureq::http::Response<ureq::Body>) -> Result<Node, Error> {
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .read_to_string()
        .map_err(|e| Error::Unreachable {
            attempts: vec![EndpointFailure {
                url: url.to_owned(),
                reason: format!("reading the answer: {e}"),
            }],
        })?;
    let unexpected = || Error::UnexpectedResponse {
        url: url.to_owned(),
        status,
        body: body.chars().take(BODY_EXCERPT).collect(),
    };
    if (200..300).contains(&status) {
        return serde_json::from_str::<Answer>(&body)
            .map(|a| a.node)
            .map_err(|_| unexpected());
    }
    match serde_json::from_str::<EtcdErrorBody>(&body) {
        Ok(e) if e.error_code == KEY_NOT_FOUND => Err(Error::KeyNotFound {
            url: url.to_owned(),
        }),
        Ok(e) => Err(Error::Etcd {
            url: url.to_owned(),
            code: e.error_code,
            message: e.message,
            cause: e.cause,
        }),
        Err(_) => Err(unexpected()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_in_the_path() {
        assert_eq!(
            KeysClient::key_url(
                "http://127.0.0.1:2379",
                "coreos.com/updateengine/rebootlock/groups/prod%2Fdatabase/semaphore"
            ),
            "http://127.0.0.1:2379/v2/keys/coreos.com/updateengine/rebootlock/groups/prod%252Fdatabase/semaphore"
        );
    }

    #[test]
    fn endpoints_are_validated() {
        for (bad, why) in [
            ("127.0.0.1:2379", "http://"),
            ("ftp://etcd:2379", "http://"),
            ("http://", ""),
            ("http://etcd:2379/?x=1", "query"),
        ] {
            let e = validate_endpoint(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidEndpoint { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(bad), "{e}");
            assert!(e.to_string().contains(why), "{e}");
        }
        assert_eq!(
            validate_endpoint("https://etcd.example:2379/").unwrap(),
            "https://etcd.example:2379"
        );
    }

    #[test]
    fn a_certificate_without_key_is_refused() {
        let c = EtcdConfig {
            cert_file: Some("/etc/ssl/etcd/client.pem".into()),
            ..EtcdConfig::default()
        };
        let e = KeysClient::new(&c).unwrap_err();
        assert!(e.to_string().contains("client.pem"), "{e}");
        let e = KeysClient::new(&EtcdConfig::with_endpoints(Vec::<String>::new())).unwrap_err();
        assert!(e.to_string().contains("no endpoint"), "{e}");
    }

    /// An etcd without the v2 API answers 404 with a plain body: named, with the hint.
    #[test]
    fn a_non_v2_answer_is_named() {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0_u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            let body = "404 page not found\n";
            write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        });
        let keys = KeysClient::new(&EtcdConfig::with_endpoints([endpoint.clone()])).unwrap();
        let e = keys
            .get("coreos.com/updateengine/rebootlock/semaphore")
            .unwrap_err();
        assert!(
            matches!(e, Error::UnexpectedResponse { status: 404, .. }),
            "{e}"
        );
        let text = e.to_string();
        assert!(
            text.contains(&endpoint) && text.contains("--enable-v2=true"),
            "{text}"
        );
    }
}
