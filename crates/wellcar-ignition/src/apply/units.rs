//! `systemd.units`: unit files, drop-ins, enable/disable and mask/unmask, written under
//! `<root>/etc/systemd/system` without running systemctl.
//!
//! - Contents go to `/etc/systemd/system/<name>` (only when non-empty), drop-ins with contents
//!   to `/etc/systemd/system/<name>.d/<dropin>`, mode 0644, atomically.
//! - `enabled: true` creates the links `systemctl --root enable` would: for each `WantedBy=`,
//!   `RequiredBy=`, `UpheldBy=` target a link `<target>.wants|requires|upholds/<unit>` to the
//!   unit file (the template's file for instances; `DefaultInstance=` for bare templates), an
//!   `/etc/systemd/system/<alias>` link per `Alias=`, and the same for `Also=` units. The
//!   `[Install]` section is read from the config's contents, else from the unit file found in
//!   the target (`/etc`, `/usr/local/lib`, `/usr/lib`, `/lib` `systemd/system`). Units that do
//!   not exist are not an error (Ignition's preset semantics), only logged.
//! - `enabled: false` removes such links from `/etc/systemd/system`.
//! - Both are also recorded in `/etc/systemd/system-preset/20-ignition.preset` as Ignition does
//!   (`enable <unit>`, instances grouped as `enable foo@.service a b`), for `systemctl preset`.
//! - `mask: true` replaces `/etc/systemd/system/<name>` by a link to `/dev/null`;
//!   `mask: false` removes such a link if present.

use std::collections::BTreeMap;
use std::path::Path;

use rustix::fs::FileType;

use super::root::TargetRoot;
use super::{ApplyError, Recorder};
use crate::model::{Systemd, Unit};
use crate::unitfile::{parse_unit, InstallSection};
use crate::validate::{dropin_name_is_valid, template_of, unit_name_is_valid};

const ETC_UNITS: &str = "/etc/systemd/system";
const SEARCH_DIRS: [&str; 4] = [
    ETC_UNITS,
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];
const PRESET_FILE: &str = "/etc/systemd/system-preset/20-ignition.preset";

fn write_text(root: &TargetRoot, path: &str, contents: &str) -> Result<(), ApplyError> {
    root.write_file(path, contents.as_bytes(), 0o644).map(drop)
}

/// Whether the node at `path` is a symlink to `target`.
fn links_to(root: &TargetRoot, path: &str, target: &str) -> bool {
    root.read_link(path).is_some_and(|t| t == Path::new(target))
}

/// Replaces whatever non-directory is at `path` by a symlink to `target`.
fn force_symlink(root: &TargetRoot, path: &str, target: &str) -> Result<bool, ApplyError> {
    let host = root.prepare_parent(path)?;
    match root.file_type(path) {
        Some(FileType::Symlink) if links_to(root, path, target) => return Ok(false),
        Some(FileType::Directory) => {
            return Err(ApplyError::NotADirectory {
                path: path.to_string(),
                host,
            })
        }
        Some(_) => root.remove_link(path)?,
        None => {}
    }
    root.symlink(path, target)?;
    Ok(true)
}

/// The unit file (in-target path) and its install section, for `name` or its template.
fn find_install(
    root: &TargetRoot,
    config: &Systemd,
    name: &str,
) -> Option<(String, InstallSection)> {
    let candidates: Vec<String> = std::iter::once(name.to_string())
        .chain(template_of(name))
        .collect();
    for candidate in &candidates {
        if let Some(contents) = config
            .units
            .iter()
            .find(|u| &u.name == candidate)
            .and_then(|u| u.contents.as_deref())
        {
            if !contents.is_empty() {
                let install = parse_unit(contents)
                    .ok()
                    .as_deref()
                    .and_then(InstallSection::from_options)?;
                return Some((format!("{ETC_UNITS}/{candidate}"), install));
            }
        }
        for dir in SEARCH_DIRS {
            let path = format!("{dir}/{candidate}");
            // Absent, not a regular file or unreadable: look further, as systemctl would.
            let Ok(Some(text)) = root.read_to_string(&path) else {
                continue;
            };
            let install = parse_unit(&text)
                .ok()
                .as_deref()
                .and_then(InstallSection::from_options)?;
            return Some((path, install));
        }
    }
    None
}

