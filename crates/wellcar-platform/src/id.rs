//! Platform ids and where each platform's config comes from.
//!
//! | id | config sources, in order | network for the config |
//! |----|--------------------------|------------------------|
//! | `qemu` | fw_cfg `opt/org.flatcar-linux/config`, `opt/com.coreos/config` | no |
//! | `metal` | `ignition.config.url=` (http, https, tftp, data), else OEM `config.ign` | when the URL is remote |
//! | `openstack` | config drive `config-2`: `openstack/latest/user_data`, else metadata service `openstack/latest/user_data` | only without a config drive |
//! | `aws` (`ec2`) | IMDSv2 `latest/api/token`, then `2009-04-04/user-data` | yes |
//! | `gcp` | `computeMetadata/v1/instance/attributes/user-data` (`Metadata-Flavor: Google`) | yes |
//! | `digitalocean` | `metadata/v1/user-data` | yes |

use crate::PlatformError;

/// A platform Wellcar can provision on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// QEMU: config over fw_cfg.
    Qemu,
    /// Bare metal: a URL on the kernel command line, else the OEM partition.
    Metal,
    /// OpenStack: config drive, else the metadata service.
    OpenStack,
    /// Amazon EC2 (`aws`, alias `ec2`): IMDSv2.
    Aws,
    /// Google Compute Engine.
    Gcp,
    /// DigitalOcean droplets.
    DigitalOcean,
}

/// One place a config may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// QEMU's fw_cfg entries.
    FwCfg,
    /// `ignition.config.url=`: fetched with `wellcar_ignition::fetch`.
    Url(String),
    /// `config.ign` on the OEM partition.
    OemFile,
    /// An OpenStack config drive (filesystem label `config-2`).
    ConfigDrive,
    /// The platform's metadata service.
    Metadata(Platform),
}

impl ConfigSource {
    /// Whether reading this source needs the network up.
    pub fn needs_network(&self) -> bool {
        match self {
            ConfigSource::FwCfg | ConfigSource::OemFile | ConfigSource::ConfigDrive => false,
            ConfigSource::Url(url) => crate::neednet::url_needs_network(url),
            ConfigSource::Metadata(_) => true,
        }
    }
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::FwCfg => f.write_str("fw_cfg"),
            ConfigSource::Url(url) => write!(f, "ignition.config.url={url}"),
            ConfigSource::OemFile => f.write_str("config.ign on the OEM partition"),
            ConfigSource::ConfigDrive => f.write_str("config drive config-2"),
            ConfigSource::Metadata(p) => write!(f, "{} metadata service", p.id()),
        }
    }
}

/// Every platform with its canonical id.
pub const ALL: [Platform; 6] = [
    Platform::Qemu,
    Platform::Metal,
    Platform::OpenStack,
    Platform::Aws,
    Platform::Gcp,
    Platform::DigitalOcean,
];

/// Kernel parameters naming the platform, strongest first.
const PLATFORM_PARAMS: [&str; 4] = [
    "ignition.platform.id",
    "wellcar.oem.id",
    "flatcar.oem.id",
    "coreos.oem.id",
];

impl Platform {
    /// The canonical id (`ignition.platform.id` value).
    pub fn id(self) -> &'static str {
        match self {
            Platform::Qemu => "qemu",
            Platform::Metal => "metal",
            Platform::OpenStack => "openstack",
            Platform::Aws => "aws",
            Platform::Gcp => "gcp",
            Platform::DigitalOcean => "digitalocean",
        }
    }

    /// Parses an id (`ec2` is `aws`, as in Flatcar); `from` says where it was given.
    pub fn parse(id: &str, from: &str) -> Result<Platform, PlatformError> {
        let wanted = if id == "ec2" { "aws" } else { id };
        ALL.into_iter()
            .find(|p| p.id() == wanted)
            .ok_or_else(|| PlatformError::UnknownPlatform {
                id: id.to_string(),
                from: from.to_string(),
                known: known_ids(),
            })
    }

    /// The platform named by the command line, else by the OEM `grub.cfg` text, else `metal`.
    pub fn select(cmdline: &str, oem_grub_cfg: Option<&str>) -> Result<Platform, PlatformError> {
        if let Some((param, id)) = cmdline_platform(cmdline) {
            return Platform::parse(&id, &format!("kernel parameter {param}"));
        }
        if let Some(id) = oem_grub_cfg.and_then(grub_cfg_oem_id) {
            return Platform::parse(&id, "the OEM partition's grub.cfg");
        }
        Ok(Platform::Metal)
    }

    /// Where this platform's config may come from, in order; `config_url` is
    /// `ignition.config.url=` from the command line.
    pub fn config_sources(self, config_url: Option<&str>) -> Vec<ConfigSource> {
        match self {
            Platform::Qemu => vec![ConfigSource::FwCfg],
            Platform::Metal => match config_url {
                Some(url) => vec![ConfigSource::Url(url.to_string())],
                None => vec![ConfigSource::OemFile],
            },
            Platform::OpenStack => vec![
                ConfigSource::ConfigDrive,
                ConfigSource::Metadata(Platform::OpenStack),
            ],
            Platform::Aws | Platform::Gcp | Platform::DigitalOcean => {
                vec![ConfigSource::Metadata(self)]
            }
        }
    }

    /// Whether the platform's metadata service gives a hostname or ssh keys to apply.
    pub fn has_metadata_attributes(self) -> bool {
        matches!(
            self,
            Platform::OpenStack | Platform::Aws | Platform::Gcp | Platform::DigitalOcean
        )
    }
}

