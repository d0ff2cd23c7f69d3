//! Spec 2.x configs (2.0.0–2.3.0, as Flatcar still accepts them) translated to spec 3.0.0 JSON
//! before decoding, following ign-converter's rules (as Flatcar's Ignition applies them):
//!
//! - `ignition.config.append` → `ignition.config.merge`; `replace`, timeouts and TLS CAs as is.
//! - Files, directories and links: the `filesystem` name becomes a path prefix (`root` is `/`;
//!   a filesystem declared with a `path` maps to that path without a leading `/sysroot`; a
//!   name that maps to nothing is an error naming the node). Files default to
//!   `overwrite: true` (2.x semantics; a file without a source is the empty file
//!   `data:,`); `append: true` becomes `append: [contents]` with `overwrite: false`.
//! - `networkd.units` become files under `/etc/systemd/network/` (mode 0644, drop-ins in
//!   `<unit>.d/`), which is what systemd-networkd reads.
//! - `systemd.units[].enable` (deprecated) counts as `enabled: true`; an explicit
//!   `enabled: false` wins.
//! - `storage.filesystems`: `root` is dropped (it is implied); `mount` fields move up; a
//!   referenced filesystem gains its `path`.
//! - Partition `size`/`start` in 512-byte sectors (2.0–2.2) become `sizeMiB`/`startMiB` when
//!   they are whole MiB.
//!
//! What cannot be translated is an error naming its JSON path: `mount.create` (2.0's
//! deprecated filesystem creation options), `passwd.users[].create` (deprecated), a sector
//! size that is not whole MiB, and nodes on a filesystem without a known path.
//! Keys this module does not know are left out and reported as `unused key` warnings.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::report::{join, Entry};

/// Whether `version` is a 2.x spec that [`translate`] accepts.
pub fn is_v2(version: &str) -> bool {
    matches!(version, "2.0.0" | "2.1.0" | "2.2.0" | "2.3.0")
}

/// Translates a 2.x config to a spec 3.0.0 JSON value, with warnings; or the errors.
pub(crate) fn translate(v2: &Value) -> Result<(Value, Vec<Entry>), Vec<Entry>> {
    let mut t = Translator::default();
    let out = t.config(v2);
    if t.entries.iter().any(Entry::is_error) {
        Err(t.entries)
    } else {
        Ok((out, t.entries))
    }
}

#[derive(Default)]
struct Translator {
    entries: Vec<Entry>,
}

/// Copies the listed keys of `from` into `to` (same spelling), warns about the rest except
/// `handled`.
fn copy(
    t: &mut Translator,
    from: &Map<String, Value>,
    path: &str,
    keys: &[&str],
    handled: &[&str],
) -> Map<String, Value> {
    let mut to = Map::new();
    for (k, v) in from {
        if keys.contains(&k.as_str()) {
            if !v.is_null() {
                to.insert(k.clone(), v.clone());
            }
        } else if !handled.contains(&k.as_str()) {
            t.entries
                .push(Entry::warning(join(path, k), format!("unused key {k}")));
        }
    }
    to
}

fn objects(v: Option<&Value>) -> impl Iterator<Item = (usize, &Map<String, Value>)> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, v)| v.as_object().map(|o| (i, o)))
}

fn object(v: Option<&Value>) -> Option<&Map<String, Value>> {
    v.and_then(Value::as_object)
}

