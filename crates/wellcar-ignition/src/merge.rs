//! Merging two configs with Ignition's semantics (coreos/ignition `config/merge/merge.go`).
//!
//! - Optional scalars: the child's value wins when it is set (`false`, `0`, `""` included).
//! - Plain values (`version`, `path`, `name`, `device`, partition `number`): the child's wins.
//! - Nested objects merge field by field.
//! - `files[].append`, `filesystems[].options`/`mountOptions`, `raid[].options`,
//!   `luks[].options`/`openOptions`: parent items then child items.
//! - Every other list is keyed: a parent item whose key the child also has is merged with the
//!   child's item in the parent's position; child-only items are appended in child order.
//!   Files, directories and links share one key space (the path), as do
//!   `kernelArguments.shouldExist`/`shouldNotExist`: a child entry in one list removes the
//!   parent's entry with the same key from the other.
//! - HTTP headers are keyed by name; a child header without a value deletes the parent's.
//!
//! Merging never validates: two valid configs can merge into an invalid one.

use std::collections::HashSet;
use std::hash::Hash;

use crate::model::*;

/// Merges `child` on top of `parent` (Ignition's `merge.MergeStructTranscribe`).
pub fn merge(parent: Config, child: Config) -> Config {
    parent.merge(child)
}

trait Merge {
    fn merge(self, child: Self) -> Self;
}

impl<T> Merge for Option<T> {
    fn merge(self, child: Self) -> Self {
        child.or(self)
    }
}

/// Keyed list merge. `shadowed` holds keys the child defines in a *different* list of the same
/// key space; parent items with those keys are dropped.
fn keyed<T, K: Eq + Hash>(
    parent: Vec<T>,
    child: Vec<T>,
    key: impl Fn(&T) -> K,
    shadowed: &HashSet<K>,
    item: impl Fn(T, T) -> T,
) -> Vec<T> {
    let mut child: Vec<Option<T>> = child.into_iter().map(Some).collect();
    let mut out = Vec::new();
    for p in parent {
        let k = key(&p);
        if let Some(slot) = child
            .iter_mut()
            .find(|c| c.as_ref().is_some_and(|c| key(c) == k))
        {
            let c = slot.take().expect("slot was checked to be Some");
            out.push(item(p, c));
        } else if !shadowed.contains(&k) {
            out.push(p);
        }
    }
    out.extend(child.into_iter().flatten());
    out
}

fn keyed_simple<T: Merge, K: Eq + Hash>(
    parent: Vec<T>,
    child: Vec<T>,
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    keyed(parent, child, key, &HashSet::new(), Merge::merge)
}

fn values(parent: Vec<String>, child: Vec<String>) -> Vec<String> {
    keyed(parent, child, Clone::clone, &HashSet::new(), |_, c| c)
}

fn concat<T>(mut parent: Vec<T>, child: Vec<T>) -> Vec<T> {
    parent.extend(child);
    parent
}

impl Merge for Config {
    fn merge(self, c: Self) -> Self {
        Config {
            ignition: self.ignition.merge(c.ignition),
            kernel_arguments: self.kernel_arguments.merge(c.kernel_arguments),
            passwd: self.passwd.merge(c.passwd),
            storage: self.storage.merge(c.storage),
            systemd: Systemd {
                units: keyed_simple(self.systemd.units, c.systemd.units, |u| u.name.clone()),
            },
        }
    }
}

impl Merge for Ignition {
    fn merge(self, c: Self) -> Self {
        Ignition {
            version: c.version,
            config: IgnitionConfig {
                merge: keyed_simple(self.config.merge, c.config.merge, |r| r.source.clone()),
                replace: self.config.replace.merge(c.config.replace),
            },
            proxy: Proxy {
                http_proxy: self.proxy.http_proxy.merge(c.proxy.http_proxy),
                https_proxy: self.proxy.https_proxy.merge(c.proxy.https_proxy),
                no_proxy: values(self.proxy.no_proxy, c.proxy.no_proxy),
            },
            security: Security {
                tls: Tls {
                    certificate_authorities: keyed_simple(
                        self.security.tls.certificate_authorities,
                        c.security.tls.certificate_authorities,
                        |r| r.source.clone(),
                    ),
                },
            },
            timeouts: Timeouts {
                http_response_headers: self
                    .timeouts
                    .http_response_headers
                    .merge(c.timeouts.http_response_headers),
                http_total: self.timeouts.http_total.merge(c.timeouts.http_total),
            },
        }
    }
}

