//! The on-ESP encoding of the boot state: a GRUB environment block (`load_env`/`save_env`
//! format, as `grub-editenv` writes it) of exactly one 512-byte sector.
//!
//! ```text
//! # GRUB Environment Block\n
//! wc_gen=<generation>\n            decimal, no leading zero (GRUB's `test -gt` reads "0…" as octal)
//! a_prio=<0-15>\n                  decimal
//! a_tries=<0-f>\n                  ONE hex digit: GRUB rewrites it in place (see below)
//! a_ok=<0|1>\n
//! a_hash=<root hash or empty>\n    a wellcar_contract::RootHash: 64 lower-case hex digits
//! a_version=<version or empty>\n   written: an OS version (wellcar_contract::OsVersion);
//!                                  read: also an older build's 1-40 bytes of [A-Za-z0-9._+-]
//! b_prio=… b_tries=… b_ok=… b_hash=… b_version=…
//! wc_seal=<generation>\n           equal to wc_gen when the copy was written completely
//! ####…                            '#' padding to 512 bytes
//! ```
//!
//! A copy is valid when it parses, every key is present once with a valid value, and
//! `wc_gen == wc_seal`. A write that tears at any byte (old prefix + new suffix, new prefix +
//! old suffix, or a zero-filled tail) leaves `wc_gen` and `wc_seal` from different writes unless
//! every byte that differs lies on one side of the tear, in which case the copy *is* the old or
//! the new one: gen/seal bracket every field.
//!
//! The one write GRUB makes, decrementing a slot's tries, changes exactly one byte (one hex digit
//! replaced by another, same length, so `save_env` rewrites the block in place with every other
//! byte identical). Any tear of such a write yields the old or the new block.

use wellcar_disk::Slot;

use crate::state::{check_root_hash, readable_version, BootState, SlotState, MAX_NIBBLE};

/// Size of one copy: one sector, so a write is a single sector write.
pub const BLOCK_SIZE: usize = 512;

/// GRUB's environment block signature.
pub const SIGNATURE: &str = "# GRUB Environment Block\n";

/// The variable names GRUB loads (`load_env` whitelist), in file order.
pub const GRUB_VARIABLES: [&str; 10] = [
    "wc_gen", "a_prio", "a_tries", "a_ok", "a_hash", "b_prio", "b_tries", "b_ok", "b_hash",
    "wc_seal",
];

