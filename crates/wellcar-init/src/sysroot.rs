//! Building the new root under `/sysroot`: mounts and ROOT's skeleton.
//!
//! Contract: [`build_skeleton`] makes the directories and merged-usr links a Wellcar root
//! needs, creating only what is missing (so it is safe on every boot and repairs a damaged
//! ROOT); it never replaces or removes anything. [`ensure_machine_id`] creates an empty
//! `/etc/machine-id` (systemd fills it on first boot) if none exists. [`mount`] wraps
//! `mount(2)` with an error naming the source, target and type; [`split_flags`] turns a
//! `rootflags=`-style option string into mount flags plus filesystem data.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::mount::MountFlags;

/// Directories of a Wellcar root, with their modes (created when missing).
pub const SKELETON_DIRS: &[(&str, u32)] = &[
    ("usr", 0o755),
    ("etc", 0o755),
    (".etc-work", 0o700),
    ("var", 0o755),
    ("home", 0o755),
    ("root", 0o700),
    ("tmp", 0o1777),
    ("run", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("boot", 0o755),
    ("oem", 0o755),
    ("mnt", 0o755),
    ("opt", 0o755),
    ("srv", 0o755),
    ("media", 0o755),
];

/// Merged-usr links of a Wellcar root.
pub const SKELETON_LINKS: &[(&str, &str)] = &[
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
];

/// Where the default `/etc` lives inside `/usr` (the overlay's lower layer).
pub const ETC_DEFAULTS: &str = "usr/share/wellcar/etc";

/// A filesystem operation on the new root failed.
#[derive(Debug, thiserror::Error)]
pub enum SysrootError {
    /// Creating a directory, link or file failed.
    #[error("creating {path}")]
    Create {
        /// What was being created.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `mount(2)` failed.
    #[error("mounting {source_name} ({fstype}) on {target}")]
    Mount {
        /// Device or pseudo source.
        source_name: String,
        /// Mount point.
        target: PathBuf,
        /// Filesystem type.
        fstype: String,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// A path the boot needs is not there.
    #[error("{path} is missing: {why}")]
    Missing {
        /// The path.
        path: PathBuf,
        /// Why it matters.
        why: &'static str,
    },
}

fn create_err(path: &Path) -> impl FnOnce(std::io::Error) -> SysrootError + '_ {
    move |source| SysrootError::Create {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the missing parts of the skeleton under `root`; returns what it created.
pub fn build_skeleton(root: &Path) -> Result<Vec<String>, SysrootError> {
    let mut created = Vec::new();
    for (name, mode) in SKELETON_DIRS {
        let path = root.join(name);
        if path.symlink_metadata().is_ok() {
            continue;
        }
        std::fs::create_dir(&path).map_err(create_err(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
            .map_err(create_err(&path))?;
        created.push(format!("/{name}"));
    }
    for (name, target) in SKELETON_LINKS {
        let path = root.join(name);
        if path.symlink_metadata().is_ok() {
            continue;
        }
        std::os::unix::fs::symlink(target, &path).map_err(create_err(&path))?;
        created.push(format!("/{name}"));
    }
    Ok(created)
}

/// Creates an empty, read-only `etc/machine-id` under `root` unless one exists.
pub fn ensure_machine_id(root: &Path) -> Result<bool, SysrootError> {
    let path = root.join("etc/machine-id");
    if path.symlink_metadata().is_ok() {
        return Ok(false);
    }
    std::fs::File::create(&path).map_err(create_err(&path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))
        .map_err(create_err(&path))?;
    Ok(true)
}

/// Splits `rw,noatime,discard`-style options into mount flags and the rest (filesystem data).
pub fn split_flags(options: &str) -> (MountFlags, String) {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => flags |= MountFlags::RDONLY,
            "rw" => flags -= MountFlags::RDONLY,
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "noatime" => flags |= MountFlags::NOATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// The mount data for `/usr`: `data` from `mount.usrflags`, plus, for EROFS,
/// `cache_strategy=disabled` unless `mount.usrflags` chose a strategy.
///
/// EROFS's default (`readaround`) keeps compressed blocks in the page cache beside the files
/// decompressed from them. /usr is read from a local disk through dm-verity, so the second copy
/// buys little. (Measured: no visible change in memory after boot in one bench run; the extra
/// page cache first blamed on it was `ctr`, run by the containerd health check.)
pub fn usr_mount_data(fstype: &str, data: String) -> String {
    if fstype != "erofs" || data.split(',').any(|o| o.starts_with("cache_strategy=")) {
        return data;
    }
    if data.is_empty() {
        "cache_strategy=disabled".into()
    } else {
        format!("{data},cache_strategy=disabled")
    }
}

/// `mount(2)`, with an error naming what was mounted where.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), SysrootError> {
    let err = |source_err: std::io::Error| SysrootError::Mount {
        source_name: source.to_string(),
        target: target.to_path_buf(),
        fstype: fstype.to_string(),
        source: source_err,
    };
    let data_c = CString::new(data).map_err(|_| err(std::io::ErrorKind::InvalidInput.into()))?;
    let data_arg = if data.is_empty() {
        None
    } else {
        Some(data_c.as_c_str())
    };
    rustix::mount::mount(source, target, fstype, flags, data_arg).map_err(|e| err(e.into()))
}

/// Mounts the `/etc` overlay of the new root at `root/etc`.
pub fn mount_etc_overlay(root: &Path) -> Result<(), SysrootError> {
    let lower = root.join(ETC_DEFAULTS);
    if !lower.is_dir() {
        return Err(SysrootError::Missing {
            path: lower,
            why: "the image keeps the default /etc there (overlay lower layer)",
        });
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        root.join("etc").display(),
        root.join(".etc-work").display()
    );
    mount(
        "overlay",
        &root.join("etc"),
        "overlay",
        MountFlags::empty(),
        &data,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erofs_usr_gets_no_compressed_cache_unless_asked() {
        assert_eq!(
            usr_mount_data("erofs", String::new()),
            "cache_strategy=disabled"
        );
        assert_eq!(
            usr_mount_data("erofs", "acl".into()),
            "acl,cache_strategy=disabled"
        );
        assert_eq!(
            usr_mount_data("erofs", "cache_strategy=readaround".into()),
            "cache_strategy=readaround"
        );
        assert_eq!(usr_mount_data("ext4", String::new()), "");
    }

    #[test]
    fn skeleton_is_created_once_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // An existing /home holding data and a /lib64 that is a real directory stay as they are.
        std::fs::create_dir(root.join("home")).unwrap();
        std::fs::write(root.join("home/keep"), b"data").unwrap();
        std::fs::create_dir(root.join("lib64")).unwrap();
        let created = build_skeleton(root).unwrap();
        assert!(created.contains(&"/etc".to_string()));
        assert!(created.contains(&"/bin".to_string()));
        assert!(!created.contains(&"/home".to_string()));
        assert!(!created.contains(&"/lib64".to_string()));
        assert_eq!(std::fs::read(root.join("home/keep")).unwrap(), b"data");
        assert_eq!(
            std::fs::read_link(root.join("sbin")).unwrap(),
            Path::new("usr/sbin")
        );
        let tmp_mode = std::fs::metadata(root.join("tmp"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(tmp_mode & 0o7777, 0o1777);
        let root_mode = std::fs::metadata(root.join("root"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(root_mode & 0o7777, 0o700);
        assert!(build_skeleton(root).unwrap().is_empty());
    }

    #[test]
    fn machine_id_is_empty_and_kept_once_filled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        assert!(ensure_machine_id(dir.path()).unwrap());
        let id = dir.path().join("etc/machine-id");
        assert_eq!(std::fs::read(&id).unwrap(), b"");
        std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&id, b"0123\n").unwrap();
        assert!(!ensure_machine_id(dir.path()).unwrap());
        assert_eq!(std::fs::read(&id).unwrap(), b"0123\n");
    }

    #[test]
    fn flags_and_data_are_split() {
        let (flags, data) = split_flags("rw,noatime,discard,commit=30");
        assert_eq!(flags, MountFlags::NOATIME);
        assert_eq!(data, "discard,commit=30");
        let (flags, data) = split_flags("ro");
        assert_eq!(flags, MountFlags::RDONLY);
        assert_eq!(data, "");
    }

    #[test]
    fn missing_etc_defaults_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = mount_etc_overlay(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("usr/share/wellcar/etc is missing: the image keeps the default /etc there (overlay lower layer)"),
            "{err}"
        );
    }

    #[test]
    fn mount_errors_name_source_and_target() {
        let dir = tempfile::tempdir().unwrap();
        let err = mount(
            "/dev/nonexistent",
            dir.path(),
            "nosuchfs",
            MountFlags::empty(),
            "",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "mounting /dev/nonexistent (nosuchfs) on {}",
                dir.path().display()
            )
        );
    }
}
