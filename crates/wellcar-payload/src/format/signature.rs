//! Authentication: the signature block and reading a payload's head.
//!
//! [`PayloadHead::read`] reads header, manifest bytes and signature block without trusting
//! any of them; [`PayloadHead::authenticate`] checks the ed25519 signatures over header and
//! manifest bytes against the trusted keys and only then parses the manifest, yielding a
//! [`VerifiedHead`]. A `VerifiedHead` exists only for a payload signed by a trusted key.

use std::io::Read;

use ed25519_dalek::{Signature, VerifyingKey, PUBLIC_KEY_LENGTH, SIGNATURE_LENGTH};
use sha2::{Digest, Sha256};

use super::{le4, FormatError, Header, Manifest, Sha256Digest, HEADER_LEN, SIGNATURE_ENTRY_LEN};
use crate::keys::TrustedKeys;

/// One entry of the signature block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureEntry {
    /// The signer's public key (a hint; trust comes from [`TrustedKeys`]).
    pub public_key: [u8; PUBLIC_KEY_LENGTH],
    /// ed25519 signature over header || manifest.
    pub signature: [u8; SIGNATURE_LENGTH],
}

/// Serializes a signature block.
pub fn encode_signature_block(entries: &[SignatureEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * SIGNATURE_ENTRY_LEN);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for entry in entries {
        out.extend_from_slice(&entry.public_key);
        out.extend_from_slice(&entry.signature);
    }
    out
}

/// Parses a signature block whose length the header already checked.
pub fn decode_signature_block(bytes: &[u8]) -> Result<Vec<SignatureEntry>, FormatError> {
    let bad = |reason: String| FormatError::InvalidSignatureBlock { reason };
    if bytes.len() < 4 {
        return Err(bad(format!("{} bytes is too short", bytes.len())));
    }
    let count = u32::from_le_bytes(le4(&bytes[0..4])) as usize;
    let entries = &bytes[4..];
    if count == 0 || count * SIGNATURE_ENTRY_LEN != entries.len() {
        return Err(bad(format!(
            "count {count} does not match its {} bytes of entries",
            entries.len()
        )));
    }
    Ok(entries
        .chunks_exact(SIGNATURE_ENTRY_LEN)
        .map(|chunk| {
            let mut public_key = [0u8; PUBLIC_KEY_LENGTH];
            let mut signature = [0u8; SIGNATURE_LENGTH];
            public_key.copy_from_slice(&chunk[..PUBLIC_KEY_LENGTH]);
            signature.copy_from_slice(&chunk[PUBLIC_KEY_LENGTH..]);
            SignatureEntry {
                public_key,
                signature,
            }
        })
        .collect())
}

