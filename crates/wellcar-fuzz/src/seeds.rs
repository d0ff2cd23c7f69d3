//! The generated seed corpora: binary formats whose seeds are made by the owning crate's writer
//! (payload header, manifest and signed head; GRUB environment blocks), so they are valid by
//! construction and follow the format when it changes.
//!
//! The test [`tests::generated_seeds_are_current`] checks the files in `corpus/` against what the
//! writers make now; `WELLCAR_FUZZ_WRITE_SEEDS=1 cargo test -p wellcar-fuzz generated_seeds`
//! rewrites them.

use ed25519_dalek::{Signer, SigningKey};
use wellcar_bootstate::envblock;
use wellcar_bootstate::{BootState, SlotState};
use wellcar_contract::RootHash;
use wellcar_payload::format::{
    encode_manifest_section, encode_signature_block, Destination, FileImage, Header, Manifest,
    Operation, ReplaceOp, Sha256Digest, SignatureEntry, UsrImage, VerityParams, ZeroOp,
};

use crate::targets::payload::SEED_SIGNING_KEY;

/// `(target, file name, bytes)` of every generated seed.
pub fn generated() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let manifest = serde_json::to_vec(&manifest()).expect("a manifest serializes");
    let header = Header {
        manifest_len: manifest.len() as u64,
        signature_block_len: 4 + 96,
        manifest_zstd: false,
    }
    .to_bytes();
    let key = SigningKey::from_bytes(&SEED_SIGNING_KEY);
    // The same manifest as a compressed section (how deltas carry theirs).
    let section = encode_manifest_section(&manifest, true).expect("zstd compresses a manifest");
    let mut zstd_head = Header {
        manifest_len: section.len() as u64,
        signature_block_len: 4 + 96,
        manifest_zstd: true,
    }
    .to_bytes()
    .to_vec();
    zstd_head.extend_from_slice(&section);
    let zstd_signature = key.sign(&zstd_head);
    zstd_head.extend_from_slice(&encode_signature_block(&[SignatureEntry {
        public_key: key.verifying_key().to_bytes(),
        signature: zstd_signature.to_bytes(),
    }]));
    let mut head = header.to_vec();
    head.extend_from_slice(&manifest);
    let signature = key.sign(&head);
    head.extend_from_slice(&encode_signature_block(&[SignatureEntry {
        public_key: key.verifying_key().to_bytes(),
        signature: signature.to_bytes(),
    }]));
    // A second, untrusted signer first: authenticate must look past it.
    let other = SigningKey::from_bytes(&[0x11; 32]);
    let mut two_signers = header;
    two_signers[24..28].copy_from_slice(&(4u32 + 2 * 96).to_le_bytes());
    let mut head2 = two_signers.to_vec();
    head2.extend_from_slice(&manifest);
    let sig_other = other.sign(&head2);
    let sig_trusted = key.sign(&head2);
    head2.extend_from_slice(&encode_signature_block(&[
        SignatureEntry {
            public_key: other.verifying_key().to_bytes(),
            signature: sig_other.to_bytes(),
        },
        SignatureEntry {
            public_key: key.verifying_key().to_bytes(),
            signature: sig_trusted.to_bytes(),
        },
    ]));

    let fresh =
        BootState::fresh(RootHash::from_bytes([0xab; 32]), "3815.2.0").expect("a fresh state");
    let mut staged = fresh.clone();
    staged.b = SlotState {
        priority: 2,
        tries: 1,
        successful: false,
        root_hash: Some(RootHash::from_bytes([0xcd; 32])),
        version: "3816.0.0+nightly-20260101".into(),
    };

    vec![
        ("payload-header", "one-signature", header.to_vec()),
        ("payload-manifest", "three-images", manifest),
        ("payload-head", "signed", head),
        ("payload-head", "two-signers", head2),
        ("payload-head", "zstd-manifest", zstd_head),
        (
            "grub-envblock",
            "fresh",
            envblock::encode(&fresh, 1).to_vec(),
        ),
        (
            "grub-envblock",
            "b-staged",
            envblock::encode(&staged, 41).to_vec(),
        ),
    ]
}

