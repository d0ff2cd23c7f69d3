//! Decoding a JSON value of a given spec version into the latest-spec [`Config`].
//!
//! Contract:
//! - Keys are looked up exactly; a key that only matches case-insensitively is still read (Go's
//!   `encoding/json` quirk that Ignition inherits) and is also reported as unused.
//! - Keys that the config's spec version does not have (e.g. `proxy` in 3.0.0) are not read and
//!   are reported as `unused key <k>` warnings, exactly like unknown keys.
//! - `null` means "absent" everywhere; object fields accept `null` and `{}`.
//! - A value of the wrong JSON type is a fatal type error naming its path. Decoding continues
//!   with the zero value so that the first type error is reported, never a panic.
//! - Translation to the latest spec happens here: for specs before 3.6.0 setuid/setgid/sticky
//!   mode bits produce a warning and are masked off.

use serde_json::{Map, Value};

use crate::model::*;
use crate::report::{join, Entry};
use crate::version::Spec;

/// Decodes `root` (already known to be at spec `spec`) into a latest-spec config.
///
/// Returns the config, the warnings, and the first type error if any.
pub(crate) fn decode(root: &Value, spec: Spec) -> (Config, Vec<Entry>, Option<Entry>) {
    let mut d = Decoder {
        spec,
        warnings: Vec::new(),
        type_error: None,
    };
    let config = d.config(root);
    (config, d.warnings, d.type_error)
}

/// A JSON object being read; remembers which keys were consumed.
struct Obj<'v> {
    map: Option<&'v Map<String, Value>>,
    path: String,
    used: Vec<&'v str>,
}

impl<'v> Obj<'v> {
    /// Looks up `key` (exact, else case-insensitive); `null` reads as absent.
    fn get(&mut self, key: &str) -> Option<(&'v Value, String)> {
        let map = self.map?;
        let (k, v) = match map.get_key_value(key) {
            Some(kv) => kv,
            None => map.iter().find(|(k, _)| k.eq_ignore_ascii_case(key))?,
        };
        if k == key {
            self.used.push(k.as_str());
        }
        if v.is_null() {
            None
        } else {
            Some((v, join(&self.path, key)))
        }
    }
}

