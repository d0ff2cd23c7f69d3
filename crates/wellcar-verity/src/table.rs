//! The kernel's dm-verity target line, as the initramfs hands it to device-mapper.
//!
//! `1 <data_dev> <hash_dev> 4096 4096 <data_blocks> <hash_start_block> sha256 <root> <salt>
//! 1 panic_on_corruption`: format version 1, 4096-byte data and hash blocks, and the tree
//! starting one block after the hash offset (the superblock occupies the first hash block).
//! The kernel ignores the superblock; everything it needs is in this line. An empty salt is
//! written `-`, as `veritysetup` does.

use wellcar_contract::RootHash;

use crate::{VerityError, BLOCK_SIZE, DIGEST_SIZE};

/// Renders the dm-verity target parameters (the part after `verity` in a dm table line).
///
/// `hash_offset` is the byte offset of the superblock on `hash_dev`; it must be a multiple of
/// 4096 (as [`crate::format`] enforces).
pub fn dm_table_params(
    data_dev: &str,
    hash_dev: &str,
    data_blocks: u64,
    hash_offset: u64,
    root_hash: &[u8; DIGEST_SIZE],
    salt: &[u8],
) -> String {
    let hash_start_block = hash_offset / BLOCK_SIZE + 1;
    let salt_hex = if salt.is_empty() {
        "-".to_string()
    } else {
        hex::encode(salt)
    };
    format!(
        "1 {data_dev} {hash_dev} {BLOCK_SIZE} {BLOCK_SIZE} {data_blocks} {hash_start_block} \
         sha256 {} {salt_hex} 1 panic_on_corruption",
        hex::encode(root_hash)
    )
}

/// Length of the dm-verity target in 512-byte sectors (the `<length>` of a dm table line).
pub fn dm_target_sectors(data_blocks: u64) -> u64 {
    data_blocks * (BLOCK_SIZE / 512)
}

/// Parses a root hash given as 64 hexadecimal characters (e.g. `verity.usrhash=` from the
/// kernel command line, as the initramfs reads it).
///
/// Upper and lower case are accepted, as the kernel's dm-verity target accepts both (a hash
/// typed into the GRUB editor in upper case still boots); the result is the canonical
/// [`RootHash`], which writes lower case. Everything else follows the [`RootHash`] contract:
/// text that must be canonical (boot state, manifests, `status.json`) is parsed with
/// [`RootHash`]'s `FromStr`, which refuses upper case.
pub fn parse_root_hash(text: &str) -> Result<RootHash, VerityError> {
    text.to_ascii_lowercase()
        .parse()
        .map_err(|_| VerityError::InvalidRootHash {
            input: text.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_HEX: &str = "b7178f18640b7ce5c5a410de874e9991b2ce5ef4f647d06b103f8aab8bc12886";

    #[test]
    fn renders_the_flatcar_usr_line() {
        let root = parse_root_hash(ROOT_HEX).unwrap();
        let line = dm_table_params(
            "/dev/sda3",
            "/dev/sda3",
            260_094,
            1_065_345_024,
            root.as_bytes(),
            &[0x00, 0x11, 0xab],
        );
        assert_eq!(
            line,
            "1 /dev/sda3 /dev/sda3 4096 4096 260094 260095 sha256 \
             b7178f18640b7ce5c5a410de874e9991b2ce5ef4f647d06b103f8aab8bc12886 0011ab \
             1 panic_on_corruption"
        );
        assert_eq!(dm_target_sectors(260_094), 2_080_752);
    }

    #[test]
    fn empty_salt_is_a_dash() {
        let line = dm_table_params("8:3", "8:3", 1, 4096, &[0; 32], &[]);
        assert_eq!(
            line,
            format!(
                "1 8:3 8:3 4096 4096 1 2 sha256 {} - 1 panic_on_corruption",
                "0".repeat(64)
            )
        );
    }

    #[test]
    fn parses_root_hashes_and_rejects_bad_ones() {
        let root = parse_root_hash(&ROOT_HEX.to_uppercase()).unwrap();
        assert_eq!(root.to_string(), ROOT_HEX);
        assert_eq!(parse_root_hash(ROOT_HEX).unwrap(), root);
        for bad in [
            "",
            &ROOT_HEX[..62],
            &format!("{ROOT_HEX}00"),
            &ROOT_HEX.replace('b', "g"),
        ] {
            match parse_root_hash(bad) {
                Err(VerityError::InvalidRootHash { input }) => assert_eq!(input, bad),
                other => panic!("{bad:?}: expected InvalidRootHash, got {other:?}"),
            }
        }
    }
}