/// Short printable identity of a public key: first 8 bytes of its sha256, hex.
pub fn key_fingerprint(public_key: &[u8; PUBLIC_KEY_LENGTH]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// The header, manifest bytes and signatures of a payload, as read from the stream. Nothing
/// in it is trusted: the manifest is parsed only after [`PayloadHead::authenticate`] checked
/// the signature (or explicitly, for display, by [`PayloadHead::manifest_unverified`]).
#[derive(Debug, Clone)]
pub struct PayloadHead {
    /// The header.
    pub header: Header,
    /// The signature entries.
    pub signatures: Vec<SignatureEntry>,
    header_bytes: [u8; HEADER_LEN],
    manifest_bytes: Vec<u8>,
}

impl PayloadHead {
    /// Reads header, manifest and signature block from the start of a payload stream, leaving
    /// `reader` at the first data byte. Checks the header and the signature block's shape;
    /// does not parse the manifest or check signatures.
    pub fn read(reader: &mut impl Read) -> Result<Self, FormatError> {
        let mut header_bytes = [0u8; HEADER_LEN];
        read_exact_at(reader, &mut header_bytes, 0, "header")?;
        let header = Header::parse(&header_bytes)?;
        let mut manifest_bytes = vec![0u8; header.manifest_len as usize];
        read_exact_at(reader, &mut manifest_bytes, HEADER_LEN as u64, "manifest")?;
        let mut signature_bytes = vec![0u8; header.signature_block_len as usize];
        read_exact_at(
            reader,
            &mut signature_bytes,
            HEADER_LEN as u64 + header.manifest_len,
            "signature block",
        )?;
        let signatures = decode_signature_block(&signature_bytes)?;
        Ok(Self {
            header,
            signatures,
            header_bytes,
            manifest_bytes,
        })
    }

    /// Parses the manifest without authenticating it: for display only.
    pub fn manifest_unverified(&self) -> Result<Manifest, FormatError> {
        Manifest::parse(&self.manifest_json()?)
    }

    /// The manifest JSON, decompressed if the header says it is compressed. Unauthenticated.
    pub fn manifest_json(&self) -> Result<std::borrow::Cow<'_, [u8]>, FormatError> {
        super::decode_manifest_section(&self.manifest_bytes, self.header.manifest_zstd)
    }

    /// The bytes every signature covers: header then manifest.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut message = Vec::with_capacity(HEADER_LEN + self.manifest_bytes.len());
        message.extend_from_slice(&self.header_bytes);
        message.extend_from_slice(&self.manifest_bytes);
        message
    }

    /// sha256 of header and manifest: identifies this payload in checkpoints.
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of(&self.signed_message())
    }

    /// Offset of the first data byte.
    pub fn data_start(&self) -> u64 {
        self.header.data_start()
    }

    /// Checks the signatures against `trusted`, then parses and validates the manifest.
    /// Succeeds when any entry verifies under any trusted key.
    pub fn authenticate(self, trusted: &TrustedKeys) -> Result<VerifiedHead, FormatError> {
        let message = self.signed_message();
        // Every entry against every trusted key (at most 16 x a handful): the public key in an
        // entry is only a hint and is itself unauthenticated.
        let signer = self.signatures.iter().find_map(|entry| {
            let signature = Signature::from_bytes(&entry.signature);
            trusted.keys().iter().find(|key| {
                key.verifying_key
                    .verify_strict(&message, &signature)
                    .is_ok()
            })
        });
        let Some(signer) = signer else {
            let claimed_trusted = self.signatures.iter().find_map(|entry| {
                trusted
                    .keys()
                    .iter()
                    .find(|key| key.verifying_key.as_bytes() == &entry.public_key)
            });
            if let Some(key) = claimed_trusted {
                return Err(FormatError::BadSignature {
                    key: key.describe(),
                });
            }
            return Err(FormatError::UntrustedSigner {
                signers: self
                    .signatures
                    .iter()
                    .map(|e| key_fingerprint(&e.public_key))
                    .collect::<Vec<_>>()
                    .join(", "),
                trusted: trusted.describe(),
            });
        };
        let manifest = Manifest::parse(&self.manifest_json()?)?;
        Ok(VerifiedHead {
            signer: signer.describe(),
            digest: self.digest(),
            manifest,
            head: self,
        })
    }
}

/// A head whose signature verified under a trusted key, with its parsed, validated manifest.
#[derive(Debug, Clone)]
pub struct VerifiedHead {
    head: PayloadHead,
    manifest: Manifest,
    signer: String,
    digest: Sha256Digest,
}

impl VerifiedHead {
    /// The authenticated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The raw head this was made from.
    pub fn head(&self) -> &PayloadHead {
        &self.head
    }

    /// Name and fingerprint of the trusted key that verified.
    pub fn signer(&self) -> &str {
        &self.signer
    }

    /// Offset of the first data byte.
    pub fn data_start(&self) -> u64 {
        self.head.data_start()
    }

    /// Identity of this payload (sha256 of header and manifest).
    pub fn digest(&self) -> Sha256Digest {
        self.digest
    }
}

fn read_exact_at(
    reader: &mut impl Read,
    buf: &mut [u8],
    offset: u64,
    what: &'static str,
) -> Result<(), FormatError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(FormatError::Truncated {
                    offset: offset + filled as u64,
                    what,
                })
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(FormatError::Read {
                    offset: offset + filled as u64,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Checks that `key` is a usable ed25519 public key (not a weak point).
pub(crate) fn verifying_key_from_bytes(bytes: &[u8; PUBLIC_KEY_LENGTH]) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(bytes)
        .ok()
        .filter(|k| !k.is_weak())
}
