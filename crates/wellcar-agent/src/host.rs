//! Where the agent reads and writes on a host, and the facts it reads there.
//!
//! Every path is a field of [`HostPaths`], so tests point the agent at a temp directory, a
//! sparse disk image and a fake ESP. [`HostPaths::system`] is the real host;
//! [`HostPaths::under_root`] is the same layout below a prefix.

use std::path::{Path, PathBuf};

use wellcar_contract::{esp, RootHash};
use wellcar_disk::Slot;

/// Failure reading a host fact.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A required value is missing or malformed.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// All paths and commands the agent uses.
#[derive(Debug, Clone)]
pub struct HostPaths {
    /// State directory (`/var/lib/wellcar/update-agent`).
    pub state_dir: PathBuf,
    /// `update.conf` files, lowest precedence first.
    pub config_files: Vec<PathBuf>,
    /// `os-release` (VERSION_ID, WELLCAR_BOARD).
    pub os_release: PathBuf,
    /// OEM release files, first existing wins (ID, VERSION_ID).
    pub oem_release: Vec<PathBuf>,
    /// `/etc/machine-id`.
    pub machine_id: PathBuf,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: PathBuf,
    /// `/proc/cmdline` (the booted slot is its `verity.usr=PARTUUID=`).
    pub cmdline: PathBuf,
    /// The mounted ESP (layout: `wellcar_contract::esp`).
    pub esp: PathBuf,
    /// The disk holding USR-A and USR-B (an image file in tests); `None`: the disk that holds
    /// `/dev/disk/by-partlabel/USR-A`, found through sysfs.
    pub disk: Option<PathBuf>,
    /// Mirror the boot state into the GPT attribute bits of this disk (cgpt-style tools).
    pub mirror_gpt: Option<PathBuf>,
    /// Directory of trusted payload public keys.
    pub trusted_keys: PathBuf,
    /// `/run/reboot-required`, for kured-style tools.
    pub reboot_required: PathBuf,
    /// The reboot command.
    pub reboot_command: Vec<String>,
    /// The command that broadcasts a message to logged-in users (message appended).
    pub wall_command: Vec<String>,
    /// The command listing logged-in users (any output = someone is logged in).
    pub who_command: Vec<String>,
}

impl HostPaths {
    /// The real host.
    pub fn system() -> Self {
        Self {
            state_dir: "/var/lib/wellcar/update-agent".into(),
            config_files: vec![
                "/usr/share/flatcar/release".into(),
                "/usr/share/wellcar/update.conf".into(),
                "/usr/share/flatcar/update.conf".into(),
                "/etc/flatcar/update.conf".into(),
                "/etc/wellcar/update.conf".into(),
            ],
            os_release: "/usr/lib/os-release".into(),
            oem_release: vec![
                "/etc/oem-release".into(),
                "/usr/share/oem/oem-release".into(),
                "/oem/oem-release".into(),
            ],
            machine_id: "/etc/machine-id".into(),
            boot_id: "/proc/sys/kernel/random/boot_id".into(),
            cmdline: "/proc/cmdline".into(),
            esp: esp::MOUNT_POINT.into(),
            disk: None,
            mirror_gpt: None,
            trusted_keys: wellcar_payload::SYSTEM_TRUSTED_KEYS_DIR.into(),
            reboot_required: "/run/reboot-required".into(),
            reboot_command: vec!["systemctl".into(), "reboot".into()],
            wall_command: vec!["wall".into()],
            who_command: vec!["who".into()],
        }
    }

    /// The system layout below `root` (commands unchanged, disk at `<root>/disk.img`).
    pub fn under_root(root: &Path) -> Self {
        let sys = Self::system();
        let re = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        Self {
            state_dir: re(&sys.state_dir),
            config_files: sys.config_files.iter().map(|p| re(p)).collect(),
            os_release: re(&sys.os_release),
            oem_release: sys.oem_release.iter().map(|p| re(p)).collect(),
            machine_id: re(&sys.machine_id),
            boot_id: re(&sys.boot_id),
            cmdline: re(&sys.cmdline),
            esp: re(&sys.esp),
            disk: Some(root.join("disk.img")),
            trusted_keys: re(&sys.trusted_keys),
            reboot_required: re(&sys.reboot_required),
            ..sys
        }
    }

