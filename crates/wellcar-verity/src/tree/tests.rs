//! Tests of formatting and verifying against the real `veritysetup` (Debian package
//! `cryptsetup-bin`): byte-identical hash areas, acceptance by `veritysetup verify`, corruption
//! named at the right block and level, the superblock-and-top-block root hash check,
//! reproducibility across thread counts, and parameter and image-size errors that name the
//! offending value.

use std::path::Path;

use super::*;
use crate::test_support::{flip_bit, open_rw, veritysetup_format, veritysetup_verify, write_image};

const UUID: &str = "6c1e2a9e-3a8f-4d5b-9c0e-7f1d2b3a4c5d";

fn params(data_blocks: u64, hash_offset: u64, salt: &[u8]) -> VerityParams {
    VerityParams {
        data_blocks,
        hash_offset,
        salt: salt.to_vec(),
        uuid: Uuid::parse_str(UUID).unwrap(),
    }
}

fn salt32() -> Vec<u8> {
    (0u8..32).map(|i| i.wrapping_mul(37) ^ 0x5a).collect()
}

fn assert_same_bytes(ours: &Path, reference: &Path) {
    let (ours, reference) = (
        std::fs::read(ours).unwrap(),
        std::fs::read(reference).unwrap(),
    );
    assert_eq!(ours.len(), reference.len(), "image lengths differ");
    if let Some(at) = ours.iter().zip(&reference).position(|(a, b)| a != b) {
        panic!(
            "images differ first at byte {at}: ours {:#04x}, veritysetup {:#04x}",
            ours[at], reference[at]
        );
    }
}

#[test]
fn golden_hash_area_is_byte_identical_to_veritysetup() {
    let dir = tempfile::tempdir().unwrap();
    let big_salt: Vec<u8> = (0..=255u8).collect();
    // (data blocks, random blocks, image blocks, hash offset in blocks, salt)
    let cases: [(u64, u64, u64, u64, Vec<u8>); 7] = [
        (1, 1, 1, 1, salt32()),       // no tree: root = digest of the data block
        (2, 1, 2, 2, salt32()),       // one level, one block
        (128, 128, 128, 128, vec![]), // one full level-0 block, empty salt
        (129, 100, 129, 129, vec![0xab]),
        (300, 120, 310, 302, salt32()), // gap between data and hash area, zero tail
        (700, 650, 700, 700, big_salt), // 256-byte salt
        (16_385, 300, 16_385, 16_385, salt32()), // three levels
    ];
    for (data_blocks, random_blocks, image_blocks, offset_blocks, salt) in cases {
        let hash_offset = offset_blocks * BLOCK_SIZE;
        let name = format!("{data_blocks}");
        let reference = write_image(
            dir.path(),
            &format!("{name}.ref"),
            image_blocks,
            random_blocks,
            data_blocks,
        );
        let ours = write_image(
            dir.path(),
            &format!("{name}.ours"),
            image_blocks,
            random_blocks,
            data_blocks,
        );

        let expected_root = veritysetup_format(&reference, data_blocks, hash_offset, &salt, UUID);
        let info = format(&open_rw(&ours), &params(data_blocks, hash_offset, &salt)).unwrap();

        assert_eq!(info.root_hash, expected_root, "{data_blocks} blocks");
        assert_same_bytes(&ours, &reference);
        assert_eq!(
            std::fs::metadata(&ours).unwrap().len(),
            (hash_offset + info.hash_area_size).max(image_blocks * BLOCK_SIZE),
            "{data_blocks} blocks: file grown to the end of the hash area"
        );
        let superblock = crate::read_superblock(&mut open_rw(&reference), hash_offset).unwrap();
        assert_eq!(superblock.salt, salt);
        assert_eq!(superblock.data_blocks, data_blocks);
        assert_eq!(superblock.uuid.to_string(), UUID);
        verify(&open_rw(&reference), hash_offset, &expected_root).unwrap_or_else(|err| {
            panic!("{data_blocks} blocks: our verify rejected veritysetup's tree: {err}")
        });
    }
}

