//! The workspace's one HTTP client stack: the update agent and the update server's admin client
//! build their `ureq` agents here, so both speak the same https.
//!
//! Contract:
//! - `https://` servers are verified (rustls, ring) against the system trust store
//!   (`/etc/ssl/certs` through `rustls-native-certs`, where Ignition can add a private CA) **plus**
//!   the PEM certificates of [`ClientOptions::ca_file`] if given. A CA file that cannot be read,
//!   or holds no certificate, is a [`SetupError`] naming the file. With no root at all (no
//!   system store, no CA file) every https server is refused as of unknown issuer.
//! - With [`ClientOptions::client_identity`] the client presents a certificate (mTLS, e.g. to an
//!   etcd started with `--client-cert-auth`): the PEM certificate chain and PEM private key
//!   (PKCS#8, PKCS#1 or SEC1) files it names. A file that cannot be read, or holds no
//!   certificate / no key, is a [`SetupError`] naming the file.
//! - `http://` works too: Wellcar payloads are signed, and Omaha responses can be
//!   (`SERVER_PUBLIC_KEY`).
//! - A non-2xx status is an answer, not an error: callers read it.
//! - Timeouts: connecting and waiting for the response head are bounded
//!   ([`ClientOptions::connect_timeout`], [`ClientOptions::response_timeout`]); bodies are not
//!   (payloads are large), callers bound what they read.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use ureq;
use ureq::config::ConfigBuilder;
use ureq::tls::{Certificate, ClientCert, PemItem, RootCerts, TlsConfig, TlsProvider};
use ureq::typestate::AgentScope;

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
    /// A client certificate or key file could not be read.
    #[error("reading client {what} file {path}")]
    ClientIdentityUnreadable {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A client certificate or key file is not PEM, or holds no certificate / no private key.
    #[error("client {what} file {path}: {reason}")]
    ClientIdentityInvalid {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// The certificate a client presents to servers that ask for one (mTLS): two PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The client certificate, followed by any intermediates (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// How to build a client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Extra trusted roots (PEM), on top of the system store.
    pub ca_file: Option<PathBuf>,
    /// The certificate to present when a server asks for one (mTLS).
    pub client_identity: Option<ClientIdentity>,
    /// Bound on connecting (TCP and TLS).
    pub connect_timeout: Duration,
    /// Bound on waiting for the response head once the request is sent.
    pub response_timeout: Duration,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Idle keep-alive connections kept for reuse (per host too).
    pub idle_connections: usize,
}

impl ClientOptions {
    /// Defaults (15 s connect, 60 s response head, no CA file) with this user agent.
    pub fn new(user_agent: impl Into<String>) -> Self {
        Self {
            ca_file: None,
            client_identity: None,
            connect_timeout: Duration::from_secs(15),
            response_timeout: Duration::from_secs(60),
            user_agent: user_agent.into(),
            idle_connections: 3,
        }
    }
}

/// Reads every certificate of a PEM file.
pub fn read_pem_certificates(path: &Path) -> Result<Vec<Certificate<'static>>, SetupError> {
    let bytes = std::fs::read(path).map_err(|source| SetupError::CaFileUnreadable {
        path: path.to_owned(),
        source,
    })?;
    parse_pem_certificates(&bytes).map_err(|reason| SetupError::CaFileInvalid {
        path: path.to_owned(),
        reason,
    })
}

/// Reads a client identity's certificate chain and private key.
pub fn read_client_identity(identity: &ClientIdentity) -> Result<ClientCert, SetupError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| SetupError::ClientIdentityUnreadable {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let invalid =
        |what: &'static str, path: &Path, reason: String| SetupError::ClientIdentityInvalid {
            what,
            path: path.to_owned(),
            reason,
        };
    let cert_pem = read("certificate", &identity.cert_file)?;
    let mut chain = Vec::new();
    for item in ureq::tls::parse_pem(&cert_pem) {
        match item.map_err(|e| invalid("certificate", &identity.cert_file, e.to_string()))? {
            PemItem::Certificate(c) => chain.push(c),
            _ => continue,
        }
    }
    if chain.is_empty() {
        return Err(invalid(
            "certificate",
            &identity.cert_file,
            "no PEM certificate in it".into(),
        ));
    }
    let key_pem = read("key", &identity.key_file)?;
    let mut key = None;
    for item in ureq::tls::parse_pem(&key_pem) {
        if let PemItem::PrivateKey(k) =
            item.map_err(|e| invalid("key", &identity.key_file, e.to_string()))?
        {
            key = Some(k);
            break;
        }
    }
    let key =
        key.ok_or_else(|| invalid("key", &identity.key_file, "no PEM private key in it".into()))?;
    Ok(ClientCert::new_with_certs(&chain, key))
}

/// The system trust store's certificates (none if it is missing).
fn system_roots() -> Vec<Certificate<'static>> {
    rustls_native_certs::load_native_certs()
        .certs
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .collect()
}

/// A client as the module docs describe.
pub fn client(options: &ClientOptions) -> Result<ureq::Agent, SetupError> {
    let mut roots = system_roots();
    if let Some(path) = &options.ca_file {
        roots.extend(read_pem_certificates(path)?);
    }
    let identity = options
        .client_identity
        .as_ref()
        .map(read_client_identity)
        .transpose()?;
    Ok(build(options, &roots, identity))
}

/// [`client`] trusting the system store only and presenting no certificate (ignoring
/// [`ClientOptions::ca_file`] and [`ClientOptions::client_identity`]), which cannot fail.
pub fn system_client(options: &ClientOptions) -> ureq::Agent {
    build(options, &system_roots(), None)
}

/// Every certificate of PEM `bytes` (other PEM items are skipped); an error says what was
/// wrong (not PEM, or no certificate in it).
pub fn parse_pem_certificates(bytes: &[u8]) -> Result<Vec<Certificate<'static>>, String> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(bytes) {
        if let PemItem::Certificate(c) = item.map_err(|e| e.to_string())? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

/// The configuration [`client`] builds, not yet built: the system store plus
/// [`ClientOptions::ca_file`] plus `extra_roots` are trusted, and the client identity, timeouts,
/// user agent and pool size of `options` are set. Callers add settings and call `.build()`.
pub fn config_builder(
    options: &ClientOptions,
    extra_roots: &[Certificate<'static>],
) -> Result<ConfigBuilder<AgentScope>, SetupError> {
    let mut roots = system_roots();
    if let Some(path) = &options.ca_file {
        roots.extend(read_pem_certificates(path)?);
    }
    roots.extend(extra_roots.iter().cloned());
    let identity = options
        .client_identity
        .as_ref()
        .map(read_client_identity)
        .transpose()?;
    Ok(builder(options, &roots, identity))
}

fn build(
    options: &ClientOptions,
    roots: &[Certificate<'static>],
    identity: Option<ClientCert>,
) -> ureq::Agent {
    builder(options, roots, identity).build().into()
}

fn builder(
    options: &ClientOptions,
    roots: &[Certificate<'static>],
    identity: Option<ClientCert>,
) -> ConfigBuilder<AgentScope> {
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::new_with_certs(roots))
        .client_cert(identity)
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(options.connect_timeout))
        .timeout_recv_response(Some(options.response_timeout))
        .http_status_as_error(false)
        .user_agent(options.user_agent.as_str())
        .max_idle_connections(options.idle_connections)
        .max_idle_connections_per_host(options.idle_connections)
}

#[cfg(test)]
mod tests;
