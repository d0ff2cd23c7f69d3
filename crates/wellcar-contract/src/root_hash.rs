//! The dm-verity root hash of a `/usr` slot: what `wellcar build` computes for USR-A, what an
//! update payload carries for the slot it writes, and what the initramfs opens `/usr` with.
//!
//! Contract: the root hash is the root of the dm-verity hash tree over the `/usr` filesystem
//! image (format 1, sha256, 4096-byte blocks, every block hashed as `sha256(salt || block)`):
//! 32 bytes, written as exactly 64 lower-case hex digits, as `veritysetup format` prints it
//! (`Root hash: ...`). Upper-case digits, a `0x` prefix, whitespace and any other length are not
//! a root hash; the error ([`RootHashError`]) names the length, or the first offending character
//! and its position. [`Display`](std::fmt::Display) and serde write the same 64 lower-case
//! digits, so every format that carried the hash as a hex string keeps its bytes.
//!
//! Where it travels: the kernel command line (`verity.usrhash=`, read by the initramfs, checked
//! by `wellcar-update check-usr`), the boot state on the ESP (`a_hash=`/`b_hash=`,
//! `wellcar-bootstate`), the build manifest (`verity_root_hash` in `manifest.json`,
//! `wellcar-image`), the signed payload manifest (`usr.verity.root_hash`, `wellcar-payload`) and
//! the update agent's `status.json` (a verified, not yet staged slot, `wellcar-agent`). The
//! dm-verity tree code (`wellcar-verity`) produces it.

use std::fmt;
use std::str::FromStr;

/// Length of a root hash in bytes (a sha256 digest).
pub const ROOT_HASH_LEN: usize = 32;

/// Length of a root hash's text: two lower-case hex digits per byte.
pub const ROOT_HASH_HEX_LEN: usize = 2 * ROOT_HASH_LEN;

/// A dm-verity root hash, following the contract in the [module documentation](self).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RootHash([u8; ROOT_HASH_LEN]);

/// Why a text is not a [`RootHash`]. Positions and lengths count characters, from 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootHashError {
    /// The text is not 64 characters long.
    #[error("{len} characters; a dm-verity root hash is 64 lower-case hex digits")]
    Length {
        /// How many characters it has.
        len: usize,
    },
    /// A character is not one of `0-9 a-f`.
    #[error("character {character:?} at position {position} (from 0) is not one of 0-9 a-f; a dm-verity root hash is 64 lower-case hex digits")]
    Character {
        /// The first offending character.
        character: char,
        /// Its position, counting characters from 0.
        position: usize,
    },
}

impl RootHash {
    /// The root hash with these bytes.
    pub const fn from_bytes(bytes: [u8; ROOT_HASH_LEN]) -> Self {
        RootHash(bytes)
    }

    /// Its 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; ROOT_HASH_LEN] {
        &self.0
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The value of a lower-case hex digit.
fn nibble(c: char) -> Option<u8> {
    match c {
        '0'..='9' => Some(c as u8 - b'0'),
        'a'..='f' => Some(c as u8 - b'a' + 10),
        _ => None,
    }
}

impl FromStr for RootHash {
    type Err = RootHashError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let len = text.chars().count();
        if len != ROOT_HASH_HEX_LEN {
            return Err(RootHashError::Length { len });
        }
        let mut bytes = [0u8; ROOT_HASH_LEN];
        for (position, character) in text.chars().enumerate() {
            let value = nibble(character).ok_or(RootHashError::Character {
                character,
                position,
            })?;
            bytes[position / 2] |= if position % 2 == 0 { value << 4 } else { value };
        }
        Ok(RootHash(bytes))
    }
}

impl fmt::Display for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; ROOT_HASH_HEX_LEN];
        for (i, byte) in self.0.iter().enumerate() {
            text[2 * i] = HEX_DIGITS[usize::from(byte >> 4)];
            text[2 * i + 1] = HEX_DIGITS[usize::from(byte & 0x0f)];
        }
        // Only ASCII hex digits were written.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootHash({self})")
    }
}

