//! [`verify_payload`]: checking a whole payload without writing anything.
//!
//! Contract: it succeeds only for an authentic, intact, complete payload: the signature
//! verifies under a trusted key, every blob matches its sha256, no data trails the last blob,
//! and the images it would write match the manifest's sha256s and dm-verity root. For a delta
//! the images need the source slot, so only the signature and the blobs are checked (the
//! report names the delta's source).

use std::io::Read;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::blob::{check_blob, decompress, read_blob};
use super::{ApplyError, ZEROS};
use crate::format::{Destination, Operation, PayloadHead, Sha256Digest};
use crate::keys::TrustedKeys;

/// What [`verify_payload`] found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Version inside.
    pub version: String,
    /// Board.
    pub board: String,
    /// The trusted key that verified.
    pub signer: String,
    /// Payload bytes read.
    pub payload_len: u64,
    /// For a delta, its source version: signature and every blob were checked, but the
    /// images were not (they need the source slot; `Installer` checks them).
    pub delta_source: Option<String>,
}

/// Checks a whole payload without writing anything: signature, every blob's hash, and the
/// sha256 of every image and the dm-verity root as they would be written. Succeeds only for
/// an authentic, intact, complete payload.
pub fn verify_payload(
    reader: &mut impl Read,
    trusted: &TrustedKeys,
) -> Result<VerifyReport, ApplyError> {
    let head = PayloadHead::read(reader)?.authenticate(trusted)?;
    let manifest = head.manifest();
    let verity = &manifest.usr.verity;
    let mut verity_hasher = verity.root_hasher();
    let mut hashers = [Sha256::new(), Sha256::new(), Sha256::new()];
    let mut decompressor = zstd::bulk::Decompressor::new().map_err(|e| ApplyError::Decompress {
        operation: 0,
        offset: 0,
        expected: 0,
        reason: e.to_string(),
    })?;
    let (mut blob, mut output) = (Vec::new(), Vec::new());
    let mut offset = head.data_start();
    for (index, op) in manifest.operations.iter().enumerate() {
        match op {
            Operation::Replace(r) => {
                read_blob(reader, &mut blob, r.data_length, offset, index)?;
                check_blob(&blob, &r.data_sha256, offset, index)?;
                decompress(
                    &mut decompressor,
                    &blob,
                    &mut output,
                    r.dst_length,
                    offset,
                    index,
                )?;
                hashers[r.dst as usize].update(&output);
                if r.dst == Destination::Usr {
                    verity_hasher.update(&output);
                }
                offset += r.data_length;
            }
            Operation::SourcePatch(p) => {
                // Without the source only the patch's own hash can be checked.
                read_blob(reader, &mut blob, p.data_length, offset, index)?;
                check_blob(&blob, &p.data_sha256, offset, index)?;
                offset += p.data_length;
            }
            Operation::SourceCopy(_) => {}
            // Built from the data region; only a delta uses it, and a delta's images are
            // checked by `Installer` (below).
            Operation::VerityTree(_) => {}
            Operation::Zero(z) => {
                if z.dst == Destination::Usr {
                    verity_hasher.update_zeros(z.dst_length);
                }
                let mut left = z.dst_length;
                while left > 0 {
                    let n = left.min(ZEROS.len() as u64) as usize;
                    hashers[z.dst as usize].update(&ZEROS[..n]);
                    left -= n as u64;
                }
            }
            Operation::Unsupported { .. } => unreachable!("rejected by Manifest::validate"),
        }
    }
    let mut probe = [0u8; 1];
    if reader.read(&mut probe).map_err(|source| ApplyError::Read {
        offset,
        operation: manifest.operations.len(),
        source,
    })? != 0
    {
        return Err(ApplyError::TrailingData { offset });
    }
    if let Some(source) = &manifest.source {
        // A delta's images depend on its source: `apply --source` checks them.
        return Ok(VerifyReport {
            version: manifest.version.clone(),
            board: manifest.board.clone(),
            signer: head.signer().to_owned(),
            payload_len: offset,
            delta_source: Some(source.version.clone()),
        });
    }
    for (dst, hasher) in Destination::ALL.into_iter().zip(hashers) {
        let actual = Sha256Digest(hasher.finalize().into());
        if actual != manifest.image_sha256(dst) {
            return Err(ApplyError::ImageMismatch {
                image: dst.name(),
                expected: manifest.image_sha256(dst),
                actual: actual.to_string(),
            });
        }
    }
    let root = verity_hasher.finish();
    if root != Some(verity.root_hash) {
        return Err(ApplyError::VerityMismatch {
            expected: verity.root_hash,
            actual: root.map_or_else(|| "incomplete".into(), |r| r.to_string()),
        });
    }
    Ok(VerifyReport {
        version: manifest.version.clone(),
        board: manifest.board.clone(),
        signer: head.signer().to_owned(),
        payload_len: offset,
        delta_source: None,
    })
}
