//! Groups with a fixed gid (the OS definition's `[groups]`).
//!
//! Contract: after [`apply`], every named group exists in the tree's `etc/group` (and
//! `etc/gshadow`) with exactly the gid the definition gives, as in Flatcar's baselayout
//! (`docker` is 233). A group a package created under another number is renumbered: its
//! `group` line, the primary gid of every `passwd` entry that had the old number, and the group
//! owner of every file in the tree that had it (set-id bits, which `chown` clears, are put
//! back). A group no package created is added with no members. A gid another group already
//! holds is an error naming both, and nothing is changed for that group.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{BuildError, IoContext, Result};

/// Gives each group in `groups` its gid in the tree at `root`.
pub fn apply(root: &Path, groups: &BTreeMap<String, u32>) -> Result<()> {
    let etc = root.join("etc");
    for (name, &gid) in groups {
        let group_path = etc.join("group");
        let group = fs::read_to_string(&group_path).at("reading", &group_path)?;
        let table = GroupTable::parse(&group);
        if let Some(holder) = table.name_of(gid).filter(|holder| holder != name) {
            return Err(BuildError::FixedGroup {
                group: name.clone(),
                gid,
                problem: format!("group {holder} already has it"),
            });
        }
        match table.gid_of(name) {
            Some(old) if old == gid => {}
            Some(old) => {
                fs::write(&group_path, renumber_group(&group, name, gid))
                    .at("writing", &group_path)?;
                let passwd_path = etc.join("passwd");
                let passwd = fs::read_to_string(&passwd_path).at("reading", &passwd_path)?;
                fs::write(&passwd_path, renumber_primary_gid(&passwd, old, gid))
                    .at("writing", &passwd_path)?;
                regroup_files(root, old, gid)?;
            }
            None => {
                fs::write(&group_path, format!("{group}{name}:x:{gid}:\n"))
                    .at("writing", &group_path)?;
                let gshadow_path = etc.join("gshadow");
                if gshadow_path.exists() {
                    let gshadow = fs::read_to_string(&gshadow_path).at("reading", &gshadow_path)?;
                    fs::write(&gshadow_path, format!("{gshadow}{name}:!::\n"))
                        .at("writing", &gshadow_path)?;
                }
            }
        }
    }
    Ok(())
}

/// `etc/group` as (name, gid) pairs; lines that are not `name:x:gid:members` are ignored.
struct GroupTable(Vec<(String, u32)>);

impl GroupTable {
    fn parse(text: &str) -> Self {
        GroupTable(
            text.lines()
                .filter_map(|line| {
                    let mut fields = line.split(':');
                    let name = fields.next()?;
                    let gid = fields.nth(1)?.parse().ok()?;
                    Some((name.to_string(), gid))
                })
                .collect(),
        )
    }

    fn gid_of(&self, name: &str) -> Option<u32> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, g)| *g)
    }

    fn name_of(&self, gid: u32) -> Option<String> {
        self.0
            .iter()
            .find(|(_, g)| *g == gid)
            .map(|(n, _)| n.clone())
    }
}

/// Rewrites field 3 (the gid) of `name`'s line.
fn renumber_group(text: &str, name: &str, gid: u32) -> String {
    rewrite_field(text, |fields| {
        (fields.first() == Some(&name)).then_some((2, gid.to_string()))
    })
}

/// Rewrites field 4 (the primary gid) of every passwd line that had `old`.
fn renumber_primary_gid(text: &str, old: u32, new: u32) -> String {
    let old = old.to_string();
    rewrite_field(text, |fields| {
        (fields.get(3) == Some(&old.as_str())).then_some((3, new.to_string()))
    })
}

/// Replaces one field on the lines where `change` says which and with what.
fn rewrite_field(text: &str, change: impl Fn(&[&str]) -> Option<(usize, String)>) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut fields: Vec<&str> = line.split(':').collect();
        let replacement = change(&fields);
        if let Some((index, value)) = &replacement {
            if let Some(field) = fields.get_mut(*index) {
                *field = value;
            }
        }
        out.push_str(&fields.join(":"));
        out.push('\n');
    }
    out
}

