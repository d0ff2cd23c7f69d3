//! Signed Omaha answers (`wellcar server serve --response-key PATH`).
//!
//! Contract: with a [`ResponseSigner`] in [`Settings::response_signer`](crate::Settings), every
//! 200 answer of `POST /v1/update/` carries the
//! [`RESPONSE_SIGNATURE`](wellcar_omaha::headers::RESPONSE_SIGNATURE) header: the ed25519
//! signature, by the response key, of the exact request body received, the request's
//! [`REQUEST_NONCE`](wellcar_omaha::headers::REQUEST_NONCE) header and the exact response body
//! sent (the message and encoding are defined once, in [`wellcar_omaha::signature`]). Without a
//! signer, answers are exactly as before (Nebraska's). Error answers are never signed.
//!
//! The key file is a PEM PKCS#8 ed25519 private key, the format of update payload keys
//! (`wellcar key generate` writes one; its `.pub` is what agents name in `SERVER_PUBLIC_KEY`).
//! It should be a different key from the payload signing key: the response key lives on the
//! online server, the payload key need not.

use std::path::Path;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use wellcar_omaha::headers::{REQUEST_NONCE, RESPONSE_SIGNATURE};
use wellcar_omaha::signature::{sign_response, SigningKey};

/// The server's response signing key.
#[derive(Clone)]
pub struct ResponseSigner {
    key: Arc<SigningKey>,
}

impl std::fmt::Debug for ResponseSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseSigner")
            .field("public_key", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ResponseSigner {
    /// A signer with `key`.
    pub fn new(key: SigningKey) -> Self {
        Self { key: Arc::new(key) }
    }

    /// Loads a PEM PKCS#8 ed25519 private key (the payload key format).
    pub fn load(path: &Path) -> Result<Self, wellcar_payload::KeyError> {
        wellcar_payload::load_signing_key(path).map(Self::new)
    }

    /// The public key's fingerprint, as `wellcar key` prints it.
    pub fn fingerprint(&self) -> String {
        wellcar_payload::format::key_fingerprint(self.key.verifying_key().as_bytes())
    }

    /// The signature header value for `response_body` answering `request_body` sent with
    /// `request_headers`.
    pub fn signature(
        &self,
        request_body: &[u8],
        request_headers: &HeaderMap,
        response_body: &[u8],
    ) -> HeaderValue {
        let nonce = request_headers
            .get(REQUEST_NONCE)
            .map_or(&b""[..], HeaderValue::as_bytes);
        let value = sign_response(&self.key, request_body, nonce, response_body);
        HeaderValue::try_from(value).expect("base64 is a valid header value")
    }
}

/// The 200 answer carrying `xml`, signed when the server has a response key.
pub fn omaha_reply(
    signer: Option<&ResponseSigner>,
    request_body: &[u8],
    request_headers: &HeaderMap,
    xml: String,
) -> Response {
    let signature = signer.map(|s| s.signature(request_body, request_headers, xml.as_bytes()));
    let mut reply = ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], xml).into_response();
    if let Some(signature) = signature {
        reply.headers_mut().insert(RESPONSE_SIGNATURE, signature);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header an agent checks with [`wellcar_omaha::signature::verify_response`] verifies
    /// for the exact bodies and nonce, and names the nonce-less request as the empty nonce.
    #[test]
    fn replies_are_signed_over_request_nonce_and_response() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let signer = ResponseSigner::new(key.clone());
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_NONCE, HeaderValue::from_static("00ff"));
        let reply = omaha_reply(Some(&signer), b"<request/>", &headers, "<response/>".into());
        let header = reply.headers()[RESPONSE_SIGNATURE].to_str().unwrap();
        let public = key.verifying_key();
        wellcar_omaha::signature::verify_response(
            &public,
            b"<request/>",
            b"00ff",
            b"<response/>",
            Some(header),
        )
        .unwrap();
        assert!(wellcar_omaha::signature::verify_response(
            &public,
            b"<request/>",
            b"",
            b"<response/>",
            Some(header),
        )
        .is_err());
        let unsigned = omaha_reply(None, b"<request/>", &headers, "<response/>".into());
        assert!(unsigned.headers().get(RESPONSE_SIGNATURE).is_none());
    }

    /// `--response-key` takes the payload key format; a file that is not one is an error
    /// naming the file.
    #[test]
    fn loads_pem_keys_and_names_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = wellcar_payload::generate_keypair(dir.path(), false).unwrap();
        let signer = ResponseSigner::load(&files.private_key).unwrap();
        assert_eq!(signer.fingerprint(), files.fingerprint);
        let err = ResponseSigner::load(&files.public_key).unwrap_err();
        assert!(err.to_string().contains("update-key.pub"), "{err}");
        assert!(err.to_string().contains("private"), "{err}");
    }
}