/// The known ids, comma separated (with the `ec2` alias).
pub fn known_ids() -> String {
    let mut ids: Vec<&str> = ALL.iter().map(|p| p.id()).collect();
    ids.push("ec2");
    ids.join(", ")
}

/// The value of the last occurrence of `name=` in the command line.
pub fn cmdline_value(cmdline: &str, name: &str) -> Option<String> {
    split_words(cmdline)
        .into_iter()
        .rev()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('=').map(str::to_string))
}

/// Whether the command line carries `name` as a flag (alone, or as `name=...`).
pub fn cmdline_has(cmdline: &str, name: &str) -> bool {
    split_words(cmdline).iter().any(|w| {
        w == name
            || w.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('='))
    })
}

/// The command line Wellcar reads on a machine: `proc_cmdline`'s text followed by the text of
/// `extra_args` when that file exists (QEMU's fw_cfg `opt/org.wellcar/kernel-args`, which
/// `wellcar run --kernel-arg` passes), so that the extra arguments win in [`cmdline_value`].
/// Returns the line and the extra arguments, if any.
pub fn read_cmdline(
    proc_cmdline: &std::path::Path,
    extra_args: &std::path::Path,
) -> std::io::Result<(String, Option<String>)> {
    let mut cmdline = std::fs::read_to_string(proc_cmdline)?;
    let extra = std::fs::read_to_string(extra_args)
        .ok()
        .map(|args| args.trim().to_owned())
        .filter(|args| !args.is_empty());
    if let Some(args) = &extra {
        cmdline.push(' ');
        cmdline.push_str(args);
    }
    Ok((cmdline, extra))
}

/// `ignition.config.url=` from the command line.
pub fn config_url(cmdline: &str) -> Option<String> {
    cmdline_value(cmdline, "ignition.config.url").filter(|u| !u.is_empty())
}

fn cmdline_platform(cmdline: &str) -> Option<(&'static str, String)> {
    PLATFORM_PARAMS.iter().find_map(|param| {
        cmdline_value(cmdline, param)
            .filter(|v| !v.is_empty())
            .map(|v| (*param, v))
    })
}

/// Kernel-style words: whitespace separated, double quotes group and are removed.
fn split_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            c => {
                current.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(current);
    }
    words
}

/// `set oem_id="…"` (quotes optional) in a GRUB script; the last assignment wins.
pub fn grub_cfg_oem_id(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("set")?.trim_start();
            let value = rest.strip_prefix("oem_id=")?.trim();
            Some(value.trim_matches(|c| c == '"' || c == '\'').to_string())
        })
        .rfind(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignition_platform_id_beats_oem_id_and_the_grub_cfg() {
        let cmdline = "root=LABEL=ROOT flatcar.oem.id=qemu ignition.platform.id=openstack";
        assert_eq!(
            Platform::select(cmdline, Some("set oem_id=\"gcp\"")).unwrap(),
            Platform::OpenStack
        );
        assert_eq!(
            Platform::select("wellcar.oem.id=digitalocean", None).unwrap(),
            Platform::DigitalOcean
        );
        assert_eq!(
            Platform::select("coreos.oem.id=ec2", None).unwrap(),
            Platform::Aws
        );
    }

    #[test]
    fn grub_cfg_names_the_platform_when_the_cmdline_does_not() {
        let grub =
            "# Platform settings\nset oem_id=\"aws\"\nset linux_append=\"wellcar.autologin\"\n";
        assert_eq!(
            Platform::select("quiet", Some(grub)).unwrap(),
            Platform::Aws
        );
        assert_eq!(
            Platform::select("quiet", Some("set oem_id=\"\"")).unwrap(),
            Platform::Metal
        );
        assert_eq!(Platform::select("quiet", None).unwrap(), Platform::Metal);
    }

    #[test]
    fn unknown_platform_lists_the_known_ones_and_where_it_came_from() {
        let err = Platform::select("ignition.platform.id=azurestack", None).unwrap_err();
        let msg = err.to_string();
        for needle in [
            "azurestack",
            "ignition.platform.id",
            "qemu, metal, openstack, aws, gcp, digitalocean, ec2",
        ] {
            assert!(msg.contains(needle), "{msg} lacks {needle}");
        }
        let err = Platform::select("", Some("set oem_id=vmware")).unwrap_err();
        assert!(err.to_string().contains("grub.cfg"), "{err}");
    }

    #[test]
    fn sources_and_their_network_needs() {
        let metal = Platform::Metal.config_sources(Some("https://example.com/c.ign"));
        assert_eq!(
            metal,
            [ConfigSource::Url("https://example.com/c.ign".into())]
        );
        assert!(metal[0].needs_network());
        let data = Platform::Metal.config_sources(Some("data:,{}"));
        assert!(!data[0].needs_network());
        assert_eq!(
            Platform::Metal.config_sources(None),
            [ConfigSource::OemFile]
        );
        let os = Platform::OpenStack.config_sources(None);
        assert!(!os[0].needs_network() && os[1].needs_network());
        assert!(!Platform::Qemu.config_sources(None)[0].needs_network());
        assert!(Platform::Gcp.config_sources(None)[0].needs_network());
        assert_eq!(
            config_url("a ignition.config.url=\"http://x/y z\" b").as_deref(),
            Some("http://x/y z")
        );
    }
}
