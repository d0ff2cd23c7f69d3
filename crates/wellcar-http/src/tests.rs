//! The client against real servers on loopback: a rustls https server with a certificate from a
//! throw-away CA, and a plain http one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use wellcar_test_support::pki::TestPki;

use super::*;

/// Serves `connections` connections on loopback, answering every request with `status` and
/// "hello"; TLS with `pki`'s server certificate when given. Handshakes the client refuses end
/// that connection.
fn serve(pki: Option<&TestPki>, status: u16, connections: usize) -> SocketAddr {
    let tls = pki.map(|pki| {
        let chain = vec![CertificateDer::from_pem_slice(pki.server_cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        )
    });
    serve_with(tls, status, connections)
}

/// [`serve`] with a given TLS configuration (or plain http).
fn serve_with(
    tls: Option<Arc<rustls::ServerConfig>>,
    status: u16,
    connections: usize,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let stream = stream.unwrap();
            let mut io: Box<dyn ReadWrite> = match &tls {
                Some(config) => Box::new(rustls::StreamOwned::new(
                    rustls::ServerConnection::new(config.clone()).unwrap(),
                    stream,
                )),
                None => Box::new(stream),
            };
            let mut head = Vec::new();
            let mut byte = [0_u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match io.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            if head.ends_with(b"\r\n\r\n") {
                let _ = write!(
                    io,
                    "HTTP/1.1 {status} X\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                );
                let _ = io.flush();
            }
        }
    });
    addr
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn get(agent: &ureq::Agent, url: &str) -> Result<(u16, String), ureq::Error> {
    let response = agent.get(url).call()?;
    let status = response.status().as_u16();
    Ok((status, response.into_body().read_to_string()?))
}

#[test]
fn https_is_verified_against_the_ca_file_and_the_system_store() {
    let pki = TestPki::generate("wellcar-http test CA", &["localhost"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let addr = serve(Some(&pki), 200, 2);
    let url = format!("https://localhost:{}/", addr.port());

    let mut options = ClientOptions::new("wellcar-http-test");
    options.ca_file = Some(ca);
    assert_eq!(
        get(&client(&options).unwrap(), &url).unwrap(),
        (200, "hello".into())
    );

    // The system store alone does not know the test CA.
    let e = get(&client(&ClientOptions::new("t")).unwrap(), &url).unwrap_err();
    assert!(
        e.to_string().to_lowercase().contains("certificate"),
        "an unknown issuer must be refused: {e}"
    );
}

#[test]
fn plain_http_works_and_statuses_are_answers() {
    let addr = serve(None, 404, 1);
    let agent = client(&ClientOptions::new("t")).unwrap();
    assert_eq!(
        get(&agent, &format!("http://{addr}/x")).unwrap(),
        (404, "hello".into())
    );
}

#[test]
fn bad_ca_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ClientOptions::new("t");
    options.ca_file = Some(dir.path().join("missing.pem"));
    let e = client(&options).unwrap_err();
    assert!(matches!(e, SetupError::CaFileUnreadable { .. }), "{e}");
    assert!(e.to_string().contains("missing.pem"), "{e}");

    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    options.ca_file = Some(not_pem);
    let e = client(&options).unwrap_err();
    assert!(matches!(e, SetupError::CaFileInvalid { .. }), "{e}");
    assert!(e.to_string().contains("not.pem"), "{e}");
}

#[test]
fn a_client_identity_is_presented_to_servers_that_require_one() {
    use wellcar_test_support::pki::TestCa;
    let ca = TestCa::new("wellcar-http mTLS CA").unwrap();
    let (server_cert, server_key) = ca.issue(&["localhost"], "server").unwrap();
    let (client_cert, client_key) = ca.issue(&["client"], "client").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_file = write("ca.pem", &ca.pem());
    let cert_file = write("client.pem", &client_cert);
    let key_file = write("client-key.pem", &client_key);

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client_roots = rustls::RootCertStore::empty();
    client_roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(client_roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(server_cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(server_key.as_bytes()).unwrap(),
            )
            .unwrap(),
    );
    let addr = serve_with(Some(config), 200, 2);
    let url = format!("https://localhost:{}/", addr.port());

    let mut options = ClientOptions::new("t");
    options.ca_file = Some(ca_file);
    let anonymous = get(&client(&options).unwrap(), &url);
    assert!(
        anonymous.is_err(),
        "a server requiring a client certificate must refuse a client without one: {anonymous:?}"
    );
    options.client_identity = Some(ClientIdentity {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
    });
    assert_eq!(
        get(&client(&options).unwrap(), &url).unwrap(),
        (200, "hello".into())
    );

    // Bad identity files are named.
    options.client_identity = Some(ClientIdentity {
        cert_file: dir.path().join("missing.pem"),
        key_file: key_file.clone(),
    });
    let e = client(&options).unwrap_err();
    assert!(
        matches!(
            e,
            SetupError::ClientIdentityUnreadable {
                what: "certificate",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("missing.pem"), "{e}");
    options.client_identity = Some(ClientIdentity {
        cert_file: cert_file.clone(),
        key_file: cert_file,
    });
    let e = client(&options).unwrap_err();
    assert!(
        matches!(e, SetupError::ClientIdentityInvalid { what: "key", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("client.pem"), "{e}");
}
