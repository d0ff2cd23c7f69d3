//! Handing the machine over to the real root.
//!
//! Contract: [`pick_init`] chooses the program to exec inside the new root before anything is
//! torn down (so a missing systemd is a clean, reportable failure). [`switch_root`] moves
//! `/dev`, `/proc`, `/sys` and `/run` into the new root, frees the initramfs (deletes every
//! file on the initramfs filesystem, never crossing into another mount), moves the new root
//! onto `/`, chroots into it and execs the init program. It only returns on failure.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use wellcar_contract::PathIoError;

/// Init programs tried, in order, when `init=` is not given.
pub const INIT_CANDIDATES: [&str; 2] = ["/usr/lib/systemd/systemd", "/sbin/init"];

/// Mounts carried over into the new root.
pub const MOVED_MOUNTS: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];

/// Switching root failed.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// No init program in the new root.
    #[error("no init program in {root}: tried {tried}")]
    NoInit {
        /// The new root.
        root: PathBuf,
        /// Paths tried.
        tried: String,
    },
    /// An I/O operation on a path failed.
    #[error(transparent)]
    Io(#[from] PathIoError),
}

/// The first of `init` (if given) or [`INIT_CANDIDATES`] that exists inside `new_root`
/// (following links relative to the new root is left to the kernel: a link is accepted).
pub fn pick_init(new_root: &Path, init: Option<&str>) -> Result<String, SwitchError> {
    let candidates: Vec<&str> = match init {
        Some(i) => vec![i],
        None => INIT_CANDIDATES.to_vec(),
    };
    candidates
        .iter()
        .find(|c| {
            new_root
                .join(c.trim_start_matches('/'))
                .symlink_metadata()
                .is_ok()
        })
        .map(|c| c.to_string())
        .ok_or_else(|| SwitchError::NoInit {
            root: new_root.to_path_buf(),
            tried: candidates.join(", "),
        })
}

/// Deletes everything under `dir` that lives on device `dev`, without crossing mounts.
/// Failures are ignored: this only frees memory.
pub fn remove_tree_on_device(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_tree_on_device(&path, dev);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Moves the API mounts into `new_root`, frees the initramfs, switches root and execs `init`.
pub fn switch_root(new_root: &Path, init: &str) -> SwitchError {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| SwitchError::Io(PathIoError::new(what, path, source))
    };
    for mount in MOVED_MOUNTS {
        let target = new_root.join(mount.trim_start_matches('/'));
        if let Err(e) = rustix::mount::mount_move(mount, &target) {
            return io("moving mount to", &target)(e.into());
        }
    }
    if let Ok(meta) = Path::new("/").symlink_metadata() {
        remove_tree_on_device(Path::new("/"), meta.dev());
    }
    if let Err(e) = std::env::set_current_dir(new_root) {
        return io("entering", new_root)(e);
    }
    if let Err(e) = rustix::mount::mount_move(".", "/") {
        return io("moving onto /", new_root)(e.into());
    }
    if let Err(e) = rustix::process::chroot(".") {
        return io("chroot into", new_root)(e.into());
    }
    if let Err(e) = std::env::set_current_dir("/") {
        return io("entering new", Path::new("/"))(e);
    }
    let err = std::process::Command::new(init).exec();
    io("executing", Path::new(init))(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_is_preferred_then_sbin_init() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let err = pick_init(root, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no init program in {}: tried /usr/lib/systemd/systemd, /sbin/init",
                root.display()
            )
        );
        std::fs::create_dir_all(root.join("sbin")).unwrap();
        std::os::unix::fs::symlink("../usr/lib/systemd/systemd", root.join("sbin/init")).unwrap();
        assert_eq!(pick_init(root, None).unwrap(), "/sbin/init");
        std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
        std::fs::write(root.join("usr/lib/systemd/systemd"), b"").unwrap();
        assert_eq!(pick_init(root, None).unwrap(), "/usr/lib/systemd/systemd");
        assert!(pick_init(root, Some("/bin/sh")).is_err());
    }

    #[test]
    fn tree_removal_stays_on_its_device() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        let dev = dir.path().symlink_metadata().unwrap().dev();
        // A different device number: nothing is removed.
        remove_tree_on_device(dir.path(), dev + 1);
        assert!(dir.path().join("a/b/f").exists());
        remove_tree_on_device(dir.path(), dev);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(Path::new("/etc").exists());
    }
}