#[test]
fn veritysetup_accepts_ours_and_rejects_a_flipped_data_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data_blocks = 1000;
    let image = write_image(dir.path(), "usr.img", data_blocks, 600, 7);
    let hash_offset = data_blocks * BLOCK_SIZE;
    let info = format(
        &open_rw(&image),
        &params(data_blocks, hash_offset, &salt32()),
    )
    .unwrap();

    let (accepted, output) = veritysetup_verify(&image, hash_offset, &info.root_hash);
    assert!(accepted, "veritysetup verify rejected our tree: {output}");
    verify(&open_rw(&image), hash_offset, &info.root_hash).unwrap();

    // One bit in data block 700, inside the zero tail.
    flip_bit(&image, 700 * BLOCK_SIZE + 123);
    let (accepted, output) = veritysetup_verify(&image, hash_offset, &info.root_hash);
    assert!(
        !accepted,
        "veritysetup verify accepted a corrupted image: {output}"
    );
    match verify(&open_rw(&image), hash_offset, &info.root_hash) {
        Err(VerityError::DataBlockMismatch { block, offset }) => {
            assert_eq!(block, 700);
            assert_eq!(offset, 700 * BLOCK_SIZE);
        }
        other => panic!("expected a data block mismatch, got {other:?}"),
    }
}

#[test]
fn verify_names_the_first_corrupt_hash_block_top_down() {
    let dir = tempfile::tempdir().unwrap();
    let data_blocks = 16_385; // levels: 129, 2, 1 blocks
    let hash_offset = data_blocks * BLOCK_SIZE;
    let image = write_image(dir.path(), "img", data_blocks, 40, 3);
    let info = format(
        &open_rw(&image),
        &params(data_blocks, hash_offset, &salt32()),
    )
    .unwrap();
    let geometry = TreeGeometry::new(data_blocks).unwrap();
    let levels = geometry.levels().to_vec();

    // A wrong root hash.
    let mut wrong_bytes = *info.root_hash.as_bytes();
    wrong_bytes[31] ^= 0xff;
    let wrong_root = RootHash::from_bytes(wrong_bytes);
    match verify(&open_rw(&image), hash_offset, &wrong_root) {
        Err(VerityError::RootHashMismatch { expected, actual }) => {
            assert_eq!(expected, wrong_root.to_string());
            assert_eq!(actual, info.root_hash.to_string());
        }
        other => panic!("expected a root hash mismatch, got {other:?}"),
    }

    // Level-0 block 5 corrupt: its digest in level 1 no longer matches. Also corrupt a data
    // block under it; top-down, the hash block is reported first.
    let bad_hash_block = hash_offset + levels[0].byte_offset() + 5 * BLOCK_SIZE;
    flip_bit(&image, bad_hash_block + 100);
    flip_bit(&image, 3 * BLOCK_SIZE);
    match verify(&open_rw(&image), hash_offset, &info.root_hash) {
        Err(VerityError::HashBlockMismatch {
            level,
            block,
            offset,
        }) => {
            assert_eq!((level, block, offset), (0, 5, bad_hash_block));
        }
        other => panic!("expected a hash block mismatch, got {other:?}"),
    }

    // The top block corrupt: nothing below it can be trusted, the root does not match.
    flip_bit(&image, hash_offset + levels[2].byte_offset());
    assert!(matches!(
        verify(&open_rw(&image), hash_offset, &info.root_hash),
        Err(VerityError::RootHashMismatch { .. })
    ));
}

#[test]
fn stored_root_hash_reads_only_the_top_block() {
    let dir = tempfile::tempdir().unwrap();
    for data_blocks in [1, 129, 16_385] {
        let hash_offset = data_blocks * BLOCK_SIZE;
        let path = write_image(dir.path(), "img", data_blocks, data_blocks.min(200), 4);
        let info = format(
            &open_rw(&path),
            &params(data_blocks, hash_offset, &salt32()),
        )
        .unwrap();
        let (superblock, root) = stored_root_hash(&mut open_rw(&path), hash_offset).unwrap();
        assert_eq!(root, info.root_hash, "{data_blocks} blocks");
        assert_eq!(superblock.data_blocks, data_blocks);
        assert_eq!(superblock.salt, salt32());
    }
    // A corrupt data block far below the top is not noticed; a corrupt top block is.
    let path = dir.path().join("img");
    let hash_offset = 16_385 * BLOCK_SIZE;
    flip_bit(&path, 5 * BLOCK_SIZE);
    let (_, root) = stored_root_hash(&mut open_rw(&path), hash_offset).unwrap();
    let verdict = verify(&open_rw(&path), hash_offset, &root);
    assert!(matches!(
        verdict,
        Err(VerityError::DataBlockMismatch { block: 5, .. })
    ));
    flip_bit(&path, hash_offset + BLOCK_SIZE + 9);
    let (_, corrupted_root) = stored_root_hash(&mut open_rw(&path), hash_offset).unwrap();
    assert_ne!(corrupted_root, root);
}