fn enable(
    root: &TargetRoot,
    config: &Systemd,
    rec: &mut Recorder,
    name: &str,
    depth: usize,
) -> Result<(), ApplyError> {
    if links_to(root, &format!("{ETC_UNITS}/{name}"), "/dev/null") {
        rec.action(format!("not enabling masked unit {name}"));
        return Ok(());
    }
    let Some((unit_path, install)) = find_install(root, config, name) else {
        rec.action(format!(
            "unit {name} has no unit file with an [Install] section; recorded as preset only"
        ));
        return Ok(());
    };
    let link_name = if name.contains("@.") {
        match &install.default_instance {
            Some(instance) => name.replacen("@.", &format!("@{instance}."), 1),
            None => {
                rec.action(format!(
                    "template {name} has no DefaultInstance; nothing to link"
                ));
                return Ok(());
            }
        }
    } else {
        name.to_string()
    };
    let groups = [
        ("wants", &install.wanted_by),
        ("requires", &install.required_by),
        ("upholds", &install.upheld_by),
    ];
    for (suffix, targets) in groups {
        for target in targets.iter().filter(|t| unit_name_is_valid(t)) {
            let link = format!("{ETC_UNITS}/{target}.{suffix}/{link_name}");
            if force_symlink(root, &link, &unit_path)? {
                rec.action(format!("enabled {name}: {link} -> {unit_path}"));
            }
        }
    }
    // Install-section names come from files in the target: only valid unit names are linked.
    for alias in install.alias.iter().filter(|a| unit_name_is_valid(a)) {
        let link = format!("{ETC_UNITS}/{alias}");
        if link != unit_path && force_symlink(root, &link, &unit_path)? {
            rec.action(format!("aliased {name}: {link} -> {unit_path}"));
        }
    }
    if depth < 8 {
        for also in install.also.iter().filter(|a| unit_name_is_valid(a)) {
            enable(root, config, rec, also, depth + 1)?;
        }
    }
    Ok(())
}

fn disable(
    root: &TargetRoot,
    config: &Systemd,
    rec: &mut Recorder,
    name: &str,
) -> Result<(), ApplyError> {
    // Only real directories: a planted `evil.wants -> /somewhere` symlink is not a wants
    // directory (and every removal below resolves inside the root anyway).
    for (dir_name, ty) in root.list_dir(ETC_UNITS)? {
        let dir_name = dir_name.to_string_lossy();
        if ty != FileType::Directory
            || !(dir_name.ends_with(".wants")
                || dir_name.ends_with(".requires")
                || dir_name.ends_with(".upholds"))
        {
            continue;
        }
        let link = format!("{ETC_UNITS}/{dir_name}/{name}");
        if root.file_type(&link) == Some(FileType::Symlink) {
            root.remove_link(&link)?;
            rec.action(format!("disabled {name}: removed {link}"));
        }
    }
    if let Some((unit_path, install)) = find_install(root, config, name) {
        for alias in install.alias.iter().filter(|a| unit_name_is_valid(a)) {
            let link = format!("{ETC_UNITS}/{alias}");
            if links_to(root, &link, &unit_path) {
                root.remove_link(&link)?;
                rec.action(format!("disabled {name}: removed alias {alias}"));
            }
        }
    }
    Ok(())
}