impl Merge for Resource {
    fn merge(self, c: Self) -> Self {
        let deleted: HashSet<String> = c
            .http_headers
            .iter()
            .filter(|h| h.value.is_none())
            .map(|h| h.name.clone())
            .collect();
        let kept_child: Vec<HttpHeader> = c
            .http_headers
            .into_iter()
            .filter(|h| h.value.is_some())
            .collect();
        let parent_headers: Vec<HttpHeader> = self
            .http_headers
            .into_iter()
            .filter(|h| !deleted.contains(&h.name))
            .collect();
        Resource {
            compression: self.compression.merge(c.compression),
            http_headers: keyed(
                parent_headers,
                kept_child,
                |h| h.name.clone(),
                &HashSet::new(),
                |_, c| c,
            ),
            source: self.source.merge(c.source),
            verification: Verification {
                hash: self.verification.hash.merge(c.verification.hash),
            },
        }
    }
}

impl Merge for KernelArguments {
    fn merge(self, c: Self) -> Self {
        let child_exist: HashSet<String> = c.should_exist.iter().cloned().collect();
        let child_not: HashSet<String> = c.should_not_exist.iter().cloned().collect();
        KernelArguments {
            should_exist: keyed(
                self.should_exist,
                c.should_exist,
                Clone::clone,
                &child_not,
                |_, c| c,
            ),
            should_not_exist: keyed(
                self.should_not_exist,
                c.should_not_exist,
                Clone::clone,
                &child_exist,
                |_, c| c,
            ),
        }
    }
}

impl Merge for Passwd {
    fn merge(self, c: Self) -> Self {
        Passwd {
            groups: keyed_simple(self.groups, c.groups, |g| g.name.clone()),
            users: keyed_simple(self.users, c.users, |u| u.name.clone()),
        }
    }
}

impl Merge for PasswdGroup {
    fn merge(self, c: Self) -> Self {
        PasswdGroup {
            gid: self.gid.merge(c.gid),
            name: c.name,
            password_hash: self.password_hash.merge(c.password_hash),
            should_exist: self.should_exist.merge(c.should_exist),
            system: self.system.merge(c.system),
        }
    }
}

impl Merge for PasswdUser {
    fn merge(self, c: Self) -> Self {
        PasswdUser {
            gecos: self.gecos.merge(c.gecos),
            groups: values(self.groups, c.groups),
            home_dir: self.home_dir.merge(c.home_dir),
            name: c.name,
            no_create_home: self.no_create_home.merge(c.no_create_home),
            no_log_init: self.no_log_init.merge(c.no_log_init),
            no_user_group: self.no_user_group.merge(c.no_user_group),
            password_hash: self.password_hash.merge(c.password_hash),
            primary_group: self.primary_group.merge(c.primary_group),
            shell: self.shell.merge(c.shell),
            should_exist: self.should_exist.merge(c.should_exist),
            ssh_authorized_keys: values(self.ssh_authorized_keys, c.ssh_authorized_keys),
            system: self.system.merge(c.system),
            uid: self.uid.merge(c.uid),
        }
    }
}

impl Merge for Unit {
    fn merge(self, c: Self) -> Self {
        Unit {
            contents: self.contents.merge(c.contents),
            dropins: keyed(
                self.dropins,
                c.dropins,
                |d| d.name.clone(),
                &HashSet::new(),
                |p, c| Dropin {
                    contents: p.contents.merge(c.contents),
                    name: c.name,
                },
            ),
            enabled: self.enabled.merge(c.enabled),
            mask: self.mask.merge(c.mask),
            name: c.name,
        }
    }
}

