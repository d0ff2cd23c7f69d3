//! The install target: a block device or a plain file, and the checks made before anything is
//! written to it.
//!
//! Refused, each with its reason: a device that is mounted or whose partition is mounted
//! (from `/proc/self/mountinfo`), that holds the running system's `/` or `/usr`, or that a
//! device-mapper or md device is built on (`/sys/class/block/*/holders`); a file that backs a
//! loop device; any target smaller than the image. A missing file is created with the image's
//! size; an existing file is emptied (truncated and re-extended to its size), so it is sparse
//! and reads as zeros where the image has zeros.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use crate::error::InstallError;

/// An opened target.
#[derive(Debug)]
pub struct Target {
    /// The device or file.
    pub path: PathBuf,
    /// The open handle (read + write).
    pub file: File,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it is a plain file (then it reads as zeros where nothing was written).
    pub is_file: bool,
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        action,
        path: path.into(),
        source,
    }
}

/// Checks and opens `path` for an image of `needed` bytes.
pub fn open_target(path: &Path, needed: u64) -> Result<Target, InstallError> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(io("inspecting", path)(source)),
    };
    match meta {
        None => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(io("creating", path))?;
            file.set_len(needed).map_err(io("sizing", path))?;
            Ok(Target {
                path: path.into(),
                file,
                size: needed,
                is_file: true,
            })
        }
        Some(meta) if meta.is_file() => {
            if let Some(reason) = loop_backing(path)? {
                return Err(InstallError::TargetInUse {
                    path: path.into(),
                    reason,
                });
            }
            let size = meta.len();
            if size < needed {
                return Err(InstallError::TargetTooSmall {
                    path: path.into(),
                    size,
                    needed,
                });
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io("opening", path))?;
            // Emptied: no stale partition table, and zeros need no writing.
            file.set_len(0).map_err(io("emptying", path))?;
            file.set_len(size).map_err(io("sizing", path))?;
            Ok(Target {
                path: path.into(),
                file,
                size,
                is_file: true,
            })
        }
        Some(meta) if meta.file_type().is_block_device() => {
            if let Some(reason) = device_in_use(meta.rdev())? {
                return Err(InstallError::TargetInUse {
                    path: path.into(),
                    reason,
                });
            }
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io("opening", path))?;
            let size = std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))
                .map_err(io("sizing", path))?;
            if size < needed {
                return Err(InstallError::TargetTooSmall {
                    path: path.into(),
                    size,
                    needed,
                });
            }
            Ok(Target {
                path: path.into(),
                file,
                size,
                is_file: false,
            })
        }
        Some(_) => Err(InstallError::TargetKind { path: path.into() }),
    }
}

fn major_minor(rdev: u64) -> (u64, u64) {
    // Linux's encoding (glibc's gnu_dev_major/minor).
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major, minor)
}

/// The sysfs directory of a block device, canonical (`/sys/devices/.../sda`).
fn sysfs_dir(major: u64, minor: u64) -> Option<PathBuf> {
    std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()
}

/// Why the block device `rdev` is in use, if it is.
pub fn device_in_use(rdev: u64) -> Result<Option<String>, InstallError> {
    let (major, minor) = major_minor(rdev);
    let Some(device) = sysfs_dir(major, minor) else {
        return Ok(None);
    };
    let mountinfo_path = Path::new("/proc/self/mountinfo");
    let mountinfo =
        std::fs::read_to_string(mountinfo_path).map_err(io("reading", mountinfo_path))?;
    let parts = mounts_on(&mountinfo, |dev| {
        sysfs_dir(dev.0, dev.1).is_some_and(|d| d == device || d.parent() == Some(&device))
    });
    if let Some((mount_point, dev)) = parts.first() {
        let what = if mount_point == "/" || mount_point == "/usr" {
            format!("it holds the running system ({dev} is mounted at {mount_point})")
        } else {
            format!("{dev} is mounted at {mount_point}")
        };
        return Ok(Some(what));
    }
    // Something built on it or on one of its partitions (dm-verity /usr, LVM, md).
    let mut dirs = vec![device.clone()];
    if let Ok(entries) = std::fs::read_dir(&device) {
        for entry in entries.flatten() {
            if entry.path().join("partition").exists() {
                dirs.push(entry.path());
            }
        }
    }
    for dir in dirs {
        if let Ok(holders) = std::fs::read_dir(dir.join("holders")) {
            if let Some(holder) = holders.flatten().next() {
                return Ok(Some(format!(
                    "{} is held by {}",
                    dir.file_name().unwrap_or_default().to_string_lossy(),
                    holder.file_name().to_string_lossy()
                )));
            }
        }
    }
    Ok(None)
}