/// A small manifest using both operation types on all three destinations.
fn manifest() -> Manifest {
    Manifest {
        version: "3816.0.0".into(),
        board: "amd64-usr".into(),
        build_id: "2026-12-01-1030".into(),
        min_source_version: Some("3815.0.0".into()),
        source: None,
        usr: UsrImage {
            size: 8192,
            sha256: Sha256Digest([1; 32]),
            verity: VerityParams {
                root_hash: RootHash::from_bytes([2; 32]),
                salt: "aa55".into(),
                hash_offset: 4096,
                data_blocks: 1,
            },
        },
        kernel: FileImage {
            size: 10,
            sha256: Sha256Digest([3; 32]),
        },
        initramfs: FileImage {
            size: 10,
            sha256: Sha256Digest([4; 32]),
        },
        data_len: 12,
        operations: vec![
            Operation::Replace(ReplaceOp {
                dst: Destination::Usr,
                dst_offset: 0,
                dst_length: 4096,
                data_offset: 0,
                data_length: 7,
                data_sha256: Sha256Digest([6; 32]),
            }),
            Operation::Zero(ZeroOp {
                dst: Destination::Usr,
                dst_offset: 4096,
                dst_length: 4096,
            }),
            Operation::Replace(ReplaceOp {
                dst: Destination::Kernel,
                dst_offset: 0,
                dst_length: 10,
                data_offset: 7,
                data_length: 5,
                data_sha256: Sha256Digest([5; 32]),
            }),
            Operation::Zero(ZeroOp {
                dst: Destination::Initramfs,
                dst_offset: 0,
                dst_length: 10,
            }),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Target, TARGETS};

    fn target(name: &str) -> &'static Target {
        TARGETS.iter().find(|t| t.name == name).unwrap()
    }

    #[test]
    fn generated_seeds_are_current() {
        let write = std::env::var_os("WELLCAR_FUZZ_WRITE_SEEDS").is_some();
        for (name, file, bytes) in generated() {
            let path = target(name).corpus_dir().join(file);
            if write {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let on_disk = std::fs::read(&path).unwrap_or_default();
            assert!(
                on_disk == bytes,
                "{} is out of date: rerun with WELLCAR_FUZZ_WRITE_SEEDS=1",
                path.display()
            );
        }
    }

    /// The seeds reach past the first check: each parses (the head ones authenticate), so
    /// mutants of them explore the deep paths.
    #[test]
    fn generated_seeds_are_accepted_by_their_parsers() {
        let trusted = crate::targets::payload::seed_trusted_keys();
        for (name, file, bytes) in generated() {
            match name {
                "payload-header" => {
                    Header::parse(&bytes.clone().try_into().unwrap()).unwrap();
                }
                "payload-manifest" => {
                    Manifest::parse(&bytes).unwrap();
                }
                "payload-head" => {
                    let head = wellcar_payload::PayloadHead::read(&mut bytes.as_slice()).unwrap();
                    head.authenticate(trusted)
                        .unwrap_or_else(|e| panic!("{file}: {e}"));
                }
                "grub-envblock" => {
                    envblock::decode(&bytes).unwrap();
                }
                other => panic!("no check for {other}"),
            }
        }
    }

    /// The hand-written seeds are valid inputs too; crash reproducers (`crash-*`) are kept as
    /// seeds so every round replays them, and must be refused cleanly instead.
    #[test]
    fn hand_written_seeds_are_accepted_by_their_parsers() {
        let files = |name| crate::replay::collect_inputs(&[target(name).corpus_dir()]).unwrap();
        for file in files("kernel-cmdline") {
            let text = std::fs::read_to_string(&file).unwrap();
            wellcar_init::cmdline::BootParams::parse(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
        for file in files("update-conf") {
            let text = std::fs::read_to_string(&file).unwrap();
            let parsed = wellcar_agent::Config::parse(&text, &file);
            let reproducer = file
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("crash-");
            assert_eq!(parsed.is_ok(), !reproducer, "{}", file.display());
        }
    }
}
