//! `storage.files`, `storage.directories` and `storage.links`, with Ignition's semantics
//! (`internal/exec/stages/files/filesystemEntries.go`):
//!
//! - entries are created shallowest path first (stable), hard links after everything else;
//! - `overwrite: true` removes whatever is at the path first; otherwise an existing node of the
//!   wrong kind, or an existing file when contents are given, is an error;
//! - missing parent directories are created 0755 root:root;
//! - file contents (and fragments) arrive staged in a file (see `staging`), which is renamed
//!   into place; an existing file without configured contents is kept, and fragments are
//!   appended by writing old bytes + fragments to a temp file renamed over it;
//! - ownership is set before the mode so setuid/setgid bits survive; unset owners keep the
//!   current owner (root for new nodes), unset modes keep the current mode (0644 files, 0755
//!   directories when new). Owner names resolve against the target's passwd and group files.

use std::fs;
use std::io;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::Path;
use wellcar_contract::PathIoError;

use super::root::{write_atomic, TargetRoot};
use super::staging::{self, StagedFile};
use super::users::Table;
use super::{ApplyError, Recorder};
use crate::model::{Node, NodeOwner, Storage};

enum Entry<'a> {
    File(usize, &'a crate::model::File),
    Dir(usize, &'a crate::model::Directory),
    Link(usize, &'a crate::model::Link),
}

fn depth(path: &str) -> usize {
    path.split('/').filter(|c| !c.is_empty()).count()
}

fn io_at(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ApplyError {
    let path = path.to_path_buf();
    move |source| ApplyError::Io(PathIoError::new(what, path, source))
}

struct Owners {
    passwd: Table,
    group: Table,
}

impl Owners {
    fn id(&self, field: &str, owner: &NodeOwner, is_user: bool) -> Result<Option<u32>, ApplyError> {
        if let Some(id) = owner.id {
            return u32::try_from(id).map(Some).map_err(|_| ApplyError::BadId {
                field: field.to_string(),
                id,
            });
        }
        let Some(name) = &owner.name else {
            return Ok(None);
        };
        let table = if is_user { &self.passwd } else { &self.group };
        let id = table.find(name).and_then(|l| l.get(2)?.parse::<u32>().ok());
        match (id, is_user) {
            (Some(id), _) => Ok(Some(id)),
            (None, true) => Err(ApplyError::UnknownUser {
                field: field.to_string(),
                name: name.clone(),
            }),
            (None, false) => Err(ApplyError::UnknownGroup {
                field: field.to_string(),
                name: name.clone(),
            }),
        }
    }

    /// chown (not following a final symlink) then chmod (skipped for symlinks).
    fn set(
        &self,
        field: &str,
        node: &Node,
        host: &Path,
        mode: Option<u32>,
    ) -> Result<(), ApplyError> {
        let uid = self.id(&format!("{field}.user"), &node.user, true)?;
        let gid = self.id(&format!("{field}.group"), &node.group, false)?;
        let meta = fs::symlink_metadata(host).map_err(io_at("inspecting", host))?;
        if uid.is_some_and(|u| u != meta.uid()) || gid.is_some_and(|g| g != meta.gid()) {
            lchown(host, uid, gid).map_err(io_at("changing owner of", host))?;
        }
        if let Some(mode) = mode {
            if !meta.file_type().is_symlink() {
                fs::set_permissions(host, fs::Permissions::from_mode(mode))
                    .map_err(io_at("setting mode of", host))?;
            }
        }
        Ok(())
    }
}

fn remove_any(host: &Path) -> Result<(), ApplyError> {
    match fs::symlink_metadata(host) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(host).map_err(io_at("removing", host)),
        Ok(_) => fs::remove_file(host).map_err(io_at("removing", host)),
        Err(_) => Ok(()),
    }
}

/// Creates every file, directory and link of `storage` under `root`.
pub(crate) fn apply_nodes(
    root: &TargetRoot,
    storage: &Storage,
    staged: &[StagedFile],
    rec: &mut Recorder,
) -> Result<(), ApplyError> {
    if storage.files.is_empty() && storage.directories.is_empty() && storage.links.is_empty() {
        return Ok(());
    }
    let owners = Owners {
        passwd: Table::load(root, "/etc/passwd")?,
        group: Table::load(root, "/etc/group")?,
    };
    let mut entries: Vec<(usize, Entry)> = Vec::new();
    entries.extend(
        storage
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (depth(&f.node.path), Entry::File(i, f))),
    );
    entries.extend(
        storage
            .directories
            .iter()
            .enumerate()
            .map(|(i, d)| (depth(&d.node.path), Entry::Dir(i, d))),
    );
    entries.extend(
        storage
            .links
            .iter()
            .enumerate()
            .filter(|(_, l)| l.hard != Some(true))
            .map(|(i, l)| (depth(&l.node.path), Entry::Link(i, l))),
    );
    entries.sort_by_key(|(d, _)| *d);
    entries.extend(
        storage
            .links
            .iter()
            .enumerate()
            .filter(|(_, l)| l.hard == Some(true))
            .map(|(i, l)| (0, Entry::Link(i, l))),
    );
    for (_, entry) in entries {
        match entry {
            Entry::File(i, f) => create_file(root, &owners, rec, i, f, &staged[i])?,
            Entry::Dir(i, d) => create_dir(root, &owners, rec, i, d)?,
            Entry::Link(i, l) => create_link(root, &owners, rec, i, l)?,
        }
    }
    Ok(())
}

fn create_file(
    root: &TargetRoot,
    owners: &Owners,
    rec: &mut Recorder,
    i: usize,
    f: &crate::model::File,
    staged: &StagedFile,
) -> Result<(), ApplyError> {
    let field = format!("storage.files.{i}");
    let path = &f.node.path;
    let host = root.prepare_parent(path)?;
    if f.node.overwrite == Some(true) {
        remove_any(&host)?;
    }
    let existing = fs::symlink_metadata(&host).ok();
    let keep_meta = match (&existing, staged.has_contents) {
        (None, _) => None,
        (Some(m), _) if !m.is_file() => {
            return Err(ApplyError::Exists {
                field,
                path: path.clone(),
                what: "a non regular file exists there already and overwrite is false",
            })
        }
        (Some(_), true) => {
            return Err(ApplyError::Exists {
                field,
                path: path.clone(),
                what: "a file exists there already and overwrite is false",
            })
        }
        (Some(m), false) => {
            if staged.path.is_none() {
                owners.set(&field, &f.node, &host, f.mode.map(|m| m as u32))?;
                rec.action(format!("kept existing file {path}"));
                return Ok(());
            }
            Some((m.uid(), m.gid(), m.mode() & 0o7777))
        }
    };
    let base_mode = keep_meta.map_or(0o644, |(_, _, mode)| mode);
    let size = match (&staged.path, keep_meta) {
        (None, _) => {
            write_atomic(&host, &[], base_mode)?;
            0
        }
        (Some(staged_path), None) => {
            staging::place(staged_path, &host, base_mode)?;
            staged.len
        }
        (Some(staged_path), Some(_)) => {
            staging::append_to_existing(&host, staged_path, &host, base_mode)?;
            fs::metadata(&host)
                .map_err(io_at("inspecting", &host))?
                .len()
        }
    };
    if let Some((uid, gid, _)) = keep_meta {
        lchown(&host, Some(uid), Some(gid)).map_err(io_at("restoring owner of", &host))?;
    }
    owners.set(
        &field,
        &f.node,
        &host,
        Some(f.mode.map_or(base_mode, |m| m as u32)),
    )?;
    rec.action(format!("wrote file {path} ({size} bytes)"));
    Ok(())
}

fn create_dir(
    root: &TargetRoot,
    owners: &Owners,
    rec: &mut Recorder,
    i: usize,
    d: &crate::model::Directory,
) -> Result<(), ApplyError> {
    let field = format!("storage.directories.{i}");
    let path = &d.node.path;
    let host = root.prepare_parent(path)?;
    if d.node.overwrite == Some(true) {
        remove_any(&host)?;
    }
    let mode = match fs::symlink_metadata(&host) {
        Ok(m) if m.is_dir() => d.mode.map(|m| m as u32),
        Ok(_) => {
            return Err(ApplyError::Exists {
                field,
                path: path.clone(),
                what: "a non-directory exists there already and overwrite is false",
            })
        }
        Err(_) => {
            fs::create_dir(&host).map_err(io_at("creating directory", &host))?;
            Some(d.mode.map_or(0o755, |m| m as u32))
        }
    };
    owners.set(&field, &d.node, &host, mode)?;
    rec.action(format!("created directory {path}"));
    Ok(())
}

fn create_link(
    root: &TargetRoot,
    owners: &Owners,
    rec: &mut Recorder,
    i: usize,
    l: &crate::model::Link,
) -> Result<(), ApplyError> {
    let field = format!("storage.links.{i}");
    let path = &l.node.path;
    let target = l.target.clone().unwrap_or_default();
    let host = root.prepare_parent(path)?;
    if l.node.overwrite == Some(true) {
        remove_any(&host)?;
    }
    let existing = fs::symlink_metadata(&host).ok();
    if l.hard == Some(true) {
        let target_host = root.resolve(&target, false)?;
        let target_meta =
            fs::symlink_metadata(&target_host).map_err(|_| ApplyError::HardLinkTarget {
                field: field.clone(),
                target: target.clone(),
            })?;
        if let Some(m) = existing {
            if m.ino() == target_meta.ino() && m.dev() == target_meta.dev() {
                rec.action(format!("hard link {path} already points to {target}"));
                return Ok(());
            }
            return Err(ApplyError::Exists {
                field,
                path: path.clone(),
                what: "a different node exists there already and overwrite is false",
            });
        }
        fs::hard_link(&target_host, &host).map_err(io_at("creating hard link", &host))?;
        rec.action(format!("created hard link {path} to {target}"));
        return Ok(());
    }
    if let Some(m) = existing {
        let same = m.file_type().is_symlink()
            && fs::read_link(&host).is_ok_and(|t| t == Path::new(&target));
        if !same {
            return Err(ApplyError::Exists {
                field,
                path: path.clone(),
                what: "a different node exists there already and overwrite is false",
            });
        }
    } else {
        std::os::unix::fs::symlink(&target, &host).map_err(io_at("creating symlink", &host))?;
    }
    owners.set(&field, &l.node, &host, None)?;
    rec.action(format!("created symlink {path} -> {target}"));
    Ok(())
}
