//! The OS definition (`os/wellcar.toml` plus the `os/files/` tree): what goes into an image.
//!
//! The definition is data only; nothing here touches the host. Unknown keys are rejected so a
//! typo does not silently build a different OS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wellcar_contract::{OsVersion, VersionError};

use crate::error::{BuildError, Result};

/// A parsed OS definition.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OsDefinition {
    /// Identity and version.
    pub os: OsIdentity,
    /// Where the packages come from and which.
    pub debian: DebianSource,
    /// The default user.
    pub user: DefaultUser,
    /// `[groups]`: groups with a fixed gid (`docker = 233`, Flatcar's baselayout numbers).
    #[serde(default)]
    pub groups: BTreeMap<String, u32>,
    /// Units turned on in the image.
    pub systemd: SystemdUnits,
}

/// `[os]`: identity written to `/usr/lib/os-release`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OsIdentity {
    /// NAME.
    pub name: String,
    /// ID.
    pub id: String,
    /// VERSION / VERSION_ID.
    pub version: String,
    /// Board (Flatcar's `amd64-usr`).
    pub board: String,
    /// HOME_URL.
    pub home_url: String,
}

/// `[debian]`: the package set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DebianSource {
    /// Debian suite (`bookworm`).
    pub suite: String,
    /// A deb822 `.sources` file naming the mirrors.
    pub sources: PathBuf,
    /// Packages installed on top of the Essential set.
    pub packages: Vec<String>,
    /// dpkg `path-exclude` globs.
    #[serde(default)]
    pub path_exclude: Vec<String>,
}

/// `[user]`: the default login user.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultUser {
    /// Login name.
    pub name: String,
    /// uid and gid of its primary group.
    pub uid: u32,
    /// GECOS.
    pub gecos: String,
    /// Supplementary groups.
    pub groups: Vec<String>,
}

/// `[systemd]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdUnits {
    /// Units enabled (and preset on) in the image.
    pub enable: Vec<String>,
    /// Units disabled (and preset off) in the image, e.g. ones a Debian package enables that a
    /// container host does not need. A name in both lists is an error.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Units masked in the image (linked to `/dev/null` in its `/etc`): static units Debian
    /// starts on every boot that cannot be disabled, and what they pull in.
    #[serde(default)]
    pub mask: Vec<String>,
    /// systemd generators (file names in `/usr/lib/systemd/system-generators`) that do not run
    /// in the image, masked by a `/dev/null` link of the same name in
    /// `/etc/systemd/system-generators`: each one is a process systemd waits for before it
    /// starts any unit.
    #[serde(default)]
    pub skip_generators: Vec<String>,
}

impl OsDefinition {
    /// Reads and validates a definition file.
    pub fn load(path: &Path) -> Result<OsDefinition> {
        let text = std::fs::read_to_string(path).map_err(|source| BuildError::DefinitionRead {
            path: path.into(),
            source,
        })?;
        let def: OsDefinition =
            toml::from_str(&text).map_err(|source| BuildError::DefinitionSyntax {
                path: path.into(),
                source: Box::new(source),
            })?;
        def.validate(path)?;
        Ok(def)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: String, problem: String| {
            Err(BuildError::DefinitionField {
                path: path.into(),
                field,
                problem,
            })
        };
        if self.debian.packages.is_empty() {
            return bad("debian.packages".into(), "is empty".into());
        }
        for (i, p) in self.debian.packages.iter().enumerate() {
            let ok = !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            if !ok {
                return bad(
                    format!("debian.packages.{i}"),
                    format!("`{p}` is not a Debian package name"),
                );
            }
        }
        check_version(&self.os.version).map_err(|source| BuildError::Version {
            path: path.into(),
            source,
        })?;
        if !self
            .os
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        {
            return bad(
                "os.id".into(),
                format!("`{}` must be lower-case [a-z0-9._-]", self.os.id),
            );
        }
        if self.user.uid == 0 {
            return bad(
                "user.uid".into(),
                "the default user must not be root".into(),
            );
        }
        for (name, gid) in &self.groups {
            let valid_name = !name.is_empty()
                && name.len() <= 32
                && !name.starts_with('-')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c));
            if !valid_name {
                return bad(
                    format!("groups.{name}"),
                    "a group name is 1-32 of [a-z0-9_-], not starting with '-'".into(),
                );
            }
            if *gid == 0 || *gid >= 65534 || *gid == self.user.uid {
                return bad(
                    format!("groups.{name}"),
                    format!("gid {gid} is root's, nogroup's or the default user's"),
                );
            }
        }
        let units = &self.systemd;
        for (list, name) in [(&units.disable, "disable"), (&units.mask, "mask")] {
            if let Some((i, unit)) = list
                .iter()
                .enumerate()
                .find(|(_, u)| units.enable.contains(u))
            {
                return bad(
                    format!("systemd.{name}.{i}"),
                    format!("`{unit}` is also in systemd.enable"),
                );
            }
        }
        for (i, g) in units.skip_generators.iter().enumerate() {
            if g.is_empty() || g.contains('/') || g.starts_with('.') {
                return bad(
                    format!("systemd.skip_generators.{i}"),
                    format!("`{g}` is not a generator's file name"),
                );
            }
        }
        Ok(())
    }

    /// The definition's `files/` overlay directory (next to the TOML file).
    pub fn files_dir(definition_path: &Path) -> PathBuf {
        definition_path
            .parent()
            .unwrap_or(Path::new("."))
            .join("files")
    }
}

