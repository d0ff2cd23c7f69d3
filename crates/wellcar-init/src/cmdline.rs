//! The kernel command line, as `/init` understands it.
//!
//! Contract: [`split`] tokenizes `/proc/cmdline` like the kernel does (whitespace separated,
//! double quotes group, quotes themselves removed). [`BootParams::parse`] reads Flatcar's
//! parameter names (`mount.usr`, `mount.usrflags`, `mount.usrfstype`, `verity.usr`,
//! `verity.usrhash`, `root`, `rootflags`, `rootfstype`, `init`) and Wellcar's own
//! (`wellcar.first_boot`, `wellcar.oem.id`, `wellcar.init.reboot_delay`,
//! `wellcar.init.disk_timeout`, `wellcar.init.module_workers`), accepting `flatcar.` and `coreos.` as aliases of `wellcar.`.
//! The last occurrence of a parameter wins, as with the kernel. Invalid values are errors that
//! name the parameter; unknown parameters are ignored (they belong to the kernel or systemd).

use std::time::Duration;

use uuid::Uuid;

/// Where a block device is to be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// `PARTUUID=<guid>`: GPT unique partition GUID.
    PartUuid(Uuid),
    /// `PARTLABEL=<name>`: GPT partition name.
    PartLabel(String),
    /// `LABEL=<name>`: filesystem label (ext4), else a GPT partition of that name.
    Label(String),
    /// `UUID=<uuid>`: filesystem UUID (ext4).
    FsUuid(Uuid),
    /// A device path such as `/dev/mapper/usr` or `/dev/vda9`.
    Path(String),
}

impl DeviceSpec {
    /// Parses `PARTUUID=`, `PARTLABEL=`, `LABEL=`, `UUID=` or a `/dev/...` path.
    pub fn parse(param: &'static str, value: &str) -> Result<Self, CmdlineError> {
        let invalid = |why: &str| CmdlineError::Invalid {
            param,
            value: value.to_string(),
            why: why.to_string(),
        };
        let uuid = |text: &str| Uuid::parse_str(text).map_err(|_| invalid("not a valid GUID"));
        if let Some(rest) = value.strip_prefix("PARTUUID=") {
            Ok(DeviceSpec::PartUuid(uuid(rest)?))
        } else if let Some(rest) = value.strip_prefix("PARTLABEL=") {
            Ok(DeviceSpec::PartLabel(rest.to_string()))
        } else if let Some(rest) = value.strip_prefix("LABEL=") {
            Ok(DeviceSpec::Label(rest.to_string()))
        } else if let Some(rest) = value.strip_prefix("UUID=") {
            Ok(DeviceSpec::FsUuid(uuid(rest)?))
        } else if value.starts_with("/dev/") {
            Ok(DeviceSpec::Path(value.to_string()))
        } else {
            Err(invalid(
                "expected PARTUUID=, PARTLABEL=, LABEL=, UUID= or a /dev path",
            ))
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::PartUuid(u) => write!(f, "PARTUUID={u}"),
            DeviceSpec::PartLabel(l) => write!(f, "PARTLABEL={l}"),
            DeviceSpec::Label(l) => write!(f, "LABEL={l}"),
            DeviceSpec::FsUuid(u) => write!(f, "UUID={u}"),
            DeviceSpec::Path(p) => f.write_str(p),
        }
    }
}

/// How `/usr` is to be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsrSource {
    /// Through dm-verity: partition `device`, root hash `root_hash`, mapped as `/dev/mapper/<name>`.
    Verity {
        /// The USR partition (data and hash area).
        device: DeviceSpec,
        /// The expected root hash.
        root_hash: wellcar_contract::RootHash,
        /// Name of the mapping (`usr` for `mount.usr=/dev/mapper/usr`).
        name: String,
    },
    /// Mounted directly (development images without verity).
    Plain(DeviceSpec),
    /// The live system (`wellcar.live`): the image in the initramfs
    /// ([`wellcar_contract::live`]), through dm-verity with `root_hash`, mapped as
    /// `/dev/mapper/<name>`; the root is a tmpfs.
    Live {
        /// The expected root hash (`verity.usrhash=`).
        root_hash: wellcar_contract::RootHash,
        /// Name of the mapping.
        name: String,
    },
}

/// What the first-boot flag on the command line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstBoot {
    /// `=detected`: GRUB saw the flag file on the ESP; remove it once provisioning succeeded.
    Detected,
    /// Any other true value (`1`, `yes`, `true`): provision, there is no flag file to remove.
    Forced,
}

