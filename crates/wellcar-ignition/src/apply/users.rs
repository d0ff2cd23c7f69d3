//! `passwd.groups` and `passwd.users`: edits the target's `/etc/passwd`, `/etc/shadow`,
//! `/etc/group` and `/etc/gshadow` directly, with the semantics of shadow-utils'
//! `useradd`/`usermod`/`userdel`/`groupadd --root` as Ignition runs them.
//!
//! - New ids: the given one, else one past the highest id in the normal range (`UID_MIN`..
//!   `UID_MAX` from the target's `/etc/login.defs`, default 1000..60000), or the highest free id
//!   of the system range (`SYS_UID_MIN`..`SYS_UID_MAX`, default 101..999) for `system` entries.
//! - New users get a group named after them unless `noUserGroup` or `primaryGroup` is set, a
//!   shadow entry (`*` when no hash is given) and a home directory (unless `noCreateHome`)
//!   populated from `/etc/skel`, mode from `HOME_MODE`/`UMASK`, owned by the user.
//! - SSH keys go to `~/.ssh/authorized_keys.d/ignition` (0600; directories 0700; owned by the
//!   user); `~/.ssh/authorized_keys` is regenerated from all fragments the way Flatcar's
//!   `update-ssh-keys` does, so sshd finds the keys whichever file it reads.
//! - Every database file is replaced atomically, keeping its mode and owner.
//! - Every read, write, move and removal (databases, homes, `/etc/skel`, ssh keys) goes through
//!   [`TargetRoot`]'s kernel-confined calls, so a symlink planted in the root (e.g.
//!   `~/.ssh/authorized_keys -> /etc/shadow`) resolves inside the root.
//! - Names and fields are checked first ([`crate::validate::account_problems`]): nothing with a
//!   `:` or newline reaches a database line.

use std::collections::HashMap;
use std::path::Path;

use rustix::fs::FileType;

use super::root::TargetRoot;
use super::{ApplyError, Recorder};
use crate::model::{PasswdGroup, PasswdUser};

/// One colon-separated database file (passwd, shadow, group, gshadow).
#[derive(Debug, Clone)]
pub(crate) struct Table {
    path: &'static str,
    lines: Vec<Vec<String>>,
    present: bool,
    changed: bool,
}

impl Table {
    pub(crate) fn load(root: &TargetRoot, path: &'static str) -> Result<Self, ApplyError> {
        let (text, present) = match root.read_to_string(path)? {
            Some(t) => (t, true),
            None => (String::new(), false),
        };
        let lines = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split(':').map(str::to_string).collect())
            .collect();
        Ok(Self {
            path,
            lines,
            present,
            changed: false,
        })
    }

    pub(crate) fn find(&self, name: &str) -> Option<&Vec<String>> {
        self.lines.iter().find(|l| l[0] == name)
    }

    fn find_mut(&mut self, name: &str) -> Option<&mut Vec<String>> {
        self.changed = true;
        self.lines.iter_mut().find(|l| l[0] == name)
    }

    fn push(&mut self, fields: Vec<String>) {
        self.changed = true;
        self.lines.push(fields);
    }

    fn remove(&mut self, name: &str) {
        let before = self.lines.len();
        self.lines.retain(|l| l[0] != name);
        self.changed |= self.lines.len() != before;
    }

    /// Numeric field `i` of every line.
    fn ids(&self, i: usize) -> Vec<i64> {
        self.lines
            .iter()
            .filter_map(|l| l.get(i)?.parse().ok())
            .collect()
    }

    pub(crate) fn name_by_id(&self, id: i64, i: usize) -> Option<&str> {
        self.lines
            .iter()
            .find(|l| l.get(i).and_then(|v| v.parse().ok()) == Some(id))
            .map(|l| l[0].as_str())
    }

    fn save(&self, root: &TargetRoot) -> Result<(), ApplyError> {
        if !self.changed || (!self.present && self.lines.is_empty()) {
            return Ok(());
        }
        let meta = root.stat(self.path);
        let mode = meta.as_ref().map_or(
            if self.path.contains("shadow") {
                0o640
            } else {
                0o644
            },
            |m| m.st_mode & 0o7777,
        );
        let mut text = String::new();
        for l in &self.lines {
            text.push_str(&l.join(":"));
            text.push('\n');
        }
        let file = root.write_file(self.path, text.as_bytes(), mode)?;
        if let Some(m) = meta {
            TargetRoot::chown(&file, Path::new(self.path), m.st_uid, m.st_gid)?;
        }
        Ok(())
    }
}

