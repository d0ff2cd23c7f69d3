//! The admin API and Omaha client used by the `wellcar server` CLI, the tests and the
//! benchmarks. It speaks the workspace's one HTTP stack ([`wellcar_http`]: ureq over rustls,
//! `http://` or `https://` verified against the system store plus an optional CA file); each
//! call runs on tokio's blocking pool, so the async API stays.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How far an upload is: bytes handed to the connection so far, of the file's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadProgress {
    /// Bytes sent so far.
    pub sent: u64,
    /// The file's size.
    pub total: u64,
}

/// Receives [`UploadProgress`] after every chunk of an upload.
pub type OnUpload = Arc<dyn Fn(UploadProgress) + Send + Sync>;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL could not be built.
    #[error("invalid url {0:?}")]
    Url(String),
    /// Connection or protocol failure.
    #[error("{method} {url} failed")]
    Http {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered with an error status.
    #[error("{method} {url} returned {status}: {body}")]
    Status {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// Status.
        status: StatusCode,
        /// Body (the server's error message).
        body: String,
    },
    /// The JSON answer did not decode.
    #[error("decoding the answer of {url}")]
    Decode {
        /// URL.
        url: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A local file could not be read.
    #[error("reading {path}")]
    File {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A package of an app, as the admin API's paths name it.
#[derive(Debug, Clone, Copy)]
pub struct PackageRef<'a> {
    /// The app id (a Flatcar-style `{…}` id is normalized).
    pub app: &'a str,
    /// The package's version.
    pub version: &'a str,
    /// Its architecture (`amd64`, `arm64`).
    pub arch: &'a str,
}

/// The admin API path of app `app`'s resources: `/api/v1/apps/{app}`, the id normalized.
pub fn app_path(app: &str) -> String {
    format!("/api/v1/apps/{}", wellcar_omaha::normalize_app_id(app))
}

/// A request body.
pub enum Body {
    /// These bytes.
    Bytes(Vec<u8>),
    /// A local file (with its length), reporting progress as it is sent.
    File {
        /// The file.
        path: PathBuf,
        /// Receives progress.
        progress: OnUpload,
    },
    /// Whatever the reader yields, sent chunked (tests: a body that stalls).
    Reader(Box<dyn Read + Send + 'static>),
}

/// A reader that reports how much of a file was read.
struct Counted {
    file: std::fs::File,
    sent: u64,
    total: u64,
    progress: OnUpload,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        if n > 0 {
            self.sent += n as u64;
            (self.progress)(UploadProgress {
                sent: self.sent,
                total: self.total,
            });
        }
        Ok(n)
    }
}

/// A client bound to one server base URL and (optionally) an API token.
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: ureq::Agent,
}

fn options() -> wellcar_http::ClientOptions {
    let mut o =
        wellcar_http::ClientOptions::new(concat!("wellcar-server/", env!("CARGO_PKG_VERSION")));
    // Payload uploads are hashed and synced before the answer; keep-alive for benchmarks.
    o.response_timeout = std::time::Duration::from_secs(600);
    o.idle_connections = 1024;
    o
}

impl ApiClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`, or `https://…` verified against the
    /// system trust store).
    pub fn new(base: &str, token: Option<&str>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
            http: wellcar_http::system_client(&options()),
        }
    }

    /// As [`ApiClient::new`], also trusting the PEM CA certificates in `ca_file`.
    pub fn with_ca_file(
        base: &str,
        token: Option<&str>,
        ca_file: &Path,
    ) -> Result<Self, wellcar_http::SetupError> {
        let mut o = options();
        o.ca_file = Some(ca_file.to_owned());
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
            http: wellcar_http::client(&o)?,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and returns status and body, without judging the status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Body,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| ("content-type", ct))
            .into_iter()
            .collect();
        self.send_with(method, path, &headers, body).await
    }

    /// [`ApiClient::send`] with these headers.
    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut builder = hyper::Request::builder().method(method.clone()).uri(&url);
        if let Some(t) = &self.token {
            builder = builder.header("authorization", format!("Bearer {t}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(())
            .map_err(|_| ClientError::Url(url.clone()))?;
        let http = self.http.clone();
        let http_err = {
            let (method, url) = (method.clone(), url.clone());
            move |e: ureq::Error| ClientError::Http {
                method: method.clone(),
                url: url.clone(),
                source: Box::new(e),
            }
        };
        let file_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| ClientError::File { path, source }
        };
        let run = move || -> Result<(StatusCode, Bytes), ClientError> {
            let (parts, ()) = request.into_parts();
            let response = match body {
                Body::Bytes(bytes) => http.run(hyper::Request::from_parts(parts, bytes)),
                Body::File { path, progress } => {
                    let file = std::fs::File::open(&path).map_err(file_err(&path))?;
                    let total = file.metadata().map_err(file_err(&path))?.len();
                    let reader = Counted {
                        file,
                        sent: 0,
                        total,
                        progress,
                    };
                    let mut parts = parts;
                    parts
                        .headers
                        .insert(hyper::header::CONTENT_LENGTH, total.into());
                    let body = ureq::SendBody::from_owned_reader(reader);
                    http.run(hyper::Request::from_parts(parts, body))
                }
                Body::Reader(reader) => {
                    let body = ureq::SendBody::from_owned_reader(reader);
                    http.run(hyper::Request::from_parts(parts, body))
                }
            }
            .map_err(&http_err)?;
            let status = response.status();
            let bytes = response
                .into_body()
                .into_with_config()
                .limit(u64::MAX)
                .read_to_vec()
                .map_err(&http_err)?;
            Ok((status, Bytes::from(bytes)))
        };
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|e| ClientError::Http {
                method,
                url,
                source: Box::new(e),
            })?
    }

    async fn json_call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.send_with(method.clone(), path, headers, body).await?;
        let url = format!("{}{path}", self.base);
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| text.trim().to_owned());
            return Err(ClientError::Status {
                method,
                url,
                status,
                body: message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode { url, source })
    }

    /// `GET path`, decoded from JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json_call(Method::GET, path, &[], Body::Bytes(Vec::new()))
            .await
    }

    /// `DELETE path`; returns the status (an error status is an error).
    pub async fn delete(&self, path: &str) -> Result<StatusCode, ClientError> {
        let (status, bytes) = self
            .send(Method::DELETE, path, None, Body::Bytes(Vec::new()))
            .await?;
        if !status.is_success() {
            return Err(ClientError::Status {
                method: Method::DELETE,
                url: format!("{}{path}", self.base),
                status,
                body: String::from_utf8_lossy(&bytes).trim().to_owned(),
            });
        }
        Ok(status)
    }

    /// `method path` with a JSON body, decoded from JSON.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|source| ClientError::Decode {
            url: format!("{}{path}", self.base),
            source,
        })?;
        let json = [("content-type", "application/json")];
        self.json_call(method, path, &json, Body::Bytes(bytes))
            .await
    }

    /// Uploads `file` as package `version` of `app` for `arch`, hosted as `filename`
    /// (`PUT /api/v1/apps/{app}/packages/{arch}/{version}/{filename}`), reporting progress.
    pub async fn upload_package<T: DeserializeOwned>(
        &self,
        package: &PackageRef<'_>,
        filename: &str,
        file: &Path,
        progress: OnUpload,
    ) -> Result<T, ClientError> {
        let PackageRef { app, version, arch } = *package;
        let path = format!("{}/packages/{arch}/{version}/{filename}", app_path(app));
        self.put_file_with_progress(&path, file, progress).await
    }

    /// Uploads a delta payload of a hosted package
    /// (`PUT /api/v1/apps/{app}/packages/{arch}/{version}/deltas/{source_version}/{filename}`).
    pub async fn upload_delta<T: DeserializeOwned>(
        &self,
        package: &PackageRef<'_>,
        source_version: &str,
        filename: &str,
        file: &Path,
        progress: OnUpload,
    ) -> Result<T, ClientError> {
        let PackageRef { app, version, arch } = *package;
        let path = format!(
            "{}/packages/{arch}/{version}/deltas/{source_version}/{filename}",
            app_path(app)
        );
        self.put_file_with_progress(&path, file, progress).await
    }

    /// Points `channel` of the package's app, for its arch, at its version
    /// (`POST /api/v1/apps/{app}/channels/{channel}/publish`): the publish operation.
    pub async fn publish<T: DeserializeOwned>(
        &self,
        package: &PackageRef<'_>,
        channel: &str,
    ) -> Result<T, ClientError> {
        let PackageRef { app, version, arch } = *package;
        self.call(
            Method::POST,
            &format!("{}/channels/{channel}/publish", app_path(app)),
            &serde_json::json!({"version": version, "arch": arch}),
        )
        .await
    }

    /// `PUT path` streaming a local file as the body.
    pub async fn put_file<T: DeserializeOwned>(
        &self,
        path: &str,
        file: &Path,
    ) -> Result<T, ClientError> {
        self.put_file_with_progress(path, file, Arc::new(|_| {}))
            .await
    }

    /// `PUT path` streaming a local file as the body, reporting each chunk to `progress`.
    pub async fn put_file_with_progress<T: DeserializeOwned>(
        &self,
        path: &str,
        file: &Path,
        progress: OnUpload,
    ) -> Result<T, ClientError> {
        let body = Body::File {
            path: file.to_owned(),
            progress,
        };
        let octets = [("content-type", "application/octet-stream")];
        self.json_call(Method::PUT, path, &octets, body).await
    }

    /// Creates an API token (`POST /api/v1/tokens`, admin scope); the answer holds its secret.
    pub async fn create_token(
        &self,
        name: &str,
        scope: crate::store::Scope,
        expires_in: Option<std::time::Duration>,
    ) -> Result<crate::store::CreatedToken, ClientError> {
        let body = crate::admin::NewTokenBody {
            name: name.to_owned(),
            scope,
            expires_in_secs: expires_in.map(|d| d.as_secs()),
        };
        self.call(Method::POST, "/api/v1/tokens", &body).await
    }

    /// Lists API tokens (`GET /api/v1/tokens`, admin scope); never their secrets.
    pub async fn list_tokens(&self) -> Result<Vec<crate::store::ApiToken>, ClientError> {
        self.get("/api/v1/tokens").await
    }

    /// Revokes the API token with id (or name) `id` (`DELETE /api/v1/tokens/{id}`).
    pub async fn revoke_token(&self, id: &str) -> Result<StatusCode, ClientError> {
        self.delete(&format!("/api/v1/tokens/{id}")).await
    }

    /// POSTs an Omaha request to `/v1/update/`; returns status and body text.
    pub async fn omaha(&self, xml: &str) -> Result<(StatusCode, String), ClientError> {
        let body = Body::Bytes(xml.as_bytes().to_vec());
        let (status, bytes) = self
            .send(Method::POST, "/v1/update/", Some("text/xml"), body)
            .await?;
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// `GET path` as text (metrics, payloads), with an optional `Range` header.
    pub async fn get_text(&self, path: &str) -> Result<(StatusCode, Bytes), ClientError> {
        self.send(Method::GET, path, None, Body::Bytes(Vec::new()))
            .await
    }

    /// `GET path` with a `Range: bytes=…` header.
    pub async fn get_range(
        &self,
        path: &str,
        range: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let range = [("range", range)];
        self.send_with(Method::GET, path, &range, Body::Bytes(Vec::new()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::model::Package;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upload_reports_progress_up_to_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let (server, token) = crate::test_server::sqlite_with_admin(dir.path()).await;
        let payload: Vec<u8> = (0..(3 << 20) + 12_345).map(|i: u32| i as u8).collect();
        let file = dir.path().join("wellcar_update.bin");
        std::fs::write(&file, &payload).unwrap();

        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let package: Package = ApiClient::new(&server.url(), Some(&token))
            .put_file_with_progress(
                &format!(
                    "/api/v1/apps/{}/packages/amd64/1.2.3/wellcar_update.bin",
                    wellcar_omaha::WELLCAR_APP_ID
                ),
                &file,
                Arc::new(move |p| log.lock().unwrap().push(p)),
            )
            .await
            .unwrap();
        server.shutdown().await.unwrap();

        let total = payload.len() as u64;
        let seen = seen.lock().unwrap().clone();
        assert!(seen.len() >= 2, "one report per chunk: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0].sent < w[1].sent), "{seen:?}");
        assert!(seen.iter().all(|p| p.total == total), "{seen:?}");
        assert_eq!(seen.last().map(|p| p.sent), Some(total));
        assert_eq!(package.size, total as i64);
    }

    /// "One HTTP client stack, speaking https": the admin client reaches an https server whose
    /// certificate comes from a private CA once it is given the CA file, and refuses it without.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn https_with_a_private_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let pki = wellcar_test_support::pki::TestPki::generate("admin CA", &["localhost"]).unwrap();
        let files = crate::tls::TlsFiles {
            cert: dir.path().join("server.crt"),
            key: dir.path().join("server.key"),
        };
        std::fs::write(&files.cert, &pki.server_cert_pem).unwrap();
        std::fs::write(&files.key, &pki.server_key_pem).unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let database = format!("sqlite:{}", dir.path().join("s.db").display());
        let mut settings = crate::Settings::new(&database, "127.0.0.1:0".parse().unwrap());
        settings.payload_dir = dir.path().join("payloads");
        settings.tls = Some(files);
        let server = crate::spawn(settings).await.unwrap();
        let base = format!("https://localhost:{}", server.addr.port());

        let trusted = ApiClient::with_ca_file(&base, None, &ca).unwrap();
        let (status, body) = trusted.get_text("/health").await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));

        let untrusted = ApiClient::new(&base, None).get_text("/health").await;
        assert!(
            matches!(untrusted, Err(ClientError::Http { .. })),
            "a certificate from an unknown CA must be refused: {untrusted:?}"
        );
        server.shutdown().await.unwrap();
    }
}
