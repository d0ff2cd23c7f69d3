//! The live system's boot files (PXE, and the ISO built from them): a kernel and an initramfs
//! that carries the release's verified `/usr`.
//!
//! Contract ([`wellcar_contract::live`] has the layout `/init` reads):
//! - [`PXE_KERNEL`] is the build's kernel;
//! - [`PXE_INITRAMFS`] is the build's `initramfs.img`, zero-padded to 4 bytes, followed by an
//!   uncompressed newc cpio archive with `LIVE_USR_FS` (the slot image's first
//!   `usr_fs_size` bytes rounded up to 4 KiB: the EROFS, already compressed) and
//!   `LIVE_USR_HASH` (the slot from `USR_VERITY_HASH_OFFSET` to its end: the dm-verity hash
//!   area). The kernel unpacks both archives into the same root;
//! - [`live_kernel_args`] is the command line that boots it: `wellcar.live` and the release's
//!   `verity.usrhash=`; the root is a tmpfs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use wellcar_contract::live::{LIVE_PARAM, LIVE_USR_FS, LIVE_USR_HASH};
use wellcar_contract::RootHash;
use wellcar_disk::{USR_EXTRACT_SIZE, USR_VERITY_HASH_OFFSET};

use crate::error::{IoContext, Result};

/// The PXE kernel, in the output directory.
pub const PXE_KERNEL: &str = "wellcar_pxe.vmlinuz";
/// The PXE initramfs (with `/usr`), in the output directory.
pub const PXE_INITRAMFS: &str = "wellcar_pxe_image.cpio";

/// What [`build_pxe`] wrote.
#[derive(Debug, Clone)]
pub struct PxeFiles {
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs with `/usr`.
    pub initramfs: PathBuf,
    /// The initramfs's size in bytes.
    pub initramfs_size: u64,
}

/// The kernel command line of the live system for a release with `root_hash` (the console
/// and platform arguments are the caller's).
pub fn live_kernel_args(root_hash: &RootHash) -> String {
    format!("{LIVE_PARAM} verity.usrhash={root_hash}")
}

/// Writes [`PXE_KERNEL`] and [`PXE_INITRAMFS`] into `out` from the build's `kernel`,
/// `initramfs` and `usr_slot` (whose filesystem is `usr_fs_size` bytes); `mtime` is every
/// archive member's time (the build's `SOURCE_DATE_EPOCH`).
pub fn build_pxe(
    kernel: &Path,
    initramfs: &Path,
    usr_slot: &Path,
    usr_fs_size: u64,
    out: &Path,
    mtime: u32,
) -> Result<PxeFiles> {
    let pxe_kernel = out.join(PXE_KERNEL);
    std::fs::copy(kernel, &pxe_kernel).at("copying the kernel to", &pxe_kernel)?;

    let mut slot = File::open(usr_slot).at("opening", usr_slot)?;
    let fs_len = usr_fs_size.div_ceil(4096) * 4096;
    let usr_fs = read_range(&mut slot, usr_slot, 0, fs_len)?;
    let usr_hash = read_range(
        &mut slot,
        usr_slot,
        USR_VERITY_HASH_OFFSET,
        USR_EXTRACT_SIZE - USR_VERITY_HASH_OFFSET,
    )?;
    let mut usr = wellcar_initramfs::cpio::Archive::new();
    usr.add_file(LIVE_USR_FS, 0o444, usr_fs);
    usr.add_file(LIVE_USR_HASH, 0o444, usr_hash);

    let pxe_initramfs = out.join(PXE_INITRAMFS);
    std::fs::copy(initramfs, &pxe_initramfs).at("copying the initramfs to", &pxe_initramfs)?;
    let mut file = File::options()
        .append(true)
        .open(&pxe_initramfs)
        .at("opening", &pxe_initramfs)?;
    let len = file.metadata().at("reading", &pxe_initramfs)?.len();
    // The kernel finds the next archive only at a 4-byte boundary (zeros between are skipped).
    let padding = (4 - len % 4) % 4;
    file.write_all(&vec![0; padding as usize])
        .at("writing", &pxe_initramfs)?;
    usr.write_to(&mut file, mtime)
        .at("writing the /usr archive to", &pxe_initramfs)?;
    file.sync_all().at("syncing", &pxe_initramfs)?;
    let initramfs_size = file.metadata().at("reading", &pxe_initramfs)?.len();
    Ok(PxeFiles {
        kernel: pxe_kernel,
        initramfs: pxe_initramfs,
        initramfs_size,
    })
}

fn read_range(file: &mut File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset)).at("seeking in", path)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len).read_to_end(&mut bytes).at("reading", path)?;
    if bytes.len() as u64 != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{len} bytes at {offset} wanted, {} there", bytes.len()),
        ))
        .at("reading", path);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pxe_initramfs_is_the_initramfs_then_a_usr_archive() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, b"kernel").unwrap();
        let initramfs = dir.path().join("initramfs.img");
        std::fs::write(&initramfs, b"compressed initramfs").unwrap(); // 20 bytes: padded to 20
        let slot_path = dir.path().join("usr.img");
        let slot = File::create(&slot_path).unwrap();
        slot.set_len(USR_EXTRACT_SIZE).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&slot, &[0xe0; 5000], 0).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&slot, b"verity", USR_VERITY_HASH_OFFSET).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();

        let files = build_pxe(&kernel, &initramfs, &slot_path, 5000, &out, 7).unwrap();
        assert_eq!(std::fs::read(&files.kernel).unwrap(), b"kernel");
        let bytes = std::fs::read(&files.initramfs).unwrap();
        assert_eq!(bytes.len() as u64, files.initramfs_size);
        assert_eq!(&bytes[..20], b"compressed initramfs");
        let entries = wellcar_initramfs::cpio::read_archive(&bytes[20..]).unwrap();
        let file = |name: &str| {
            entries
                .iter()
                .find(|e| e.path == name)
                .unwrap_or_else(|| panic!("{name} in {entries:?}"))
        };
        let fs = &file(LIVE_USR_FS).data;
        assert_eq!(fs.len(), 8192, "rounded up to 4 KiB");
        assert!(fs[..5000].iter().all(|b| *b == 0xe0));
        let hash = &file(LIVE_USR_HASH).data;
        assert_eq!(hash.len() as u64, USR_EXTRACT_SIZE - USR_VERITY_HASH_OFFSET);
        assert_eq!(&hash[..6], b"verity");
    }

    #[test]
    fn the_live_command_line_names_the_root_hash() {
        let hash = RootHash::from_bytes([0xab; 32]);
        assert_eq!(
            live_kernel_args(&hash),
            format!("wellcar.live verity.usrhash={}", "ab".repeat(32))
        );
    }
}
