//! A throw-away certificate authority for TLS tests: a CA and one server certificate it
//! signed, as PEM. Generated fresh for each call (rcgen, ECDSA P-256); nothing is persisted.

/// A CA and a server certificate it issued.
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
    /// A CA named `ca_name`, and a server certificate for `server_names` (DNS names or IP
    /// addresses) signed by it.
    pub fn generate(ca_name: &str, server_names: &[&str]) -> Result<Self, rcgen::Error> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
        let server_key = rcgen::KeyPair::generate()?;
        let names: Vec<String> = server_names.iter().map(|n| (*n).to_owned()).collect();
        let server = rcgen::CertificateParams::new(names)?.signed_by(&server_key, &ca)?;
        Ok(Self {
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
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
    }
}