/// The four account databases of the target.
pub(crate) struct Accounts {
    pub(crate) passwd: Table,
    shadow: Table,
    pub(crate) group: Table,
    gshadow: Table,
    defs: HashMap<String, String>,
    useradd_defaults: HashMap<String, String>,
}

fn read_kv(root: &TargetRoot, path: &str, sep: char) -> HashMap<String, String> {
    let text = root.read_to_string(path).ok().flatten().unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = if sep == '=' {
                l.split_once('=')?
            } else {
                l.split_once(char::is_whitespace)?
            };
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

fn days_since_epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0)
}

impl Accounts {
    pub(crate) fn load(root: &TargetRoot) -> Result<Self, ApplyError> {
        Ok(Self {
            passwd: Table::load(root, "/etc/passwd")?,
            shadow: Table::load(root, "/etc/shadow")?,
            group: Table::load(root, "/etc/group")?,
            gshadow: Table::load(root, "/etc/gshadow")?,
            defs: read_kv(root, "/etc/login.defs", ' '),
            useradd_defaults: read_kv(root, "/etc/default/useradd", '='),
        })
    }

    fn save(&self, root: &TargetRoot) -> Result<(), ApplyError> {
        self.group.save(root)?;
        self.gshadow.save(root)?;
        self.passwd.save(root)?;
        self.shadow.save(root)
    }

    fn def(&self, key: &str, default: i64) -> i64 {
        self.defs
            .get(key)
            .and_then(|v| parse_c_int(v))
            .unwrap_or(default)
    }

    /// Picks a free id: the system range top-down, the normal range one past the highest used.
    /// A new id as shadow-utils' `find_new_gid` picks it with a preferred id (useradd's
    /// user-private group prefers the user's uid): `preferred` when it lies in the range for
    /// `system` and is unused, else [`Self::allocate`]'s choice.
    fn allocate_preferring(
        &self,
        used: &[i64],
        system: bool,
        kind: &'static str,
        preferred: i64,
    ) -> Result<i64, ApplyError> {
        let (lo, hi) = self.id_range(system, kind);
        if (lo..=hi).contains(&preferred) && !used.contains(&preferred) {
            return Ok(preferred);
        }
        self.allocate(used, system, kind)
    }

    /// The `login.defs` range new ids of `kind` ("uid" or "gid") come from.
    fn id_range(&self, system: bool, kind: &'static str) -> (i64, i64) {
        let (prefix, sys_prefix) = if kind == "uid" {
            ("UID", "SYS_UID")
        } else {
            ("GID", "SYS_GID")
        };
        if system {
            (
                self.def(&format!("{sys_prefix}_MIN"), 101),
                self.def(&format!("{sys_prefix}_MAX"), 999),
            )
        } else {
            (
                self.def(&format!("{prefix}_MIN"), 1000),
                self.def(&format!("{prefix}_MAX"), 60000),
            )
        }
    }

    fn allocate(&self, used: &[i64], system: bool, kind: &'static str) -> Result<i64, ApplyError> {
        let (lo, hi) = self.id_range(system, kind);
        if system {
            return (lo..=hi)
                .rev()
                .find(|id| !used.contains(id))
                .ok_or(ApplyError::IdsExhausted { kind });
        }
        let highest = used
            .iter()
            .copied()
            .filter(|id| (lo..=hi).contains(id))
            .max();
        match highest {
            None => Ok(lo),
            Some(h) if h < hi => Ok(h + 1),
            Some(_) => (lo..=hi)
                .find(|id| !used.contains(id))
                .ok_or(ApplyError::IdsExhausted { kind }),
        }
    }

    fn gid_of(&self, group: &str) -> Option<i64> {
        if let Some(line) = self.group.find(group) {
            return line.get(2)?.parse().ok();
        }
        group
            .parse()
            .ok()
            .filter(|gid| self.group.name_by_id(*gid, 2).is_some())
    }

    /// Sets `user`'s supplementary groups to exactly `groups` (usermod -G / useradd -G).
    fn set_supplementary(
        &mut self,
        field: &str,
        user: &str,
        groups: &[String],
    ) -> Result<(), ApplyError> {
        for g in groups {
            if self.group.find(g).is_none() {
                return Err(ApplyError::UnknownGroup {
                    field: field.to_string(),
                    name: g.clone(),
                });
            }
        }
        for table in [&mut self.group, &mut self.gshadow] {
            let mut changed = false;
            for line in table.lines.iter_mut() {
                if line.len() < 4 {
                    continue;
                }
                let mut members: Vec<String> = line[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect();
                let wanted = groups.contains(&line[0]);
                let has = members.iter().any(|m| m == user);
                if wanted && !has {
                    members.push(user.to_string());
                } else if !wanted && has {
                    members.retain(|m| m != user);
                } else {
                    continue;
                }
                line[3] = members.join(",");
                changed = true;
            }
            table.changed |= changed;
        }
        Ok(())
    }
}

fn parse_c_int(v: &str) -> Option<i64> {
    if let Some(hex) = v.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()
    } else if v.len() > 1 && v.starts_with('0') {
        i64::from_str_radix(&v[1..], 8).ok()
    } else {
        v.parse().ok()
    }
}