/// Why a copy is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// Not exactly one sector.
    #[error("block is {0} bytes, expected 512")]
    Size(usize),
    /// Missing `# GRUB Environment Block` signature.
    #[error("no GRUB environment block signature")]
    Signature,
    /// A line that is not `key=value` ASCII.
    #[error("malformed line {line:?}")]
    Line {
        /// The line (lossy).
        line: String,
    },
    /// A key that is not ours, or appears twice.
    #[error("unexpected or repeated key {0:?}")]
    Key(String),
    /// A required key is missing.
    #[error("missing key {0:?}")]
    Missing(&'static str),
    /// A value out of range.
    #[error("bad value {value:?} for {key}")]
    Value {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// `wc_gen` and `wc_seal` differ: a torn write.
    #[error("torn write: wc_gen {gen} != wc_seal {seal}")]
    Torn {
        /// Generation at the start of the block.
        gen: u64,
        /// Generation at the end of the block.
        seal: u64,
    },
}

/// Encodes `state` as generation `gen`.
pub fn encode(state: &BootState, gen: u64) -> [u8; BLOCK_SIZE] {
    let mut text = String::from(SIGNATURE);
    text.push_str(&format!("wc_gen={gen}\n"));
    for slot in Slot::ALL {
        let s = state.slot(slot);
        let l = slot.letter();
        let hash = s.root_hash.map(|h| h.to_string()).unwrap_or_default();
        text.push_str(&format!(
            "{l}_prio={}\n{l}_tries={:x}\n{l}_ok={}\n{l}_hash={}\n{l}_version={}\n",
            s.priority.min(MAX_NIBBLE),
            s.tries.min(MAX_NIBBLE),
            u8::from(s.successful),
            hash,
            s.version,
        ));
    }
    text.push_str(&format!("wc_seal={gen}\n"));
    let mut block = [b'#'; BLOCK_SIZE];
    // 25 + 18 + 2 * (9 + 10 + 7 + 72 + 51) + 19 = 360 bytes at most: always fits.
    block[..text.len()].copy_from_slice(text.as_bytes());
    block
}

/// Decodes one copy: the state and its generation.
pub fn decode(block: &[u8]) -> Result<(BootState, u64), BlockError> {
    if block.len() != BLOCK_SIZE {
        return Err(BlockError::Size(block.len()));
    }
    let body = block
        .strip_prefix(SIGNATURE.as_bytes())
        .ok_or(BlockError::Signature)?;
    let mut values: [Option<&str>; 12] = [None; 12];
    const KEYS: [&str; 12] = [
        "wc_gen",
        "a_prio",
        "a_tries",
        "a_ok",
        "a_hash",
        "a_version",
        "b_prio",
        "b_tries",
        "b_ok",
        "b_hash",
        "b_version",
        "wc_seal",
    ];
    let mut rest = body;
    while let Some(&first) = rest.first() {
        if first == b'#' {
            // Padding (or a comment) to the end of the line; the padding has no newline.
            match rest.iter().position(|&c| c == b'\n') {
                Some(n) => rest = &rest[n + 1..],
                None => break,
            }
            continue;
        }
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| line_error(rest))?;
        let line = std::str::from_utf8(&rest[..n]).map_err(|_| line_error(&rest[..n]))?;
        rest = &rest[n + 1..];
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| line_error(line.as_bytes()))?;
        let i = KEYS
            .iter()
            .position(|&k| k == key)
            .ok_or_else(|| BlockError::Key(key.into()))?;
        if values[i].replace(value).is_some() {
            return Err(BlockError::Key(key.into()));
        }
    }
    let get = |i: usize| values[i].ok_or(BlockError::Missing(KEYS[i]));
    let gen = parse_gen("wc_gen", get(0)?)?;
    let seal = parse_gen("wc_seal", get(11)?)?;
    if gen != seal {
        return Err(BlockError::Torn { gen, seal });
    }
    let slot = |base: usize| -> Result<SlotState, BlockError> {
        let prio = get(base)?;
        let priority = prio
            .parse::<u8>()
            .ok()
            .filter(|&p| p <= MAX_NIBBLE && prio == p.to_string())
            .ok_or_else(|| value_error(KEYS[base], prio))?;
        let tries_s = get(base + 1)?;
        let tries = (tries_s.len() == 1)
            .then(|| u8::from_str_radix(tries_s, 16).ok())
            .flatten()
            .filter(|_| tries_s.bytes().all(|c| !c.is_ascii_uppercase()))
            .ok_or_else(|| value_error(KEYS[base + 1], tries_s))?;
        let successful = match get(base + 2)? {
            "0" => false,
            "1" => true,
            v => return Err(value_error(KEYS[base + 2], v)),
        };
        let root_hash = match get(base + 3)? {
            "" => None,
            text => Some(check_root_hash(text).map_err(|_| value_error(KEYS[base + 3], text))?),
        };
        // Lenient: an older build may have recorded a version the OsVersion contract refuses
        // (`1.2`, `unknown`); it is kept as written. Only writing a version is strict.
        let version = get(base + 4)?;
        if !readable_version(version) {
            return Err(value_error(KEYS[base + 4], version));
        }
        Ok(SlotState {
            priority,
            tries,
            successful,
            root_hash,
            version: version.into(),
        })
    };
    Ok((
        BootState {
            a: slot(1)?,
            b: slot(6)?,
        },
        gen,
    ))
}

/// What GRUB's `save_env <x>_tries` does to a block holding `slot`'s tries as one hex digit:
/// the same block with that one digit replaced. `None` if the key is not found, or ends the
/// block with no byte left for the digit.
pub fn with_tries(block: &[u8; BLOCK_SIZE], slot: Slot, tries: u8) -> Option<[u8; BLOCK_SIZE]> {
    let key = format!("\n{}_tries=", slot.letter());
    let at = block.windows(key.len()).position(|w| w == key.as_bytes())? + key.len();
    let mut out = *block;
    *out.get_mut(at)? = format!("{:x}", tries.min(MAX_NIBBLE)).as_bytes()[0];
    Some(out)
}

