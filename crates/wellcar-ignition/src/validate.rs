//! Semantic validation with Ignition's rules and messages (coreos/ignition `config/v3_6/types`,
//! `config/validate`).
//!
//! Every finding names the JSON path of the offending field. Rules that changed between spec
//! versions (sha256 since 3.1, `gs://` since 3.2, `none` format and required link targets since
//! 3.3, `arn:` since 3.4) are checked against the version the config was written in.
//! Validation never fetches anything and never touches the filesystem.

use std::collections::{HashMap, HashSet};

use crate::model::*;
use crate::report::Entry;
use crate::unitfile::{parse_unit, InstallSection};
use crate::version::Spec;

/// Validates a latest-spec config (e.g. the result of a merge) with the 3.6.0 rules.
pub fn validate(config: &Config) -> Vec<Entry> {
    validate_for_spec(config, Spec::V3_6)
}

/// Validates `config`, which was written in spec `spec` and translated to the latest model.
pub(crate) fn validate_for_spec(config: &Config, spec: Spec) -> Vec<Entry> {
    let mut v = Validator {
        spec,
        out: Vec::new(),
    };
    v.ignition(&config.ignition);
    v.storage(&config.storage);
    v.units(&config.systemd);
    v.node_conflicts(config);
    v.duplicates(config);
    v.out
}

struct Validator {
    spec: Spec,
    out: Vec<Entry>,
}

/// Go's `path.Clean` for the absolute paths Ignition checks.
pub(crate) fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Ignition's `validatePath`.
pub(crate) fn path_problem(p: &str) -> Option<&'static str> {
    if p.is_empty() {
        Some("path not specified")
    } else if !p.starts_with('/') {
        Some("path not absolute")
    } else if clean_path(p) != p {
        Some("path is not fully simplified")
    } else {
        None
    }
}

/// The scheme of a URL (text before the first `:`), if it looks like one.
pub(crate) fn url_scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    (first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))).then_some(scheme)
}

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn arn_ok(url: &str) -> bool {
    // arn:partition:s3:region:account:resource
    let parts: Vec<&str> = url.splitn(6, ':').collect();
    if parts.len() != 6 || parts[2] != "s3" {
        return false;
    }
    let resource = parts[5];
    if let Some(rest) = resource.strip_prefix("accesspoint/") {
        return match rest.split_once("/object/") {
            Some((ap, key)) => !ap.is_empty() && !key.is_empty(),
            None => false,
        };
    }
    match resource.split_once('/') {
        Some((bucket, key)) => !bucket.is_empty() && !key.is_empty(),
        None => false,
    }
}

impl Validator {
    fn err(&mut self, path: String, msg: impl Into<String>) {
        self.out.push(Entry::error(path, msg));
    }

    fn warn(&mut self, path: String, msg: impl Into<String>) {
        self.out.push(Entry::warning(path, msg));
    }

    fn path(&mut self, at: String, p: &str) {
        if let Some(problem) = path_problem(p) {
            self.err(at, problem);
        }
    }