fn group_stage(
    acc: &mut Accounts,
    rec: &mut Recorder,
    i: usize,
    g: &PasswdGroup,
) -> Result<(), ApplyError> {
    let field = format!("passwd.groups.{i}");
    if g.should_exist == Some(false) {
        if acc.group.find(&g.name).is_some() {
            acc.group.remove(&g.name);
            acc.gshadow.remove(&g.name);
            rec.action(format!("deleted group {:?}", g.name));
        }
        return Ok(());
    }
    if let Some(line) = acc.group.find_mut(&g.name) {
        if let Some(gid) = g.gid {
            line[2] = gid.to_string();
        }
        if let Some(hash) = &g.password_hash {
            if let Some(gs) = acc.gshadow.find_mut(&g.name) {
                gs[1] = hash.clone();
            }
        }
        rec.action(format!("updated group {:?}", g.name));
        return Ok(());
    }
    let used = acc.group.ids(2);
    let gid = match g.gid {
        Some(gid) if used.contains(&gid) => {
            return Err(ApplyError::IdInUse {
                field,
                kind: "gid",
                id: gid,
            })
        }
        Some(gid) => gid,
        None => acc.allocate(&used, g.system == Some(true), "gid")?,
    };
    acc.group.push(vec![
        g.name.clone(),
        "x".into(),
        gid.to_string(),
        String::new(),
    ]);
    if acc.gshadow.present {
        // Ignition creates groups with `groupadd --password '*'` unless a hash is given.
        let hash = g.password_hash.clone().unwrap_or_else(|| "*".into());
        acc.gshadow
            .push(vec![g.name.clone(), hash, String::new(), String::new()]);
    }
    rec.action(format!("created group {:?} gid {gid}", g.name));
    Ok(())
}

fn delete_user(
    root: &TargetRoot,
    acc: &mut Accounts,
    rec: &mut Recorder,
    name: &str,
) -> Result<(), ApplyError> {
    let Some(line) = acc.passwd.find(name).cloned() else {
        return Ok(());
    };
    acc.set_supplementary("passwd.users", name, &[])?;
    acc.passwd.remove(name);
    acc.shadow.remove(name);
    let gid: Option<i64> = line.get(3).and_then(|g| g.parse().ok());
    let private_group = acc.group.find(name).is_some_and(|g| {
        g.get(2).and_then(|v| v.parse().ok()) == gid && g.get(3).is_none_or(|m| m.is_empty())
    });
    if private_group {
        acc.group.remove(name);
        acc.gshadow.remove(name);
    }
    if let Some(home) = line.get(5).filter(|h| h.starts_with('/') && *h != "/") {
        let host = root.resolve(home, false)?;
        // A home of "/.." or similar resolves to the root itself: never remove that.
        let is_root = host == root.resolve("/", true)?;
        if !is_root && root.file_type(home) == Some(FileType::Directory) {
            root.remove_dir_all(home)?;
        }
    }
    rec.action(format!("deleted user {name:?}"));
    Ok(())
}

/// Copies the regular files and directories of `/etc/skel` into `dst`, owned by the user; both
/// trees are read and written inside the root, symlinks in the skeleton are skipped.
fn copy_skel(
    root: &TargetRoot,
    src: &str,
    dst: &str,
    uid: u32,
    gid: u32,
) -> Result<(), ApplyError> {
    for (name, ty) in root.list_dir(src)? {
        let name = name.to_string_lossy();
        let (from, to) = (format!("{src}/{name}"), format!("{dst}/{name}"));
        if ty == FileType::Directory {
            let mode = root.stat(&from).map_or(0o755, |m| m.st_mode & 0o7777);
            root.mkdir(&to, mode)?;
            copy_skel(root, &from, &to, uid, gid)?;
            root.set_dir_owner_mode(&to, None, uid, gid)?;
        } else if ty == FileType::RegularFile {
            let mode = root.stat(&from).map_or(0o644, |m| m.st_mode & 0o7777);
            let data = root.read(&from)?.unwrap_or_default();
            let file = root.write_file(&to, &data, mode)?;
            TargetRoot::chown(&file, Path::new(&to), uid, gid)?;
        }
    }
    Ok(())
}

