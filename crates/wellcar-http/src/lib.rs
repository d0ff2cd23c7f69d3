//! The workspace's one HTTP client stack: the update agent and the update server's admin client
//! build their `ureq` agents here, so both speak the same https.
//!
//! Contract:
//! - `https://` servers are verified (rustls, ring) against the system trust store
//!   (`/etc/ssl/certs` through `rustls-native-certs`, where Ignition can add a private CA) **plus**
//!   the PEM certificates of [`ClientOptions::ca_file`] if given. A CA file that cannot be read,
//!   or holds no certificate, is a [`SetupError`] naming the file; so is having no root at all.
//! - `http://` works too: Wellcar payloads are signed, and Omaha responses can be
//!   (`SERVER_PUBLIC_KEY`).
//! - A non-2xx status is an answer, not an error: callers read it.
//! - Timeouts: connecting and waiting for the response head are bounded
//!   ([`ClientOptions::connect_timeout`], [`ClientOptions::response_timeout`]); bodies are not
//!   (payloads are large), callers bound what they read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The CA file could not be read.
    #[error("reading CA file {path}")]
    CaFileUnreadable {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The CA file is not PEM, or holds no certificate.
    #[error("CA file {path}: {reason}")]
    CaFileInvalid {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Neither the system store nor a CA file gave a root certificate.
    #[error("no trusted root certificates: the system store (/etc/ssl/certs, Debian package ca-certificates) is empty and no CA file was given")]
    NoRoots,
}

/// How to build a client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Extra trusted roots (PEM), on top of the system store.
    pub ca_file: Option<PathBuf>,
    /// Bound on connecting (TCP and TLS).
    pub connect_timeout: Duration,
    /// Bound on waiting for the response head once the request is sent.
    pub response_timeout: Duration,
    /// The `User-Agent` header.
    pub user_agent: String,
}

impl ClientOptions {
    /// Defaults (15 s connect, 60 s response head, no CA file) with this user agent.
    pub fn new(user_agent: impl Into<String>) -> Self {
        Self {
            ca_file: None,
            connect_timeout: Duration::from_secs(15),
            response_timeout: Duration::from_secs(60),
            user_agent: user_agent.into(),
        }
    }
}

/// Reads every certificate of a PEM file.
pub fn read_pem_certificates(path: &Path) -> Result<Vec<Certificate<'static>>, SetupError> {
    let bytes = std::fs::read(path).map_err(|source| SetupError::CaFileUnreadable {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |reason: String| SetupError::CaFileInvalid {
        path: path.to_owned(),
        reason,
    };
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&bytes) {
        if let PemItem::Certificate(c) = item.map_err(|e| invalid(e.to_string()))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(invalid("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The trusted roots: the system store plus `ca_file`.
fn roots(ca_file: Option<&Path>) -> Result<Vec<Certificate<'static>>, SetupError> {
    let mut roots: Vec<Certificate<'static>> = rustls_native_certs::load_native_certs()
        .certs
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .collect();
    if let Some(path) = ca_file {
        roots.extend(read_pem_certificates(path)?);
    }
    if roots.is_empty() {
        return Err(SetupError::NoRoots);
    }
    Ok(roots)
}

/// A client as the module docs describe.
pub fn client(options: &ClientOptions) -> Result<ureq::Agent, SetupError> {
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::new_with_certs(&roots(
            options.ca_file.as_deref(),
        )?))
        .build();
    let config = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(options.connect_timeout))
        .timeout_recv_response(Some(options.response_timeout))
        .http_status_as_error(false)
        .user_agent(options.user_agent.as_str())
        .build();
    Ok(config.into())
}

#[cfg(test)]
mod tests;
