//! TLS for the server's listener: a PEM certificate chain and private key, reloadable.
//!
//! Contract:
//! - `--tls-cert` is a PEM file holding the certificate chain (leaf first); `--tls-key` a PEM
//!   file holding one PKCS#8, PKCS#1 or SEC1 private key matching the leaf. Both are read at
//!   start; a missing, empty, malformed or mismatched file stops the server with an error
//!   naming the file.
//! - [`ReloadableCert::reload`] re-reads both files (the server calls it on SIGHUP). If the new
//!   pair is bad, the old certificate keeps being served and the error is returned (and logged
//!   by the caller). New handshakes use the new certificate; open connections keep theirs.
//! - TLS 1.2 and 1.3 (rustls with the ring provider); ALPN offers `http/1.1` only.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

/// Where the certificate chain and key are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or is not PEM of the expected kind.
    #[error("reading {what} from {path}: {reason}")]
    Pem {
        /// "certificate chain" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The certificate file held no certificate.
    #[error("{0}: no PEM certificate found")]
    NoCertificate(PathBuf),
    /// rustls refused the key (unsupported type) or the key does not match the leaf.
    #[error("private key {key} with certificate {cert}: {reason}")]
    Key {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

fn pem_error(what: &'static str, path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Reads and checks a certificate chain and key.
pub fn load(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| pem_error("certificate chain", &files.cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("certificate chain", &files.cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| pem_error("private key", &files.key, e))?;
    let key_error = |e: rustls::Error| TlsError::Key {
        key: files.key.clone(),
        cert: files.cert.clone(),
        reason: e.to_string(),
    };
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(key_error)?;
    Ok(Arc::new(certified))
}

/// The certificate the listener serves, swapped atomically by [`ReloadableCert::reload`].
#[derive(Debug)]
pub struct ReloadableCert {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Loads `files`.
    pub fn open(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let current = RwLock::new(load(&files)?);
        Ok(Arc::new(Self { files, current }))
    }

    /// Re-reads the files; on error the old certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load(&self.files)?;
        match self.current.write() {
            Ok(mut c) => *c = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// The files this certificate comes from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// A TLS acceptor that always presents the current certificate.
    pub fn acceptor(self: &Arc<Self>) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

/// Reloads `cert` on every SIGHUP until `stop` changes, logging the outcome. The handler is
/// installed before this returns, so a SIGHUP sent afterwards never kills the process.
pub fn reload_on_sighup(
    cert: Arc<ReloadableCert>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                got = hangup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    match cert.reload() {
                        Ok(()) => tracing::info!(cert = %cert.files().cert.display(), "TLS certificate reloaded"),
                        Err(e) => tracing::error!("TLS reload failed, still serving the old certificate: {e}"),
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }))
}
