//! The /usr slot image: an EROFS filesystem at offset 0, zeros, then the dm-verity hash area at
//! [`USR_VERITY_HASH_OFFSET`] (a standard verity superblock and the sha256 tree over
//! [`USR_DATA_BLOCKS`] 4 KiB blocks). The file is exactly [`USR_EXTRACT_SIZE`] bytes and sparse;
//! it is what an update writes into a USR partition.
//!
//! Reproducibility: given the same tree and `SOURCE_DATE_EPOCH`, the EROFS image (fixed
//! timestamps and UUID) and so the verity salt, UUID and root hash are bit-identical.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use uuid::Uuid;
use wellcar_contract::RootHash;
use wellcar_disk::{USR_DATA_BLOCKS, USR_EXTRACT_SIZE, USR_VERITY_HASH_OFFSET};

use crate::error::{BuildError, IoContext, Result};
use crate::tools::{self, MKFS_EROFS};

/// What was built.
#[derive(Debug, Clone)]
pub struct UsrImage {
    /// The slot image (`usr.img`).
    pub path: PathBuf,
    /// Size of the EROFS filesystem inside it.
    pub fs_size: u64,
    /// Apparent size of the files in the /usr tree (uncompressed).
    pub tree_size: u64,
    /// sha256 of the whole slot image.
    pub sha256: String,
    /// Verity root hash.
    pub root_hash: RootHash,
    /// Verity salt (hex).
    pub salt: String,
}

/// Builds `usr.img` from `usr_tree` into `out`.
pub fn build(usr_tree: &Path, work: &Path, out: &Path, source_date_epoch: u64) -> Result<UsrImage> {
    let erofs = work.join("usr.erofs");
    let fs_uuid = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("wellcar-usr-{source_date_epoch}").as_bytes(),
    );
    let _ = fs::remove_file(&erofs);
    tools::run(
        MKFS_EROFS
            .command()?
            .arg("-zlz4hc,4")
            // 64 KiB physical clusters: 13 % smaller than the default 4 KiB and block-stable
            // across builds, so deltas stay small (issue 18; measured in notes/delta.md).
            .arg("-C65536")
            .arg(format!("-T{source_date_epoch}"))
            .arg(format!("-U{fs_uuid}"))
            .arg(&erofs)
            .arg(usr_tree),
    )?;
    let fs_size = fs::metadata(&erofs).at("inspecting", &erofs)?.len();
    if fs_size > USR_VERITY_HASH_OFFSET {
        return Err(BuildError::UsrTooLarge {
            fs_size,
            capacity: USR_VERITY_HASH_OFFSET,
        });
    }
    let fs_digest = sha256_file(&erofs)?;

    let path = out.join("usr.img");
    let _ = fs::remove_file(&path);
    let mut slot = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .at("creating", &path)?;
    slot.set_len(USR_EXTRACT_SIZE).at("sizing", &path)?;
    let mut src = File::open(&erofs).at("opening", &erofs)?;
    sparse_copy(&mut src, &erofs, &mut slot, &path, 0)?;

    let salt = Sha256::digest([b"wellcar-verity-salt:".as_slice(), fs_digest.as_bytes()].concat())
        .to_vec();
    let params = wellcar_verity::VerityParams {
        data_blocks: USR_DATA_BLOCKS,
        hash_offset: USR_VERITY_HASH_OFFSET,
        salt: salt.clone(),
        uuid: Uuid::new_v5(&Uuid::NAMESPACE_OID, &salt),
    };
    let info = wellcar_verity::format(&slot, &params).map_err(|source| BuildError::Verity {
        path: path.clone(),
        source,
    })?;
    slot.sync_all().at("syncing", &path)?;
    drop(slot);
    Ok(UsrImage {
        sha256: sha256_file(&path)?,
        path,
        fs_size,
        tree_size: tree_size(usr_tree)?,
        root_hash: info.root_hash,
        salt: hex::encode(&salt),
    })
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).at("opening", path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).at("reading", path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Copies `src` into `dst` at `offset`, seeking over all-zero 64 KiB chunks so the destination
/// stays sparse. `dst` must already be sized.
pub fn sparse_copy(
    src: &mut File,
    src_path: &Path,
    dst: &mut File,
    dst_path: &Path,
    offset: u64,
) -> Result<u64> {
    const CHUNK: usize = 64 * 1024;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    src.seek(SeekFrom::Start(0)).at("seeking", src_path)?;
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            let n = src.read(&mut buf[filled..]).at("reading", src_path)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        if buf[..filled].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(offset + pos))
                .at("seeking", dst_path)?;
            dst.write_all(&buf[..filled]).at("writing", dst_path)?;
        }
        pos += filled as u64;
    }
    Ok(pos)
}

/// Sum of the apparent sizes of the regular files and links in a tree.
fn tree_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).at("listing", &d)? {
            let e = e.at("listing", &d)?;
            let m = e.path().symlink_metadata().at("inspecting", e.path())?;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copy_keeps_holes_and_data() {
        let d = tempfile::tempdir().unwrap();
        let (sp, dp) = (d.path().join("s"), d.path().join("d"));
        let mut data = vec![0u8; 1 << 20];
        data[5] = 1;
        data[900_000] = 2;
        fs::write(&sp, &data).unwrap();
        let mut dst = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&dp)
            .unwrap();
        dst.set_len(4 << 20).unwrap();
        let n = sparse_copy(&mut File::open(&sp).unwrap(), &sp, &mut dst, &dp, 1 << 20).unwrap();
        assert_eq!(n, 1 << 20);
        let out = fs::read(&dp).unwrap();
        assert_eq!(&out[1 << 20..2 << 20], &data[..]);
        assert!(out[..1 << 20].iter().all(|&b| b == 0));
        use std::os::unix::fs::MetadataExt;
        assert!(
            fs::metadata(&dp).unwrap().blocks() * 512 < 1 << 20,
            "destination is not sparse"
        );
    }
}
