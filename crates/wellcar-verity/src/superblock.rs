//! The 512-byte verity superblock that `veritysetup format` writes at the start of the hash area.
//!
//! On-disk layout (all integers little-endian), as cryptsetup 2.x writes it:
//!
//! | offset | size | field                                              |
//! |-------:|-----:|----------------------------------------------------|
//! |      0 |    8 | signature `verity\0\0`                             |
//! |      8 |    4 | version, 1                                         |
//! |     12 |    4 | hash type, 1 = "normal" (salt prepended)           |
//! |     16 |   16 | uuid, RFC 4122 byte order                          |
//! |     32 |   32 | algorithm, NUL-padded (`sha256`)                   |
//! |     64 |    4 | data block size, 4096                              |
//! |     68 |    4 | hash block size, 4096                              |
//! |     72 |    8 | data blocks                                        |
//! |     80 |    2 | salt size, at most 256                             |
//! |     82 |    6 | zero                                               |
//! |     88 |  256 | salt, zero-padded                                  |
//! |    344 |  168 | zero                                               |
//!
//! The superblock occupies the first hash block; `veritysetup` writes only these 512 bytes and
//! leaves the other 3584 bytes of that block as they were, and so does this crate. This crate
//! handles exactly one flavour: version 1, hash type 1, sha256, 4096-byte blocks. Parsing
//! anything else fails with an error naming the field.

use std::io::{Read, Seek, SeekFrom};

use uuid::Uuid;

use crate::{VerityError, BLOCK_SIZE, MAX_SALT_SIZE};

/// Size of the on-disk superblock in bytes.
pub const SUPERBLOCK_SIZE: usize = 512;
/// The superblock's first 8 bytes.
pub const SIGNATURE: [u8; 8] = *b"verity\0\0";
/// The only superblock format version this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Hash type 1 ("normal"): the salt is fed to the digest before each block, and each hash
/// block is zero-padded to the full block size. (Type 0 is the Chrome OS flavour.)
pub const HASH_TYPE_NORMAL: u32 = 1;
/// The only hash algorithm this crate supports, as named in the superblock.
pub const ALGORITHM: &str = "sha256";

const SIGNATURE_AT: usize = 0;
const VERSION_AT: usize = 8;
const HASH_TYPE_AT: usize = 12;
const UUID_AT: usize = 16;
const ALGORITHM_AT: usize = 32;
const ALGORITHM_LEN: usize = 32;
const DATA_BLOCK_SIZE_AT: usize = 64;
const HASH_BLOCK_SIZE_AT: usize = 68;
const DATA_BLOCKS_AT: usize = 72;
const SALT_SIZE_AT: usize = 80;
const SALT_AT: usize = 88;

/// The variable part of a verity superblock: what the initramfs needs, besides the root hash,
/// to build the kernel's dm-verity table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// The verity UUID (`veritysetup --uuid`); not used by the kernel.
    pub uuid: Uuid,
    /// Number of 4096-byte data blocks the tree covers.
    pub data_blocks: u64,
    /// The salt prepended to every hashed block (0..=256 bytes).
    pub salt: Vec<u8>,
}

impl Superblock {
    /// Encodes the superblock into its 512-byte on-disk form.
    pub fn to_bytes(&self) -> Result<[u8; SUPERBLOCK_SIZE], VerityError> {
        if self.data_blocks == 0 {
            return Err(VerityError::NoDataBlocks);
        }
        if self.salt.len() > MAX_SALT_SIZE {
            return Err(VerityError::SaltTooLong {
                len: self.salt.len(),
            });
        }
        let mut bytes = [0u8; SUPERBLOCK_SIZE];
        bytes[SIGNATURE_AT..SIGNATURE_AT + 8].copy_from_slice(&SIGNATURE);
        put_u32(&mut bytes, VERSION_AT, FORMAT_VERSION);
        put_u32(&mut bytes, HASH_TYPE_AT, HASH_TYPE_NORMAL);
        bytes[UUID_AT..UUID_AT + 16].copy_from_slice(self.uuid.as_bytes());
        bytes[ALGORITHM_AT..ALGORITHM_AT + ALGORITHM.len()].copy_from_slice(ALGORITHM.as_bytes());
        put_u32(&mut bytes, DATA_BLOCK_SIZE_AT, BLOCK_SIZE as u32);
        put_u32(&mut bytes, HASH_BLOCK_SIZE_AT, BLOCK_SIZE as u32);
        bytes[DATA_BLOCKS_AT..DATA_BLOCKS_AT + 8].copy_from_slice(&self.data_blocks.to_le_bytes());
        let salt_size = self.salt.len() as u16;
        bytes[SALT_SIZE_AT..SALT_SIZE_AT + 2].copy_from_slice(&salt_size.to_le_bytes());
        bytes[SALT_AT..SALT_AT + self.salt.len()].copy_from_slice(&self.salt);
        Ok(bytes)
    }

