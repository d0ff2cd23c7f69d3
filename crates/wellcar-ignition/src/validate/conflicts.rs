//! Node conflicts across sections: a file, directory or link whose path lies below a configured
//! link, or on top of a systemd unit or drop-in file the config writes, is an error at that
//! node's `path`.

use std::collections::HashSet;

use super::Validator;
use crate::model::Config;

impl Validator {
    /// Files/directories/links below a configured link, or on top of a unit or drop-in file.
    pub(super) fn node_conflicts(&mut self, c: &Config) {
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
}