impl serde::Serialize for RootHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RootHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|e: RootHashError| {
            serde::de::Error::custom(format_args!("root hash {text:?}: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root hash as `veritysetup format` printed it.
    const HEX: &str = "b7178f18640b7ce5c5a410de874e9991b2ce5ef4f647d06b103f8aab8bc12886";

    #[test]
    fn round_trips_through_text_and_bytes() {
        let hash: RootHash = HEX.parse().expect("a root hash");
        assert_eq!(hash.to_string(), HEX);
        assert_eq!(hash.as_bytes()[0], 0xb7);
        assert_eq!(hash.as_bytes()[31], 0x86);
        assert_eq!(RootHash::from_bytes(*hash.as_bytes()), hash);
        let all: [u8; 32] = std::array::from_fn(|i| (i * 8 + 7) as u8);
        let text = RootHash::from_bytes(all).to_string();
        assert_eq!(text.parse::<RootHash>(), Ok(RootHash::from_bytes(all)));
        assert_eq!(RootHash::from_bytes([0; 32]).to_string(), "0".repeat(64));
        assert_eq!(RootHash::from_bytes([0xff; 32]).to_string(), "f".repeat(64));
        assert_eq!(format!("{hash:?}"), format!("RootHash({HEX})"));
    }

    #[test]
    fn refuses_upper_case_naming_the_first_one() {
        let upper = HEX.to_uppercase();
        assert_eq!(
            upper.parse::<RootHash>(),
            Err(RootHashError::Character {
                character: 'B',
                position: 0
            })
        );
        let one = format!("{}E{}", &HEX[..10], &HEX[11..]);
        assert_eq!(
            one.parse::<RootHash>(),
            Err(RootHashError::Character {
                character: 'E',
                position: 10
            })
        );
    }

    #[test]
    fn refuses_other_lengths() {
        for (text, len) in [
            (String::new(), 0),
            (HEX[..63].to_owned(), 63),
            (format!("{HEX}0"), 65),
            (format!("0x{HEX}"), 66),
            (format!("{HEX}\n"), 65),
            ("nothex".to_owned(), 6),
        ] {
            assert_eq!(
                text.parse::<RootHash>(),
                Err(RootHashError::Length { len }),
                "{text:?}"
            );
        }
        let err = "nothex".parse::<RootHash>().unwrap_err().to_string();
        assert_eq!(
            err,
            "6 characters; a dm-verity root hash is 64 lower-case hex digits"
        );
    }

    #[test]
    fn refuses_non_hex_characters_naming_character_and_position() {
        let g = format!("{}g{}", &HEX[..40], &HEX[41..]);
        let err = g.parse::<RootHash>().unwrap_err();
        assert_eq!(
            err,
            RootHashError::Character {
                character: 'g',
                position: 40
            }
        );
        assert_eq!(
            err.to_string(),
            "character 'g' at position 40 (from 0) is not one of 0-9 a-f; \
             a dm-verity root hash is 64 lower-case hex digits"
        );
        let space = format!("{} {}", &HEX[..63], "");
        assert_eq!(
            space.parse::<RootHash>(),
            Err(RootHashError::Character {
                character: ' ',
                position: 63
            })
        );
        // 64 characters, more bytes: counted in characters, the first one named.
        let accented = format!("{}é", &HEX[..63]);
        assert_eq!(
            accented.parse::<RootHash>(),
            Err(RootHashError::Character {
                character: 'é',
                position: 63
            })
        );
    }

    #[test]
    fn serde_is_the_hex_text_and_deserializing_parses() {
        let hash: RootHash = HEX.parse().expect("a root hash");
        let json = serde_json::to_string(&hash).expect("serializes");
        assert_eq!(json, format!("\"{HEX}\""));
        let back: RootHash = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, hash);
        let err = serde_json::from_str::<RootHash>(&format!("\"{}\"", HEX.to_uppercase()))
            .expect_err("upper case is refused");
        assert!(err.to_string().contains("at position 0"), "{err}");
        assert!(serde_json::from_str::<RootHash>("\"ab\"").is_err());
        assert!(serde_json::from_str::<RootHash>("null").is_err());
        assert!(serde_json::from_str::<RootHash>("[1, 2]").is_err());
    }
}
