//! Butane's sugar, expanded on the converted JSON: `inline`/`local` resources, unit and drop-in
//! `contents_local`, `ssh_authorized_keys_local`, Flatcar's refusal of `clevis`, and the
//! decimal-looking mode warning. A sugar key that the flavor does not have is left in place, so
//! that Ignition's decoder reports it as an unknown key at its path.

use std::path::Path;

use serde_json::{Map, Value};
use wellcar_ignition::Severity;

use crate::convert::{join, Sources};
use crate::resource::{data_url, read_local};
use crate::variant::{Flavor, Sugar};
use crate::Finding;

/// Shared state of the sugar passes.
pub struct Ctx<'a> {
    /// The variant and version.
    pub flavor: Flavor,
    /// `--files-dir`.
    pub files_dir: Option<&'a Path>,
    /// JSON path → YAML location.
    pub sources: &'a mut Sources,
    /// Errors and warnings found.
    pub findings: Vec<Finding>,
}

impl Ctx<'_> {
    /// Records an error at `json_path`.
    pub fn error(&mut self, json_path: &str, message: impl Into<String>) {
        let finding = self.sources.finding(Severity::Error, json_path, message);
        self.findings.push(finding);
    }

    fn warning(&mut self, json_path: &str, message: impl Into<String>) {
        let finding = self.sources.finding(Severity::Warning, json_path, message);
        self.findings.push(finding);
    }

    /// Reads a `local` file for the field at `json_path`; errors are recorded there.
    pub fn local(&mut self, json_path: &str, relative: &str) -> Option<Vec<u8>> {
        match read_local(self.files_dir, relative) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.error(json_path, e.to_string());
                None
            }
        }
    }
}

/// Mutable access to the objects of the list at `keys` (e.g. `["storage", "files"]`), with their
/// JSON paths.
pub fn objects_at<'v>(
    root: &'v mut Value,
    keys: &[&str],
) -> Vec<(String, &'v mut Map<String, Value>)> {
    let mut node = root;
    let mut path = String::new();
    for key in keys {
        match node.get_mut(*key) {
            Some(next) => {
                node = next;
                path = join(&path, key);
            }
            None => return Vec::new(),
        }
    }
    match node {
        Value::Array(items) => items
            .iter_mut()
            .enumerate()
            .filter_map(|(i, item)| item.as_object_mut().map(|o| (join(&path, i), o)))
            .collect(),
        Value::Object(o) => vec![(path, o)],
        _ => Vec::new(),
    }
}

/// Expands every sugar key that is not a whole-config transformation.
pub fn expand(root: &mut Value, ctx: &mut Ctx<'_>) {
    resources(root, ctx);
    unit_contents(root, ctx);
    ssh_keys(root, ctx);
    if !ctx.flavor.allows_clevis() {
        for (path, luks) in objects_at(root, &["storage", "luks"]) {
            if luks.contains_key("clevis") {
                ctx.error(
                    &join(&path, "clevis"),
                    "clevis is not supported in this spec version",
                );
            }
        }
    }
    modes(root, ctx);
}

fn resources(root: &mut Value, ctx: &mut Ctx<'_>) {
    let spec_minor = ctx.flavor.ignition_version().as_bytes()[2] - b'0';
    for (path, file) in objects_at(root, &["storage", "files"]) {
        if let Some(Value::Object(contents)) = file.get_mut("contents") {
            resource(&join(&path, "contents"), contents, true, ctx);
        }
        if let Some(Value::Array(appends)) = file.get_mut("append") {
            for (i, append) in appends.iter_mut().enumerate() {
                if let Value::Object(append) = append {
                    resource(&join(&path, format!("append.{i}")), append, true, ctx);
                }
            }
        }
    }
    // Ignition 3.0 has `compression` on file contents only.
    let compressible = spec_minor >= 1;
    for (path, luks) in objects_at(root, &["storage", "luks"]) {
        if let Some(Value::Object(key_file)) = luks.get_mut("keyFile") {
            resource(&join(&path, "keyFile"), key_file, compressible, ctx);
        }
    }
    for keys in [
        &["ignition", "config", "merge"][..],
        &["ignition", "config", "replace"][..],
        &["ignition", "security", "tls", "certificateAuthorities"][..],
    ] {
        for (path, obj) in objects_at(root, keys) {
            resource(&path, obj, compressible, ctx);
        }
    }
}

/// `inline`/`local`/`source` of one resource: at most one; the first two become a data URL.
fn resource(path: &str, obj: &mut Map<String, Value>, compressible: bool, ctx: &mut Ctx<'_>) {
    let local_allowed = ctx.flavor.has(Sugar::Local);
    let set = ["inline", "local", "source"]
        .iter()
        .filter(|k| obj.contains_key(**k) && (**k != "local" || local_allowed))
        .count();
    if set > 1 {
        ctx.error(
            path,
            "only one of the following can be set: inline, local, source",
        );
        return;
    }
    let contents = if let Some(inline) = obj.get("inline") {
        match inline {
            Value::String(s) => s.clone().into_bytes(),
            _ => {
                ctx.error(&join(path, "inline"), "inline must be a string");
                return;
            }
        }
    } else if let (true, Some(local)) = (local_allowed, obj.get("local")) {
        let Some(relative) = local.as_str() else {
            ctx.error(&join(path, "local"), "local must be a string");
            return;
        };
        match ctx.local(&join(path, "local"), relative) {
            Some(bytes) => bytes,
            None => return,
        }
    } else {
        return;
    };
    let user_compressed = obj
        .get("compression")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty());
    let (url, compression) = data_url(&contents, compressible && !user_compressed);
    obj.remove("inline");
    obj.remove("local");
    obj.insert("source".to_string(), Value::String(url));
    if let Some(compression) = compression {
        obj.insert(
            "compression".to_string(),
            Value::String(compression.to_string()),
        );
    }
}

