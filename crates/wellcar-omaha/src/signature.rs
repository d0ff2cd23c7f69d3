//! Signed Omaha responses: what a server started with a response key signs, and how an agent
//! holding the matching public key checks it.
//!
//! Contract (version 1):
//! - The signed message is exactly [`SIGNED_MESSAGE_LEN`] bytes:
//!   [`DOMAIN`] (`wellcar-omaha-response-v1` and a NUL byte), then SHA-256 of the exact request
//!   body bytes the server received, then SHA-256 of the value of the request's
//!   [`REQUEST_NONCE`](crate::headers::REQUEST_NONCE) header (of the empty string when the
//!   request had none), then SHA-256 of the exact response body bytes sent. Each part has a
//!   fixed length, so no two different (request, nonce, response) triples give one message.
//! - The signature is ed25519 (RFC 8032, pure) over that message with the server's response
//!   key. It travels in the [`RESPONSE_SIGNATURE`](crate::headers::RESPONSE_SIGNATURE) header as
//!   standard base64 with padding (88 characters for the 64-byte signature).
//! - A verifier recomputes the message from the request it sent and the body it received and
//!   checks with [`VerifyingKey::verify_strict`] (no malleable or small-order signatures).
//!
//! Why the request is bound: a signature over the response alone lets anyone on the path
//! replay an old, validly signed `noupdate` forever (a freeze attack). Binding it to the request
//! body and to a fresh random nonce the agent sends with every request means a recorded answer
//! verifies only for the request it answered.
//!
//! This module does no I/O: key files are read by the caller (PEM, in `wellcar-payload`'s key
//! format, the same as update payload keys).

use base64::Engine as _;
use sha2::{Digest, Sha256};

pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// Domain separation prefix of the signed message (version 1 of this contract).
pub const DOMAIN: &[u8] = b"wellcar-omaha-response-v1\0";

/// Length of the signed message: the domain prefix and three SHA-256 digests.
pub const SIGNED_MESSAGE_LEN: usize = DOMAIN.len() + 3 * 32;

/// Longest header value accepted as a signature (base64 of 64 bytes is 88 characters).
const MAX_SIGNATURE_HEADER_LEN: usize = 88;

/// Why a response signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The response carried no signature header.
    #[error(
        "the response has no {} header (is the server started with --response-key?)",
        crate::headers::RESPONSE_SIGNATURE
    )]
    Missing,
    /// The header is not base64 of 64 bytes.
    #[error(
        "the {} header is not a base64 ed25519 signature: {reason}",
        crate::headers::RESPONSE_SIGNATURE
    )]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// The signature does not verify with the configured key for this request and response:
    /// forged, made with another key, or recorded for another request (replayed).
    #[error("the {} header does not verify with the server public key for this request and response (forged, another key, or replayed from another request)", crate::headers::RESPONSE_SIGNATURE)]
    Invalid,
}

/// The exact bytes that are signed (see the module docs).
pub fn signed_message(
    request_body: &[u8],
    request_nonce: &[u8],
    response_body: &[u8],
) -> [u8; SIGNED_MESSAGE_LEN] {
    let mut message = [0u8; SIGNED_MESSAGE_LEN];
    let (domain, digests) = message.split_at_mut(DOMAIN.len());
    domain.copy_from_slice(DOMAIN);
    for (slot, part) in
        digests
            .chunks_exact_mut(32)
            .zip([request_body, request_nonce, response_body])
    {
        slot.copy_from_slice(&Sha256::digest(part));
    }
    message
}

/// The [`RESPONSE_SIGNATURE`](crate::headers::RESPONSE_SIGNATURE) header value for
/// `response_body` answering `request_body` (with nonce header value `request_nonce`, empty
/// if none was sent).
pub fn sign_response(
    key: &SigningKey,
    request_body: &[u8],
    request_nonce: &[u8],
    response_body: &[u8],
) -> String {
    use ed25519_dalek::Signer as _;
    let signature = key.sign(&signed_message(request_body, request_nonce, response_body));
    base64::engine::general_purpose::STANDARD.encode(signature.to_bytes())
}

/// Checks `header` (the response's signature header, `None` if absent) against `key` for this
/// exact request, nonce and response.
pub fn verify_response(
    key: &VerifyingKey,
    request_body: &[u8],
    request_nonce: &[u8],
    response_body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    if header.len() > MAX_SIGNATURE_HEADER_LEN {
        return Err(SignatureError::Malformed {
            reason: format!(
                "{} characters, expected {MAX_SIGNATURE_HEADER_LEN}",
                header.len()
            ),
        });
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(header)
        .map_err(|e| SignatureError::Malformed {
            reason: e.to_string(),
        })?;
    let bytes: [u8; 64] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| SignatureError::Malformed {
            reason: format!("{} bytes, expected 64", bytes.len()),
        })?;
    let signature = ed25519_dalek::Signature::from_bytes(&bytes);
    key.verify_strict(
        &signed_message(request_body, request_nonce, response_body),
        &signature,
    )
    .map_err(|_| SignatureError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    const REQUEST: &[u8] = b"<request protocol=\"3.0\"></request>";
    const NONCE: &[u8] = b"0123456789abcdef0123456789abcdef";
    const RESPONSE: &[u8] = b"<response protocol=\"3.0\"></response>";

    #[test]
    fn message_layout_is_domain_then_three_digests() {
        let message = signed_message(REQUEST, NONCE, RESPONSE);
        assert_eq!(message.len(), 26 + 96);
        assert_eq!(&message[..26], b"wellcar-omaha-response-v1\0");
        assert_eq!(&message[26..58], Sha256::digest(REQUEST).as_slice());
        assert_eq!(&message[58..90], Sha256::digest(NONCE).as_slice());
        assert_eq!(&message[90..], Sha256::digest(RESPONSE).as_slice());
    }

    #[test]
    fn a_signature_verifies_only_for_its_request_nonce_response_and_key() {
        let signing = key(7);
        let header = sign_response(&signing, REQUEST, NONCE, RESPONSE);
        assert_eq!(header.len(), 88);
        let public = signing.verifying_key();
        assert_eq!(
            verify_response(&public, REQUEST, NONCE, RESPONSE, Some(&header)),
            Ok(())
        );
        for (request, nonce, response) in [
            (&b"<request/>"[..], NONCE, RESPONSE),
            (REQUEST, &b"another nonce"[..], RESPONSE),
            (REQUEST, &b""[..], RESPONSE),
            (REQUEST, NONCE, &b"<response/>"[..]),
        ] {
            assert_eq!(
                verify_response(&public, request, nonce, response, Some(&header)),
                Err(SignatureError::Invalid)
            );
        }
        assert_eq!(
            verify_response(
                &key(8).verifying_key(),
                REQUEST,
                NONCE,
                RESPONSE,
                Some(&header)
            ),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let public = key(7).verifying_key();
        let verify = |h: Option<&str>| verify_response(&public, REQUEST, NONCE, RESPONSE, h);
        assert_eq!(verify(None), Err(SignatureError::Missing));
        assert!(matches!(
            verify(Some("not base64!")),
            Err(SignatureError::Malformed { .. })
        ));
        let short = base64::engine::general_purpose::STANDARD.encode([0u8; 32]);
        let err = verify(Some(&short)).unwrap_err();
        assert!(err.to_string().contains("32 bytes, expected 64"), "{err}");
        let long = "A".repeat(4096);
        assert!(matches!(
            verify(Some(&long)),
            Err(SignatureError::Malformed { .. })
        ));
        assert!(SignatureError::Missing
            .to_string()
            .contains("X-Wellcar-Signature"));
    }
}
