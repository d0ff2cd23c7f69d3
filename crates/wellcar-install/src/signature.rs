//! Signing and checking the image manifest ([`wellcar_contract::image_manifest`]) with the
//! release keys that sign update payloads (`wellcar_payload::keys`: ed25519, PEM files).
//!
//! [`sign_build`] hashes a build's raw disk image and `manifest.json`, writes
//! `image-manifest.json` and its `.sig` next to them (each replaced atomically, the manifest
//! first: a crash in between leaves a manifest whose old signature no longer verifies, which
//! the installer refuses). [`verify_manifest`] reads both files, checks the signatures against
//! the trusted keys and only then parses the manifest.

use std::io::Read;
use std::path::Path;

use ed25519_dalek::{Signature, Signer as _, Verifier as _, VerifyingKey};
use sha2::{Digest as _, Sha256};
use wellcar_contract::image_manifest::signed_message;
use wellcar_contract::{
    atomic_file, BuildManifest, ImageManifest, ImageSignature, IMAGE_MANIFEST_FILE,
    IMAGE_SIGNATURES_FILE,
};
use wellcar_payload::format::key_fingerprint;
use wellcar_payload::{SigningKey, TrustedKeys};

use crate::error::InstallError;
use crate::source::Location;

/// A manifest whose signature verified (or that `--insecure` accepted).
#[derive(Debug, Clone)]
pub struct CheckedManifest {
    /// The manifest.
    pub manifest: ImageManifest,
    /// The directory (path or URL) it was read from (the image is named relative to it).
    pub dir: Location,
    /// Which trusted key verified it (`name (fingerprint)`), or `None` when unchecked.
    pub signed_by: Option<String>,
}

/// sha256 (hex) and length of everything `reader` yields.
pub fn sha256_of(reader: &mut dyn Read, path: &Path) -> Result<(String, u64), InstallError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|source| InstallError::Io {
            action: "reading",
            path: path.into(),
            source,
        })?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

fn hash_file(path: &Path) -> Result<(String, u64), InstallError> {
    let mut file = std::fs::File::open(path).map_err(|source| InstallError::Io {
        action: "opening",
        path: path.into(),
        source,
    })?;
    sha256_of(&mut file, path)
}

/// Writes `dir/image-manifest.json` and its signatures by `keys` for the build in `dir`
/// (its `manifest.json` names the raw disk image).
pub fn sign_build(dir: &Path, keys: &[&SigningKey]) -> Result<ImageManifest, InstallError> {
    let build = BuildManifest::read(dir).map_err(|source| InstallError::BuildManifest {
        dir: dir.into(),
        source,
    })?;
    if build.disk_image.is_empty() {
        return Err(InstallError::NoDiskImage { dir: dir.into() });
    }
    let (disk_image_sha256, disk_image_size) = hash_file(&dir.join(&build.disk_image))?;
    let (build_manifest_sha256, _) = hash_file(&dir.join(wellcar_contract::BUILD_MANIFEST_FILE))?;
    let manifest = ImageManifest {
        version: build.version,
        board: build.board,
        disk_image: build.disk_image,
        disk_image_size,
        disk_image_sha256,
        build_manifest_sha256,
        verity_root_hash: build.verity_root_hash,
    };
    write_signed(dir, &manifest, keys)?;
    Ok(manifest)
}

/// Writes `manifest` and its signatures by `keys` into `dir`.
pub fn write_signed(
    dir: &Path,
    manifest: &ImageManifest,
    keys: &[&SigningKey],
) -> Result<(), InstallError> {
    let bytes = manifest.to_bytes();
    let message = signed_message(&bytes);
    let signatures: Vec<ImageSignature> = keys
        .iter()
        .map(|key| ImageSignature {
            public_key: hex::encode(key.verifying_key().as_bytes()),
            signature: hex::encode(key.sign(&message).to_bytes()),
        })
        .collect();
    let mut sig_text = serde_json::to_string_pretty(&signatures).expect("signatures serialize");
    sig_text.push('\n');
    for (name, content) in [
        (IMAGE_MANIFEST_FILE, bytes.as_slice()),
        (IMAGE_SIGNATURES_FILE, sig_text.as_bytes()),
    ] {
        let path = dir.join(name);
        atomic_file::write(&path, content, 0o644).map_err(|source| InstallError::Io {
            action: "writing",
            path,
            source,
        })?;
    }
    Ok(())
}

/// Largest manifest or signature file read (both are a few hundred bytes).
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Reads the image manifest in directory `dir` (a path or a URL) and checks its signatures
/// against `trusted`; with `insecure`, a missing or unverifiable signature is accepted (the
/// manifest's hashes are still checked while writing).
pub fn verify_manifest(
    dir: &Location,
    trusted: &TrustedKeys,
    insecure: bool,
) -> Result<CheckedManifest, InstallError> {
    let manifest_at = dir.join(IMAGE_MANIFEST_FILE);
    let bytes = manifest_at
        .read_small("reading the image manifest", MAX_MANIFEST_BYTES)?
        .ok_or_else(|| InstallError::NotFound {
            what: "the image manifest",
            path: manifest_at.name(),
        })?;
    let signed_by = match check_signatures(dir, &bytes, trusted) {
        Ok(by) => Some(by),
        Err(err) if insecure => {
            tracing::warn!("--insecure: {err}");
            None
        }
        Err(err) => return Err(err),
    };
    let manifest =
        ImageManifest::from_bytes(&bytes).map_err(|source| InstallError::ManifestParse {
            path: manifest_at.name(),
            source,
        })?;
    Ok(CheckedManifest {
        manifest,
        dir: dir.clone(),
        signed_by,
    })
}

fn check_signatures(
    dir: &Location,
    manifest_bytes: &[u8],
    trusted: &TrustedKeys,
) -> Result<String, InstallError> {
    let sig_at = dir.join(IMAGE_SIGNATURES_FILE);
    let sig_path = sig_at.name();
    let Some(text) = sig_at.read_small("reading", MAX_MANIFEST_BYTES)? else {
        return Err(InstallError::Unsigned { path: sig_path });
    };
    let signatures: Vec<ImageSignature> =
        serde_json::from_slice(&text).map_err(|source| InstallError::ManifestParse {
            path: sig_path.clone(),
            source,
        })?;
    let message = signed_message(manifest_bytes);
    let mut signers = Vec::new();
    for entry in &signatures {
        let (Some(public), Some(signature)) = (
            decode_array::<32>(&entry.public_key),
            decode_array::<64>(&entry.signature),
        ) else {
            continue;
        };
        signers.push(key_fingerprint(&public));
        let signature = Signature::from_bytes(&signature);
        for key in trusted.keys() {
            if key.verifying_key.as_bytes() == &public
                && verify(&key.verifying_key, &message, &signature)
            {
                return Ok(key.describe());
            }
        }
    }
    Err(InstallError::BadSignature {
        path: sig_path,
        signers: if signers.is_empty() {
            "none".into()
        } else {
            signers.join(", ")
        },
        trusted: trusted.describe(),
    })
}

fn verify(key: &VerifyingKey, message: &[u8], signature: &Signature) -> bool {
    key.verify(message, signature).is_ok()
}

fn decode_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    hex::decode(text).ok()?.try_into().ok()
}
