//! Unit tests of the wire format: header round trip and rejection of each bad field,
//! manifest JSON round trip and validation, and proptests that no parser panics on
//! arbitrary bytes.

use super::*;
use proptest::prelude::*;
use wellcar_contract::RootHash;

#[test]
fn header_round_trips_and_rejects_each_bad_field() {
    let header = Header {
        manifest_len: 1234,
        signature_block_len: 4 + 96 * 2,
        manifest_zstd: false,
    };
    let bytes = header.to_bytes();
    assert_eq!(Header::parse(&bytes).unwrap(), header);
    let compressed = Header {
        manifest_zstd: true,
        ..header
    };
    assert_eq!(compressed.to_bytes()[12], 1);
    assert_eq!(Header::parse(&compressed.to_bytes()).unwrap(), compressed);
    assert_eq!(header.data_start(), 32 + 1234 + 196);

    let mut magic = bytes;
    magic[0] ^= 1;
    assert!(matches!(
        Header::parse(&magic),
        Err(FormatError::BadMagic { .. })
    ));
    let mut version = bytes;
    version[8] = 2;
    assert!(matches!(
        Header::parse(&version),
        Err(FormatError::UnsupportedFormat { version: 2 })
    ));
    let mut flags = bytes;
    flags[12] = 2;
    assert!(matches!(
        Header::parse(&flags),
        Err(FormatError::InvalidHeader { field: "flags", .. })
    ));
    let mut huge = bytes;
    huge[23] = 1;
    assert!(matches!(
        Header::parse(&huge),
        Err(FormatError::InvalidHeader {
            field: "manifest length",
            ..
        })
    ));
    let mut sig = bytes;
    sig[24] ^= 1;
    assert!(matches!(
        Header::parse(&sig),
        Err(FormatError::InvalidHeader {
            field: "signature block length",
            ..
        })
    ));
}

fn minimal_manifest() -> Manifest {
    Manifest {
        version: "1.2.3".into(),
        board: "amd64-usr".into(),
        build_id: "b".into(),
        min_source_version: None,
        source: None,
        usr: UsrImage {
            size: 8192,
            sha256: Sha256Digest([1; 32]),
            verity: VerityParams {
                root_hash: RootHash::from_bytes([2; 32]),
                salt: "aa".into(),
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
        data_len: 5,
        operations: vec![
            Operation::Zero(ZeroOp {
                dst: Destination::Usr,
                dst_offset: 0,
                dst_length: 8192,
            }),
            Operation::Replace(ReplaceOp {
                dst: Destination::Kernel,
                dst_offset: 0,
                dst_length: 10,
                data_offset: 0,
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

#[test]
fn manifest_json_round_trips() {
    let manifest = minimal_manifest();
    let json = serde_json::to_vec(&manifest).unwrap();
    assert!(String::from_utf8_lossy(&json).contains(r#""type":"replace""#));
    assert_eq!(Manifest::parse(&json).unwrap(), manifest);
}

#[test]
fn unknown_operation_type_is_rejected_by_name() {
    let mut manifest = minimal_manifest();
    manifest.operations[0] = Operation::Unsupported {
        kind: "copy_from_source".into(),
    };
    let json = serde_json::to_vec(&manifest).unwrap();
    let err = Manifest::parse(&json).unwrap_err();
    assert!(
        matches!(&err, FormatError::UnsupportedOperation { index: 0, kind } if kind == "copy_from_source"),
        "{err}"
    );
}

#[test]
fn gaps_overlaps_and_out_of_range_operations_are_rejected() {
    let mut gap = minimal_manifest();
    gap.operations[0] = Operation::Zero(ZeroOp {
        dst: Destination::Usr,
        dst_offset: 0,
        dst_length: 4096,
    });
    let err = gap.validate().unwrap_err().to_string();
    assert!(err.contains("cover 4096 of 8192 bytes of usr"), "{err}");

    let mut past_end = minimal_manifest();
    past_end.operations[0] = Operation::Zero(ZeroOp {
        dst: Destination::Usr,
        dst_offset: 0,
        dst_length: 9000,
    });
    let err = past_end.validate().unwrap_err().to_string();
    assert!(err.contains("past the end of usr"), "{err}");

    let mut data = minimal_manifest();
    data.data_len = 6;
    assert!(data
        .validate()
        .unwrap_err()
        .to_string()
        .contains("data_len"));

    for bad in ["one", "1.2", "1.2.3.4", "1.0.0-rc1"] {
        let mut version = minimal_manifest();
        version.version = bad.into();
        let err = version.validate().unwrap_err().to_string();
        assert!(
            err.contains("field version") && err.contains(&format!("{bad:?}")),
            "{err}"
        );
        let mut min = minimal_manifest();
        min.min_source_version = Some(bad.into());
        let err = min.validate().unwrap_err().to_string();
        assert!(err.contains("field min_source_version"), "{err}");
    }
    let mut nightly = minimal_manifest();
    nightly.version = "4799.0.0+nightly-20260821-2100".into();
    nightly.min_source_version = Some("3815.2.0".into());
    assert!(nightly.validate().is_ok());
}

proptest! {
    #[test]
    fn header_parser_never_panics(bytes in proptest::array::uniform32(any::<u8>())) {
        let _ = Header::parse(&bytes);
    }

    #[test]
    fn head_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = PayloadHead::read(&mut bytes.as_slice()).map(|h| h.manifest_unverified());
    }

    #[test]
    fn head_reader_never_panics_on_valid_header_and_junk(
        junk in proptest::collection::vec(any::<u8>(), 0..600),
        manifest_len in 1u64..400,
        manifest_zstd in any::<bool>(),
    ) {
        let header = Header { manifest_len, signature_block_len: 100, manifest_zstd };
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(&junk);
        let _ = PayloadHead::read(&mut bytes.as_slice()).map(|h| h.manifest_unverified());
    }

    #[test]
    fn manifest_parser_never_panics_on_mutated_json(
        flips in proptest::collection::vec((0usize..2000, any::<u8>()), 1..8),
    ) {
        let mut json = serde_json::to_vec(&minimal_manifest()).unwrap();
        for (at, byte) in flips {
            let len = json.len();
            json[at % len] = byte;
        }
        let _ = Manifest::parse(&json);
    }
}

#[test]
fn a_compressed_manifest_section_round_trips_and_a_bad_or_oversized_frame_is_refused() {
    let json = serde_json::to_vec(&minimal_manifest()).unwrap();
    let section = encode_manifest_section(&json, true).unwrap();
    assert_ne!(section, json);
    assert_eq!(
        &*decode_manifest_section(&section, true).unwrap(),
        &json[..]
    );
    assert_eq!(encode_manifest_section(&json, false).unwrap(), json);
    assert!(matches!(
        decode_manifest_section(&json, true),
        Err(FormatError::ManifestDecompress { .. })
    ));
    // 1 KiB that decompresses past the manifest limit is refused, not inflated.
    let bomb = zstd::bulk::compress(&vec![b' '; MAX_MANIFEST_LEN as usize + 1], 19).unwrap();
    assert!(bomb.len() < 4096, "{} bytes", bomb.len());
    assert!(matches!(
        decode_manifest_section(&bomb, true),
        Err(FormatError::ManifestDecompress { .. })
    ));
}