impl Merge for NodeOwner {
    fn merge(self, c: Self) -> Self {
        NodeOwner {
            id: self.id.merge(c.id),
            name: self.name.merge(c.name),
        }
    }
}

impl Merge for Node {
    fn merge(self, c: Self) -> Self {
        Node {
            path: c.path,
            overwrite: self.overwrite.merge(c.overwrite),
            user: self.user.merge(c.user),
            group: self.group.merge(c.group),
        }
    }
}

impl Merge for File {
    fn merge(self, c: Self) -> Self {
        File {
            node: self.node.merge(c.node),
            contents: self.contents.merge(c.contents),
            append: concat(self.append, c.append),
            mode: self.mode.merge(c.mode),
        }
    }
}

impl Merge for Directory {
    fn merge(self, c: Self) -> Self {
        Directory {
            node: self.node.merge(c.node),
            mode: self.mode.merge(c.mode),
        }
    }
}

impl Merge for Link {
    fn merge(self, c: Self) -> Self {
        Link {
            node: self.node.merge(c.node),
            target: self.target.merge(c.target),
            hard: self.hard.merge(c.hard),
        }
    }
}

impl Merge for Partition {
    fn merge(self, c: Self) -> Self {
        Partition {
            guid: self.guid.merge(c.guid),
            label: self.label.merge(c.label),
            number: c.number,
            resize: self.resize.merge(c.resize),
            should_exist: self.should_exist.merge(c.should_exist),
            size_mib: self.size_mib.merge(c.size_mib),
            start_mib: self.start_mib.merge(c.start_mib),
            type_guid: self.type_guid.merge(c.type_guid),
            wipe_partition_entry: self.wipe_partition_entry.merge(c.wipe_partition_entry),
        }
    }
}

impl Merge for Disk {
    fn merge(self, c: Self) -> Self {
        Disk {
            device: c.device,
            partitions: keyed_simple(self.partitions, c.partitions, Partition::key),
            wipe_table: self.wipe_table.merge(c.wipe_table),
        }
    }
}

impl Merge for Filesystem {
    fn merge(self, c: Self) -> Self {
        Filesystem {
            device: c.device,
            format: self.format.merge(c.format),
            label: self.label.merge(c.label),
            mount_options: concat(self.mount_options, c.mount_options),
            options: concat(self.options, c.options),
            path: self.path.merge(c.path),
            uuid: self.uuid.merge(c.uuid),
            wipe_filesystem: self.wipe_filesystem.merge(c.wipe_filesystem),
        }
    }
}

impl Merge for Raid {
    fn merge(self, c: Self) -> Self {
        Raid {
            devices: values(self.devices, c.devices),
            level: self.level.merge(c.level),
            name: c.name,
            options: concat(self.options, c.options),
            spares: self.spares.merge(c.spares),
        }
    }
}

impl Merge for Luks {
    fn merge(self, c: Self) -> Self {
        Luks {
            cex: Cex {
                enabled: self.cex.enabled.merge(c.cex.enabled),
            },
            clevis: Clevis {
                custom: ClevisCustom {
                    config: self.clevis.custom.config.merge(c.clevis.custom.config),
                    needs_network: self
                        .clevis
                        .custom
                        .needs_network
                        .merge(c.clevis.custom.needs_network),
                    pin: self.clevis.custom.pin.merge(c.clevis.custom.pin),
                },
                tang: keyed(
                    self.clevis.tang,
                    c.clevis.tang,
                    |t| t.url.clone(),
                    &HashSet::new(),
                    |p, c| Tang {
                        advertisement: p.advertisement.merge(c.advertisement),
                        thumbprint: p.thumbprint.merge(c.thumbprint),
                        url: c.url,
                    },
                ),
                threshold: self.clevis.threshold.merge(c.clevis.threshold),
                tpm2: self.clevis.tpm2.merge(c.clevis.tpm2),
            },
            device: self.device.merge(c.device),
            discard: self.discard.merge(c.discard),
            key_file: self.key_file.merge(c.key_file),
            label: self.label.merge(c.label),
            name: c.name,
            open_options: concat(self.open_options, c.open_options),
            options: concat(self.options, c.options),
            uuid: self.uuid.merge(c.uuid),
            wipe_volume: self.wipe_volume.merge(c.wipe_volume),
        }
    }
}

