//! The `systemd` section: unit and drop-in names need a known extension (`.conf` for drop-ins),
//! contents must parse as unit files, and an enabled unit (or the template of an enabled instance
//! without contents) whose configured contents have no `[Install]` section is warned about,
//! because enabling it would do nothing.

use std::collections::HashMap;

use super::{template_of, Validator};
use crate::model::Systemd;
use crate::unitfile::{parse_unit, InstallSection};

impl Validator {
    pub(super) fn units(&mut self, sd: &Systemd) {
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
