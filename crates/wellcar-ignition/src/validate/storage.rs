//! The `storage` section: files, directories and links (absolute simplified paths, owner by id
//! or by name but not both, modes up to 0o7777, link targets), disks and partitions (labels,
//! GUIDs, numbers, overlaps), filesystems (formats per spec version, label lengths, devices that
//! a disk entry wipes or partitions), RAID arrays and LUKS devices (clevis, tang, cex).
//!
//! Each finding names the entry by its index in the config; file contents and appended fragments
//! are checked as resources (see [`super::ignition`]).

use std::collections::HashSet;

use super::{url_scheme, Validator};
use crate::model::{Node, NodeOwner, Storage};
use crate::version::Spec;

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Validator {
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

    pub(super) fn storage(&mut self, s: &Storage) {
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
}