impl Merge for Storage {
    fn merge(self, c: Self) -> Self {
        let paths = |v: &mut dyn Iterator<Item = &Node>| -> HashSet<String> {
            v.map(|n| n.path.clone()).collect()
        };
        let child_files = paths(&mut c.files.iter().map(|f| &f.node));
        let child_dirs = paths(&mut c.directories.iter().map(|d| &d.node));
        let child_links = paths(&mut c.links.iter().map(|l| &l.node));
        let union = |a: &HashSet<String>, b: &HashSet<String>| -> HashSet<String> {
            a.union(b).cloned().collect()
        };
        Storage {
            directories: keyed(
                self.directories,
                c.directories,
                |d| d.node.path.clone(),
                &union(&child_files, &child_links),
                Merge::merge,
            ),
            disks: keyed_simple(self.disks, c.disks, |d| d.device.clone()),
            files: keyed(
                self.files,
                c.files,
                |f| f.node.path.clone(),
                &union(&child_dirs, &child_links),
                Merge::merge,
            ),
            filesystems: keyed_simple(self.filesystems, c.filesystems, |f| f.device.clone()),
            links: keyed(
                self.links,
                c.links,
                |l| l.node.path.clone(),
                &union(&child_files, &child_dirs),
                Merge::merge,
            ),
            luks: keyed_simple(self.luks, c.luks, |l| l.name.clone()),
            raid: keyed_simple(self.raid, c.raid, |r| r.name.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, source: Option<&str>, mode: Option<i64>) -> File {
        File {
            node: Node {
                path: path.into(),
                ..Default::default()
            },
            contents: Resource {
                source: source.map(Into::into),
                ..Default::default()
            },
            mode,
            ..Default::default()
        }
    }

    #[test]
    fn child_overrides_set_fields_and_keeps_parent_position() {
        let mut parent = Config::default();
        parent.storage.files = vec![
            file("/a", Some("data:,a"), Some(0o600)),
            file("/b", None, None),
        ];
        let mut child = Config::default();
        child.storage.files = vec![file("/c", None, None), file("/a", Some("data:,A"), None)];
        let merged = merge(parent, child);
        let paths = merged.file_paths();
        assert_eq!(paths, ["/a", "/b", "/c"]);
        assert_eq!(
            merged.storage.files[0].contents.source.as_deref(),
            Some("data:,A")
        );
        assert_eq!(
            merged.storage.files[0].mode,
            Some(0o600),
            "unset child mode keeps the parent's"
        );
    }

    #[test]
    fn child_directory_replaces_parent_file_with_same_path() {
        let mut parent = Config::default();
        parent.storage.files = vec![file("/x", None, None)];
        let mut child = Config::default();
        child.storage.directories = vec![Directory {
            node: Node {
                path: "/x".into(),
                ..Default::default()
            },
            mode: None,
        }];
        let merged = merge(parent, child);
        assert!(merged.storage.files.is_empty());
        assert_eq!(merged.storage.directories.len(), 1);
    }

    #[test]
    fn false_in_child_overrides_true_in_parent_and_append_concatenates() {
        let mut parent = Config::default();
        parent.systemd.units = vec![Unit {
            name: "a.service".into(),
            enabled: Some(true),
            ..Default::default()
        }];
        let mut pf = file("/f", None, None);
        pf.append = vec![Resource {
            source: Some("data:,1".into()),
            ..Default::default()
        }];
        parent.storage.files = vec![pf.clone()];
        let mut child = Config::default();
        child.systemd.units = vec![Unit {
            name: "a.service".into(),
            enabled: Some(false),
            ..Default::default()
        }];
        child.storage.files = vec![pf];
        let merged = merge(parent, child);
        assert_eq!(merged.systemd.units[0].enabled, Some(false));
        assert_eq!(merged.storage.files[0].append.len(), 2);
    }
}
