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
use std::fs;
use std::path::Path;
use wellcar_contract::PathIoError;

use super::root::{write_atomic, TargetRoot};
use super::{ApplyError, Recorder};
use crate::model::{Systemd, Unit};
use crate::unitfile::{parse_unit, InstallSection};
use crate::validate::template_of;

const ETC_UNITS: &str = "/etc/systemd/system";
const SEARCH_DIRS: [&str; 4] = [
    ETC_UNITS,
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];
const PRESET_FILE: &str = "/etc/systemd/system-preset/20-ignition.preset";

fn io_at(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ApplyError {
    let path = path.to_path_buf();
    move |source| ApplyError::Io(PathIoError::new(what, path, source))
}

fn write_text(root: &TargetRoot, path: &str, contents: &str) -> Result<(), ApplyError> {
    let host = root.prepare_parent(path)?;
    write_atomic(&host, contents.as_bytes(), 0o644)
}

/// Replaces whatever non-directory is at `path` by a symlink to `target`.
fn force_symlink(root: &TargetRoot, path: &str, target: &str) -> Result<bool, ApplyError> {
    let host = root.prepare_parent(path)?;
    match fs::symlink_metadata(&host) {
        Ok(m) if m.file_type().is_symlink() => {
            if fs::read_link(&host).is_ok_and(|t| t == Path::new(target)) {
                return Ok(false);
            }
            fs::remove_file(&host).map_err(io_at("removing", &host))?;
        }
        Ok(m) if m.is_dir() => {
            return Err(ApplyError::NotADirectory {
                path: path.to_string(),
                host,
            })
        }
        Ok(_) => fs::remove_file(&host).map_err(io_at("removing", &host))?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, &host).map_err(io_at("creating symlink", &host))?;
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
            let Ok(host) = root.resolve(&path, true) else {
                continue;
            };
            if !host.is_file() {
                continue;
            }
            let text = fs::read_to_string(&host).ok()?;
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
    let masked = root
        .resolve(&format!("{ETC_UNITS}/{name}"), false)
        .ok()
        .and_then(|h| fs::read_link(h).ok())
        .is_some_and(|t| t == Path::new("/dev/null"));
    if masked {
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
        for target in targets {
            let link = format!("{ETC_UNITS}/{target}.{suffix}/{link_name}");
            if force_symlink(root, &link, &unit_path)? {
                rec.action(format!("enabled {name}: {link} -> {unit_path}"));
            }
        }
    }
    for alias in &install.alias {
        let link = format!("{ETC_UNITS}/{alias}");
        if link != unit_path && force_symlink(root, &link, &unit_path)? {
            rec.action(format!("aliased {name}: {link} -> {unit_path}"));
        }
    }
    if depth < 8 {
        for also in &install.also {
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
    let Ok(etc) = root.resolve(ETC_UNITS, true) else {
        return Ok(());
    };
    let Ok(dir) = fs::read_dir(&etc) else {
        return Ok(());
    };
    for entry in dir.filter_map(Result::ok) {
        let dir_name = entry.file_name().to_string_lossy().into_owned();
        if !(dir_name.ends_with(".wants")
            || dir_name.ends_with(".requires")
            || dir_name.ends_with(".upholds"))
        {
            continue;
        }
        let link = entry.path().join(name);
        if fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&link).map_err(io_at("removing", &link))?;
            rec.action(format!(
                "disabled {name}: removed {ETC_UNITS}/{dir_name}/{name}"
            ));
        }
    }
    if let Some((unit_path, install)) = find_install(root, config, name) {
        for alias in install.alias {
            let host = etc.join(&alias);
            if fs::read_link(&host).is_ok_and(|t| t == Path::new(&unit_path)) {
                fs::remove_file(&host).map_err(io_at("removing", &host))?;
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
                let host = root.resolve(&format!("{ETC_UNITS}/{}", u.name), false)?;
                if fs::read_link(&host).is_ok_and(|t| t == Path::new("/dev/null")) {
                    fs::remove_file(&host).map_err(io_at("removing", &host))?;
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
        let host = root.prepare_parent(PRESET_FILE)?;
        let mut text = fs::read_to_string(&host).unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&lines);
        write_atomic(&host, text.as_bytes(), 0o644)?;
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