    /// Returns Ignition's message for a bad URL, or `None` when it is acceptable.
    fn url_problem(&self, url: &str) -> Option<&'static str> {
        if url.is_empty() {
            return None;
        }
        if url.chars().any(|c| c.is_control() || c == ' ') {
            return Some("unable to parse url");
        }
        let Some(scheme) = url_scheme(url) else {
            return Some("invalid url scheme");
        };
        match scheme {
            "http" | "https" | "tftp" => None,
            "gs" if self.spec >= Spec::V3_2 => None,
            "arn" if self.spec >= Spec::V3_4 => (!arn_ok(url)).then_some("invalid S3 ARN format"),
            "s3" => {
                let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
                let empty_version = query
                    .split('&')
                    .any(|kv| kv == "versionId" || kv == "versionId=");
                empty_version.then_some("invalid S3 object VersionId")
            }
            "data" => crate::fetch::decode_data_url(url)
                .err()
                .map(|_| "unable to parse url"),
            _ => Some("invalid url scheme"),
        }
    }

    fn hash(&mut self, at: String, hash: &str) {
        let Some((func, sum)) = hash.split_once('-') else {
            return self.err(at, "malformed hash specifier");
        };
        let len = match func {
            "sha512" => 128,
            "sha256" if self.spec >= Spec::V3_1 => 64,
            _ => return self.err(at, "unrecognized hash function"),
        };
        if sum.len() != len {
            self.err(at, "incorrect size for hash sum");
        } else if !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            self.err(at, "malformed hash specifier");
        }
    }

    fn resource(&mut self, at: &str, r: &Resource, source_required: bool) {
        match &r.source {
            None if source_required => self.err(at.to_string(), "source is required"),
            None => {}
            Some(url) => {
                if let Some(problem) = self.url_problem(url) {
                    self.err(format!("{at}.source"), problem);
                }
            }
        }
        if let Some(c) = &r.compression {
            if !c.is_empty() && c != "gzip" {
                self.err(format!("{at}.compression"), "invalid compression method");
            }
        }
        if let Some(h) = &r.verification.hash {
            if r.source.is_none() {
                self.err(
                    format!("{at}.verification.hash"),
                    "source must be specified if verification is specified",
                );
            } else {
                self.hash(format!("{at}.verification.hash"), h);
            }
        }
        for (i, h) in r.http_headers.iter().enumerate() {
            if h.name.is_empty() {
                self.err(
                    format!("{at}.httpHeaders.{i}.name"),
                    "HTTP header name can't be empty",
                );
            }
            if h.value.as_deref() == Some("") {
                self.err(
                    format!("{at}.httpHeaders.{i}.value"),
                    "unable to parse HTTP header",
                );
            }
        }
        if !r.http_headers.is_empty() {
            let scheme = r.source.as_deref().and_then(url_scheme);
            if !matches!(scheme, Some("http") | Some("https")) {
                self.err(
                    format!("{at}.httpHeaders"),
                    "cannot use HTTP headers with this source scheme",
                );
            }
        }
    }

    fn ignition(&mut self, ig: &Ignition) {
        for (i, r) in ig.config.merge.iter().enumerate() {
            self.resource(&format!("ignition.config.merge.{i}"), r, true);
        }
        self.resource("ignition.config.replace", &ig.config.replace, false);
        for (i, r) in ig.security.tls.certificate_authorities.iter().enumerate() {
            self.resource(
                &format!("ignition.security.tls.certificateAuthorities.{i}"),
                r,
                true,
            );
        }
        for (key, value) in [
            ("httpProxy", &ig.proxy.http_proxy),
            ("httpsProxy", &ig.proxy.https_proxy),
        ] {
            let Some(url) = value else { continue };
            match url_scheme(url) {
                Some("http") if key == "httpsProxy" => self.warn(
                    format!("ignition.proxy.{key}"),
                    "insecure plaintext HTTP proxy specified for HTTPS resources",
                ),
                Some("http") | Some("https") => {}
                _ => self.err(format!("ignition.proxy.{key}"), "proxies must be http(s)"),
            }
        }
    }

    fn node(&mut self, at: &str, n: &Node) {
        self.path(format!("{at}.path"), &n.path);
        for (key, owner) in [("user", &n.user), ("group", &n.group)] {
            if owner.id.is_some() && owner.name.is_some() {
                self.err(format!("{at}.{key}"), "cannot set both id and name");
            }
        }
    }

    fn mode(&mut self, at: String, mode: Option<i64>) {
        if let Some(m) = mode {
            if !(0..=0o7777).contains(&m) {
                self.err(at, "illegal file mode");
            }
        }
    }

    fn storage(&mut self, s: &Storage) {
        for (i, f) in s.files.iter().enumerate() {
            let at = format!("storage.files.{i}");
            self.node(&at, &f.node);
            self.mode(format!("{at}.mode"), f.mode);
            if f.node.overwrite == Some(true) && f.contents.source.is_none() {
                self.err(
                    format!("{at}.overwrite"),
                    "overwrite must be false if source is unspecified",
                );
            }
            self.resource(&format!("{at}.contents"), &f.contents, false);
            for (j, a) in f.append.iter().enumerate() {
                self.resource(&format!("{at}.append.{j}"), a, false);
            }
        }
        for (i, d) in s.directories.iter().enumerate() {
            let at = format!("storage.directories.{i}");
            self.node(&at, &d.node);
            self.mode(format!("{at}.mode"), d.mode);
        }
        let dir_paths: HashSet<&str> = s.directories.iter().map(|d| d.node.path.as_str()).collect();
        for (i, l) in s.links.iter().enumerate() {
            let at = format!("storage.links.{i}");
            self.node(&at, &l.node);
            let target = l.target.as_deref().unwrap_or("");
            if target.is_empty() && self.spec >= Spec::V3_3 {
                self.err(format!("{at}.target"), "link target is required");
            }
            if l.hard == Some(true) {
                if dir_paths.contains(target) {
                    self.err(at.clone(), "hard link target is a directory");
                }
                if l.node.user != NodeOwner::default() || l.node.group != NodeOwner::default() {
                    self.warn(at.clone(), "user/group ignored for hard link");
                }
            }
        }
        self.disks(s);
        self.filesystems(s);
        self.raid(s);
        self.luks(s);
    }

    fn disks(&mut self, s: &Storage) {
        for (i, disk) in s.disks.iter().enumerate() {
            let at = format!("storage.disks.{i}");
            if disk.device.is_empty() {
                self.err(format!("{at}.device"), "disk device is required");
            } else {
                self.path(format!("{at}.device"), &disk.device);
            }
            let mut numbers: HashSet<i64> = HashSet::new();
            let mut labels: HashSet<&str> = HashSet::new();
            for (j, p) in disk.partitions.iter().enumerate() {
                let pat = format!("{at}.partitions.{j}");
                if let Some(label) = &p.label {
                    if label.encode_utf16().count() > 36 {
                        self.err(
                            format!("{pat}.label"),
                            "partition labels may not exceed 36 characters",
                        );
                    }
                    if label.contains(':') {
                        self.err(
                            format!("{pat}.label"),
                            "partition label will be truncated to text before the colon",
                        );
                    }
                    if !labels.insert(label) {
                        self.err(
                            format!("{pat}.label"),
                            "cannot use the same partition label twice",
                        );
                    }
                }
                for (key, guid) in [("guid", &p.guid), ("typeGuid", &p.type_guid)] {
                    if let Some(g) = guid {
                        if !g.is_empty() && !is_guid(g) {
                            self.err(
                                format!("{pat}.{key}"),
                                "doesn't match the form \"01234567-89AB-CDEF-EDCB-A98765432101\"",
                            );
                        }
                    }
                }
                if p.number == 0 && p.label.is_none() {
                    self.err(
                        pat.clone(),
                        "a partition number >= 1 or a label must be specified",
                    );
                }
                if p.should_exist == Some(false)
                    && (p.label.is_some()
                        || p.start_mib.is_some()
                        || p.size_mib.is_some()
                        || p.guid.is_some()
                        || p.type_guid.is_some()
                        || p.resize == Some(true))
                {
                    self.err(
                        pat.clone(),
                        "shouldExist specified false with other options also specified",
                    );
                }
                if p.number != 0 && !numbers.insert(p.number) {
                    self.err(format!("{pat}.number"), "partition numbers collide");
                }
            }
            let fixed: Vec<(usize, i64, i64)> = disk
                .partitions
                .iter()
                .enumerate()
                .filter_map(|(j, p)| match (p.start_mib, p.size_mib) {
                    (Some(start), Some(size)) if start != 0 && size != 0 => {
                        Some((j, start, start + size))
                    }
                    _ => None,
                })
                .collect();
            for (a, &(_, s1, e1)) in fixed.iter().enumerate() {
                for &(j, s2, e2) in &fixed[a + 1..] {
                    if s1 < e2 && s2 < e1 {
                        self.err(format!("{at}.partitions.{j}"), "partitions overlap");
                    }
                }
            }
        }
    }

    fn filesystems(&mut self, s: &Storage) {
        for (i, fs) in s.filesystems.iter().enumerate() {
            let at = format!("storage.filesystems.{i}");
            self.path(format!("{at}.device"), &fs.device);
            let format = fs.format.as_deref().unwrap_or("");
            if format.is_empty() {
                if fs.path.is_some()
                    || fs.label.is_some()
                    || fs.uuid.is_some()
                    || fs.wipe_filesystem.is_some()
                    || !fs.options.is_empty()
                    || !fs.mount_options.is_empty()
                {
                    self.err(
                        format!("{at}.format"),
                        "format cannot be empty when path, label, uuid, wipeFilesystem, options, or mountOptions is specified",
                    );
                }
            } else {
                let known = matches!(format, "ext4" | "btrfs" | "xfs" | "vfat" | "swap")
                    || (format == "none" && self.spec >= Spec::V3_3);
                if !known {
                    self.err(format!("{at}.format"), "invalid filesystem format");
                }
            }
            if let Some(p) = &fs.path {
                self.path(format!("{at}.path"), p);
            }
            if let Some(label) = &fs.label {
                let max = match format {
                    "ext4" => Some(16),
                    "xfs" => Some(12),
                    "swap" => Some(15),
                    "vfat" => Some(11),
                    "btrfs" => Some(256),
                    _ => None,
                };
                if let Some(max) = max {
                    if label.chars().count() > max {
                        self.err(
                            format!("{at}.label"),
                            format!("filesystem labels cannot be longer than {max} characters when using {format}"),
                        );
                    }
                }
            }
            for disk in s.disks.iter().filter(|d| d.device == fs.device) {
                if disk.wipe_table == Some(true) {
                    self.warn(
                        format!("{at}.device"),
                        "device matches disk with wipeTable enabled; filesystem will be wiped",
                    );
                } else if !disk.partitions.is_empty() {
                    self.warn(
                        format!("{at}.device"),
                        "filesystem overwrites partitioned device",
                    );
                }
            }
        }
    }

    fn raid(&mut self, s: &Storage) {
        for (i, r) in s.raid.iter().enumerate() {
            let at = format!("storage.raid.{i}");
            match r.level.as_deref() {
                None | Some("") => self.err(format!("{at}.level"), "raid level is required"),
                Some(level) => {
                    let known = matches!(
                        level,
                        "linear"
                            | "raid0"
                            | "0"
                            | "stripe"
                            | "raid1"
                            | "1"
                            | "mirror"
                            | "raid4"
                            | "4"
                            | "raid5"
                            | "5"
                            | "raid6"
                            | "6"
                            | "raid10"
                            | "10"
                    );
                    if !known {
                        self.err(format!("{at}.level"), "unrecognized raid level");
                    } else if r.spares.unwrap_or(0) != 0
                        && matches!(level, "linear" | "raid0" | "0" | "stripe")
                    {
                        self.err(
                            format!("{at}.spares"),
                            "spares unsupported for linear and raid0 arrays",
                        );
                    }
                }
            }
            if r.devices.is_empty() {
                self.err(format!("{at}.devices"), "raid devices required");
            }
            for (j, d) in r.devices.iter().enumerate() {
                self.path(format!("{at}.devices.{j}"), d);
            }
        }
    }

    fn luks(&mut self, s: &Storage) {
        for (i, l) in s.luks.iter().enumerate() {
            let at = format!("storage.luks.{i}");
            if l.name.contains('/') {
                self.err(format!("{at}.name"), "device names cannot contain slashes");
            }
            self.path(format!("{at}.device"), l.device.as_deref().unwrap_or(""));
            if l.label.as_ref().is_some_and(|x| x.chars().count() > 47) {
                self.err(
                    format!("{at}.label"),
                    "luks device labels cannot be longer than 47 characters",
                );
            }
            self.resource(&format!("{at}.keyFile"), &l.key_file, false);
            let c = &l.clevis;
            let custom_set = c.custom.pin.is_some() || c.custom.config.is_some();
            if custom_set {
                if c.tpm2 == Some(true) || !c.tang.is_empty() || c.threshold.is_some() {
                    self.err(
                        format!("{at}.clevis"),
                        "cannot use custom clevis config with tpm2, tang, or threshold",
                    );
                }
                if c.custom.pin.as_deref().unwrap_or("").is_empty() {
                    self.err(
                        format!("{at}.clevis.custom.pin"),
                        "missing required custom clevis pin",
                    );
                }
                if c.custom.config.as_deref().unwrap_or("").is_empty() {
                    self.err(
                        format!("{at}.clevis.custom.config"),
                        "missing required custom clevis config",
                    );
                }
            }
            for (j, t) in c.tang.iter().enumerate() {
                let tat = format!("{at}.clevis.tang.{j}");
                if !matches!(url_scheme(&t.url), Some("http") | Some("https")) {
                    self.err(format!("{tat}.url"), "invalid url scheme");
                }
                if t.thumbprint.as_deref().unwrap_or("").is_empty() {
                    self.err(format!("{tat}.thumbprint"), "thumbprint is required");
                }
                if let Some(ad) = &t.advertisement {
                    if serde_json::from_str::<serde_json::Value>(ad).is_err() {
                        self.err(
                            format!("{tat}.advertisement"),
                            "advertisement is not valid JSON",
                        );
                    }
                }
            }
            if l.cex.enabled == Some(true) {
                if c.tpm2 == Some(true) || !c.tang.is_empty() || custom_set {
                    self.err(format!("{at}.cex"), "cannot use cex with clevis");
                }
                if l.key_file.source.is_some() {
                    self.err(format!("{at}.keyFile"), "cannot use key file with cex");
                }
            }
        }
    }

    fn units(&mut self, sd: &Systemd) {
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

    /// Files/directories/links below a configured link, or on top of a unit or drop-in file.
    fn node_conflicts(&mut self, c: &Config) {
        let s = &c.storage;
        let mut unit_paths: HashSet<String> = HashSet::new();
        for u in &c.systemd.units {
            if u.contents.as_deref().is_some_and(|x| !x.is_empty()) {
                unit_paths.insert(format!("/etc/systemd/system/{}", u.name));
            }
            for d in &u.dropins {
                unit_paths.insert(format!("/etc/systemd/system/{}.d/{}", u.name, d.name));
            }
        }
        let links: Vec<&str> = s.links.iter().map(|l| l.node.path.as_str()).collect();
        let nodes = s
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("storage.files.{i}.path"), &f.node.path, "file"))
            .chain(s.directories.iter().enumerate().map(|(i, d)| {
                (
                    format!("storage.directories.{i}.path"),
                    &d.node.path,
                    "directory",
                )
            }))
            .chain(
                s.links
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (format!("storage.links.{i}.path"), &l.node.path, "link")),
            );
        for (at, path, kind) in nodes {
            if links.iter().any(|l| {
                path.len() > l.len() && path.starts_with(l) && path.as_bytes()[l.len()] == b'/'
            }) {
                self.err(at.clone(), format!("{kind} path includes link in config"));
            }
            if unit_paths.contains(path.as_str()) {
                self.err(at, "path conflicts with systemd unit or dropin");
            }
        }
    }

    fn duplicates(&mut self, c: &Config) {
        let s = &c.storage;
        let mut out = Vec::new();
        dups(
            &mut out,
            c.ignition
                .config
                .merge
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("ignition.config.merge.{i}"), r.source.clone())),
        );
        dups(
            &mut out,
            c.ignition
                .security
                .tls
                .certificate_authorities
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    (
                        format!("ignition.security.tls.certificateAuthorities.{i}"),
                        r.source.clone(),
                    )
                }),
        );
        dups(
            &mut out,
            c.ignition
                .proxy
                .no_proxy
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("ignition.proxy.noProxy.{i}"), v.clone())),
        );
        let mut resources: Vec<(String, &Resource)> = Vec::new();
        resources.extend(
            c.ignition
                .config
                .merge
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("ignition.config.merge.{i}"), r)),
        );
        resources.push(("ignition.config.replace".into(), &c.ignition.config.replace));
        for (i, f) in s.files.iter().enumerate() {
            resources.push((format!("storage.files.{i}.contents"), &f.contents));
            resources.extend(
                f.append
                    .iter()
                    .enumerate()
                    .map(|(j, r)| (format!("storage.files.{i}.append.{j}"), r)),
            );
        }
        for (at, r) in resources {
            dups(
                &mut out,
                r.http_headers
                    .iter()
                    .enumerate()
                    .map(|(j, h)| (format!("{at}.httpHeaders.{j}"), h.name.clone())),
            );
        }
        let nodes = s
            .directories
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("storage.directories.{i}"), d.node.path.clone()))
            .chain(
                s.files
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (format!("storage.files.{i}"), f.node.path.clone())),
            )
            .chain(
                s.links
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (format!("storage.links.{i}"), l.node.path.clone())),
            );
        dups(&mut out, nodes);
        dups(
            &mut out,
            s.disks
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("storage.disks.{i}"), d.device.clone())),
        );
        for (i, d) in s.disks.iter().enumerate() {
            dups(
                &mut out,
                d.partitions
                    .iter()
                    .enumerate()
                    .map(|(j, p)| (format!("storage.disks.{i}.partitions.{j}"), p.key())),
            );
        }
        dups(
            &mut out,
            s.filesystems
                .iter()
                .enumerate()
                .map(|(i, f)| (format!("storage.filesystems.{i}"), f.device.clone())),
        );
        dups(
            &mut out,
            s.raid
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("storage.raid.{i}"), r.name.clone())),
        );
        for (i, r) in s.raid.iter().enumerate() {
            dups(
                &mut out,
                r.devices
                    .iter()
                    .enumerate()
                    .map(|(j, d)| (format!("storage.raid.{i}.devices.{j}"), d.clone())),
            );
        }
        dups(
            &mut out,
            s.luks
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("storage.luks.{i}"), l.name.clone())),
        );
        for (i, l) in s.luks.iter().enumerate() {
            dups(
                &mut out,
                l.clevis
                    .tang
                    .iter()
                    .enumerate()
                    .map(|(j, t)| (format!("storage.luks.{i}.clevis.tang.{j}"), t.url.clone())),
            );
        }
        dups(
            &mut out,
            c.systemd
                .units
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("systemd.units.{i}"), u.name.clone())),
        );
        for (i, u) in c.systemd.units.iter().enumerate() {
            dups(
                &mut out,
                u.dropins
                    .iter()
                    .enumerate()
                    .map(|(j, d)| (format!("systemd.units.{i}.dropins.{j}"), d.name.clone())),
            );
        }
        dups(
            &mut out,
            c.passwd
                .users
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("passwd.users.{i}"), u.name.clone())),
        );
        for (i, u) in c.passwd.users.iter().enumerate() {
            dups(
                &mut out,
                u.groups
                    .iter()
                    .enumerate()
                    .map(|(j, g)| (format!("passwd.users.{i}.groups.{j}"), g.clone())),
            );
            dups(
                &mut out,
                u.ssh_authorized_keys
                    .iter()
                    .enumerate()
                    .map(|(j, k)| (format!("passwd.users.{i}.sshAuthorizedKeys.{j}"), k.clone())),
            );
        }
        dups(
            &mut out,
            c.passwd
                .groups
                .iter()
                .enumerate()
                .map(|(i, g)| (format!("passwd.groups.{i}"), g.name.clone())),
        );
        let k = &c.kernel_arguments;
        dups(
            &mut out,
            k.should_exist
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("kernelArguments.shouldExist.{i}"), a.clone()))
                .chain(
                    k.should_not_exist
                        .iter()
                        .enumerate()
                        .map(|(i, a)| (format!("kernelArguments.shouldNotExist.{i}"), a.clone())),
                ),
        );
        self.out.extend(out);
    }
}