/// An OS version follows the one contract every crate uses ([`OsVersion`]: `MAJOR.MINOR.PATCH`
/// with optional `+build`, at most 40 bytes), so the build's version is one the payload, the
/// boot state and the update server accept too.
pub fn check_version(version: &str) -> std::result::Result<OsVersion, VersionError> {
    OsVersion::parse(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[os]
name = "Wellcar"
id = "wellcar"
version = "1.2.3"
board = "amd64-usr"
home_url = "https://example.invalid/"
[debian]
suite = "bookworm"
sources = "/etc/apt/sources.list.d/debian.sources"
packages = ["systemd", "linux-image-cloud-amd64"]
[user]
name = "core"
uid = 500
gecos = "Core"
groups = ["sudo"]
[systemd]
enable = ["ssh.service"]
"#;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wellcar.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn loads_the_sample() {
        let (_d, p) = write(SAMPLE);
        let def = OsDefinition::load(&p).unwrap();
        assert_eq!(def.os.version, "1.2.3");
        assert_eq!(def.debian.packages.len(), 2);
    }

    #[test]
    fn the_committed_definition_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../os/wellcar.toml");
        let def = OsDefinition::load(&p).unwrap();
        assert!(def
            .debian
            .packages
            .iter()
            .any(|p| p == "linux-image-cloud-amd64"));
        assert_eq!(def.user.name, "core");
    }

    #[test]
    fn versions_are_os_versions() {
        assert_eq!(check_version("3510.2.0").unwrap().as_str(), "3510.2.0");
        assert!(check_version("4799.0.0+nightly-20260821-2100").is_ok());
        assert!(check_version("1.0.0-rc1")
            .unwrap_err()
            .to_string()
            .contains("1.0.0-rc1"));
        assert!(check_version("1..2").is_err());
        // Dotted numbers of another count passed the old check; the payload and server refused.
        assert!(check_version("1.2").is_err());
        assert!(check_version("1.2.3.4").is_err());
        for bad in ["v1", "1.2"] {
            let (_d, p) = write(&SAMPLE.replace("1.2.3", bad));
            let err = OsDefinition::load(&p).unwrap_err();
            assert!(
                matches!(&err, BuildError::Version { path, .. } if *path == p),
                "{err:?}"
            );
            let err = wellcar_contract::error_chain(&err);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn a_unit_both_enabled_and_disabled_is_refused() {
        let (_d, p) = write(&SAMPLE.replace(
            "enable = [\"ssh.service\"]",
            "enable = [\"ssh.service\"]\ndisable = [\"fstrim.timer\", \"ssh.service\"]",
        ));
        let err = OsDefinition::load(&p).unwrap_err();
        assert!(
            matches!(&err, BuildError::DefinitionField { field, .. } if field == "systemd.disable.1"),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("systemd.disable.1: `ssh.service`"),
            "{err}"
        );
        let (_d, p) = write(&SAMPLE.replace(
            "enable = [\"ssh.service\"]",
            "enable = [\"ssh.service\"]\nmask = [\"ssh.service\"]",
        ));
        let err = OsDefinition::load(&p).unwrap_err().to_string();
        assert!(err.contains("systemd.mask.0: `ssh.service`"), "{err}");
    }

    #[test]
    fn a_generator_path_is_refused() {
        let (_d, p) = write(&SAMPLE.replace(
            "enable = [\"ssh.service\"]",
            "enable = [\"ssh.service\"]\nskip_generators = [\"systemd-sysv-generator\", \"../bin/sh\"]",
        ));
        let err = OsDefinition::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("systemd.skip_generators.1: `../bin/sh`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let (_d, p) = write(&SAMPLE.replace("[systemd]", "[systemd]\nenabel = []"));
        let err = OsDefinition::load(&p).unwrap_err();
        assert!(
            matches!(&err, BuildError::DefinitionSyntax { .. }),
            "{err:?}"
        );
        // The parser's error, kept as the cause, names the key.
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("enabel"), "{cause}");
        let (_d, p) = write(SAMPLE);
        let missing = p.with_file_name("missing.toml");
        let err = OsDefinition::load(&missing).unwrap_err();
        assert!(
            matches!(&err, BuildError::DefinitionRead { path, source }
                if *path == missing && source.kind() == std::io::ErrorKind::NotFound),
            "{err:?}"
        );
    }

    #[test]
    fn bad_package_name_is_named() {
        let (_d, p) = write(&SAMPLE.replace("\"systemd\",", "\"Sys temd\","));
        let err = OsDefinition::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("debian.packages.0") && err.contains("Sys temd"),
            "{err}"
        );
    }
}
