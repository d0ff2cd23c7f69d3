//! Butane variants and versions this crate speaks, the Ignition spec each one produces, and
//! which Butane-only sugar each one has (facts from Butane's `docs/specs.md` and
//! `docs/config-*.md`).
//!
//! | variant | version | Ignition |
//! |---|---|---|
//! | fcos | 1.0.0 | 3.0.0 |
//! | fcos | 1.1.0 | 3.1.0 |
//! | fcos | 1.2.0, 1.3.0 | 3.2.0 |
//! | fcos | 1.4.0 | 3.3.0 |
//! | fcos | 1.5.0 | 3.4.0 |
//! | fcos | 1.6.0 | 3.5.0 |
//! | flatcar | 1.0.0 | 3.3.0 |
//! | flatcar | 1.1.0 | 3.4.0 |

use std::fmt;

/// A Butane variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Fedora CoreOS.
    Fcos,
    /// Flatcar Container Linux.
    Flatcar,
}

/// A supported `variant` + `version` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flavor {
    /// The variant.
    pub variant: Variant,
    /// The minor of `1.minor.0`.
    pub minor: u8,
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.variant {
            Variant::Fcos => "fcos",
            Variant::Flatcar => "flatcar",
        };
        write!(f, "{name} 1.{}.0", self.minor)
    }
}

/// Butane-only fields, each present from some variant version on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sugar {
    /// `local` on resources (`contents`, `append`, `key_file`, config references, CAs).
    Local,
    /// `storage.trees`.
    Trees,
    /// `storage.filesystems[].with_mount_unit`.
    WithMountUnit,
    /// `systemd.units[].contents_local` and `dropins[].contents_local`.
    ContentsLocal,
    /// `passwd.users[].ssh_authorized_keys_local`.
    SshKeysLocal,
    /// `boot_device` (luks and mirror of the root disk).
    BootDevice,
    /// `boot_device.luks.device` and `boot_device.luks.cex`.
    BootDeviceLuksDeviceCex,
}

impl Flavor {
    /// Parses `variant` and `version`.
    pub fn new(variant: &str, version: &str) -> Result<Flavor, String> {
        let minor = match version {
            "1.0.0" => 0,
            "1.1.0" => 1,
            "1.2.0" => 2,
            "1.3.0" => 3,
            "1.4.0" => 4,
            "1.5.0" => 5,
            "1.6.0" => 6,
            _ => u8::MAX,
        };
        let flavor = match variant {
            "fcos" if minor <= 6 => Flavor {
                variant: Variant::Fcos,
                minor,
            },
            "flatcar" if minor <= 1 => Flavor {
                variant: Variant::Flatcar,
                minor,
            },
            "fcos" | "flatcar" => {
                return Err(format!(
                    "unsupported version {version:?} for variant {variant} (supported: fcos 1.0.0 to 1.6.0, flatcar 1.0.0 and 1.1.0)"
                ))
            }
            "" => return Err("error parsing variant; must be specified".to_string()),
            other => {
                return Err(format!(
                    "unsupported variant {other:?} (supported: fcos, flatcar)"
                ))
            }
        };
        Ok(flavor)
    }

    /// The Ignition spec version the output has.
    pub fn ignition_version(self) -> &'static str {
        match (self.variant, self.minor) {
            (Variant::Fcos, 0) => "3.0.0",
            (Variant::Fcos, 1) => "3.1.0",
            (Variant::Fcos, 2 | 3) => "3.2.0",
            (Variant::Fcos, 4) | (Variant::Flatcar, 0) => "3.3.0",
            (Variant::Fcos, 5) | (Variant::Flatcar, 1) => "3.4.0",
            _ => "3.5.0",
        }
    }

    /// Whether this flavor has `sugar`.
    pub fn has(self, sugar: Sugar) -> bool {
        let (fcos_since, flatcar_since) = match sugar {
            Sugar::Local | Sugar::Trees | Sugar::WithMountUnit => (1, Some(0)),
            Sugar::ContentsLocal | Sugar::SshKeysLocal => (5, Some(1)),
            Sugar::BootDevice => (3, None),
            Sugar::BootDeviceLuksDeviceCex => (6, None),
        };
        match self.variant {
            Variant::Fcos => self.minor >= fcos_since,
            Variant::Flatcar => flatcar_since.is_some_and(|since| self.minor >= since),
        }
    }

    /// Whether `storage.luks[].clevis` is allowed (Flatcar's variants refuse it).
    pub fn allows_clevis(self) -> bool {
        self.variant == Variant::Fcos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_version_maps_to_its_ignition_spec() {
        let cases = [
            ("fcos", "1.0.0", "3.0.0"),
            ("fcos", "1.1.0", "3.1.0"),
            ("fcos", "1.2.0", "3.2.0"),
            ("fcos", "1.3.0", "3.2.0"),
            ("fcos", "1.4.0", "3.3.0"),
            ("fcos", "1.5.0", "3.4.0"),
            ("fcos", "1.6.0", "3.5.0"),
            ("flatcar", "1.0.0", "3.3.0"),
            ("flatcar", "1.1.0", "3.4.0"),
        ];
        for (variant, version, ignition) in cases {
            let flavor = Flavor::new(variant, version).unwrap();
            assert_eq!(flavor.ignition_version(), ignition, "{variant} {version}");
        }
        assert!(Flavor::new("flatcar", "1.2.0").is_err());
        assert!(Flavor::new("fcos", "1.7.0").is_err());
        assert!(Flavor::new("", "1.0.0")
            .unwrap_err()
            .contains("must be specified"));
    }

    #[test]
    fn sugar_is_gated_by_version() {
        let fcos10 = Flavor::new("fcos", "1.0.0").unwrap();
        let flatcar10 = Flavor::new("flatcar", "1.0.0").unwrap();
        let flatcar11 = Flavor::new("flatcar", "1.1.0").unwrap();
        assert!(!fcos10.has(Sugar::Trees));
        assert!(flatcar10.has(Sugar::Trees));
        assert!(!flatcar10.has(Sugar::ContentsLocal));
        assert!(flatcar11.has(Sugar::ContentsLocal));
        assert!(!flatcar11.has(Sugar::BootDevice));
        assert!(Flavor::new("fcos", "1.3.0").unwrap().has(Sugar::BootDevice));
    }
}
