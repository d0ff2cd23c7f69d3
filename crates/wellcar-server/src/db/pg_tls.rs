//! TLS to PostgreSQL (rustls), chosen by the URL's `sslmode` as libpq does.
//!
//! Contract (the URL's query parameters; the rest of the URL goes to the driver unchanged):
//! - no `sslmode`, or `sslmode=disable`: plain TCP, as before TLS support existed.
//! - `sslmode=prefer` or `require`: TLS, encryption only — the server's certificate is not
//!   checked (libpq's meaning without a root certificate). `prefer` falls back to plain TCP when
//!   the server has no TLS; `require` does not.
//! - `sslmode=verify-ca`: TLS, and the certificate chain must lead to a trusted root; the host
//!   name is not checked.
//! - `sslmode=verify-full`: as `verify-ca`, and the certificate must name the URL's host.
//! - `sslrootcert=PATH`: the trusted roots (PEM) for `verify-ca`/`verify-full`; `system` or no
//!   `sslrootcert` means the system trust store.
//!
//! A bad value, or a root file that cannot be read, is a [`DbError::Tls`] naming the parameter.

use std::path::PathBuf;
use std::sync::Arc;

use postgres::config::SslMode;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{redact, DbError};

/// How a connection is secured (the URL's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgSslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it; certificate not checked.
    Prefer,
    /// TLS; certificate not checked.
    Require,
    /// TLS; chain checked against the roots.
    VerifyCa,
    /// TLS; chain and host name checked.
    VerifyFull,
}

/// A PostgreSQL URL split into what the driver understands and how to secure it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTarget {
    /// The URL without `sslmode` and `sslrootcert`.
    pub driver_url: String,
    /// The mode.
    pub mode: PgSslMode,
    /// `sslrootcert`, unless absent or `system`.
    pub root_cert: Option<PathBuf>,
}

impl PgTarget {
    /// Splits `url`'s TLS parameters off.
    pub fn parse(url: &str) -> Result<Self, DbError> {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut mode = PgSslMode::Disable;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => {
                    mode = match value {
                        "disable" => PgSslMode::Disable,
                        "prefer" | "allow" => PgSslMode::Prefer,
                        "require" => PgSslMode::Require,
                        "verify-ca" => PgSslMode::VerifyCa,
                        "verify-full" => PgSslMode::VerifyFull,
                        other => {
                            return Err(DbError::Tls {
                                url: redact(url),
                                reason: format!(
                                    "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                                ),
                            })
                        }
                    }
                }
                "sslrootcert" if value == "system" => root_cert = None,
                "sslrootcert" => {
                    let path = percent_encoding::percent_decode_str(value)
                        .decode_utf8_lossy()
                        .into_owned();
                    root_cert = Some(PathBuf::from(path));
                }
                _ => kept.push(pair),
            }
        }
        let driver_url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok(Self {
            driver_url,
            mode,
            root_cert,
        })
    }

    /// The driver's mode for this target.
    pub fn driver_ssl_mode(&self) -> SslMode {
        match self.mode {
            PgSslMode::Disable => SslMode::Disable,
            PgSslMode::Prefer => SslMode::Prefer,
            PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull => SslMode::Require,
        }
    }

    /// The rustls connector, or `None` for plain TCP.
    pub fn connector(&self, url_for_errors: &str) -> Result<Option<MakeRustlsConnect>, DbError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls_err = |reason: String| DbError::Tls {
            url: redact(url_for_errors),
            reason,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(e.to_string()))?;
        let config = match self.mode {
            PgSslMode::Disable => return Ok(None),
            PgSslMode::Prefer | PgSslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptionOnly(provider)))
                .with_no_client_auth(),
            PgSslMode::VerifyCa | PgSslMode::VerifyFull => {
                let roots = Arc::new(self.roots().map_err(tls_err)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| tls_err(e.to_string()))?;
                let verifier: Arc<dyn ServerCertVerifier> = if self.mode == PgSslMode::VerifyCa {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            }
        };
        Ok(Some(MakeRustlsConnect::new(config)))
    }

    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("sslrootcert={}: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!(
                        "sslrootcert={}: no PEM certificate in it",
                        path.display()
                    ));
                }
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| format!("sslrootcert={}: {e}", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(
                        "sslrootcert unset and the system trust store is empty (Debian package ca-certificates)"
                            .into(),
                    );
                }
            }
        }
        Ok(roots)
    }
}