/// The highest generation number written anywhere in `block` (after any `wc_gen=` or
/// `wc_seal=`, complete or torn), 0 if none. A new write must use a larger one: otherwise the
/// leftovers of an earlier torn write could pair with the new write's seal.
pub fn highest_generation_mentioned(block: &[u8]) -> u64 {
    let mut max = 0;
    for key in [&b"wc_gen="[..], &b"wc_seal="[..]] {
        let mut i = 0;
        while let Some(p) = block[i..].windows(key.len()).position(|w| w == key) {
            let start = i + p + key.len();
            let digits: Vec<u8> = block[start..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .copied()
                .collect();
            let n = std::str::from_utf8(&digits)
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
                .unwrap_or(0);
            max = max.max(n);
            i = start;
        }
    }
    max
}

fn parse_gen(key: &str, v: &str) -> Result<u64, BlockError> {
    v.parse::<u64>()
        .ok()
        .filter(|g| *g == 0 || !v.starts_with('0'))
        .ok_or_else(|| value_error(key, v))
}

fn value_error(key: &str, value: &str) -> BlockError {
    BlockError::Value {
        key: key.into(),
        value: value.into(),
    }
}

fn line_error(bytes: &[u8]) -> BlockError {
    BlockError::Line {
        line: String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fuzzing finding (issue 20, target `grub-envblock`): a block whose last bytes are
    /// `\na_tries=` made `with_tries` index one past the sector and panic; there is no digit to
    /// replace, so it is `None`.
    #[test]
    fn with_tries_on_a_key_that_ends_the_block_is_none() {
        for slot in Slot::ALL {
            let key = format!("\n{}_tries=", slot.letter());
            let mut block = [b'#'; BLOCK_SIZE];
            block[BLOCK_SIZE - key.len()..].copy_from_slice(key.as_bytes());
            assert_eq!(with_tries(&block, slot, 3), None);
            // One byte earlier there is a digit slot, and it is written.
            let mut block = [b'#'; BLOCK_SIZE];
            block[BLOCK_SIZE - key.len() - 1..BLOCK_SIZE - 1].copy_from_slice(key.as_bytes());
            assert_eq!(with_tries(&block, slot, 3).unwrap()[BLOCK_SIZE - 1], b'3');
        }
    }

    const H1: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn h1() -> wellcar_contract::RootHash {
        H1.parse().unwrap()
    }

    #[test]
    fn round_trips_and_looks_like_grub_editenv_output() {
        let mut s = BootState::fresh(h1(), "1.0.0+dev").unwrap();
        s.b.tries = 15;
        s.b.priority = 15;
        s.b.version = format!("1.0.0+{}", "x".repeat(34));
        assert_eq!(s.b.version.len(), crate::state::MAX_VERSION_LEN);
        s.b.root_hash = Some(h1());
        let block = encode(&s, 1234567890123);
        assert!(block.starts_with(b"# GRUB Environment Block\nwc_gen=1234567890123\na_prio=1\n"));
        assert_eq!(*block.last().unwrap(), b'#');
        let text = String::from_utf8_lossy(&block);
        assert!(text.contains("\nb_tries=f\n"), "{text}");
        assert_eq!(decode(&block), Ok((s, 1234567890123)));
    }

    /// A block as an older build wrote it (before the OsVersion contract), byte for byte.
    fn older_build_block(a_version: &str, b_version: &str) -> [u8; BLOCK_SIZE] {
        let text = format!(
            "{SIGNATURE}wc_gen=8\n\
             a_prio=1\na_tries=0\na_ok=1\na_hash={H1}\na_version={a_version}\n\
             b_prio=2\nb_tries=1\nb_ok=0\nb_hash={H1}\nb_version={b_version}\n\
             wc_seal=8\n"
        );
        let mut block = [b'#'; BLOCK_SIZE];
        block[..text.len()].copy_from_slice(text.as_bytes());
        block
    }

    #[test]
    fn versions_an_older_build_wrote_decode_as_written() {
        // `1.2` and `01.0.0` are not OS versions; a build before the contract recorded them.
        let (state, gen) = decode(&older_build_block("1.2", "01.0.0")).expect("still decodes");
        assert_eq!(gen, 8);
        assert_eq!(state.a.version, "1.2", "kept as written");
        assert_eq!(state.b.version, "01.0.0", "kept as written");
        assert_eq!(state.a.os_version(), None, "its OS version is unknown");
        assert_eq!(state.b.os_version(), None, "its OS version is unknown");
        assert_eq!(
            (state.a.successful, state.b.tries, state.b.root_hash),
            (true, 1, Some(h1())),
            "the rest of the slot is read as usual"
        );
        // Re-encoding (any later host write) keeps them; the older text round-trips.
        assert_eq!(decode(&encode(&state, 9)), Ok((state, 9)));
        // Everything the old grammar allowed, and an empty slot's empty version.
        let mut s = BootState::fresh(h1(), "1.0.0").unwrap();
        assert_eq!(s.b.version, "");
        assert_eq!(decode(&encode(&s, 3)), Ok((s.clone(), 3)));
        let forty_nines = "9".repeat(crate::state::MAX_VERSION_LEN);
        for older in [
            "unknown",
            "1.2.3.4",
            "v1.2.3",
            "1.0.0-rc1",
            "1.2.3+",
            "1.0.0_dev",
            forty_nines.as_str(),
        ] {
            s.b.version = older.into();
            let (back, _) = decode(&encode(&s, 3)).expect(older);
            assert_eq!(back.b.version, older);
            assert_eq!(back.b.os_version(), None, "{older}");
        }
        // An OS version reads back as one.
        let (state, _) = decode(&older_build_block("3815.2.0", "4799.0.0+nightly-1")).unwrap();
        assert_eq!(
            state.a.os_version().map(|v| v.to_string()),
            Some("3815.2.0".into())
        );
        assert_eq!(state.b.os_version().unwrap().build(), Some("nightly-1"));
    }

    #[test]
    fn versions_no_build_wrote_are_rejected() {
        for bad in [
            "1.2 3".to_owned(),
            "1.2/3".to_owned(),
            "1.2#".to_owned(),
            "é".to_owned(),
            "9".repeat(crate::state::MAX_VERSION_LEN + 1),
        ] {
            assert_eq!(
                decode(&older_build_block("1.0.0", &bad)),
                Err(BlockError::Value {
                    key: "b_version".into(),
                    value: bad.clone()
                }),
                "{bad}"
            );
        }
    }

    #[test]
    fn highest_generation_sees_torn_leftovers() {
        let s = BootState::fresh(h1(), "1.0.0").unwrap();
        let mut torn = encode(&s, 41);
        torn[..40].copy_from_slice(&encode(&s, 1000)[..40]);
        assert_eq!(highest_generation_mentioned(&torn), 1000);
        assert_eq!(highest_generation_mentioned(&[b'#'; 512]), 0);
    }

    #[test]
    fn grub_decrement_changes_exactly_one_byte() {
        let mut s = BootState::fresh(h1(), "1.0.0").unwrap();
        s.b.tries = 1;
        let block = encode(&s, 7);
        let after = with_tries(&block, Slot::B, 0).unwrap();
        let differing = block.iter().zip(&after).filter(|(x, y)| x != y).count();
        assert_eq!(differing, 1);
        s.b.tries = 0;
        assert_eq!(decode(&after), Ok((s, 7)));
    }

    #[test]
    fn torn_and_garbage_blocks_are_rejected() {
        let s = BootState::fresh(h1(), "1.0.0").unwrap();
        let old = encode(&s, 9);
        let mut t = s.clone();
        t.a.priority = 2;
        let new = encode(&t, 10);
        // New prefix up to the middle of a_hash, old tail: gen 10, seal 9.
        let mut torn = old;
        torn[..100].copy_from_slice(&new[..100]);
        assert_eq!(decode(&torn), Err(BlockError::Torn { gen: 10, seal: 9 }));
        assert_eq!(decode(&[0u8; 512]), Err(BlockError::Signature));
        assert_eq!(decode(&old[..100]), Err(BlockError::Size(100)));
        let mut bad = old;
        bad[SIGNATURE.len()..SIGNATURE.len() + 7].copy_from_slice(b"zz_gen=");
        assert_eq!(decode(&bad), Err(BlockError::Key("zz_gen".into())));
    }
}