    /// Parses and validates an on-disk superblock. `offset` is where it was read from; it only
    /// appears in error messages.
    pub fn from_bytes(bytes: &[u8; SUPERBLOCK_SIZE], offset: u64) -> Result<Self, VerityError> {
        let unsupported = |field: &'static str, found: String, expected: &'static str| {
            VerityError::UnsupportedSuperblock {
                offset,
                field,
                found,
                expected,
            }
        };
        let signature: [u8; 8] = bytes[SIGNATURE_AT..SIGNATURE_AT + 8]
            .try_into()
            .expect("8-byte slice");
        if signature != SIGNATURE {
            return Err(VerityError::BadSignature {
                offset,
                found: signature,
            });
        }
        let version = get_u32(bytes, VERSION_AT);
        if version != FORMAT_VERSION {
            return Err(unsupported("version", version.to_string(), "1"));
        }
        let hash_type = get_u32(bytes, HASH_TYPE_AT);
        if hash_type != HASH_TYPE_NORMAL {
            return Err(unsupported(
                "hash type",
                hash_type.to_string(),
                "1 (normal)",
            ));
        }
        let algorithm_field = &bytes[ALGORITHM_AT..ALGORITHM_AT + ALGORITHM_LEN];
        let name_len = algorithm_field
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(ALGORITHM_LEN);
        let algorithm = &algorithm_field[..name_len];
        if algorithm != ALGORITHM.as_bytes() {
            return Err(unsupported(
                "hash algorithm",
                format!("{:?}", String::from_utf8_lossy(algorithm)),
                "\"sha256\"",
            ));
        }
        for (field, at) in [
            ("data block size", DATA_BLOCK_SIZE_AT),
            ("hash block size", HASH_BLOCK_SIZE_AT),
        ] {
            let size = get_u32(bytes, at);
            if u64::from(size) != BLOCK_SIZE {
                return Err(unsupported(field, size.to_string(), "4096"));
            }
        }
        let data_blocks = u64::from_le_bytes(
            bytes[DATA_BLOCKS_AT..DATA_BLOCKS_AT + 8]
                .try_into()
                .expect("8-byte slice"),
        );
        if data_blocks == 0 {
            return Err(unsupported("data blocks", "0".into(), "at least 1"));
        }
        let salt_size = usize::from(u16::from_le_bytes([
            bytes[SALT_SIZE_AT],
            bytes[SALT_SIZE_AT + 1],
        ]));
        if salt_size > MAX_SALT_SIZE {
            return Err(unsupported(
                "salt size",
                salt_size.to_string(),
                "at most 256",
            ));
        }
        let uuid = Uuid::from_bytes(
            bytes[UUID_AT..UUID_AT + 16]
                .try_into()
                .expect("16-byte slice"),
        );
        Ok(Superblock {
            uuid,
            data_blocks,
            salt: bytes[SALT_AT..SALT_AT + salt_size].to_vec(),
        })
    }
}