    /// The disk device or image holding the USR partitions.
    pub fn resolve_disk(&self) -> Result<PathBuf, HostError> {
        if let Some(disk) = &self.disk {
            return Ok(disk.clone());
        }
        let link = Path::new("/dev/disk/by-partlabel/USR-A");
        let invalid = |what: String| HostError::Invalid {
            path: link.to_owned(),
            what,
        };
        let part = std::fs::canonicalize(link).map_err(|source| HostError::Read {
            path: link.to_owned(),
            source,
        })?;
        let name = part
            .file_name()
            .ok_or_else(|| invalid("resolves to no device name".into()))?;
        let sys = Path::new("/sys/class/block").join(name);
        let sys = std::fs::canonicalize(&sys).map_err(|source| HostError::Read {
            path: sys.clone(),
            source,
        })?;
        let disk = sys
            .parent()
            .and_then(|p| p.file_name())
            .ok_or_else(|| invalid(format!("{} has no parent disk", sys.display())))?;
        Ok(Path::new("/dev").join(disk))
    }

    /// The kernel and initramfs paths of `slot` on the ESP ([`esp::kernel`],
    /// [`esp::initramfs`]).
    pub fn boot_files(&self, slot: Slot) -> (PathBuf, PathBuf) {
        (
            self.esp.join(esp::kernel(slot.letter())),
            self.esp.join(esp::initramfs(slot.letter())),
        )
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`, braces tolerated).
pub fn read_boot_id(paths: &HostPaths) -> Result<String, HostError> {
    Ok(read(&paths.boot_id)?
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .to_owned())
}

fn read(path: &Path) -> Result<String, HostError> {
    std::fs::read_to_string(path).map_err(|source| HostError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses an os-release style file into `(KEY, value)` pairs, quotes removed.
pub fn parse_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

fn release_value(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// Facts about the running system, read fresh for each check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// Running version (`VERSION_ID`).
    pub version: String,
    /// Board (`WELLCAR_BOARD`, default `amd64-usr`).
    pub board: String,
    /// `/etc/machine-id`, trimmed.
    pub machine_id: String,
    /// Boot id, without braces.
    pub boot_id: String,
    /// OEM id and version (empty when no OEM release file exists).
    pub oem: String,
    /// OEM version.
    pub oem_version: String,
    /// The slot /usr was booted from.
    pub booted_slot: Slot,
    /// The dm-verity root hash /usr was booted with (`verity.usrhash=`), when given.
    pub booted_root_hash: Option<RootHash>,
}

/// The booted /usr's dm-verity root hash from a kernel command line (`verity.usrhash=`).
pub fn booted_root_hash_from_cmdline(cmdline: &str) -> Option<RootHash> {
    cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix("verity.usrhash="))
        .and_then(|hash| hash.to_ascii_lowercase().parse().ok())
}

/// The booted slot from a kernel command line: `verity.usr=`/`usr=`/`mount.usr=` naming
/// `PARTUUID=<slot guid>` or `PARTLABEL=USR-A|USR-B`.
pub fn booted_slot_from_cmdline(cmdline: &str) -> Option<Slot> {
    for word in cmdline.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        if !matches!(key, "verity.usr" | "usr" | "mount.usr") {
            continue;
        }
        if let Some(guid) = value.strip_prefix("PARTUUID=") {
            if let Some(slot) = Slot::ALL
                .into_iter()
                .find(|s| s.unique_guid().to_string().eq_ignore_ascii_case(guid))
            {
                return Some(slot);
            }
        }
        if let Some(label) = value.strip_prefix("PARTLABEL=") {
            if let Some(slot) = Slot::parse(label) {
                return Some(slot);
            }
        }
    }
    None
}

impl HostFacts {
    /// Reads the facts from `paths`.
    pub fn read(paths: &HostPaths) -> Result<Self, HostError> {
        let os = parse_release(&read(&paths.os_release)?);
        let version = release_value(&os, "VERSION_ID")
            .or_else(|| release_value(&os, "VERSION"))
            .filter(|v| !v.is_empty())
            .ok_or_else(|| HostError::Invalid {
                path: paths.os_release.clone(),
                what: "no VERSION_ID".into(),
            })?;
        let board = release_value(&os, "WELLCAR_BOARD")
            .or_else(|| release_value(&os, "FLATCAR_BOARD"))
            .unwrap_or_else(|| "amd64-usr".into());
        let machine_id = read(&paths.machine_id)?.trim().to_owned();
        if machine_id.is_empty() {
            return Err(HostError::Invalid {
                path: paths.machine_id.clone(),
                what: "machine id is empty".into(),
            });
        }
        let boot_id = read_boot_id(paths)?;
        let (oem, oem_version) = paths
            .oem_release
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|text| {
                let pairs = parse_release(&text);
                (
                    release_value(&pairs, "ID").unwrap_or_default(),
                    release_value(&pairs, "VERSION_ID").unwrap_or_default(),
                )
            })
            .unwrap_or_default();
        let cmdline = read(&paths.cmdline)?;
        let booted_slot = booted_slot_from_cmdline(&cmdline).ok_or_else(|| HostError::Invalid {
            path: paths.cmdline.clone(),
            what: "no verity.usr=PARTUUID=<USR-A or USR-B guid> (cannot tell the booted slot)"
                .into(),
        })?;
        Ok(Self {
            version,
            board,
            machine_id,
            boot_id,
            oem,
            oem_version,
            booted_slot,
            booted_root_hash: booted_root_hash_from_cmdline(&cmdline),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booted_slot_from_wellcar_and_flatcar_cmdlines() {
        let a = format!(
            "mount.usr=/dev/mapper/usr verity.usr=PARTUUID={} root=LABEL=ROOT",
            Slot::A.unique_guid()
        );
        assert_eq!(booted_slot_from_cmdline(&a), Some(Slot::A));
        let b = "verity.usr=PARTUUID=E03DD35C-7C2D-4A47-B3FE-27F15780A57C console=ttyS0";
        assert_eq!(booted_slot_from_cmdline(b), Some(Slot::B));
        assert_eq!(
            booted_slot_from_cmdline("usr=PARTLABEL=USR-B"),
            Some(Slot::B)
        );
        assert_eq!(booted_slot_from_cmdline("root=/dev/sda9 quiet"), None);
    }

    #[test]
    fn booted_root_hash_is_read_from_verity_usrhash() {
        let hash = "AB".repeat(32);
        let cmdline = format!("verity.usr=PARTLABEL=USR-A verity.usrhash={hash} quiet");
        assert_eq!(
            booted_root_hash_from_cmdline(&cmdline).map(|h| h.to_string()),
            Some(hash.to_ascii_lowercase())
        );
        assert_eq!(booted_root_hash_from_cmdline("verity.usrhash=xyz"), None);
        assert_eq!(booted_root_hash_from_cmdline("usr=PARTLABEL=USR-A"), None);
    }

    #[test]
    fn reads_facts_and_names_missing_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::under_root(dir.path());
        let put = |p: &Path, text: &str| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        put(
            &paths.os_release,
            "ID=wellcar\nVERSION_ID=\"1.2.0\"\nWELLCAR_BOARD=\"arm64-usr\"\n",
        );
        put(&paths.machine_id, "0f6a2d3b9c8e4f1aa7b6c5d4e3f2a1b0\n");
        put(&paths.boot_id, "5e6b2a4e-0c8d-4d7a-9a62-1f7c1c1f0b3e\n");
        let err = HostFacts::read(&paths).unwrap_err().to_string();
        assert!(err.contains("cmdline"), "{err}");
        put(&paths.cmdline, "usr=PARTLABEL=USR-A\n");
        put(&paths.oem_release[1], "ID=qemu\nVERSION_ID=1\n");
        let facts = HostFacts::read(&paths).unwrap();
        assert_eq!(facts.version, "1.2.0");
        assert_eq!(facts.board, "arm64-usr");
        assert_eq!(facts.oem, "qemu");
        assert_eq!(facts.booted_slot, Slot::A);
        assert_eq!(facts.boot_id, "5e6b2a4e-0c8d-4d7a-9a62-1f7c1c1f0b3e");
    }
}
