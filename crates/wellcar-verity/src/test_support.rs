//! Test helpers: deterministic images, and the real `veritysetup` as the reference.
//!
//! `veritysetup` is not optional for these tests: when it is missing they fail with a message
//! naming the Debian package that provides it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wellcar_contract::RootHash;

use crate::BLOCK_SIZE;

/// Runs `veritysetup` with `args`, panicking with the package name if it is not installed.
pub fn veritysetup(args: &[String]) -> Output {
    match Command::new("veritysetup").args(args).output() {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
            "veritysetup is not installed; these golden tests need it: \
             apt-get install cryptsetup-bin"
        ),
        Err(err) => panic!("cannot run veritysetup: {err}"),
    }
}

/// `veritysetup format` of `path` onto itself; returns the root hash it printed.
pub fn veritysetup_format(
    path: &Path,
    data_blocks: u64,
    hash_offset: u64,
    salt: &[u8],
    uuid: &str,
) -> RootHash {
    let salt_arg = if salt.is_empty() {
        "-".to_string()
    } else {
        hex::encode(salt)
    };
    let path = path.display().to_string();
    let output = veritysetup(&[
        "format".into(),
        "--hash=sha256".into(),
        "--data-block-size=4096".into(),
        "--hash-block-size=4096".into(),
        "--format=1".into(),
        format!("--data-blocks={data_blocks}"),
        format!("--hash-offset={hash_offset}"),
        format!("--salt={salt_arg}"),
        format!("--uuid={uuid}"),
        path.clone(),
        path,
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "veritysetup format failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let root_hex = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Root hash:"))
        .unwrap_or_else(|| panic!("no \"Root hash:\" line in veritysetup output: {stdout}"))
        .trim();
    crate::parse_root_hash(root_hex).unwrap()
}

/// `veritysetup verify`; returns whether it accepted, plus its combined output for messages.
pub fn veritysetup_verify(path: &Path, hash_offset: u64, root_hash: &RootHash) -> (bool, String) {
    let path = path.display().to_string();
    let output = veritysetup(&[
        "verify".into(),
        format!("--hash-offset={hash_offset}"),
        path.clone(),
        path,
        root_hash.to_string(),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Writes an image of `total_blocks` 4096-byte blocks whose first `random_blocks` blocks are
/// deterministic pseudo-random bytes (seeded by `seed`) and the rest zeros.
pub fn write_image(
    dir: &Path,
    name: &str,
    total_blocks: u64,
    random_blocks: u64,
    seed: u64,
) -> PathBuf {
    let path = dir.join(name);
    let mut file = File::create(&path).unwrap();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut block = vec![0u8; BLOCK_SIZE as usize];
    for _ in 0..random_blocks {
        for word in block.chunks_exact_mut(8) {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        file.write_all(&block).unwrap();
    }
    file.set_len(total_blocks * BLOCK_SIZE).unwrap();
    path
}

/// Opens `path` for reading and writing.
pub fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// Flips the lowest bit of the byte at `offset`.
pub fn flip_bit(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = open_rw(path);
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 1;
    file.write_all_at(&byte, offset).unwrap();
}