/// Everything `/init` takes from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// `/usr` source.
    pub usr: UsrSource,
    /// Filesystem type of `/usr` (`mount.usrfstype`, default `erofs`).
    pub usr_fstype: String,
    /// `mount.usrflags` (default `ro`); `/usr` is always mounted read-only.
    pub usr_flags: String,
    /// `root=` (default `LABEL=ROOT`).
    pub root: DeviceSpec,
    /// `rootfstype=` (default `ext4`).
    pub root_fstype: String,
    /// `rootflags=` (default `rw`).
    pub root_flags: String,
    /// First-boot provisioning requested.
    pub first_boot: Option<FirstBoot>,
    /// `wellcar.oem.id` (Ignition platform); `metal` when absent, as Flatcar.
    pub oem_id: String,
    /// Delay before rebooting after a failure (`wellcar.init.reboot_delay`, default 60 s).
    pub reboot_delay: Duration,
    /// Whether `wellcar.init.reboot_delay` was given: a failed first-boot provisioning then
    /// reboots after the delay (unattended labs) instead of stopping in the emergency shell.
    pub reboot_delay_requested: bool,
    /// How long to wait for the boot disk (`wellcar.init.disk_timeout`, default 60 s).
    pub disk_timeout: Duration,
    /// Modules loaded at the same time (`wellcar.init.module_workers`, default 1).
    pub module_workers: usize,
    /// Program to hand over to (`init=`), default `/usr/lib/systemd/systemd`.
    pub init: Option<String>,
}

/// A parameter had a value `/init` cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// The value does not parse.
    #[error("kernel parameter {param}={value:?}: {why}")]
    Invalid {
        /// Parameter name.
        param: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// A parameter needed with another is missing.
    #[error("kernel parameter {param} is required {when}")]
    Missing {
        /// The missing parameter.
        param: &'static str,
        /// In which situation.
        when: &'static str,
    },
}

/// Default delay before rebooting after a failure (Flatcar's 60 s).
pub const DEFAULT_REBOOT_DELAY: Duration = Duration::from_secs(60);
/// Default time to wait for the boot disk to appear.
pub const DEFAULT_DISK_TIMEOUT: Duration = Duration::from_secs(60);
/// Default number of modules loading at the same time (`wellcar.init.module_workers`).
pub const DEFAULT_MODULE_WORKERS: usize = 1;

/// Splits a command line into `key` / `key=value` words, honouring double quotes.
pub fn split(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut has_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_word {
                    words.push(std::mem::take(&mut current));
                    has_word = false;
                }
            }
            c => {
                current.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        words.push(current);
    }
    words
}

/// Maps `flatcar.x` / `coreos.x` to `wellcar.x`; other names unchanged.
fn canonical_key(key: &str) -> String {
    for alias in ["flatcar.", "coreos."] {
        if let Some(rest) = key.strip_prefix(alias) {
            return format!("wellcar.{rest}");
        }
    }
    key.to_string()
}

/// `verity.usrhash=`'s value.
fn parse_usr_hash(text: &str) -> Result<wellcar_contract::RootHash, CmdlineError> {
    wellcar_verity::parse_root_hash(text).map_err(|_| CmdlineError::Invalid {
        param: "verity.usrhash",
        value: text.to_string(),
        why: "expected 64 hexadecimal characters".into(),
    })
}

fn seconds(param: &'static str, value: &str) -> Result<Duration, CmdlineError> {
    value
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| CmdlineError::Invalid {
            param,
            value: value.to_string(),
            why: "expected whole seconds".into(),
        })
}

