//! Paths inside the target root, resolved as if chrooted into it.
//!
//! Contract: [`TargetRoot::resolve`] maps an absolute config path to a host path below the root.
//! Every symlink met on the way (already in the target or created by the config) is followed by
//! this code, not by the kernel: absolute link targets restart at the root and `..` never climbs
//! above it, so no symlink can lead a write outside the root. The final component is followed
//! only on request; writers replace it with `rename`, which never follows it.
//!
//! This does not defend against a concurrent process swapping directories for symlinks while
//! applying (nothing else runs in the initramfs at that point).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use wellcar_contract::PathIoError;

use super::ApplyError;

/// How many symlinks one resolution may follow (Linux's MAXSYMLINKS).
const MAX_SYMLINK_HOPS: usize = 40;

/// The target root directory being provisioned.
#[derive(Debug, Clone)]
pub(crate) struct TargetRoot {
    root: PathBuf,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ApplyError + 'a {
    move |source| ApplyError::Io(PathIoError::new(what, path.to_path_buf(), source))
}

impl TargetRoot {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// Resolves the absolute in-target `path` to a host path inside the root.
    pub(crate) fn resolve(&self, path: &str, follow_last: bool) -> Result<PathBuf, ApplyError> {
        let mut pending: VecDeque<OsString> = components(Path::new(path));
        let mut stack: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(component) = pending.pop_front() {
            if component == ".." {
                stack.pop();
                continue;
            }
            if pending.is_empty() && !follow_last {
                stack.push(component);
                break;
            }
            let candidate = self.host(&stack).join(&component);
            match fs::symlink_metadata(&candidate) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(ApplyError::SymlinkLoop {
                            path: path.to_string(),
                        });
                    }
                    let target =
                        fs::read_link(&candidate).map_err(io_err("reading symlink", &candidate))?;
                    if target.is_absolute() {
                        stack.clear();
                    }
                    for c in components(&target).into_iter().rev() {
                        pending.push_front(c);
                    }
                }
                _ => stack.push(component),
            }
        }
        Ok(self.host(&stack))
    }

    fn host(&self, stack: &[OsString]) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(stack);
        p
    }

    /// `mkdir -p` for an in-target directory: missing components are created 0755 (owned by
    /// the caller, root in the initramfs). Returns the resolved host path.
    pub(crate) fn create_dir_all(&self, path: &str) -> Result<PathBuf, ApplyError> {
        let resolved = self.resolve(path, true)?;
        let relative = resolved
            .strip_prefix(&self.root)
            .map_err(|_| ApplyError::Escape {
                path: path.to_string(),
            })?;
        let mut current = self.root.clone();
        for c in relative.components() {
            current.push(c);
            match fs::symlink_metadata(&current) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(ApplyError::NotADirectory {
                        path: path.to_string(),
                        host: current,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&current).map_err(io_err("creating directory", &current))?;
                    fs::set_permissions(&current, fs::Permissions::from_mode(0o755))
                        .map_err(io_err("setting mode of", &current))?;
                }
                Err(e) => return Err(ApplyError::Io(PathIoError::new("inspecting", current, e))),
            }
        }
        Ok(resolved)
    }

    /// Resolves `path`'s parent (creating missing directories) and returns the host path of
    /// `path` itself, final component not followed.
    pub(crate) fn prepare_parent(&self, path: &str) -> Result<PathBuf, ApplyError> {
        let p = Path::new(path);
        let name = p.file_name().ok_or_else(|| ApplyError::Escape {
            path: path.to_string(),
        })?;
        let parent = p.parent().and_then(Path::to_str).unwrap_or("/");
        Ok(self.create_dir_all(parent)?.join(name))
    }
}

fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Writes `data` to `host` with [`wellcar_contract::atomic_file`]: temp file, fsync, rename
/// over the final name (never following a symlink there), fsync of the directory. The new file
/// has `mode`; ownership is the caller's.
pub(crate) fn write_atomic(host: &Path, data: &[u8], mode: u32) -> Result<(), ApplyError> {
    wellcar_contract::atomic_file::write(host, data, mode)
        .map_err(|source| ApplyError::Io(PathIoError::new("writing", host.to_path_buf(), source)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_and_dotdot_symlinks_stay_inside_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/", root.join("etc/up")).unwrap();
        symlink("../../../../outside", root.join("etc/rel")).unwrap();
        symlink("/tmp", root.join("abs")).unwrap();
        let r = TargetRoot::new(&root);
        assert_eq!(
            r.resolve("/etc/up/etc/x", true).unwrap(),
            root.join("etc/x")
        );
        assert_eq!(
            r.resolve("/etc/rel/x", true).unwrap(),
            root.join("outside/x")
        );
        assert_eq!(r.resolve("/abs/x", true).unwrap(), root.join("tmp/x"));
        assert_eq!(r.resolve("/abs", false).unwrap(), root.join("abs"));
    }

    #[test]
    fn symlink_loops_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        symlink("/b", tmp.path().join("a")).unwrap();
        symlink("/a", tmp.path().join("b")).unwrap();
        let r = TargetRoot::new(tmp.path());
        assert!(matches!(
            r.resolve("/a/x", true),
            Err(ApplyError::SymlinkLoop { .. })
        ));
    }

    #[test]
    fn atomic_write_replaces_a_symlink_instead_of_following_it() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"keep").unwrap();
        symlink(&outside, tmp.path().join("f")).unwrap();
        write_atomic(&tmp.path().join("f"), b"new", 0o644).unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"keep");
        assert_eq!(fs::read(tmp.path().join("f")).unwrap(), b"new");
        assert!(!fs::symlink_metadata(tmp.path().join("f"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
