//! Duplicate entries in every keyed list of the config: config and CA sources, proxy
//! exclusions, HTTP header names, node paths, disks, partitions, filesystems, RAID arrays and
//! their devices, LUKS devices and tang servers, units and drop-ins, users, their groups and SSH
//! keys, groups, and kernel arguments (`shouldExist` and `shouldNotExist` together). Each
//! repetition is an error at the later entry's path.

use std::collections::HashSet;

use super::Validator;
use crate::model::{Config, Resource};
use crate::report::Entry;

impl Validator {
    pub(super) fn duplicates(&mut self, c: &Config) {
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