#[test]
fn one_block_image_verifies_against_the_data_digest() {
    let dir = tempfile::tempdir().unwrap();
    let image = write_image(dir.path(), "img", 1, 1, 11);
    let info = format(&open_rw(&image), &params(1, BLOCK_SIZE, &salt32())).unwrap();
    assert_eq!(info.hash_area_size, BLOCK_SIZE);
    verify(&open_rw(&image), BLOCK_SIZE, &info.root_hash).unwrap();
    flip_bit(&image, 17);
    assert!(matches!(
        verify(&open_rw(&image), BLOCK_SIZE, &info.root_hash),
        Err(VerityError::RootHashMismatch { .. })
    ));
}

#[test]
fn output_is_reproducible_and_independent_of_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let data_blocks = 3000;
    let hash_offset = data_blocks * BLOCK_SIZE;
    let mut roots = Vec::new();
    for threads in [1, 2, 5] {
        let image = write_image(dir.path(), &format!("t{threads}"), data_blocks, 2000, 99);
        let info = format_with_threads(
            &open_rw(&image),
            &params(data_blocks, hash_offset, &salt32()),
            NonZeroUsize::new(threads).unwrap(),
        )
        .unwrap();
        roots.push(info.root_hash);
    }
    assert!(roots.iter().all(|root| *root == roots[0]), "{roots:?}");
    assert_same_bytes(&dir.path().join("t1"), &dir.path().join("t2"));
    assert_same_bytes(&dir.path().join("t1"), &dir.path().join("t5"));
}

#[test]
fn info_renders_hex_and_the_dm_table() {
    let dir = tempfile::tempdir().unwrap();
    let image = write_image(dir.path(), "img", 10, 10, 5);
    let info = format(&open_rw(&image), &params(10, 10 * BLOCK_SIZE, &[])).unwrap();
    assert_eq!(info.salt_hex(), "-");
    assert_eq!(info.root_hash.to_string().len(), 64);
    assert_eq!(
        info.dm_table_params("/dev/sda3", "/dev/sda3"),
        format!(
            "1 /dev/sda3 /dev/sda3 4096 4096 10 11 sha256 {} - 1 panic_on_corruption",
            info.root_hash
        )
    );
}

#[test]
fn rejects_bad_parameters_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let image = open_rw(&write_image(dir.path(), "img", 8, 8, 1));
    let err = format(&image, &params(8, 8 * BLOCK_SIZE + 512, &[])).unwrap_err();
    assert!(
        matches!(err, VerityError::MisalignedHashOffset { hash_offset } if hash_offset == 8 * 4096 + 512)
    );
    let err = format(&image, &params(8, 4 * BLOCK_SIZE, &[])).unwrap_err();
    assert!(
        matches!(
            err,
            VerityError::HashAreaOverlapsData {
                hash_offset: 16384,
                data_end: 32768
            }
        ),
        "{err:?}"
    );
    let err = format(&image, &params(8, 8 * BLOCK_SIZE, &[0; 257])).unwrap_err();
    assert!(matches!(err, VerityError::SaltTooLong { len: 257 }));
    let err = format(&image, &params(0, 8 * BLOCK_SIZE, &[])).unwrap_err();
    assert!(matches!(err, VerityError::NoDataBlocks));
    let err = format(&image, &params(9, 9 * BLOCK_SIZE, &[])).unwrap_err();
    assert!(
        matches!(
            err,
            VerityError::ImageTooSmall {
                len: 32768,
                needed: 36864
            }
        ),
        "{err:?}"
    );
    let err = format(&image, &params(1 << 62, 1 << 63, &[])).unwrap_err();
    assert!(matches!(err, VerityError::SizeOverflow { .. }), "{err:?}");
}

#[test]
fn verify_reports_a_missing_or_truncated_hash_area() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_image(dir.path(), "img", 300, 300, 2);
    let hash_offset = 300 * BLOCK_SIZE;
    let err = verify(&open_rw(&path), hash_offset, &RootHash::from_bytes([0; 32])).unwrap_err();
    assert!(
        matches!(err, VerityError::ReadHashArea { offset, .. } if offset == hash_offset),
        "{err:?}"
    );

    let info = format(&open_rw(&path), &params(300, hash_offset, &salt32())).unwrap();
    let image = open_rw(&path);
    image
        .set_len(hash_offset + info.hash_area_size - 1)
        .unwrap();
    let err = verify(&image, hash_offset, &info.root_hash).unwrap_err();
    assert!(
        matches!(err, VerityError::ImageTooSmall { needed, .. } if needed == hash_offset + info.hash_area_size),
        "{err:?}"
    );
}
