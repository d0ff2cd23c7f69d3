//! Flatcar's selective OS reset (`flatcar-reset`, carried out by the initramfs on the next
//! first boot): which paths of ROOT survive, and deleting the rest.
//!
//! Contract (Flatcar's, flatcar/init `bin/flatcar-reset`):
//! - `flatcar-reset` writes [`MARKER`] (`/selective-os-reset` on ROOT) holding one regular
//!   expression, built by [`keep_regex`] from the paths the user names, and sets the
//!   first-boot flag. A path given without a trailing `$`, `)`, `*`, `]` or `?` also keeps
//!   everything below it (`PATH/.*`); `/flatcar-backup` and the marker itself are always in it.
//! - A path of ROOT, written absolute as seen from the running system (`/etc/ssh/…`), is kept
//!   when the whole path matches the expression ([`KeepSet::keeps`], as `find -regex`).
//! - [`reset`] (the initramfs, ROOT mounted, before anything else touches it) walks ROOT
//!   without following symlinks or leaving ROOT's filesystem, deletes every entry that is not
//!   kept, keeps a directory that still holds a kept entry (emptied of the rest), and removes
//!   the marker last. It only ever deletes below the directory it is given.
//!
//! The expression language is the `regex` crate's, which agrees with egrep's for the
//! expressions `flatcar-reset` documents (`/etc/ssh/ssh_host_.*`, `^/etc/x`, `(/var/log)`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The marker on ROOT, relative to its top.
pub const MARKER: &str = "selective-os-reset";

/// Where Flatcar's `--backup` puts copies; always kept.
pub const BACKUP_DIR: &str = "flatcar-backup";

/// What is wrong with a reset request or the marker.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// A path to keep is not absolute.
    #[error("invalid path to keep, must be an absolute path or a regex for an absolute path: {0}")]
    NotAbsolute(String),
    /// The expression does not compile.
    #[error("the paths to keep {regex:?} are not a valid regular expression: {reason}")]
    BadRegex {
        /// The expression.
        regex: String,
        /// Why.
        reason: String,
    },
    /// Reading, listing or deleting failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Flatcar's combined expression for the paths to keep (`generate_regex`). Each entry must be
/// absolute or an expression for one (starting with `/ \ ( { [ $ ^`).
pub fn keep_regex(keep: &[String]) -> Result<String, ResetError> {
    let mut out = String::from("(");
    for entry in keep {
        if entry.starts_with("./") || !entry.starts_with(['/', '\\', '(', '{', '[', '$', '^']) {
            return Err(ResetError::NotAbsolute(entry.clone()));
        }
        let entry = entry.strip_suffix('/').unwrap_or(entry);
        if entry.starts_with('/') && !entry.ends_with(['$', ')', '*', ']', '?']) {
            out.push_str(&format!("{entry}/.*|"));
        }
        out.push_str(&format!("{entry}|"));
    }
    out.push_str(&format!("/{BACKUP_DIR}|/{BACKUP_DIR}/.*|/{MARKER})"));
    KeepSet::parse(&out)?;
    Ok(out)
}

/// The compiled expression of paths to keep.
#[derive(Debug, Clone)]
pub struct KeepSet(regex::Regex);

impl KeepSet {
    /// Compiles `text` (the marker's content; surrounding whitespace ignored), matching whole
    /// paths.
    pub fn parse(text: &str) -> Result<Self, ResetError> {
        let regex = text.trim();
        regex::Regex::new(&format!("^(?:{regex})$"))
            .map(KeepSet)
            .map_err(|e| ResetError::BadRegex {
                regex: regex.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Whether the absolute path `path` (as the running system names it) is kept.
    pub fn keeps(&self, path: &str) -> bool {
        self.0.is_match(path)
    }
}

/// What [`plan`] or [`reset`] found: system paths, in walk order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Entries deleted (or to delete).
    pub deleted: Vec<String>,
    /// Entries kept because they match.
    pub kept: Vec<String>,
}

/// Reads the marker below `root`: `None` when there is none.
pub fn read_marker(root: &Path) -> Result<Option<KeepSet>, ResetError> {
    let path = root.join(MARKER);
    match std::fs::read_to_string(&path) {
        Ok(text) => KeepSet::parse(&text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ResetError::Io {
            action: "reading",
            path,
            source,
        }),
    }
}

/// What [`reset`] would do below `root`, deleting nothing.
pub fn plan(root: &Path, keep: &KeepSet) -> Result<Outcome, ResetError> {
    let mut outcome = Outcome::default();
    walk(root, root, device(root)?, keep, false, &mut outcome)?;
    Ok(outcome)
}

/// Carries out the reset below `root` (ROOT's top) if it holds the marker; the marker is
/// removed last. `Ok(None)`: no marker, nothing done.
pub fn reset(root: &Path) -> Result<Option<Outcome>, ResetError> {
    let Some(keep) = read_marker(root)? else {
        return Ok(None);
    };
    let mut outcome = Outcome::default();
    walk(root, root, device(root)?, &keep, true, &mut outcome)?;
    let marker = root.join(MARKER);
    std::fs::remove_file(&marker).map_err(|source| ResetError::Io {
        action: "removing",
        path: marker,
        source,
    })?;
    Ok(Some(outcome))
}

fn device(path: &Path) -> Result<u64, ResetError> {
    std::fs::symlink_metadata(path)
        .map(|m| m.dev())
        .map_err(|source| ResetError::Io {
            action: "reading",
            path: path.to_owned(),
            source,
        })
}

/// Walks the directory `dir` below `root`; returns whether anything in it was kept.
fn walk(
    root: &Path,
    dir: &Path,
    dev: u64,
    keep: &KeepSet,
    delete: bool,
    outcome: &mut Outcome,
) -> Result<bool, ResetError> {
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| ResetError::Io {
            action,
            path,
            source,
        }
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io("listing", dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io("listing", dir))?;
    entries.sort();
    let mut any_kept = false;
    for path in entries {
        let name = format!(
            "/{}",
            path.strip_prefix(root).expect("below root").display()
        );
        let meta = std::fs::symlink_metadata(&path).map_err(io("reading", &path))?;
        if meta.dev() != dev {
            // Another filesystem mounted here: not ROOT's to delete.
            any_kept = true;
            continue;
        }
        let kept = keep.keeps(&name);
        let holds_kept = meta.is_dir() && walk(root, &path, dev, keep, delete, outcome)?;
        if kept {
            outcome.kept.push(name);
            any_kept = true;
        } else if holds_kept {
            any_kept = true;
        } else {
            if delete {
                if meta.is_dir() {
                    std::fs::remove_dir(&path).map_err(io("removing", &path))?;
                } else {
                    std::fs::remove_file(&path).map_err(io("removing", &path))?;
                }
            }
            outcome.deleted.push(name);
        }
    }
    Ok(any_kept)
}

#[cfg(test)]
mod tests;