/// Reports every entry whose key was already seen, at the later entry's path.
fn dups<K: Eq + std::hash::Hash>(out: &mut Vec<Entry>, items: impl Iterator<Item = (String, K)>) {
    let mut seen = HashSet::new();
    for (path, key) in items {
        if !seen.insert(key) {
            out.push(Entry::error(path, "duplicate entry defined"));
        }
    }
}

/// `foo@bar.service` → `foo@.service`; `None` for non-instances.
pub(crate) fn template_of(name: &str) -> Option<String> {
    let (prefix, rest) = name.split_once('@')?;
    let (instance, ext) = rest.rsplit_once('.')?;
    (!instance.is_empty()).then(|| format!("{prefix}@.{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_matches_go_path_clean() {
        assert_eq!(clean_path("/foo/../bar"), "/bar");
        assert_eq!(clean_path("/foo//bar/"), "/foo/bar");
        assert_eq!(clean_path("/.."), "/");
        assert_eq!(clean_path("/"), "/");
        assert_eq!(path_problem("/etc/foo"), None);
        assert_eq!(
            path_problem("/etc/foo/"),
            Some("path is not fully simplified")
        );
        assert_eq!(path_problem("etc"), Some("path not absolute"));
        assert_eq!(path_problem(""), Some("path not specified"));
    }

    #[test]
    fn arn_forms() {
        assert!(arn_ok("arn:aws:s3:::bucket/key"));
        assert!(arn_ok(
            "arn:aws:s3:us-west-1:123456789012:accesspoint/test/object/some/path"
        ));
        assert!(!arn_ok("arn:aws:s3:::bucket-name-but-no-key"));
        assert!(!arn_ok("arn:aws:iam:::bucket/key"));
    }

    #[test]
    fn template_names() {
        assert_eq!(
            template_of("echo@bar.service").as_deref(),
            Some("echo@.service")
        );
        assert_eq!(template_of("echo@.service"), None);
        assert_eq!(template_of("plain.service"), None);
    }
}
