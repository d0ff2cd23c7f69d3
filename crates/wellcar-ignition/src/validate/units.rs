//! The `systemd` section: unit names are checked as systemd's `unit_name_is_valid` checks them
//! (see [`unit_name_is_valid`]), drop-in names must be plain file names ending in `.conf`,
//! contents must parse as unit files, and an enabled unit (or the template of an enabled instance
//! without contents) whose configured contents have no `[Install]` section is warned about,
//! because enabling it would do nothing.

use std::collections::HashMap;

use super::{template_of, Validator};
use crate::model::Systemd;
use crate::unitfile::{parse_unit, InstallSection};

/// Unit types Ignition accepts (systemd's, plus the historical `.snapshot`).
const EXTENSIONS: [&str; 12] = [
    ".service",
    ".socket",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".target",
    ".path",
    ".timer",
    ".snapshot",
    ".slice",
    ".scope",
];

/// The longest unit name systemd accepts (`UNIT_NAME_MAX` - 1).
const UNIT_NAME_MAX: usize = 255;

/// Whether `name` is a valid unit name, plain (`foo.service`), template (`foo@.service`) or
/// instance (`foo@bar.service`), as systemd's `unit_name_is_valid(n, UNIT_NAME_ANY)` decides:
/// at most 255 bytes, a known type suffix after the last `.`, a non-empty prefix, and only
/// `[A-Za-z0-9:_.\\-]` before the suffix besides `@`, the first of which ends the prefix.
/// A name with `/` is therefore never valid, so a unit name cannot leave its directory.
pub(crate) fn unit_name_is_valid(name: &str) -> bool {
    if name.is_empty() || name.len() > UNIT_NAME_MAX {
        return false;
    }
    let Some(dot) = name.rfind('.').filter(|&d| d > 0) else {
        return false;
    };
    if !EXTENSIONS.iter().any(|e| &name[dot..] == *e) {
        return false;
    }
    let stem = &name[..dot];
    let valid_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@');
    // A leading '@' (empty prefix) is invalid; "foo@" is a template, "foo@bar" an instance.
    stem.chars().all(valid_char) && !stem.starts_with('@')
}

/// Whether `name` is a valid drop-in file name: `<something>.conf`, a single path component of
/// at most 255 bytes without control characters.
pub(crate) fn dropin_name_is_valid(name: &str) -> bool {
    name.len() > ".conf".len()
        && name.len() <= UNIT_NAME_MAX
        && name.ends_with(".conf")
        && !name.contains('/')
        && !name.chars().any(char::is_control)
}

impl Validator {
    pub(super) fn units(&mut self, sd: &Systemd) {
        let mut installs: HashMap<&str, bool> = HashMap::new();
        for u in &sd.units {
            if let Some(contents) = &u.contents {
                if let Ok(opts) = parse_unit(contents) {
                    installs.insert(
                        u.name.as_str(),
                        InstallSection::from_options(&opts).is_some(),
                    );
                }
            }
        }
        for (i, u) in sd.units.iter().enumerate() {
            let at = format!("systemd.units.{i}");
            if !EXTENSIONS.iter().any(|e| u.name.ends_with(e)) {
                self.err(format!("{at}.name"), "invalid systemd unit extension");
            } else if !unit_name_is_valid(&u.name) {
                self.err(
                    format!("{at}.name"),
                    format!("invalid systemd unit name {:?}: systemd allows at most 255 bytes of [A-Za-z0-9:_.\\-] with one '@' after a non-empty prefix, and a unit type suffix", u.name),
                );
            }
            if let Some(contents) = &u.contents {
                if let Err(e) = parse_unit(contents) {
                    self.err(
                        format!("{at}.contents"),
                        format!("invalid unit content: {e}"),
                    );
                }
            }
            if u.enabled == Some(true) {
                if installs.get(u.name.as_str()) == Some(&false) {
                    self.warn(
                        format!("{at}.contents"),
                        format!("unit {:?} is enabled, but has no install section so enable does nothing", u.name),
                    );
                } else if u.contents.is_none() {
                    if let Some(template) = template_of(&u.name) {
                        if installs.get(template.as_str()) == Some(&false) {
                            self.warn(
                                format!("{at}.contents"),
                                format!("template unit {template:?} for {:?} doesn't have Install section", u.name),
                            );
                        }
                    }
                }
            }
            for (j, d) in u.dropins.iter().enumerate() {
                if !d.name.ends_with(".conf") {
                    self.err(
                        format!("{at}.dropins.{j}.name"),
                        "invalid systemd drop-in extension",
                    );
                } else if !dropin_name_is_valid(&d.name) {
                    self.err(
                        format!("{at}.dropins.{j}.name"),
                        format!("invalid systemd drop-in name {:?}: must be one file name of at most 255 bytes", d.name),
                    );
                }
                if let Some(contents) = &d.contents {
                    if let Err(e) = parse_unit(contents) {
                        self.err(
                            format!("{at}.dropins.{j}.contents"),
                            format!("invalid unit content: {e}"),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_checked_as_systemd_does() {
        for good in [
            "a.service",
            "foo@.service",
            "foo@bar.service",
            "getty@tty1.service",
            "dev-disk-by\\x2dlabel-ROOT.device",
            "var-lib-docker.mount",
            "a.b:c_d-e.target",
            "x@y@z.socket",
        ] {
            assert!(unit_name_is_valid(good), "{good:?} refused");
        }
        let long = format!("{}.service", "a".repeat(248));
        for bad in [
            "",
            ".service",
            "@.service",
            "@x.service",
            "a",
            "a.conf",
            "a.Service",
            "../../../../outside/victim.service",
            "a/b.service",
            "a b.service",
            "a\n.service",
            "ä.service",
            long.as_str(),
        ] {
            assert!(!unit_name_is_valid(bad), "{bad:?} accepted");
        }
        assert!(unit_name_is_valid(&long[1..]));
    }

    #[test]
    fn dropin_names_are_single_file_names() {
        assert!(dropin_name_is_valid("10-x.conf"));
        for bad in [".conf", "../x.conf", "a/b.conf", "a\n.conf", "x.service"] {
            assert!(!dropin_name_is_valid(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn invalid_names_are_errors_with_their_json_path() {
        let config = crate::parse_config(
            br#"{"ignition":{"version":"3.3.0"},"systemd":{"units":[
                {"name":"ok.service"},{"name":"ok2.service"},{"name":"ok3.service"},
                {"name":"../../../../outside/victim.service","enabled":false},
                {"name":"d.service","dropins":[{"name":"../x.conf"}]}]}}"#,
        )
        .map(|p| p.config);
        let entries = match config {
            Ok(c) => super::super::validate(&c),
            Err(crate::ParseError::Invalid { entries, .. }) => entries,
            Err(e) => panic!("{e}"),
        };
        let errors: Vec<String> = entries
            .iter()
            .filter(|e| e.is_error())
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.iter().any(|e| e.contains("systemd.units.3.name")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("systemd.units.4.dropins.0.name")),
            "{errors:?}"
        );
    }
}
