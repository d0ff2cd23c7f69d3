//! The live system's `/usr` and root (ISO and PXE boots, `wellcar.live` on the command line).
//!
//! Contract ([`wellcar_contract::live`] has the initramfs layout):
//! - [`assemble_slot`] turns the initramfs's [`LIVE_USR_FS`] into the USR slot layout in
//!   place: the file grows with a hole up to `USR_VERITY_HASH_OFFSET`, [`LIVE_USR_HASH`] is
//!   written there and removed, and the file ends at `USR_EXTRACT_SIZE`. The initramfs root is
//!   a tmpfs (no `root=`), so the holes cost no memory and the filesystem is never copied.
//!   `verity::open_verity` then checks it against the release's root hash like a disk slot.
//! - [`attach_read_only`] backs a free loop device with that file, read-only.
//! - [`mount_root`] mounts a tmpfs at the new root: the live system keeps nothing.
//!
//! Errors name the file or device that failed.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::mount::MountFlags;
use wellcar_contract::live::{LIVE_USR_FS, LIVE_USR_HASH};
use wellcar_disk::{USR_EXTRACT_SIZE, USR_VERITY_HASH_OFFSET};

use crate::sys;

/// Why the live `/usr` could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// A file or device could not be read, written or opened.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or device.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The filesystem image reaches into the hash area.
    #[error("{path} is {len} bytes, more than the slot's data area ({limit} bytes)")]
    TooLarge {
        /// The image.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The data area's length.
        limit: u64,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LiveError + 'a {
    move |source| LiveError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Lays out `root`'s [`LIVE_USR_FS`] and [`LIVE_USR_HASH`] as a USR slot (see the module
/// docs); returns the slot file.
pub fn assemble_slot(root: &Path) -> Result<PathBuf, LiveError> {
    let fs_path = root.join(LIVE_USR_FS);
    let hash_path = root.join(LIVE_USR_HASH);
    let slot = File::options()
        .read(true)
        .write(true)
        .open(&fs_path)
        .map_err(io("opening", &fs_path))?;
    let len = slot.metadata().map_err(io("reading", &fs_path))?.len();
    if len > USR_VERITY_HASH_OFFSET {
        return Err(LiveError::TooLarge {
            path: fs_path,
            len,
            limit: USR_VERITY_HASH_OFFSET,
        });
    }
    let hash = std::fs::read(&hash_path).map_err(io("reading", &hash_path))?;
    slot.set_len(USR_EXTRACT_SIZE)
        .map_err(io("growing", &fs_path))?;
    slot.write_all_at(&hash, USR_VERITY_HASH_OFFSET)
        .map_err(io("writing the hash area into", &fs_path))?;
    std::fs::remove_file(&hash_path).map_err(io("removing", &hash_path))?;
    Ok(fs_path)
}

/// Attaches `file` to a free loop device (read-only); returns the device node under `dev`.
pub fn attach_read_only(file: &Path, dev: &Path) -> Result<PathBuf, LiveError> {
    let control_path = dev.join("loop-control");
    let control = File::options()
        .read(true)
        .write(true)
        .open(&control_path)
        .map_err(io("opening", &control_path))?;
    let number = sys::loop_get_free(control.as_fd())
        .map_err(io("asking for a free loop device on", &control_path))?;
    let device = dev.join(format!("loop{number}"));
    let backing = File::open(file).map_err(io("opening", file))?;
    let loop_device = open_loop_node(&device, number)?;
    sys::loop_configure_read_only(loop_device.as_fd(), backing.as_fd())
        .map_err(io("attaching the live /usr to", &device))?;
    Ok(device)
}

/// Opens `/dev/loopN`, making the node when devtmpfs has not yet.
fn open_loop_node(device: &Path, number: u32) -> Result<File, LiveError> {
    /// The loop driver's block major.
    const LOOP_MAJOR: u32 = 7;
    if !device.exists() {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            device,
            rustix::fs::FileType::BlockDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::makedev(LOOP_MAJOR, number),
        )
        .map_err(|e| LiveError::Io {
            action: "creating",
            path: device.to_path_buf(),
            source: e.into(),
        })?;
    }
    File::options()
        .read(true)
        .open(device)
        .map_err(io("opening", device))
}

/// Mounts a tmpfs at `sysroot` (the kernel's default bound, half the memory).
pub fn mount_root(sysroot: &Path) -> Result<(), crate::sysroot::SysrootError> {
    crate::sysroot::mount("tmpfs", sysroot, "tmpfs", MountFlags::empty(), "mode=0755")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_is_assembled_in_place_with_the_hash_area_at_its_offset() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("wellcar")).unwrap();
        let fs = vec![0xe0_u8; 3 * 4096];
        let hash = vec![0x5a_u8; 2 * 4096];
        std::fs::write(root.path().join(LIVE_USR_FS), &fs).unwrap();
        std::fs::write(root.path().join(LIVE_USR_HASH), &hash).unwrap();

        let slot = assemble_slot(root.path()).unwrap();
        assert_eq!(slot, root.path().join(LIVE_USR_FS));
        let file = File::open(&slot).unwrap();
        assert_eq!(file.metadata().unwrap().len(), USR_EXTRACT_SIZE);
        let mut head = vec![0; fs.len() + 4096];
        file.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(&head[..fs.len()], &fs[..]);
        assert!(
            head[fs.len()..].iter().all(|b| *b == 0),
            "a hole after the filesystem"
        );
        let mut at_offset = vec![0; hash.len()];
        file.read_exact_at(&mut at_offset, USR_VERITY_HASH_OFFSET)
            .unwrap();
        assert_eq!(at_offset, hash);
        assert!(
            !root.path().join(LIVE_USR_HASH).exists(),
            "the hash file is freed"
        );
    }

    #[test]
    fn missing_or_oversized_parts_are_named() {
        let root = tempfile::tempdir().unwrap();
        let err = assemble_slot(root.path()).unwrap_err();
        assert!(err.to_string().contains(LIVE_USR_FS), "{err}");

        std::fs::create_dir_all(root.path().join("wellcar")).unwrap();
        let fs = File::create(root.path().join(LIVE_USR_FS)).unwrap();
        fs.set_len(USR_VERITY_HASH_OFFSET + 4096).unwrap();
        let err = assemble_slot(root.path()).unwrap_err();
        assert!(matches!(err, LiveError::TooLarge { .. }), "{err}");

        fs.set_len(4096).unwrap();
        let err = assemble_slot(root.path()).unwrap_err();
        assert!(err.to_string().contains(LIVE_USR_HASH), "{err}");
    }
}