/// Gives every file in the tree whose group is `old` the group `new`, keeping set-id bits.
fn regroup_files(dir: &Path, old: u32, new: u32) -> Result<()> {
    for entry in fs::read_dir(dir).at("listing", dir)? {
        let path = entry.at("listing", dir)?.path();
        let meta = fs::symlink_metadata(&path).at("inspecting", &path)?;
        if meta.gid() == old {
            std::os::unix::fs::lchown(&path, None, Some(new)).at("changing the group of", &path)?;
            let set_id = meta.mode() & 0o6000;
            if set_id != 0 && !meta.file_type().is_symlink() {
                let mode = meta.permissions().mode() & 0o7777;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .at("restoring the mode of", &path)?;
            }
        }
        if meta.is_dir() {
            regroup_files(&path, old, new)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(group: &str, passwd: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        fs::create_dir_all(&etc).unwrap();
        fs::write(etc.join("group"), group).unwrap();
        fs::write(etc.join("gshadow"), "root:*::\n").unwrap();
        fs::write(etc.join("passwd"), passwd).unwrap();
        dir
    }

    fn docker_233() -> BTreeMap<String, u32> {
        BTreeMap::from([("docker".to_string(), 233)])
    }

    #[test]
    fn a_missing_group_is_added_with_its_gid() {
        let dir = tree("root:x:0:\n", "root:x:0:0::/root:/bin/sh\n");
        apply(dir.path(), &docker_233()).unwrap();
        let etc = dir.path().join("etc");
        assert_eq!(
            fs::read_to_string(etc.join("group")).unwrap(),
            "root:x:0:\ndocker:x:233:\n"
        );
        assert_eq!(
            fs::read_to_string(etc.join("gshadow")).unwrap(),
            "root:*::\ndocker:!::\n"
        );
        apply(dir.path(), &docker_233()).unwrap();
        assert_eq!(
            fs::read_to_string(etc.join("group")).unwrap(),
            "root:x:0:\ndocker:x:233:\n",
            "applying twice changes nothing"
        );
    }

    #[test]
    fn a_package_chosen_gid_is_renumbered_with_its_files_and_users() {
        let dir = tree(
            "root:x:0:\ndocker:x:998:core\nother:x:997:\n",
            "root:x:0:0::/root:/bin/sh\ndockremap:x:996:998::/:/bin/false\n",
        );
        let owned = dir.path().join("run-docker");
        fs::write(&owned, b"x").unwrap();
        std::os::unix::fs::lchown(&owned, None, Some(998)).unwrap();
        fs::set_permissions(&owned, fs::Permissions::from_mode(0o2750)).unwrap();
        let unrelated = dir.path().join("unrelated");
        fs::write(&unrelated, b"y").unwrap();
        std::os::unix::fs::lchown(&unrelated, None, Some(997)).unwrap();

        apply(dir.path(), &docker_233()).unwrap();

        let etc = dir.path().join("etc");
        assert_eq!(
            fs::read_to_string(etc.join("group")).unwrap(),
            "root:x:0:\ndocker:x:233:core\nother:x:997:\n"
        );
        assert!(fs::read_to_string(etc.join("passwd"))
            .unwrap()
            .contains("dockremap:x:996:233::/:/bin/false\n"));
        let meta = fs::metadata(&owned).unwrap();
        assert_eq!(meta.gid(), 233);
        assert_eq!(meta.mode() & 0o7777, 0o2750, "the setgid bit survives");
        assert_eq!(fs::metadata(&unrelated).unwrap().gid(), 997);
    }

    #[test]
    fn a_gid_held_by_another_group_is_refused_naming_both() {
        let dir = tree("root:x:0:\ntaken:x:233:\n", "root:x:0:0::/root:/bin/sh\n");
        let err = apply(dir.path(), &docker_233()).unwrap_err().to_string();
        assert!(
            err.contains("docker") && err.contains("233") && err.contains("taken"),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("etc/group")).unwrap(),
            "root:x:0:\ntaken:x:233:\n"
        );
    }
}