/// Reads and validates the superblock at `hash_offset` (the start of the hash area, e.g.
/// `wellcar_disk::USR_VERITY_HASH_OFFSET` inside a USR partition).
pub fn read_superblock<R: Read + Seek>(
    reader: &mut R,
    hash_offset: u64,
) -> Result<Superblock, VerityError> {
    let read_error = |source| VerityError::ReadHashArea {
        offset: hash_offset,
        source,
    };
    reader
        .seek(SeekFrom::Start(hash_offset))
        .map_err(read_error)?;
    let mut bytes = [0u8; SUPERBLOCK_SIZE];
    reader.read_exact(&mut bytes).map_err(read_error)?;
    Superblock::from_bytes(&bytes, hash_offset)
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn get_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4-byte slice"))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn sample() -> Superblock {
        Superblock {
            uuid: Uuid::parse_str("12345678-1234-1234-1234-123456789abc").unwrap(),
            data_blocks: 16,
            salt: vec![0x00, 0x11, 0x22, 0x33, 0x44],
        }
    }

    /// The first 0x60 bytes `veritysetup format --data-blocks 16 --salt=0011223344
    /// --uuid=12345678-1234-1234-1234-123456789abc` wrote (cryptsetup 2.6.1); the rest is zero.
    const VERITYSETUP_HEAD: &str = concat!(
        "7665726974790000",
        "01000000",
        "01000000",
        "12345678123412341234123456789abc",
        "7368613235360000000000000000000000000000000000000000000000000000",
        "00100000",
        "00100000",
        "1000000000000000",
        "0500",
        "000000000000",
        "0011223344000000",
    );

    #[test]
    fn encodes_like_veritysetup() {
        let bytes = sample().to_bytes().unwrap();
        let head = hex::decode(VERITYSETUP_HEAD).unwrap();
        assert_eq!(&bytes[..head.len()], &head[..]);
        assert!(bytes[head.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn round_trips_including_empty_and_full_salt() {
        for salt in [vec![], vec![0xab; 256], vec![1, 2, 3]] {
            let sb = Superblock { salt, ..sample() };
            let parsed = Superblock::from_bytes(&sb.to_bytes().unwrap(), 0).unwrap();
            assert_eq!(parsed, sb);
        }
    }

    #[test]
    fn read_superblock_seeks_to_the_hash_offset() {
        let mut image = vec![0xeeu8; 8192];
        image[4096..4096 + SUPERBLOCK_SIZE].copy_from_slice(&sample().to_bytes().unwrap());
        let parsed = read_superblock(&mut Cursor::new(image), 4096).unwrap();
        assert_eq!(parsed, sample());
    }

    #[test]
    fn read_superblock_reports_a_short_image() {
        let err = read_superblock(&mut Cursor::new(vec![0u8; 4200]), 4096).unwrap_err();
        assert!(
            matches!(err, VerityError::ReadHashArea { offset: 4096, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_a_missing_signature() {
        let err = Superblock::from_bytes(&[0u8; SUPERBLOCK_SIZE], 77).unwrap_err();
        assert!(
            matches!(err, VerityError::BadSignature { offset: 77, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("byte 77"), "{err}");
    }

    #[test]
    fn rejects_each_unsupported_field_by_name() {
        let good = sample().to_bytes().unwrap();
        let cases: [(usize, &[u8], &str); 7] = [
            (VERSION_AT, &2u32.to_le_bytes(), "version"),
            (HASH_TYPE_AT, &0u32.to_le_bytes(), "hash type"),
            (ALGORITHM_AT, b"sha512", "hash algorithm"),
            (DATA_BLOCK_SIZE_AT, &512u32.to_le_bytes(), "data block size"),
            (
                HASH_BLOCK_SIZE_AT,
                &1024u32.to_le_bytes(),
                "hash block size",
            ),
            (DATA_BLOCKS_AT, &0u64.to_le_bytes(), "data blocks"),
            (SALT_SIZE_AT, &257u16.to_le_bytes(), "salt size"),
        ];
        for (at, value, field) in cases {
            let mut bytes = good;
            bytes[at..at + value.len()].copy_from_slice(value);
            match Superblock::from_bytes(&bytes, 4096) {
                Err(VerityError::UnsupportedSuperblock {
                    field: f, offset, ..
                }) => {
                    assert_eq!(f, field);
                    assert_eq!(offset, 4096);
                }
                other => panic!("{field}: expected an unsupported-field error, got {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_to_encode_an_oversized_salt() {
        let sb = Superblock {
            salt: vec![0; 257],
            ..sample()
        };
        assert!(matches!(
            sb.to_bytes(),
            Err(VerityError::SaltTooLong { len: 257 })
        ));
    }
}
