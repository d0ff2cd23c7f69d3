//! An HTTP client for the admin API and the Omaha endpoint (plain HTTP), used by the
//! `wellcar server` CLI, the tests and the benchmark.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncReadExt as _;

type Body = BoxBody<Bytes, std::io::Error>;

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

/// A client bound to one server base URL and (optionally) an API token.
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: Client<HttpConnector, Body>,
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

impl ApiClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Option<&str>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
            http: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1024)
                .build(connector),
        }
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
        let url = format!("{}{path}", self.base);
        let mut builder = Request::builder().method(method.clone()).uri(&url);
        if let Some(t) = &self.token {
            builder = builder.header("authorization", format!("Bearer {t}"));
        }
        if let Some(ct) = content_type {
            builder = builder.header("content-type", ct);
        }
        let req = builder
            .body(body)
            .map_err(|_| ClientError::Url(url.clone()))?;
        let http_err = |e: Box<dyn std::error::Error + Send + Sync>| ClientError::Http {
            method: method.clone(),
            url: url.clone(),
            source: e,
        };
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| http_err(Box::new(e)))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http_err(Box::new(e)))?
            .to_bytes();
        Ok((status, bytes))
    }

    async fn json_call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Body,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.send(method.clone(), path, content_type, body).await?;
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
        self.json_call(Method::GET, path, None, full(Bytes::new()))
            .await
    }

    /// `DELETE path`; returns the status (an error status is an error).
    pub async fn delete(&self, path: &str) -> Result<StatusCode, ClientError> {
        let (status, bytes) = self
            .send(Method::DELETE, path, None, full(Bytes::new()))
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
        self.json_call(method, path, Some("application/json"), full(bytes))
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
        let file_err = |source| ClientError::File {
            path: file.display().to_string(),
            source,
        };
        let f = tokio::fs::File::open(file).await.map_err(file_err)?;
        let total = f.metadata().await.map_err(file_err)?.len();
        let stream = futures_util::stream::unfold((f, 0), move |(mut f, sent)| {
            let progress = progress.clone();
            async move {
                let mut buf = vec![0_u8; 1 << 20];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        let sent = sent + n as u64;
                        progress(UploadProgress { sent, total });
                        Some((Ok(Frame::data(Bytes::from(buf))), (f, sent)))
                    }
                    Err(e) => Some((Err(e), (f, sent))),
                }
            }
        });
        let body = StreamBody::new(stream).boxed();
        self.json_call(Method::PUT, path, Some("application/octet-stream"), body)
            .await
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
        let (status, bytes) = self
            .send(
                Method::POST,
                "/v1/update/",
                Some("text/xml"),
                full(xml.to_owned()),
            )
            .await?;
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// `GET path` as text (metrics, payloads), with an optional `Range` header.
    pub async fn get_text(&self, path: &str) -> Result<(StatusCode, Bytes), ClientError> {
        self.send(Method::GET, path, None, full(Bytes::new())).await
    }

    /// `GET path` with a `Range: bytes=…` header.
    pub async fn get_range(
        &self,
        path: &str,
        range: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let url = format!("{}{path}", self.base);
        let req = Request::builder()
            .uri(&url)
            .header("range", range)
            .body(full(Bytes::new()))
            .map_err(|_| ClientError::Url(url.clone()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| ClientError::Http {
                method: Method::GET,
                url: url.clone(),
                source: Box::new(e),
            })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http {
                method: Method::GET,
                url,
                source: Box::new(e),
            })?
            .to_bytes();
        Ok((status, bytes))
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
}
