//! The signed image manifest: what `wellcar build --signing-key` signs about the disk image and
//! what `wellcar install` checks before it writes anything.
//!
//! Contract: two files next to the disk image (in the build's output directory):
//! - [`IMAGE_MANIFEST_FILE`] (`image-manifest.json`): one JSON object, [`ImageManifest`]: the
//!   disk image's file name, its exact size and sha256 (of the raw image: a compressed copy is
//!   checked after decompression), the sha256 of the build's `manifest.json`, and the version,
//!   board and verity root hash for people and for the installer's report;
//! - [`IMAGE_SIGNATURES_FILE`] (`image-manifest.json.sig`): a JSON array of
//!   [`ImageSignature`] (`public_key`, `signature`, both hex): ed25519 signatures, by the
//!   release keys that sign update payloads, over [`signed_message`]`(bytes of
//!   image-manifest.json)`.
//!
//! The signature covers the manifest file's exact bytes, so nothing is re-serialized before
//! checking; the manifest is parsed only after a signature verified. Keys are only ever added
//! (unknown keys are ignored).

use serde::{Deserialize, Serialize};

use crate::RootHash;

/// File name of the image manifest in a build's output directory.
pub const IMAGE_MANIFEST_FILE: &str = "image-manifest.json";
/// File name of its detached signatures.
pub const IMAGE_SIGNATURES_FILE: &str = "image-manifest.json.sig";
/// Domain separation: what is prefixed to the manifest bytes before signing, so that an image
/// signature can never be replayed as a payload signature or the other way round.
pub const IMAGE_SIGNATURE_DOMAIN: &[u8] = b"wellcar-image-manifest-v1\0";

/// What is signed (module documentation: the contract).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// OS version of the image.
    pub version: String,
    /// Board (`amd64-usr`).
    pub board: String,
    /// The raw disk image's file name, relative to the manifest's directory.
    pub disk_image: String,
    /// Its size in bytes.
    pub disk_image_size: u64,
    /// Its sha256 (lower-case hex).
    pub disk_image_sha256: String,
    /// sha256 (hex) of the build's `manifest.json`.
    pub build_manifest_sha256: String,
    /// dm-verity root hash of USR-A in the image.
    pub verity_root_hash: RootHash,
}

/// One detached signature over the image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSignature {
    /// The signer's ed25519 public key, hex (a hint: trust comes from the reader's keys).
    pub public_key: String,
    /// The ed25519 signature, hex.
    pub signature: String,
}

impl ImageManifest {
    /// The manifest file's bytes: pretty JSON with one trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut text = serde_json::to_string_pretty(self).expect("an image manifest serializes");
        text.push('\n');
        text.into_bytes()
    }

    /// Parses manifest bytes (only after their signature verified).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The bytes an image signature signs: [`IMAGE_SIGNATURE_DOMAIN`] then the manifest file.
pub fn signed_message(manifest_bytes: &[u8]) -> Vec<u8> {
    let mut message = IMAGE_SIGNATURE_DOMAIN.to_vec();
    message.extend_from_slice(manifest_bytes);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_the_message_is_domain_separated() {
        let manifest = ImageManifest {
            version: "1.2.3".into(),
            board: "amd64-usr".into(),
            disk_image: "wellcar.img".into(),
            disk_image_size: 4096,
            disk_image_sha256: "ab".repeat(32),
            build_manifest_sha256: "cd".repeat(32),
            verity_root_hash: "ef".repeat(32).parse().unwrap(),
        };
        let bytes = manifest.to_bytes();
        assert!(bytes.ends_with(b"}\n"));
        assert_eq!(ImageManifest::from_bytes(&bytes).unwrap(), manifest);
        let message = signed_message(&bytes);
        assert!(message.starts_with(b"wellcar-image-manifest-v1\0{"));
        assert_eq!(message.len(), IMAGE_SIGNATURE_DOMAIN.len() + bytes.len());
        let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        json.as_object_mut().unwrap().remove("disk_image_sha256");
        let err = ImageManifest::from_bytes(json.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("disk_image_sha256"), "{err}");
    }
}