impl BootParams {
    /// Parses the command line text (the contents of `/proc/cmdline`).
    pub fn parse(cmdline: &str) -> Result<Self, CmdlineError> {
        let mut values: Vec<(String, Option<String>)> = Vec::new();
        for word in split(cmdline) {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (canonical_key(k), Some(v.to_string())),
                None => (canonical_key(&word), None),
            };
            values.push((key, value));
        }
        let get = |key: &str| -> Option<Option<&str>> {
            values
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_deref())
        };
        let value = |key: &str| get(key).flatten();

        let reboot_delay = match value("wellcar.init.reboot_delay") {
            Some(v) => seconds("wellcar.init.reboot_delay", v)?,
            None => DEFAULT_REBOOT_DELAY,
        };
        let module_workers = match value("wellcar.init.module_workers") {
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| CmdlineError::Invalid {
                    param: "wellcar.init.module_workers",
                    value: v.to_string(),
                    why: "expected a number from 1 to 64".into(),
                })?,
            None => DEFAULT_MODULE_WORKERS,
        };
        let disk_timeout = match value("wellcar.init.disk_timeout") {
            Some(v) => seconds("wellcar.init.disk_timeout", v)?,
            None => DEFAULT_DISK_TIMEOUT,
        };
        let first_boot = match get("wellcar.first_boot") {
            None => None,
            Some(None) => Some(FirstBoot::Forced),
            Some(Some("detected")) => Some(FirstBoot::Detected),
            Some(Some("1" | "yes" | "true" | "on")) => Some(FirstBoot::Forced),
            Some(Some("0" | "no" | "false" | "off")) => None,
            Some(Some(other)) => {
                return Err(CmdlineError::Invalid {
                    param: "wellcar.first_boot",
                    value: other.to_string(),
                    why: "expected detected, 1 or 0".into(),
                })
            }
        };

        let mount_usr = value("mount.usr").or(value("usr"));
        let verity_usr = value("verity.usr");
        let live = get(wellcar_contract::live::LIVE_PARAM).is_some();
        let usr = match (mount_usr, verity_usr) {
            (None, None) if live => {
                let hash_text = value("verity.usrhash").ok_or(CmdlineError::Missing {
                    param: "verity.usrhash",
                    when: "for the live system (wellcar.live)",
                })?;
                UsrSource::Live {
                    root_hash: parse_usr_hash(hash_text)?,
                    name: "usr".into(),
                }
            }
            (mount, Some(verity)) => {
                let device = DeviceSpec::parse("verity.usr", verity)?;
                let hash_text = value("verity.usrhash").ok_or(CmdlineError::Missing {
                    param: "verity.usrhash",
                    when: "when verity.usr is given",
                })?;
                let root_hash = parse_usr_hash(hash_text)?;
                let mount = mount.unwrap_or("/dev/mapper/usr");
                let name = mount
                    .strip_prefix("/dev/mapper/")
                    .filter(|n| !n.is_empty() && !n.contains('/'))
                    .ok_or_else(|| CmdlineError::Invalid {
                        param: "mount.usr",
                        value: mount.to_string(),
                        why: "with verity.usr it must be /dev/mapper/<name>".into(),
                    })?;
                UsrSource::Verity {
                    device,
                    root_hash,
                    name: name.to_string(),
                }
            }
            (Some(mount), None) => {
                if value("verity.usrhash").is_some() && mount.starts_with("/dev/mapper/") {
                    return Err(CmdlineError::Missing {
                        param: "verity.usr",
                        when: "when mount.usr is a /dev/mapper device",
                    });
                }
                UsrSource::Plain(DeviceSpec::parse("mount.usr", mount)?)
            }
            (None, None) => {
                return Err(CmdlineError::Missing {
                    param: "mount.usr",
                    when: "to find /usr",
                })
            }
        };
        let usr_flags = value("mount.usrflags").unwrap_or("ro").to_string();
        let usr_fstype = value("mount.usrfstype").unwrap_or("erofs").to_string();
        let root = match value("root") {
            Some(v) => DeviceSpec::parse("root", v)?,
            None => DeviceSpec::Label("ROOT".into()),
        };
        Ok(BootParams {
            usr,
            usr_fstype,
            usr_flags,
            root,
            root_fstype: value("rootfstype").unwrap_or("ext4").to_string(),
            root_flags: value("rootflags").unwrap_or("rw").to_string(),
            first_boot,
            oem_id: value("wellcar.oem.id").unwrap_or("metal").to_string(),
            reboot_delay,
            reboot_delay_requested: value("wellcar.init.reboot_delay").is_some(),
            disk_timeout,
            module_workers,
            init: value("init").map(str::to_string),
        })
    }

    /// Reboot delay to use when even the command line could not be parsed: the parameter
    /// alone, else the default.
    pub fn reboot_delay_of(cmdline: &str) -> Duration {
        split(cmdline)
            .iter()
            .rev()
            .filter_map(|w| w.split_once('='))
            .find(|(k, _)| canonical_key(k) == "wellcar.init.reboot_delay")
            .and_then(|(_, v)| v.parse().ok())
            .map_or(DEFAULT_REBOOT_DELAY, Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn grub_line(extra: &str) -> String {
        format!(
            "BOOT_IMAGE=/wellcar/vmlinuz-a mount.usr=/dev/mapper/usr \
             verity.usr=PARTUUID=7130c94a-213a-4e5a-8e26-6cce9662f132 verity.usrhash={HASH} \
             mount.usrflags=ro root=LABEL=ROOT rootflags=rw console=ttyS0,115200n8 \
             wellcar.oem.id=qemu wellcar.autologin {extra}"
        )
    }

    #[test]
    fn the_grub_line_parses() {
        let p = BootParams::parse(&grub_line("")).unwrap();
        let UsrSource::Verity {
            device,
            root_hash,
            name,
        } = &p.usr
        else {
            panic!("expected verity: {:?}", p.usr)
        };
        assert_eq!(
            device,
            &DeviceSpec::PartUuid(wellcar_disk::layout::USR_A_GUID)
        );
        assert_eq!(root_hash.as_bytes()[0], 0x01);
        assert_eq!(root_hash.as_bytes()[31], 0xef);
        assert_eq!(name, "usr");
        assert_eq!(p.root, DeviceSpec::Label("ROOT".into()));
        assert_eq!(p.root_flags, "rw");
        assert_eq!(p.usr_fstype, "erofs");
        assert_eq!(p.first_boot, None);
        assert_eq!(p.oem_id, "qemu");
        assert_eq!(p.reboot_delay, Duration::from_secs(60));
        assert_eq!(p.init, None);
        assert_eq!(p.module_workers, 1);
        let p = BootParams::parse(&grub_line("wellcar.init.module_workers=3")).unwrap();
        assert_eq!(p.module_workers, 3);
        assert!(BootParams::parse(&grub_line("wellcar.init.module_workers=0")).is_err());
    }

    #[test]
    fn first_boot_and_aliases() {
        let p = BootParams::parse(&grub_line(
            "flatcar.first_boot=detected coreos.oem.id=ec2 flatcar.init.reboot_delay=5",
        ))
        .unwrap();
        assert_eq!(p.first_boot, Some(FirstBoot::Detected));
        assert_eq!(p.oem_id, "ec2");
        assert_eq!(p.reboot_delay, Duration::from_secs(5));
        let p = BootParams::parse(&grub_line("wellcar.first_boot=1")).unwrap();
        assert_eq!(p.first_boot, Some(FirstBoot::Forced));
        let p = BootParams::parse(&grub_line("wellcar.first_boot")).unwrap();
        assert_eq!(p.first_boot, Some(FirstBoot::Forced));
        // Last one wins, as in the kernel.
        let p = BootParams::parse(&grub_line("wellcar.first_boot=1 wellcar.first_boot=0")).unwrap();
        assert_eq!(p.first_boot, None);
    }

    #[test]
    fn quotes_group_words() {
        assert_eq!(split(" a=\"b c\" d  \"e=f g\"\n"), ["a=b c", "d", "e=f g"]);
        assert_eq!(split(""), Vec::<String>::new());
    }

    #[test]
    fn the_live_line_takes_usr_from_the_initramfs() {
        let p = BootParams::parse(&format!(
            "BOOT_IMAGE=/wellcar/vmlinuz wellcar.live verity.usrhash={HASH} console=ttyS0"
        ))
        .unwrap();
        let UsrSource::Live { root_hash, name } = &p.usr else {
            panic!("expected live: {:?}", p.usr)
        };
        assert_eq!(root_hash.as_bytes()[0], 0x01);
        assert_eq!(name, "usr");
        let err = BootParams::parse("wellcar.live console=ttyS0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel parameter verity.usrhash is required for the live system (wellcar.live)"
        );
        // A disk's own verity.usr wins over the flag.
        let p = BootParams::parse(&grub_line("wellcar.live")).unwrap();
        assert!(matches!(p.usr, UsrSource::Verity { .. }), "{:?}", p.usr);
    }

    #[test]
    fn plain_usr_without_verity() {
        let p = BootParams::parse("mount.usr=PARTLABEL=USR-B root=/dev/vda9").unwrap();
        assert_eq!(
            p.usr,
            UsrSource::Plain(DeviceSpec::PartLabel("USR-B".into()))
        );
        assert_eq!(p.root, DeviceSpec::Path("/dev/vda9".into()));
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let err = BootParams::parse(&grub_line("").replace(HASH, "abc")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel parameter verity.usrhash=\"abc\": expected 64 hexadecimal characters"
        );
        let err =
            BootParams::parse("mount.usr=/dev/mapper/usr verity.usr=PARTUUID=xyz").unwrap_err();
        assert!(
            err.to_string().starts_with("kernel parameter verity.usr="),
            "{err}"
        );
        let err = BootParams::parse("root=LABEL=ROOT").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel parameter mount.usr is required to find /usr"
        );
        let err = BootParams::parse(&grub_line("wellcar.init.reboot_delay=soon")).unwrap_err();
        assert!(err.to_string().contains("expected whole seconds"), "{err}");
        let err =
            BootParams::parse("mount.usr=/dev/mapper/usr verity.usr=PARTLABEL=USR-A").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel parameter verity.usrhash is required when verity.usr is given"
        );
    }

    #[test]
    fn reboot_delay_survives_a_broken_line() {
        assert_eq!(
            BootParams::reboot_delay_of("verity.usrhash=zz coreos.init.reboot_delay=7"),
            Duration::from_secs(7)
        );
        assert_eq!(BootParams::reboot_delay_of("quiet"), DEFAULT_REBOOT_DELAY);
    }
}