fn preset_lines(units: &[Unit]) -> String {
    // (state, unit or template) -> instances
    let mut presets: BTreeMap<(String, &'static str), Vec<String>> = BTreeMap::new();
    for u in units {
        let Some(enabled) = u.enabled else { continue };
        let state = if enabled { "enable" } else { "disable" };
        match (template_of(&u.name), u.name.split_once('@')) {
            (Some(template), Some((_, rest))) => {
                let instance = rest.rsplit_once('.').map_or(rest, |(i, _)| i).to_string();
                presets.entry((template, state)).or_default().push(instance);
            }
            _ => {
                presets.entry((u.name.clone(), state)).or_default();
            }
        }
    }
    let mut out = String::new();
    for ((unit, state), mut instances) in presets {
        instances.sort();
        out.push_str(state);
        out.push(' ');
        out.push_str(&unit);
        for i in instances {
            out.push(' ');
            out.push_str(&i);
        }
        out.push('\n');
    }
    out
}

/// Writes units and drop-ins, applies enable/disable/mask, appends the preset file.
pub(crate) fn apply_units(
    root: &TargetRoot,
    systemd: &Systemd,
    rec: &mut Recorder,
) -> Result<(), ApplyError> {
    // Validation refuses these already; the applier re-checks, since every name becomes a path.
    for (i, u) in systemd.units.iter().enumerate() {
        if !unit_name_is_valid(&u.name) {
            return Err(ApplyError::InvalidField {
                field: format!("systemd.units.{i}.name"),
                reason: format!("{:?} is not a valid systemd unit name", u.name),
            });
        }
        if let Some(j) = u
            .dropins
            .iter()
            .position(|d| !dropin_name_is_valid(&d.name))
        {
            return Err(ApplyError::InvalidField {
                field: format!("systemd.units.{i}.dropins.{j}.name"),
                reason: format!("{:?} is not a valid drop-in name", u.dropins[j].name),
            });
        }
    }
    for u in &systemd.units {
        for d in &u.dropins {
            if let Some(contents) = &d.contents {
                let path = format!("{ETC_UNITS}/{}.d/{}", u.name, d.name);
                write_text(root, &path, contents)?;
                rec.action(format!("wrote drop-in {path}"));
            }
        }
        if let Some(contents) = u.contents.as_deref().filter(|c| !c.is_empty()) {
            let path = format!("{ETC_UNITS}/{}", u.name);
            write_text(root, &path, contents)?;
            rec.action(format!("wrote unit {path}"));
        }
        match u.mask {
            Some(true) => {
                force_symlink(root, &format!("{ETC_UNITS}/{}", u.name), "/dev/null")?;
                rec.action(format!("masked {}", u.name));
            }
            Some(false) => {
                let path = format!("{ETC_UNITS}/{}", u.name);
                if links_to(root, &path, "/dev/null") {
                    root.remove_link(&path)?;
                    rec.action(format!("unmasked {}", u.name));
                }
            }
            None => {}
        }
    }
    for u in &systemd.units {
        match u.enabled {
            Some(true) => enable(root, systemd, rec, &u.name, 0)?,
            Some(false) => disable(root, systemd, rec, &u.name)?,
            None => {}
        }
    }
    let lines = preset_lines(&systemd.units);
    if !lines.is_empty() {
        let mut text = root.read_to_string(PRESET_FILE)?.unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&lines);
        root.write_file(PRESET_FILE, text.as_bytes(), 0o644)?;
        rec.action(format!("wrote presets to {PRESET_FILE}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_group_instances_like_ignition() {
        let units = vec![
            Unit {
                name: "echo@.service".into(),
                ..Default::default()
            },
            Unit {
                name: "echo@foo.service".into(),
                enabled: Some(true),
                ..Default::default()
            },
            Unit {
                name: "echo@bar.service".into(),
                enabled: Some(true),
                ..Default::default()
            },
            Unit {
                name: "a.service".into(),
                enabled: Some(false),
                ..Default::default()
            },
        ];
        assert_eq!(
            preset_lines(&units),
            "disable a.service\nenable echo@.service bar foo\n"
        );
    }
}
