//! A small systemd unit-file reader: enough to validate unit contents the way Ignition does and
//! to read the `[Install]` section for enabling units.
//!
//! Syntax accepted: `[Section]` headers, `Key=Value` options (whitespace around `=` trimmed),
//! comment lines starting with `#` or `;`, blank lines, and `\` line continuations. Errors use
//! the wording of go-systemd's deserializer, which Ignition reports as
//! `invalid unit content: <error>`.

/// One `Key=Value` option together with its section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitOption {
    /// Section name without brackets.
    pub section: String,
    /// Option name.
    pub name: String,
    /// Option value (continuations joined with a space).
    pub value: String,
}

/// Parses unit file contents into its options, in order.
pub fn parse_unit(contents: &str) -> Result<Vec<UnitOption>, String> {
    let mut options = Vec::new();
    let mut section: Option<String> = None;
    let mut lines = contents.lines();
    while let Some(raw) = lines.next() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(end) = rest.find(']') else {
                return Err("unable to find end of section".to_string());
            };
            if !rest[end + 1..].trim().is_empty() {
                return Err("section header must end with ']'".to_string());
            }
            section = Some(rest[..end].to_string());
            continue;
        }
        let Some(current) = &section else {
            return Err("found property before section".to_string());
        };
        let mut logical = line.to_string();
        while logical.ends_with('\\') {
            logical.pop();
            match lines.next() {
                Some(next) => {
                    logical.push(' ');
                    logical.push_str(next.trim());
                }
                None => break,
            }
        }
        let Some((name, value)) = logical.split_once('=') else {
            return Err(format!(
                "unable to find key-value separator in line {line:?}"
            ));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("empty option name in line {line:?}"));
        }
        options.push(UnitOption {
            section: current.clone(),
            name: name.to_string(),
            value: value.trim().to_string(),
        });
    }
    Ok(options)
}

/// The `[Install]` section of a unit, as `systemctl enable` reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallSection {
    /// `WantedBy=` targets (space separated values flattened).
    pub wanted_by: Vec<String>,
    /// `RequiredBy=` targets.
    pub required_by: Vec<String>,
    /// `UpheldBy=` targets.
    pub upheld_by: Vec<String>,
    /// `Alias=` names.
    pub alias: Vec<String>,
    /// `Also=` units enabled together with this one.
    pub also: Vec<String>,
    /// `DefaultInstance=` for templates.
    pub default_instance: Option<String>,
}

impl InstallSection {
    /// Reads the install section from parsed options; `None` when it has no options (Ignition's
    /// "has no install section").
    pub fn from_options(options: &[UnitOption]) -> Option<Self> {
        let mut install = InstallSection::default();
        let mut any = false;
        for opt in options.iter().filter(|o| o.section == "Install") {
            any = true;
            let words = || opt.value.split_whitespace().map(str::to_string);
            match opt.name.as_str() {
                "WantedBy" => install.wanted_by.extend(words()),
                "RequiredBy" => install.required_by.extend(words()),
                "UpheldBy" => install.upheld_by.extend(words()),
                "Alias" => install.alias.extend(words()),
                "Also" => install.also.extend(words()),
                "DefaultInstance" => install.default_instance = Some(opt.value.clone()),
                _ => {}
            }
        }
        any.then_some(install)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sections_options_and_continuations() {
        let opts =
            parse_unit("# c\n[Unit]\nDescription = x\n[Service]\nExecStart=/bin/a \\\n  b\n")
                .unwrap();
        assert_eq!(opts.len(), 2);
        assert_eq!(opts[0].section, "Unit");
        assert_eq!(opts[0].value, "x");
        assert_eq!(opts[1].value, "/bin/a  b");
    }

    #[test]
    fn unterminated_section_is_ignitions_error() {
        assert_eq!(
            parse_unit("[Foo").unwrap_err(),
            "unable to find end of section"
        );
    }

    #[test]
    fn install_section_is_read() {
        let opts =
            parse_unit("[Install]\nWantedBy=multi-user.target graphical.target\nAlias=x.service\n")
                .unwrap();
        let install = InstallSection::from_options(&opts).unwrap();
        assert_eq!(install.wanted_by, ["multi-user.target", "graphical.target"]);
        assert_eq!(install.alias, ["x.service"]);
        assert_eq!(
            InstallSection::from_options(&parse_unit("[Unit]\nA=b\n").unwrap()),
            None
        );
    }
}