impl Translator {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.entries.push(Entry::error(path, message));
    }

    fn config(&mut self, v2: &Value) -> Value {
        let Some(root) = v2.as_object() else {
            return json!({});
        };
        let mut out = copy(
            self,
            root,
            "",
            &[],
            &["ignition", "storage", "systemd", "networkd", "passwd"],
        );
        out.insert(
            "ignition".into(),
            self.ignition(object(root.get("ignition"))),
        );
        let mut files_from_networkd = Vec::new();
        if let Some(networkd) = object(root.get("networkd")) {
            files_from_networkd = self.networkd(networkd);
        }
        let mut storage = self.storage(object(root.get("storage")));
        if !files_from_networkd.is_empty() {
            let files = storage
                .entry("files")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(files) = files {
                files.extend(files_from_networkd);
            }
        }
        if !storage.is_empty() {
            out.insert("storage".into(), Value::Object(storage));
        }
        if let Some(systemd) = object(root.get("systemd")) {
            out.insert("systemd".into(), Value::Object(self.systemd(systemd)));
        }
        if let Some(passwd) = object(root.get("passwd")) {
            out.insert("passwd".into(), Value::Object(self.passwd(passwd)));
        }
        Value::Object(out)
    }

    fn ignition(&mut self, ignition: Option<&Map<String, Value>>) -> Value {
        let mut out = Map::new();
        out.insert("version".into(), json!("3.0.0"));
        let Some(ignition) = ignition else {
            return Value::Object(out);
        };
        let rest = copy(
            self,
            ignition,
            "ignition",
            &["timeouts", "security"],
            &["version", "config"],
        );
        out.extend(rest);
        if let Some(config) = object(ignition.get("config")) {
            let mut c = copy(self, config, "ignition.config", &["replace"], &["append"]);
            if let Some(append) = config.get("append") {
                c.insert("merge".into(), append.clone());
            }
            out.insert("config".into(), Value::Object(c));
        }
        Value::Object(out)
    }

    fn networkd(&mut self, networkd: &Map<String, Value>) -> Vec<Value> {
        let _ = copy(self, networkd, "networkd", &[], &["units"]);
        let mut files = Vec::new();
        for (i, unit) in objects(networkd.get("units")) {
            let path = format!("networkd.units.{i}");
            let _ = copy(self, unit, &path, &[], &["name", "contents", "dropins"]);
            let Some(name) = unit.get("name").and_then(Value::as_str) else {
                self.error(&join(&path, "name"), "networkd unit has no name");
                continue;
            };
            if name.contains('/') || name.is_empty() {
                self.error(&join(&path, "name"), "invalid networkd unit name");
                continue;
            }
            if let Some(contents) = unit.get("contents").and_then(Value::as_str) {
                files.push(network_file(
                    &format!("/etc/systemd/network/{name}"),
                    contents,
                ));
            }
            for (j, dropin) in objects(unit.get("dropins")) {
                let dpath = format!("{path}.dropins.{j}");
                let _ = copy(self, dropin, &dpath, &[], &["name", "contents"]);
                let dname = dropin.get("name").and_then(Value::as_str).unwrap_or("");
                if dname.is_empty() || dname.contains('/') {
                    self.error(&join(&dpath, "name"), "invalid networkd drop-in name");
                    continue;
                }
                let contents = dropin.get("contents").and_then(Value::as_str).unwrap_or("");
                files.push(network_file(
                    &format!("/etc/systemd/network/{name}.d/{dname}"),
                    contents,
                ));
            }
        }
        files
    }

    fn storage(&mut self, storage: Option<&Map<String, Value>>) -> Map<String, Value> {
        let mut out = Map::new();
        let Some(storage) = storage else {
            return out;
        };
        let _ = copy(
            self,
            storage,
            "storage",
            &[],
            &[
                "disks",
                "raid",
                "filesystems",
                "files",
                "directories",
                "links",
            ],
        );
        // Filesystem names → paths.
        let mut paths: BTreeMap<String, Option<String>> = BTreeMap::new();
        paths.insert("root".into(), Some("/".into()));
        for (_, fs) in objects(storage.get("filesystems")) {
            if let Some(name) = fs.get("name").and_then(Value::as_str) {
                if name == "root" {
                    continue;
                }
                let path = fs.get("path").and_then(Value::as_str).map(|p| {
                    let p = p.strip_prefix("/sysroot").unwrap_or(p);
                    if p.is_empty() {
                        "/".to_string()
                    } else {
                        p.to_string()
                    }
                });
                paths.insert(name.to_string(), path);
            }
        }
        if let Some(disks) = storage.get("disks").and_then(Value::as_array) {
            let disks: Vec<Value> = disks
                .iter()
                .enumerate()
                .map(|(i, d)| self.disk(d, &format!("storage.disks.{i}")))
                .collect();
            out.insert("disks".into(), Value::Array(disks));
        }
        if let Some(raid) = storage.get("raid").and_then(Value::as_array) {
            let raid: Vec<Value> = raid
                .iter()
                .enumerate()
                .map(|(i, r)| match r.as_object() {
                    Some(r) => Value::Object(copy(
                        self,
                        r,
                        &format!("storage.raid.{i}"),
                        &["name", "level", "devices", "spares", "options"],
                        &[],
                    )),
                    None => r.clone(),
                })
                .collect();
            out.insert("raid".into(), Value::Array(raid));
        }
        let mut filesystems = Vec::new();
        for (i, fs) in objects(storage.get("filesystems")) {
            let path = format!("storage.filesystems.{i}");
            let _ = copy(self, fs, &path, &[], &["name", "mount", "path"]);
            let name = fs.get("name").and_then(Value::as_str).unwrap_or("");
            if name == "root" {
                continue;
            }
            let Some(mount) = object(fs.get("mount")) else {
                continue; // a `path`-only filesystem only names a prefix
            };
            let mpath = join(&path, "mount");
            if mount.contains_key("create") {
                self.error(
                    &join(&mpath, "create"),
                    "mount.create (deprecated in 2.x) cannot be translated to spec 3; use wipeFilesystem and options",
                );
            }
            let mut out_fs = copy(
                self,
                mount,
                &mpath,
                &[
                    "device",
                    "format",
                    "wipeFilesystem",
                    "label",
                    "uuid",
                    "options",
                ],
                &["create"],
            );
            if let Some(Some(p)) = paths.get(name) {
                out_fs.insert("path".into(), json!(p));
            }
            filesystems.push(Value::Object(out_fs));
        }
        if storage.contains_key("filesystems") {
            out.insert("filesystems".into(), Value::Array(filesystems));
        }
        for section in ["files", "directories", "links"] {
            if let Some(nodes) = storage.get(section).and_then(Value::as_array) {
                let nodes: Vec<Value> = nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| self.node(section, n, &format!("storage.{section}.{i}"), &paths))
                    .collect();
                out.insert(section.into(), Value::Array(nodes));
            }
        }
        out
    }

    fn disk(&mut self, disk: &Value, path: &str) -> Value {
        let Some(d) = disk.as_object() else {
            return disk.clone();
        };
        let mut out = copy(self, d, path, &["device", "wipeTable"], &["partitions"]);
        if let Some(parts) = d.get("partitions").and_then(Value::as_array) {
            let parts: Vec<Value> = parts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let ppath = format!("{path}.partitions.{i}");
                    let Some(p) = p.as_object() else {
                        return p.clone();
                    };
                    let mut o = copy(
                        self,
                        p,
                        &ppath,
                        &[
                            "label",
                            "number",
                            "sizeMiB",
                            "startMiB",
                            "typeGuid",
                            "guid",
                            "wipePartitionEntry",
                            "shouldExist",
                        ],
                        &["size", "start"],
                    );
                    for (sectors_key, mib_key) in [("size", "sizeMiB"), ("start", "startMiB")] {
                        if let Some(sectors) = p.get(sectors_key).and_then(Value::as_i64) {
                            if sectors % 2048 == 0 {
                                o.insert(mib_key.into(), json!(sectors / 2048));
                            } else {
                                self.error(
                                    &join(&ppath, sectors_key),
                                    format!("{sectors} sectors is not a whole number of MiB; spec 3 sizes are in MiB"),
                                );
                            }
                        }
                    }
                    Value::Object(o)
                })
                .collect();
            out.insert("partitions".into(), Value::Array(parts));
        }
        Value::Object(out)
    }

    fn node(
        &mut self,
        section: &str,
        node: &Value,
        path: &str,
        paths: &BTreeMap<String, Option<String>>,
    ) -> Value {
        let Some(n) = node.as_object() else {
            return node.clone();
        };
        let keys: &[&str] = match section {
            "files" => &["mode", "user", "group", "overwrite"],
            "directories" => &["mode", "user", "group", "overwrite"],
            _ => &["target", "hard", "user", "group", "overwrite"],
        };
        let mut out = copy(
            self,
            n,
            path,
            keys,
            &["filesystem", "path", "contents", "append"],
        );
        let fs = n
            .get("filesystem")
            .and_then(Value::as_str)
            .unwrap_or("root");
        let prefix = match paths.get(fs) {
            Some(Some(prefix)) => prefix.clone(),
            _ => {
                self.error(
                    &join(path, "filesystem"),
                    format!("filesystem {fs:?} has no path that spec 3 could write to; declare it with a path or use \"root\""),
                );
                "/".to_string()
            }
        };
        if let Some(p) = n.get("path").and_then(Value::as_str) {
            let joined = if prefix == "/" {
                p.to_string()
            } else {
                format!(
                    "{}/{}",
                    prefix.trim_end_matches('/'),
                    p.trim_start_matches('/')
                )
            };
            out.insert("path".into(), json!(joined));
        } else if let Some(p) = n.get("path") {
            out.insert("path".into(), p.clone());
        }
        if section == "files" {
            if !out.contains_key("overwrite") {
                out.insert("overwrite".into(), json!(true));
            }
            let append = n.get("append") == Some(&Value::Bool(true));
            if let Some(contents) = object(n.get("contents")) {
                let c = copy(
                    self,
                    contents,
                    &join(path, "contents"),
                    &["source", "compression", "verification"],
                    &[],
                );
                if append {
                    out.insert("append".into(), json!([c]));
                } else {
                    out.insert("contents".into(), Value::Object(c));
                }
            }
            if append {
                out.insert("overwrite".into(), json!(false));
            } else {
                // 2.x writes an empty file when there is no source; spec 3 needs a source to
                // overwrite, so the empty file is spelled out.
                let contents = out.entry("contents").or_insert_with(|| json!({}));
                if contents
                    .get("source")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    contents["source"] = json!("data:,");
                }
            }
        }
        Value::Object(out)
    }

    fn systemd(&mut self, systemd: &Map<String, Value>) -> Map<String, Value> {
        let mut out = copy(self, systemd, "systemd", &[], &["units"]);
        let mut units = Vec::new();
        for (i, unit) in objects(systemd.get("units")) {
            let path = format!("systemd.units.{i}");
            let mut u = copy(
                self,
                unit,
                &path,
                &["name", "mask", "contents", "dropins"],
                &["enable", "enabled"],
            );
            let enable = unit.get("enable") == Some(&Value::Bool(true));
            match unit.get("enabled") {
                Some(Value::Bool(false)) => {
                    u.insert("enabled".into(), json!(false));
                }
                Some(Value::Bool(true)) => {
                    u.insert("enabled".into(), json!(true));
                }
                Some(other) if !other.is_null() => {
                    u.insert("enabled".into(), other.clone());
                }
                _ if enable => {
                    u.insert("enabled".into(), json!(true));
                }
                _ => {}
            }
            units.push(Value::Object(u));
        }
        if systemd.contains_key("units") {
            out.insert("units".into(), Value::Array(units));
        }
        out
    }

    fn passwd(&mut self, passwd: &Map<String, Value>) -> Map<String, Value> {
        let mut out = copy(self, passwd, "passwd", &["groups"], &["users"]);
        let mut users = Vec::new();
        for (i, user) in objects(passwd.get("users")) {
            let path = format!("passwd.users.{i}");
            if user.contains_key("create") {
                self.error(
                    &join(&path, "create"),
                    "passwd.users.create (deprecated in 2.x) cannot be translated to spec 3; set its fields on the user",
                );
            }
            users.push(Value::Object(copy(
                self,
                user,
                &path,
                &[
                    "name",
                    "passwordHash",
                    "sshAuthorizedKeys",
                    "uid",
                    "gecos",
                    "homeDir",
                    "noCreateHome",
                    "primaryGroup",
                    "groups",
                    "noUserGroup",
                    "noLogInit",
                    "shell",
                    "system",
                ],
                &["create"],
            )));
        }
        if passwd.contains_key("users") {
            out.insert("users".into(), Value::Array(users));
        }
        out
    }
}

fn network_file(path: &str, contents: &str) -> Value {
    let encoded: String =
        percent_encoding::utf8_percent_encode(contents, percent_encoding::NON_ALPHANUMERIC)
            .collect();
    json!({
        "path": path,
        "mode": 420,
        "overwrite": true,
        "contents": {"source": format!("data:,{encoded}")},
    })
}

#[cfg(test)]
mod tests;