/// `(mount point, device major:minor)` of every mountinfo line whose device `matches`.
fn mounts_on(mountinfo: &str, matches: impl Fn((u64, u64)) -> bool) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(dev), Some(mount_point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
            continue;
        };
        if major != 0 && matches((major, minor)) {
            found.push((unescape_octal(mount_point), (*dev).to_string()));
        }
    }
    // The running system first.
    found.sort_by_key(|(mp, _)| !(mp == "/" || mp == "/usr"));
    found
}

fn unescape_octal(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The loop device backed by the file `path`, if any.
fn loop_backing(path: &Path) -> Result<Option<String>, InstallError> {
    let Ok(canonical) = std::fs::canonicalize(path) else {
        return Ok(None);
    };
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Ok(None);
    };
    for entry in entries.flatten() {
        let backing = entry.path().join("loop/backing_file");
        if let Ok(text) = std::fs::read_to_string(&backing) {
            if Path::new(text.trim_end()) == canonical {
                return Ok(Some(format!(
                    "it backs /dev/{}",
                    entry.file_name().to_string_lossy()
                )));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_name_the_running_system_first() {
        let mountinfo = "\
22 1 8:3 / /usr ro,relatime - ext4 /dev/sda3 ro
23 1 8:1 / /boot\\040x rw - vfat /dev/sda1 rw
24 1 0:5 / /proc rw - proc proc rw
25 1 9:1 / /data rw - ext4 /dev/md1 rw
";
        let on_sda = mounts_on(mountinfo, |(major, _)| major == 8);
        assert_eq!(
            on_sda,
            [
                ("/usr".to_string(), "8:3".to_string()),
                ("/boot x".to_string(), "8:1".to_string())
            ]
        );
        assert!(mounts_on(mountinfo, |(major, _)| major == 7).is_empty());
        assert_eq!(major_minor(0x803), (8, 3));
        assert_eq!(major_minor((259 << 8) | 1), (259, 1));
    }

    #[test]
    fn a_small_file_is_refused_and_a_missing_one_created() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.img");
        std::fs::write(&small, vec![1u8; 4096]).unwrap();
        let err = open_target(&small, 8192).unwrap_err();
        assert!(
            err.to_string()
                .contains("small.img is too small: 4096 bytes, the image needs 8192"),
            "{err}"
        );
        assert_eq!(std::fs::read(&small).unwrap(), vec![1u8; 4096], "untouched");
        let new = open_target(&dir.path().join("new.img"), 8192).unwrap();
        assert_eq!((new.size, new.is_file), (8192, true));
        let dev = dir.path();
        let err = open_target(dev, 1).unwrap_err();
        assert!(matches!(err, InstallError::TargetKind { .. }), "{err}");
    }

    /// Runs a host tool (as root), failing the test with its stderr.
    fn run(program: &str, args: &[&str]) -> String {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} (util-linux, e2fsprogs) is required: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A loop device (root): its backing file and, once mounted, the device are refused by name.
    #[test]
    fn a_loop_backing_file_and_a_mounted_device_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing.img");
        std::fs::File::create_new(&backing)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let device = run("losetup", &["-f", "--show", backing.to_str().unwrap()]);
        struct Detach(String);
        impl Drop for Detach {
            fn drop(&mut self) {
                let _ = std::process::Command::new("losetup")
                    .args(["-d", &self.0])
                    .status();
            }
        }
        let _detach = Detach(device.clone());
        let err = open_target(&backing, 4096).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("is in use: it backs {device}")),
            "{err}"
        );

        run("mke2fs", &["-q", "-t", "ext4", &device]);
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point).unwrap();
        run("mount", &[&device, mount_point.to_str().unwrap()]);
        let result = open_target(Path::new(&device), 4096);
        run("umount", &[mount_point.to_str().unwrap()]);
        let err = result.unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("is mounted at {}", mount_point.display())),
            "{err}"
        );
        // Unmounted, the same device is accepted.
        let target = open_target(Path::new(&device), 4096).unwrap();
        assert_eq!((target.size, target.is_file), (16 << 20, false));
    }
}