/// `require`/`prefer`: any certificate, but the handshake's signatures are still checked, so the
/// session is encrypted to whoever holds the certificate's key.
#[derive(Debug)]
struct EncryptionOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptionOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must be trusted; a certificate for another name is accepted.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_split_off_the_url() {
        let t = PgTarget::parse(
            "postgres://u:p@db.example/fleet?application_name=w&sslmode=verify-full&sslrootcert=/etc/ca%20root.pem",
        )
        .unwrap();
        assert_eq!(
            t.driver_url,
            "postgres://u:p@db.example/fleet?application_name=w"
        );
        assert_eq!(t.mode, PgSslMode::VerifyFull);
        assert_eq!(t.root_cert, Some(PathBuf::from("/etc/ca root.pem")));
        assert_eq!(t.driver_ssl_mode(), SslMode::Require);

        let plain = PgTarget::parse("postgres://u@h/db").unwrap();
        assert_eq!(plain.mode, PgSslMode::Disable);
        assert_eq!(plain.driver_url, "postgres://u@h/db");
        let system = PgTarget::parse("postgres://u@h/db?sslmode=require&sslrootcert=system");
        assert_eq!(system.unwrap().root_cert, None);
    }

    #[test]
    fn unknown_sslmode_is_named_and_the_password_redacted() {
        let e = PgTarget::parse("postgres://u:secret@h/db?sslmode=verify-everything").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("sslmode=verify-everything"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");
    }

    #[test]
    fn unreadable_root_file_is_named() {
        let t = PgTarget::parse(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        )
        .unwrap();
        let msg = t.connector("postgres://u@h/db").err().unwrap().to_string();
        assert!(msg.contains("sslrootcert=/nonexistent/ca.pem"), "{msg}");
    }

    /// Whether the connection `url` opens is encrypted, as the server sees it.
    fn server_sees_tls(url: &str) -> Result<bool, DbError> {
        let db = crate::db::Db::open(url, 1)?;
        let rows = db
            .write_blocking(|c| {
                Ok(c.query(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )?)
            })
            .map_err(|e| DbError::Tls {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(rows[0].int(0).unwrap() == 1)
    }

    /// A real PostgreSQL with TLS: each mode connects (or refuses) as libpq's would, and the
    /// server confirms the session is encrypted.
    #[test]
    fn modes_against_a_real_tls_server() {
        let cluster = wellcar_test_support::pg_cluster::start_private_tls().unwrap();
        let ca = cluster.tls_ca.clone().unwrap();
        let by_ip = cluster.create_database().unwrap();
        let by_name = by_ip.replace("@127.0.0.1:", "@localhost:");
        let with = |url: &str, q: &str| format!("{url}?{q}");

        assert!(!server_sees_tls(&by_ip).unwrap(), "no sslmode is plain TCP");
        assert!(server_sees_tls(&with(&by_ip, "sslmode=require")).unwrap());
        assert!(server_sees_tls(&with(&by_ip, "sslmode=prefer")).unwrap());
        let full = format!("sslmode=verify-full&sslrootcert={}", ca.display());
        assert!(server_sees_tls(&with(&by_name, &full)).unwrap());
        // The certificate names localhost only: verify-full by IP fails, verify-ca passes.
        let e = server_sees_tls(&with(&by_ip, &full)).unwrap_err();
        assert!(
            matches!(e, DbError::Connect { .. }),
            "verify-full must refuse a certificate for another name: {e}"
        );
        let chain_only = format!("sslmode=verify-ca&sslrootcert={}", ca.display());
        assert!(server_sees_tls(&with(&by_ip, &chain_only)).unwrap());
        // A CA the server's certificate does not chain to.
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other-ca.pem");
        let other_ca = wellcar_test_support::pki::TestPki::generate("other", &["localhost"]);
        std::fs::write(&other, other_ca.unwrap().ca_pem).unwrap();
        let wrong = format!("sslmode=verify-full&sslrootcert={}", other.display());
        let e = server_sees_tls(&with(&by_name, &wrong)).unwrap_err();
        assert!(matches!(e, DbError::Connect { .. }), "{e}");
    }
}