struct Decoder {
    spec: Spec,
    warnings: Vec<Entry>,
    type_error: Option<Entry>,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Decoder {
    fn type_mismatch(&mut self, path: &str, got: &Value, want: &str) {
        if self.type_error.is_none() {
            self.type_error = Some(Entry::error(
                path,
                format!(
                    "cannot unmarshal {} into field of type {want}",
                    json_type(got)
                ),
            ));
        }
    }

    fn open<'v>(&mut self, v: Option<&'v Value>, path: &str) -> Obj<'v> {
        let map = match v {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => {
                self.type_mismatch(path, other, "object");
                None
            }
        };
        Obj {
            map,
            path: path.to_string(),
            used: Vec::new(),
        }
    }

    fn close(&mut self, o: Obj<'_>) {
        if let Some(map) = o.map {
            for k in map.keys() {
                if !o.used.contains(&k.as_str()) {
                    self.warnings
                        .push(Entry::warning(join(&o.path, k), format!("unused key {k}")));
                }
            }
        }
    }

    /// Reads `key` only if the spec has it (`since`).
    fn field<'v>(&self, o: &mut Obj<'v>, key: &str, since: Spec) -> Option<(&'v Value, String)> {
        if self.spec < since {
            return None;
        }
        o.get(key)
    }

    fn opt_str(&mut self, o: &mut Obj<'_>, key: &str, since: Spec) -> Option<String> {
        let (v, path) = self.field(o, key, since)?;
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.type_mismatch(&path, other, "string");
                None
            }
        }
    }

    fn req_str(&mut self, o: &mut Obj<'_>, key: &str) -> String {
        self.opt_str(o, key, Spec::V3_0).unwrap_or_default()
    }

    fn opt_bool(&mut self, o: &mut Obj<'_>, key: &str, since: Spec) -> Option<bool> {
        let (v, path) = self.field(o, key, since)?;
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                self.type_mismatch(&path, other, "bool");
                None
            }
        }
    }

    fn opt_int(&mut self, o: &mut Obj<'_>, key: &str, since: Spec) -> Option<i64> {
        let (v, path) = self.field(o, key, since)?;
        match v.as_i64() {
            Some(i) => Some(i),
            None => {
                self.type_mismatch(&path, v, "int");
                None
            }
        }
    }

    fn list<T>(
        &mut self,
        o: &mut Obj<'_>,
        key: &str,
        since: Spec,
        mut item: impl FnMut(&mut Self, &Value, &str) -> T,
    ) -> Vec<T> {
        let Some((v, path)) = self.field(o, key, since) else {
            return Vec::new();
        };
        match v {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, it)| item(self, it, &join(&path, i)))
                .collect(),
            other => {
                self.type_mismatch(&path, other, "array");
                Vec::new()
            }
        }
    }

    fn str_list(&mut self, o: &mut Obj<'_>, key: &str, since: Spec) -> Vec<String> {
        self.list(o, key, since, |d, v, path| match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => {
                d.type_mismatch(path, other, "string");
                String::new()
            }
        })
    }

    fn sub<'v>(&mut self, o: &mut Obj<'v>, key: &str, since: Spec) -> Obj<'v> {
        match self.field(o, key, since) {
            Some((v, path)) => self.open(Some(v), &path),
            None => Obj {
                map: None,
                path: join(&o.path, key),
                used: Vec::new(),
            },
        }
    }

    fn config(&mut self, root: &Value) -> Config {
        let mut o = self.open(Some(root), "$");
        let ignition = {
            let mut i = self.sub(&mut o, "ignition", Spec::V3_0);
            let r = self.ignition(&mut i);
            self.close(i);
            r
        };
        let kernel_arguments = {
            let mut k = self.sub(&mut o, "kernelArguments", Spec::V3_3);
            let r = KernelArguments {
                should_exist: self.str_list(&mut k, "shouldExist", Spec::V3_3),
                should_not_exist: self.str_list(&mut k, "shouldNotExist", Spec::V3_3),
            };
            self.close(k);
            r
        };
        let passwd = {
            let mut p = self.sub(&mut o, "passwd", Spec::V3_0);
            let r = Passwd {
                groups: self.list(&mut p, "groups", Spec::V3_0, Self::group),
                users: self.list(&mut p, "users", Spec::V3_0, Self::user),
            };
            self.close(p);
            r
        };
        let storage = {
            let mut s = self.sub(&mut o, "storage", Spec::V3_0);
            let r = self.storage(&mut s);
            self.close(s);
            r
        };
        let systemd = {
            let mut s = self.sub(&mut o, "systemd", Spec::V3_0);
            let r = Systemd {
                units: self.list(&mut s, "units", Spec::V3_0, Self::unit),
            };
            self.close(s);
            r
        };
        self.close(o);
        Config {
            ignition,
            kernel_arguments,
            passwd,
            storage,
            systemd,
        }
    }

    fn ignition(&mut self, i: &mut Obj<'_>) -> Ignition {
        let version = self.req_str(i, "version");
        let mut c = self.sub(i, "config", Spec::V3_0);
        let config = IgnitionConfig {
            merge: self.list(&mut c, "merge", Spec::V3_0, |d, v, p| {
                d.resource(v, p, false)
            }),
            replace: match self.field(&mut c, "replace", Spec::V3_0) {
                Some((v, p)) => self.resource(v, &p, false),
                None => Resource::default(),
            },
        };
        self.close(c);
        let mut p = self.sub(i, "proxy", Spec::V3_1);
        let proxy = Proxy {
            http_proxy: self.opt_str(&mut p, "httpProxy", Spec::V3_1),
            https_proxy: self.opt_str(&mut p, "httpsProxy", Spec::V3_1),
            no_proxy: self.str_list(&mut p, "noProxy", Spec::V3_1),
        };
        self.close(p);
        let mut s = self.sub(i, "security", Spec::V3_0);
        let mut t = self.sub(&mut s, "tls", Spec::V3_0);
        let tls = Tls {
            certificate_authorities: self.list(
                &mut t,
                "certificateAuthorities",
                Spec::V3_0,
                |d, v, p| d.resource(v, p, false),
            ),
        };
        self.close(t);
        self.close(s);
        let mut t = self.sub(i, "timeouts", Spec::V3_0);
        let timeouts = Timeouts {
            http_response_headers: self.opt_int(&mut t, "httpResponseHeaders", Spec::V3_0),
            http_total: self.opt_int(&mut t, "httpTotal", Spec::V3_0),
        };
        self.close(t);
        Ignition {
            version,
            config,
            proxy,
            security: Security { tls },
            timeouts,
        }
    }

    /// A resource; `file_like` resources (file contents/append, luks key files) had
    /// `compression` since 3.0, the others since 3.1.
    fn resource(&mut self, v: &Value, path: &str, file_like: bool) -> Resource {
        let mut o = self.open(Some(v), path);
        let compression_since = if file_like { Spec::V3_0 } else { Spec::V3_1 };
        let compression = self.opt_str(&mut o, "compression", compression_since);
        let http_headers = self.list(&mut o, "httpHeaders", Spec::V3_1, |d, v, p| {
            let mut h = d.open(Some(v), p);
            let r = HttpHeader {
                name: d.req_str(&mut h, "name"),
                value: d.opt_str(&mut h, "value", Spec::V3_0),
            };
            d.close(h);
            r
        });
        let source = self.opt_str(&mut o, "source", Spec::V3_0);
        let mut ver = self.sub(&mut o, "verification", Spec::V3_0);
        let verification = Verification {
            hash: self.opt_str(&mut ver, "hash", Spec::V3_0),
        };
        self.close(ver);
        self.close(o);
        Resource {
            compression,
            http_headers,
            source,
            verification,
        }
    }

    fn sub_resource(&mut self, o: &mut Obj<'_>, key: &str, since: Spec) -> Resource {
        match self.field(o, key, since) {
            Some((v, p)) => self.resource(v, &p, true),
            None => Resource::default(),
        }
    }

    fn owner(&mut self, o: &mut Obj<'_>, key: &str) -> NodeOwner {
        let mut u = self.sub(o, key, Spec::V3_0);
        let r = NodeOwner {
            id: self.opt_int(&mut u, "id", Spec::V3_0),
            name: self.opt_str(&mut u, "name", Spec::V3_0),
        };
        self.close(u);
        r
    }

    fn node(&mut self, o: &mut Obj<'_>) -> Node {
        Node {
            path: self.req_str(o, "path"),
            overwrite: self.opt_bool(o, "overwrite", Spec::V3_0),
            user: self.owner(o, "user"),
            group: self.owner(o, "group"),
        }
    }

    /// Reads a mode; before 3.6 special bits warn and are masked (Ignition's translation).
    fn mode(&mut self, o: &mut Obj<'_>) -> Option<i64> {
        let mode = self.opt_int(o, "mode", Spec::V3_0)?;
        if self.spec < Spec::V3_6 && (0..=0o7777).contains(&mode) && mode & 0o7000 != 0 {
            self.warnings.push(Entry::warning(
                join(&o.path, "mode"),
                "setuid/setgid/sticky bits are not supported or functional in spec versions older than 3.6.0",
            ));
            return Some(mode & 0o777);
        }
        Some(mode)
    }

    fn storage(&mut self, s: &mut Obj<'_>) -> Storage {
        let directories = self.list(s, "directories", Spec::V3_0, |d, v, p| {
            let mut o = d.open(Some(v), p);
            let r = Directory {
                node: d.node(&mut o),
                mode: d.mode(&mut o),
            };
            d.close(o);
            r
        });
        let disks = self.list(s, "disks", Spec::V3_0, |d, v, p| {
            let mut o = d.open(Some(v), p);
            let r = Disk {
                device: d.req_str(&mut o, "device"),
                partitions: d.list(&mut o, "partitions", Spec::V3_0, Self::partition),
                wipe_table: d.opt_bool(&mut o, "wipeTable", Spec::V3_0),
            };
            d.close(o);
            r
        });
        let files = self.list(s, "files", Spec::V3_0, |d, v, p| {
            let mut o = d.open(Some(v), p);
            let node = d.node(&mut o);
            let contents = d.sub_resource(&mut o, "contents", Spec::V3_0);
            let append = d.list(&mut o, "append", Spec::V3_0, |d, v, p| {
                d.resource(v, p, true)
            });
            let mode = d.mode(&mut o);
            d.close(o);
            File {
                node,
                contents,
                append,
                mode,
            }
        });
        let filesystems = self.list(s, "filesystems", Spec::V3_0, |d, v, p| {
            let mut o = d.open(Some(v), p);
            let r = Filesystem {
                device: d.req_str(&mut o, "device"),
                format: d.opt_str(&mut o, "format", Spec::V3_0),
                label: d.opt_str(&mut o, "label", Spec::V3_0),
                mount_options: d.str_list(&mut o, "mountOptions", Spec::V3_1),
                options: d.str_list(&mut o, "options", Spec::V3_0),
                path: d.opt_str(&mut o, "path", Spec::V3_0),
                uuid: d.opt_str(&mut o, "uuid", Spec::V3_0),
                wipe_filesystem: d.opt_bool(&mut o, "wipeFilesystem", Spec::V3_0),
            };
            d.close(o);
            r
        });
        let links = self.list(s, "links", Spec::V3_0, |d, v, p| {
            let mut o = d.open(Some(v), p);
            let r = Link {
                node: d.node(&mut o),
                target: d.opt_str(&mut o, "target", Spec::V3_0),
                hard: d.opt_bool(&mut o, "hard", Spec::V3_0),
            };
            d.close(o);
            r
        });
        let luks = self.list(s, "luks", Spec::V3_2, Self::luks);
        let raid = self.list(s, "raid", Spec::V3_0, |d, v, p| {
            let mut o = d.open(Some(v), p);
            let r = Raid {
                devices: d.str_list(&mut o, "devices", Spec::V3_0),
                level: d.opt_str(&mut o, "level", Spec::V3_0),
                name: d.req_str(&mut o, "name"),
                options: d.str_list(&mut o, "options", Spec::V3_0),
                spares: d.opt_int(&mut o, "spares", Spec::V3_0),
            };
            d.close(o);
            r
        });
        Storage {
            directories,
            disks,
            files,
            filesystems,
            links,
            luks,
            raid,
        }
    }

    fn partition(&mut self, v: &Value, p: &str) -> Partition {
        let mut o = self.open(Some(v), p);
        let r = Partition {
            guid: self.opt_str(&mut o, "guid", Spec::V3_0),
            label: self.opt_str(&mut o, "label", Spec::V3_0),
            number: self.opt_int(&mut o, "number", Spec::V3_0).unwrap_or(0),
            resize: self.opt_bool(&mut o, "resize", Spec::V3_2),
            should_exist: self.opt_bool(&mut o, "shouldExist", Spec::V3_0),
            size_mib: self.opt_int(&mut o, "sizeMiB", Spec::V3_0),
            start_mib: self.opt_int(&mut o, "startMiB", Spec::V3_0),
            type_guid: self.opt_str(&mut o, "typeGuid", Spec::V3_0),
            wipe_partition_entry: self.opt_bool(&mut o, "wipePartitionEntry", Spec::V3_0),
        };
        self.close(o);
        r
    }

    fn luks(&mut self, v: &Value, p: &str) -> Luks {
        let mut o = self.open(Some(v), p);
        let mut c = self.sub(&mut o, "cex", Spec::V3_5);
        let cex = Cex {
            enabled: self.opt_bool(&mut c, "enabled", Spec::V3_5),
        };
        self.close(c);
        let mut cl = self.sub(&mut o, "clevis", Spec::V3_2);
        let mut cu = self.sub(&mut cl, "custom", Spec::V3_2);
        let custom = ClevisCustom {
            config: self.opt_str(&mut cu, "config", Spec::V3_2),
            needs_network: self.opt_bool(&mut cu, "needsNetwork", Spec::V3_2),
            pin: self.opt_str(&mut cu, "pin", Spec::V3_2),
        };
        self.close(cu);
        let tang = self.list(&mut cl, "tang", Spec::V3_2, |d, v, p| {
            let mut t = d.open(Some(v), p);
            let r = Tang {
                advertisement: d.opt_str(&mut t, "advertisement", Spec::V3_4),
                thumbprint: d.opt_str(&mut t, "thumbprint", Spec::V3_2),
                url: d.req_str(&mut t, "url"),
            };
            d.close(t);
            r
        });
        let clevis = Clevis {
            custom,
            tang,
            threshold: self.opt_int(&mut cl, "threshold", Spec::V3_2),
            tpm2: self.opt_bool(&mut cl, "tpm2", Spec::V3_2),
        };
        self.close(cl);
        let r = Luks {
            cex,
            clevis,
            device: self.opt_str(&mut o, "device", Spec::V3_2),
            discard: self.opt_bool(&mut o, "discard", Spec::V3_4),
            key_file: self.sub_resource(&mut o, "keyFile", Spec::V3_2),
            label: self.opt_str(&mut o, "label", Spec::V3_2),
            name: self.req_str(&mut o, "name"),
            open_options: self.str_list(&mut o, "openOptions", Spec::V3_4),
            options: self.str_list(&mut o, "options", Spec::V3_2),
            uuid: self.opt_str(&mut o, "uuid", Spec::V3_2),
            wipe_volume: self.opt_bool(&mut o, "wipeVolume", Spec::V3_2),
        };
        self.close(o);
        r
    }

    fn unit(&mut self, v: &Value, p: &str) -> Unit {
        let mut o = self.open(Some(v), p);
        let r = Unit {
            contents: self.opt_str(&mut o, "contents", Spec::V3_0),
            dropins: self.list(&mut o, "dropins", Spec::V3_0, |d, v, p| {
                let mut di = d.open(Some(v), p);
                let r = Dropin {
                    contents: d.opt_str(&mut di, "contents", Spec::V3_0),
                    name: d.req_str(&mut di, "name"),
                };
                d.close(di);
                r
            }),
            enabled: self.opt_bool(&mut o, "enabled", Spec::V3_0),
            mask: self.opt_bool(&mut o, "mask", Spec::V3_0),
            name: self.req_str(&mut o, "name"),
        };
        self.close(o);
        r
    }

    fn user(&mut self, v: &Value, p: &str) -> PasswdUser {
        let mut o = self.open(Some(v), p);
        let r = PasswdUser {
            gecos: self.opt_str(&mut o, "gecos", Spec::V3_0),
            groups: self.str_list(&mut o, "groups", Spec::V3_0),
            home_dir: self.opt_str(&mut o, "homeDir", Spec::V3_0),
            name: self.req_str(&mut o, "name"),
            no_create_home: self.opt_bool(&mut o, "noCreateHome", Spec::V3_0),
            no_log_init: self.opt_bool(&mut o, "noLogInit", Spec::V3_0),
            no_user_group: self.opt_bool(&mut o, "noUserGroup", Spec::V3_0),
            password_hash: self.opt_str(&mut o, "passwordHash", Spec::V3_0),
            primary_group: self.opt_str(&mut o, "primaryGroup", Spec::V3_0),
            shell: self.opt_str(&mut o, "shell", Spec::V3_0),
            should_exist: self.opt_bool(&mut o, "shouldExist", Spec::V3_2),
            ssh_authorized_keys: self.str_list(&mut o, "sshAuthorizedKeys", Spec::V3_0),
            system: self.opt_bool(&mut o, "system", Spec::V3_0),
            uid: self.opt_int(&mut o, "uid", Spec::V3_0),
        };
        self.close(o);
        r
    }

    fn group(&mut self, v: &Value, p: &str) -> PasswdGroup {
        let mut o = self.open(Some(v), p);
        let r = PasswdGroup {
            gid: self.opt_int(&mut o, "gid", Spec::V3_0),
            name: self.req_str(&mut o, "name"),
            password_hash: self.opt_str(&mut o, "passwordHash", Spec::V3_0),
            should_exist: self.opt_bool(&mut o, "shouldExist", Spec::V3_2),
            system: self.opt_bool(&mut o, "system", Spec::V3_0),
        };
        self.close(o);
        r
    }
}