fn user_stage(
    root: &TargetRoot,
    acc: &mut Accounts,
    rec: &mut Recorder,
    i: usize,
    u: &PasswdUser,
) -> Result<(), ApplyError> {
    let field = format!("passwd.users.{i}");
    if u.should_exist == Some(false) {
        return delete_user(root, acc, rec, &u.name);
    }
    let primary_gid = match &u.primary_group {
        Some(g) => Some(acc.gid_of(g).ok_or_else(|| ApplyError::UnknownGroup {
            field: format!("{field}.primaryGroup"),
            name: g.clone(),
        })?),
        None => None,
    };
    let (uid, gid, home) = if let Some(existing) = acc.passwd.find(&u.name).cloned() {
        let mut line = existing.clone();
        line.resize(7, String::new());
        if let Some(uid) = u.uid {
            line[2] = uid.to_string();
        }
        if let Some(gid) = primary_gid {
            line[3] = gid.to_string();
        }
        if let Some(gecos) = &u.gecos {
            line[4] = gecos.clone();
        }
        if let Some(home) = &u.home_dir {
            if *home != line[5] {
                root.prepare_parent(home)?;
                if line[5].starts_with('/')
                    && root.file_type(&line[5]) == Some(FileType::Directory)
                    && root.file_type(home).is_none()
                {
                    root.rename(&line[5], home)?;
                }
                line[5] = home.clone();
            }
        }
        if let Some(shell) = &u.shell {
            line[6] = shell.clone();
        }
        if let Some(hash) = &u.password_hash {
            if let Some(s) = acc.shadow.find_mut(&u.name) {
                s[1] = hash.clone();
            }
        }
        let uid: i64 = line[2].parse().unwrap_or(0);
        let gid: i64 = line[3].parse().unwrap_or(0);
        let home = line[5].clone();
        *acc.passwd.find_mut(&u.name).expect("user was found above") = line;
        rec.action(format!("updated user {:?}", u.name));
        (uid, gid, home)
    } else {
        let used = acc.passwd.ids(2);
        let uid = match u.uid {
            Some(uid) if used.contains(&uid) => {
                return Err(ApplyError::IdInUse {
                    field: format!("{field}.uid"),
                    kind: "uid",
                    id: uid,
                })
            }
            Some(uid) => uid,
            None => acc.allocate(&used, u.system == Some(true), "uid")?,
        };
        let gid = match primary_gid {
            Some(gid) => gid,
            None if u.no_user_group == Some(true) => acc
                .useradd_defaults
                .get("GROUP")
                .and_then(|g| acc.gid_of(g))
                .unwrap_or(100),
            None => {
                if acc.group.find(&u.name).is_some() {
                    return Err(ApplyError::GroupExists {
                        field,
                        name: u.name.clone(),
                    });
                }
                let gid =
                    acc.allocate_preferring(&acc.group.ids(2), u.system == Some(true), "gid", uid)?;
                acc.group.push(vec![
                    u.name.clone(),
                    "x".into(),
                    gid.to_string(),
                    String::new(),
                ]);
                if acc.gshadow.present {
                    acc.gshadow.push(vec![
                        u.name.clone(),
                        "!".into(),
                        String::new(),
                        String::new(),
                    ]);
                }
                gid
            }
        };
        let home_base = acc
            .useradd_defaults
            .get("HOME")
            .cloned()
            .unwrap_or_else(|| "/home".into());
        let home = u
            .home_dir
            .clone()
            .unwrap_or_else(|| format!("{}/{}", home_base.trim_end_matches('/'), u.name));
        let shell = u
            .shell
            .clone()
            .or_else(|| acc.useradd_defaults.get("SHELL").cloned())
            .unwrap_or_else(|| "/bin/bash".into());
        acc.passwd.push(vec![
            u.name.clone(),
            "x".into(),
            uid.to_string(),
            gid.to_string(),
            u.gecos.clone().unwrap_or_default(),
            home.clone(),
            shell,
        ]);
        let hash = u
            .password_hash
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "*".into());
        acc.shadow.push(vec![
            u.name.clone(),
            hash,
            days_since_epoch().to_string(),
            "0".into(),
            "99999".into(),
            "7".into(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        if u.no_create_home != Some(true) {
            root.prepare_parent(&home)?;
            if root.file_type(&home).is_none() {
                let umask = acc.def("UMASK", 0o022);
                let mode = acc.def("HOME_MODE", 0o777 & !umask) as u32;
                root.mkdir(&home, mode)?;
                if root.file_type("/etc/skel") == Some(FileType::Directory) {
                    copy_skel(root, "/etc/skel", &home, uid as u32, gid as u32)?;
                }
                root.set_dir_owner_mode(&home, None, uid as u32, gid as u32)?;
            }
        }
        rec.action(format!(
            "created user {:?} uid {uid} gid {gid} home {home}",
            u.name
        ));
        (uid, gid, home)
    };
    if !u.groups.is_empty() {
        acc.set_supplementary(&format!("{field}.groups"), &u.name, &u.groups)?;
    }
    if !u.ssh_authorized_keys.is_empty() {
        write_ssh_keys(
            root,
            rec,
            &u.name,
            &home,
            uid as u32,
            gid as u32,
            &u.ssh_authorized_keys,
        )?;
    }
    Ok(())
}

/// Header of the generated `authorized_keys` (Flatcar's update-ssh-keys uses the same idea).
const GENERATED_HEADER: &str = "# auto-generated from ~/.ssh/authorized_keys.d by wellcar-ignition; edit the fragments instead\n";

fn write_ssh_keys(
    root: &TargetRoot,
    rec: &mut Recorder,
    user: &str,
    home: &str,
    uid: u32,
    gid: u32,
    keys: &[String],
) -> Result<(), ApplyError> {
    let ssh_dir = format!("{}/.ssh", home.trim_end_matches('/'));
    let frag_dir = format!("{ssh_dir}/authorized_keys.d");
    for dir in [&ssh_dir, &frag_dir] {
        root.create_dir_all(dir)?;
        root.set_dir_owner_mode(dir, Some(0o700), uid, gid)?;
    }
    let ak_path = format!("{ssh_dir}/authorized_keys");
    let write_owned = |path: &str, text: &str| -> Result<(), ApplyError> {
        let file = root.write_file(path, text.as_bytes(), 0o600)?;
        TargetRoot::chown(&file, Path::new(path), uid, gid)
    };
    // A hand-written authorized_keys is kept as a fragment before being regenerated. Reads
    // resolve inside the root: a planted link to a host file reads the root's file instead.
    let old_fragment = format!("{frag_dir}/old_authorized_keys");
    if let Some(existing) = root.read_to_string(&ak_path)? {
        if !existing.starts_with(GENERATED_HEADER) && root.file_type(&old_fragment).is_none() {
            write_owned(&old_fragment, &existing)?;
        }
    }
    let mut text = keys.join("\n");
    text.push('\n');
    write_owned(&format!("{frag_dir}/ignition"), &text)?;
    // Only regular files are fragments (not symlinks, wherever they point).
    let mut names: Vec<_> = root
        .list_dir(&frag_dir)?
        .into_iter()
        .filter(|(_, ty)| *ty == FileType::RegularFile)
        .map(|(n, _)| n)
        .collect();
    names.sort();
    let mut combined = GENERATED_HEADER.to_string();
    for n in names {
        let path = format!("{frag_dir}/{}", n.to_string_lossy());
        let body = root.read_to_string(&path)?.unwrap_or_default();
        combined.push_str(&body);
        if !body.ends_with('\n') {
            combined.push('\n');
        }
    }
    write_owned(&ak_path, &combined)?;
    rec.action(format!(
        "wrote {} ssh key(s) for {user:?} to {frag_dir}/ignition and {ssh_dir}/authorized_keys",
        keys.len()
    ));
    Ok(())
}

/// Runs the groups then users part of the files stage.
pub(crate) fn apply_accounts(
    root: &TargetRoot,
    groups: &[PasswdGroup],
    users: &[PasswdUser],
    rec: &mut Recorder,
) -> Result<(), ApplyError> {
    if groups.is_empty() && users.is_empty() {
        return Ok(());
    }
    // Validation refuses these already; the applier re-checks before writing any database line.
    let passwd = crate::model::Passwd {
        groups: groups.to_vec(),
        users: users.to_vec(),
    };
    if let Some((field, reason)) = crate::validate::account_problems(&passwd)
        .into_iter()
        .next()
    {
        return Err(ApplyError::InvalidField { field, reason });
    }
    let mut acc = Accounts::load(root)?;
    for (i, g) in groups.iter().enumerate() {
        group_stage(&mut acc, rec, i, g)?;
    }
    for (i, u) in users.iter().enumerate() {
        user_stage(root, &mut acc, rec, i, u)?;
    }
    acc.save(root)
}
