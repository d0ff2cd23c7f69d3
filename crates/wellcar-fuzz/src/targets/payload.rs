//! The update payload's head, which the agent reads from the download before anything is
//! authenticated: the fixed header ([`Header::parse`]), the signature block and the whole head
//! ([`PayloadHead::read`], then [`PayloadHead::authenticate`] against a fixed key), and the
//! manifest JSON ([`Manifest::parse`], which the apply path reaches only after the signature
//! verified, and `wellcar payload info` reaches unverified).
//!
//! Beyond "no panic": a header that parses serializes to the same 32 bytes; a manifest that
//! parses serializes to JSON that parses to the same manifest.

use std::sync::OnceLock;

use ed25519_dalek::SigningKey;
use wellcar_payload::format::{Header, HEADER_LEN};
use wellcar_payload::keys::{TrustedKey, TrustedKeys};
use wellcar_payload::{Manifest, PayloadHead};

use crate::Target;

/// `Header::parse` of the first 32 bytes (zero-padded), and its round trip.
pub const HEADER: Target = Target {
    name: "payload-header",
    exercises: "wellcar_payload::format::Header::parse + to_bytes round trip",
    run: header,
};

/// `Manifest::parse` (JSON + validate), and its JSON round trip.
pub const MANIFEST: Target = Target {
    name: "payload-manifest",
    exercises: "wellcar_payload::Manifest::parse (JSON + validate) + JSON round trip",
    run: manifest,
};

/// `PayloadHead::read` (header, manifest bytes, signature block), the unverified manifest,
/// and `authenticate`.
pub const HEAD: Target = Target {
    name: "payload-head",
    exercises: "wellcar_payload::PayloadHead::read (header + signature block) + manifest_unverified + authenticate",
    run: head,
};

/// The private key of the seeds' signatures: a fixed test key, so `authenticate` can succeed
/// on a seed and mutants of it reach the verified-manifest path.
pub const SEED_SIGNING_KEY: [u8; 32] = [0x5e; 32];

/// The public half of [`SEED_SIGNING_KEY`], the one key `payload-head` trusts.
pub fn seed_trusted_keys() -> &'static TrustedKeys {
    static KEYS: OnceLock<TrustedKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        TrustedKeys::new(vec![TrustedKey {
            name: "fuzz-seed".into(),
            verifying_key: SigningKey::from_bytes(&SEED_SIGNING_KEY).verifying_key(),
        }])
    })
}

fn header(data: &[u8]) {
    let mut bytes = [0u8; HEADER_LEN];
    let n = data.len().min(HEADER_LEN);
    bytes[..n].copy_from_slice(&data[..n]);
    if let Ok(header) = Header::parse(&bytes) {
        assert_eq!(header.to_bytes(), bytes, "header changed in a round trip");
        let _ = header.data_start();
    }
}

fn manifest(data: &[u8]) {
    let Ok(manifest) = Manifest::parse(data) else {
        return;
    };
    let json = serde_json::to_vec(&manifest).expect("a parsed manifest serializes");
    let again = Manifest::parse(&json).unwrap_or_else(|e| {
        panic!(
            "a serialized manifest does not parse ({e}): {}",
            json.escape_ascii()
        )
    });
    assert_eq!(again, manifest, "manifest changed in a JSON round trip");
}

fn head(data: &[u8]) {
    let mut reader = data;
    let Ok(head) = PayloadHead::read(&mut reader) else {
        return;
    };
    assert_eq!(
        head.data_start(),
        (data.len() - reader.len()) as u64,
        "read stopped elsewhere than data_start"
    );
    let _ = head.manifest_unverified();
    if let Ok(verified) = head.authenticate(seed_trusted_keys()) {
        let _ = verified
            .manifest()
            .image_size(wellcar_payload::format::Destination::Usr);
    }
}
