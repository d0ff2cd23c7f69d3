//! A throw-away certificate authority for TLS tests: a CA, and server certificates it signs,
//! as PEM. Generated fresh for each call (rcgen, ECDSA P-256); nothing is persisted.

/// A CA that issues server certificates.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA whose common name is `name`.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Ok(Self {
            issuer: rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate()?)?,
        })
    }

    /// The CA certificate (what a client trusts), PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses) with common name
    /// `common_name`: `(certificate PEM, PKCS#8 key PEM)`.
    pub fn issue(
        &self,
        names: &[&str],
        common_name: &str,
    ) -> Result<(String, String), rcgen::Error> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A CA and one server certificate it issued.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate (what a client trusts).
    pub ca_pem: String,
    /// The server's certificate.
    pub server_cert_pem: String,
    /// The server's private key (PKCS#8).
    pub server_key_pem: String,
}

impl TestPki {
    /// A CA named `ca_name`, and a server certificate for `server_names` signed by it.
    pub fn generate(ca_name: &str, server_names: &[&str]) -> Result<Self, rcgen::Error> {
        let ca = TestCa::new(ca_name)?;
        let (server_cert_pem, server_key_pem) = ca.issue(server_names, "server")?;
        Ok(Self {
            ca_pem: ca.pem(),
            server_cert_pem,
            server_key_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_pem_for_the_names() {
        let pki = TestPki::generate("test CA", &["localhost", "127.0.0.1"]).unwrap();
        assert!(pki.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki
            .server_cert_pem
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki
            .server_key_pem
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(pki.ca_pem, pki.server_cert_pem);
        let ca = TestCa::new("two").unwrap();
        assert_ne!(
            ca.issue(&["localhost"], "a").unwrap(),
            ca.issue(&["localhost"], "b").unwrap()
        );
    }
}