/// `contents_local` of units and drop-ins.
fn unit_contents(root: &mut Value, ctx: &mut Ctx<'_>) {
    if !ctx.flavor.has(Sugar::ContentsLocal) {
        return;
    }
    for (path, unit) in objects_at(root, &["systemd", "units"]) {
        contents_local(&path, unit, ctx);
        if let Some(Value::Array(dropins)) = unit.get_mut("dropins") {
            for (i, dropin) in dropins.iter_mut().enumerate() {
                if let Value::Object(dropin) = dropin {
                    contents_local(&join(&path, format!("dropins.{i}")), dropin, ctx);
                }
            }
        }
    }
}

fn contents_local(path: &str, obj: &mut Map<String, Value>, ctx: &mut Ctx<'_>) {
    let Some(local) = obj.remove("contentsLocal") else {
        return;
    };
    let field = join(path, "contentsLocal");
    if obj.contains_key("contents") {
        ctx.error(
            &field,
            "only one of the following can be set: contents, contents_local",
        );
        return;
    }
    let Some(relative) = local.as_str() else {
        ctx.error(&field, "contents_local must be a string");
        return;
    };
    if let Some(bytes) = ctx.local(&field, relative) {
        match String::from_utf8(bytes) {
            Ok(text) => {
                obj.insert("contents".to_string(), Value::String(text));
            }
            Err(_) => ctx.error(&field, format!("{relative} is not UTF-8 text")),
        }
    }
}

/// `ssh_authorized_keys_local`: each non-empty line of each file is one key.
fn ssh_keys(root: &mut Value, ctx: &mut Ctx<'_>) {
    if !ctx.flavor.has(Sugar::SshKeysLocal) {
        return;
    }
    for (path, user) in objects_at(root, &["passwd", "users"]) {
        let Some(locals) = user.remove("sshAuthorizedKeysLocal") else {
            continue;
        };
        let field = join(&path, "sshAuthorizedKeysLocal");
        let Value::Array(locals) = locals else {
            ctx.error(
                &field,
                "ssh_authorized_keys_local must be a list of strings",
            );
            continue;
        };
        let mut keys = Vec::new();
        for (i, local) in locals.iter().enumerate() {
            let item = join(&field, i);
            let Some(relative) = local.as_str() else {
                ctx.error(&item, "ssh_authorized_keys_local must be a list of strings");
                continue;
            };
            if let Some(bytes) = ctx.local(&item, relative) {
                let text = String::from_utf8_lossy(&bytes);
                keys.extend(
                    text.lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| Value::String(l.to_string())),
                );
            }
        }
        match user.get_mut("sshAuthorizedKeys") {
            Some(Value::Array(existing)) => existing.extend(keys),
            _ => {
                user.insert("sshAuthorizedKeys".to_string(), Value::Array(keys));
            }
        }
    }
}

/// Warns on modes that look like octal written without the leading zero (`644`).
fn modes(root: &mut Value, ctx: &mut Ctx<'_>) {
    for (section, directory) in [("files", false), ("directories", true)] {
        for (path, node) in objects_at(root, &["storage", section]) {
            if let Some(mode) = node.get("mode").and_then(Value::as_i64) {
                if decimal_mode_looks_octal(mode, directory) {
                    ctx.warning(
                        &join(&path, "mode"),
                        "unreasonable mode would be reasonable if specified in octal; remember to add a leading zero",
                    );
                }
            }
        }
    }
}

fn decimal_mode_looks_octal(mode: i64, directory: bool) -> bool {
    if !(0..=7777).contains(&mode) {
        return false;
    }
    let mut corrected = 0;
    for divisor in [1000, 100, 10, 1] {
        let digit = (mode / divisor) % 10;
        if digit > 7 {
            return false;
        }
        corrected = (corrected << 3) | digit;
    }
    !is_typical_mode(mode, directory) && is_typical_mode(corrected, directory)
}

/// Whether a mode is one a person would plausibly mean (Butane's heuristic).
fn is_typical_mode(mode: i64, directory: bool) -> bool {
    if mode == 0 {
        return true;
    }
    let (mut had_r, mut had_w, mut had_x) = (false, false, false);
    for perm in [mode & 0o7, (mode >> 3) & 0o7, (mode >> 6) & 0o7] {
        let (r, w, x) = (perm & 4 != 0, perm & 2 != 0, perm & 1 != 0);
        if (!r && had_r) || (!w && had_w) || (!x && had_x) {
            return false;
        }
        if x && had_r && !had_x {
            return false;
        }
        if (w || x) && !r {
            return false;
        }
        had_r |= r;
        had_w |= w;
        had_x |= x;
    }
    if !had_r {
        return false;
    }
    if directory {
        had_x && mode & 0o4000 == 0 && (mode & 0o3000 == 0 || had_w)
    } else {
        (mode & 0o6000 == 0 || (had_x && mode & 2 == 0)) && mode & 0o1000 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_modes_that_read_as_octal_are_flagged() {
        assert!(decimal_mode_looks_octal(644, false));
        assert!(decimal_mode_looks_octal(755, true));
        assert!(!decimal_mode_looks_octal(0o644, false));
        assert!(!decimal_mode_looks_octal(420, false));
        assert!(!decimal_mode_looks_octal(0, false));
    }
}
