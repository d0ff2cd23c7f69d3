//! Paths inside the target root, resolved as if chrooted into it.
//!
//! Contract: every path the applier writes, reads or deletes is an absolute in-target path that
//! resolves inside the root, including through symlinks planted in the root and through the
//! final component. Two mechanisms, one rule (absolute link targets restart at the root, `..`
//! never climbs above it):
//!
//! - The kernel: [`TargetRoot::read`], [`TargetRoot::write_file`], [`TargetRoot::remove_link`],
//!   [`TargetRoot::symlink`], [`TargetRoot::read_link`], [`TargetRoot::file_type`] and
//!   [`TargetRoot::list_dir`] open the path (or its parent) with `openat2(2)`
//!   `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` relative to a descriptor of the root, then act on
//!   the final name with the `*at` calls, which never follow it. Reads follow a final symlink,
//!   but only inside the root, and refuse anything but a regular file (a planted FIFO cannot hang
//!   the boot). [`TargetRoot::create_dir_all`] walks one component at a time with
//!   `O_NOFOLLOW` from the root descriptor. These hold even if the tree changes while applying.
//! - [`TargetRoot::resolve`] maps a path to a host path below the root by following every
//!   symlink in this code, for the callers that still need a host path (copying `/etc/skel`,
//!   hard links, mount units). It does not defend against a concurrent process swapping
//!   directories for symlinks (nothing else runs in the initramfs at that point).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::fs::File;
use std::io;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
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
    /// the caller, root in the initramfs). Returns the resolved host path. The path is resolved
    /// first, then walked from a descriptor of the root one component at a time, never following
    /// a symlink, so a symlink swapped in meanwhile fails the walk instead of leading out.
    pub(crate) fn create_dir_all(&self, path: &str) -> Result<PathBuf, ApplyError> {
        let resolved = self.resolve(path, true)?;
        let relative = resolved
            .strip_prefix(&self.root)
            .map_err(|_| ApplyError::Escape {
                path: path.to_string(),
            })?
            .to_path_buf();
        let mut dir = self.root_fd()?;
        let mut current = self.root.clone();
        for c in relative.components() {
            current.push(c);
            let walk = |dir: &OwnedFd| {
                rustix::fs::openat(
                    dir,
                    c.as_os_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            };
            dir = match walk(&dir) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => {
                    rustix::fs::mkdirat(&dir, c.as_os_str(), Mode::from_raw_mode(0o755))
                        .map_err(|e| io_err("creating directory", &current)(e.into()))?;
                    let fd = walk(&dir).map_err(|e| io_err("opening", &current)(e.into()))?;
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
                        .map_err(|e| io_err("setting mode of", &current)(e.into()))?;
                    fd
                }
                Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
                    return Err(ApplyError::NotADirectory {
                        path: path.to_string(),
                        host: current,
                    })
                }
                Err(e) => return Err(io_err("opening", &current)(e.into())),
            };
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

/// `openat2` resolution: every symlink (and `..`) is resolved as if the root were `/`.
const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// The in-target path relative to the root (`.` for `/`).
fn relative(path: &str) -> &str {
    match path.trim_start_matches('/') {
        "" => ".",
        rel => rel,
    }
}

impl TargetRoot {
    /// The host path naming `path` in errors.
    fn host_of(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn root_fd(&self) -> Result<OwnedFd, ApplyError> {
        rustix::fs::open(
            &self.root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("opening target root", &self.root)(e.into()))
    }

    /// Opens `path` with `flags`, resolved by the kernel inside the root.
    fn open(&self, path: &str, flags: OFlags) -> Result<OwnedFd, rustix::io::Errno> {
        let root = self.root_fd().map_err(|_| rustix::io::Errno::BADF)?;
        loop {
            // EAGAIN: a rename elsewhere raced the lookup; the kernel asks to retry.
            match rustix::fs::openat2(
                &root,
                relative(path),
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                IN_ROOT,
            ) {
                Err(rustix::io::Errno::AGAIN) => continue,
                other => return other,
            }
        }
    }

    /// The parent directory of `path` (resolved inside the root) and the final name, which the
    /// `*at` calls then use without following it.
    fn parent(&self, path: &str, flags: OFlags) -> Result<(OwnedFd, OsString), ApplyError> {
        let p = Path::new(path);
        let name = match p.components().next_back() {
            Some(Component::Normal(n)) => n.to_os_string(),
            _ => {
                return Err(ApplyError::Escape {
                    path: path.to_string(),
                })
            }
        };
        let parent = p.parent().and_then(Path::to_str).unwrap_or("/");
        let fd = self
            .open(parent, flags | OFlags::DIRECTORY)
            .map_err(|e| io_err("opening directory", &self.host_of(parent))(e.into()))?;
        Ok((fd, name))
    }

    /// Reads the regular file at `path`; `None` when it (or a directory above it) does not
    /// exist. A final symlink is followed inside the root only.
    pub(crate) fn read(&self, path: &str) -> Result<Option<Vec<u8>>, ApplyError> {
        let host = self.host_of(path);
        let fd = match self.open(path, OFlags::RDONLY | OFlags::NONBLOCK) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(None),
            Err(e) => return Err(io_err("opening", &host)(e.into())),
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| io_err("inspecting", &host)(e.into()))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(io_err("reading", &host)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let mut data = Vec::new();
        File::from(fd)
            .read_to_end(&mut data)
            .map_err(io_err("reading", &host))?;
        Ok(Some(data))
    }

    /// [`TargetRoot::read`] as UTF-8 text.
    pub(crate) fn read_to_string(&self, path: &str) -> Result<Option<String>, ApplyError> {
        self.read(path)?
            .map(|data| {
                String::from_utf8(data).map_err(|e| {
                    io_err("reading", &self.host_of(path))(io::Error::new(
                        io::ErrorKind::InvalidData,
                        e,
                    ))
                })
            })
            .transpose()
    }

    /// Metadata of the node at `path`, a final symlink followed inside the root; `None` if
    /// absent.
    pub(crate) fn stat(&self, path: &str) -> Option<rustix::fs::Stat> {
        let fd = self.open(path, OFlags::PATH).ok()?;
        rustix::fs::fstat(&fd).ok()
    }

    /// The type of the node at `path`, final component not followed; `None` if absent.
    pub(crate) fn file_type(&self, path: &str) -> Option<FileType> {
        let (dir, name) = self.parent(path, OFlags::PATH).ok()?;
        rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| FileType::from_raw_mode(st.st_mode))
    }

    /// The target of the symlink at `path`; `None` if absent or not a symlink.
    pub(crate) fn read_link(&self, path: &str) -> Option<PathBuf> {
        let (dir, name) = self.parent(path, OFlags::PATH).ok()?;
        let target = rustix::fs::readlinkat(&dir, &name, Vec::new()).ok()?;
        Some(PathBuf::from(OsString::from_vec(target.into_bytes())))
    }

    /// Removes the non-directory at `path` (never what a final symlink points to).
    pub(crate) fn remove_link(&self, path: &str) -> Result<(), ApplyError> {
        let (dir, name) = self.parent(path, OFlags::PATH)?;
        rustix::fs::unlinkat(&dir, &name, AtFlags::empty())
            .map_err(|e| io_err("removing", &self.host_of(path))(e.into()))
    }

    /// Creates a symlink at `path` (its directory must exist) pointing to `target`.
    pub(crate) fn symlink(&self, path: &str, target: &str) -> Result<(), ApplyError> {
        let (dir, name) = self.parent(path, OFlags::PATH)?;
        rustix::fs::symlinkat(target, &dir, &name)
            .map_err(|e| io_err("creating symlink", &self.host_of(path))(e.into()))
    }

    /// Names and types of the entries of the directory at `path` (empty if it is absent).
    pub(crate) fn list_dir(&self, path: &str) -> Result<Vec<(OsString, FileType)>, ApplyError> {
        let host = self.host_of(path);
        let fd = match self.open(path, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing", &host)(e.into())),
        };
        let dir =
            rustix::fs::Dir::read_from(&fd).map_err(|e| io_err("listing", &host)(e.into()))?;
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| io_err("listing", &host)(e.into()))?;
            let name = OsString::from_vec(entry.file_name().to_bytes().to_vec());
            if name == "." || name == ".." {
                continue;
            }
            let ty = match entry.file_type() {
                FileType::Unknown => rustix::fs::statat(&fd, &name, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| FileType::from_raw_mode(st.st_mode))
                    .unwrap_or(FileType::Unknown),
                ty => ty,
            };
            out.push((name, ty));
        }
        Ok(out)
    }

    /// Writes `data` to `path` atomically, creating missing parent directories: a temp file in
    /// the resolved parent, fsync, `renameat` over the final name (replacing a symlink there,
    /// never following it), fsync of the directory. Returns the new file so the caller can
    /// `fchown` it.
    pub(crate) fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<File, ApplyError> {
        let parent = Path::new(path)
            .parent()
            .and_then(Path::to_str)
            .unwrap_or("/");
        self.create_dir_all(parent)?;
        let host = self.host_of(path);
        let (dir, name) = self.parent(path, OFlags::RDONLY)?;
        let mut tmp = OsString::from(".");
        tmp.push(&name);
        tmp.push(format!(".wellcar-tmp-{}", std::process::id()));
        let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
        let fd = rustix::fs::openat(
            &dir,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| io_err("creating", &host)(e.into()))?;
        let written = (|| -> io::Result<File> {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
            let mut file = File::from(fd);
            file.write_all(data)?;
            file.sync_all()?;
            rustix::fs::renameat(&dir, &tmp, &dir, &name)?;
            rustix::fs::fsync(&dir)?;
            Ok(file)
        })();
        written.map_err(|e| {
            let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
            io_err("writing", &host)(e)
        })
    }

    /// Sets mode (when given) and owner of the directory at `path`, a final symlink not
    /// followed (an error, as for any non-directory).
    pub(crate) fn set_dir_owner_mode(
        &self,
        path: &str,
        mode: Option<u32>,
        uid: u32,
        gid: u32,
    ) -> Result<(), ApplyError> {
        let host = self.host_of(path);
        let fd = self
            .open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW)
            .map_err(|e| io_err("opening directory", &host)(e.into()))?;
        if let Some(mode) = mode {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                .map_err(|e| io_err("setting mode of", &host)(e.into()))?;
        }
        Self::chown(&fd, &host, uid, gid)
    }

    /// Creates the directory `path` (its parent must exist) with `mode`, exactly (no umask).
    pub(crate) fn mkdir(&self, path: &str, mode: u32) -> Result<(), ApplyError> {
        let host = self.host_of(path);
        let (dir, name) = self.parent(path, OFlags::PATH)?;
        rustix::fs::mkdirat(&dir, &name, Mode::from_raw_mode(mode))
            .map_err(|e| io_err("creating directory", &host)(e.into()))?;
        let fd = rustix::fs::openat(
            &dir,
            &name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("opening directory", &host)(e.into()))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
            .map_err(|e| io_err("setting mode of", &host)(e.into()))
    }

    /// Moves `from` to `to` (both resolved inside the root, final components not followed).
    pub(crate) fn rename(&self, from: &str, to: &str) -> Result<(), ApplyError> {
        let (from_dir, from_name) = self.parent(from, OFlags::PATH)?;
        let (to_dir, to_name) = self.parent(to, OFlags::PATH)?;
        rustix::fs::renameat(&from_dir, &from_name, &to_dir, &to_name)
            .map_err(|e| io_err("moving to", &self.host_of(to))(e.into()))
    }

    /// Removes the directory tree at `path`, never following a symlink inside it (a symlink is
    /// removed, not its target).
    pub(crate) fn remove_dir_all(&self, path: &str) -> Result<(), ApplyError> {
        fn empty(dir: &OwnedFd) -> rustix::io::Result<()> {
            let mut names = Vec::new();
            for entry in rustix::fs::Dir::read_from(dir)? {
                let entry = entry?;
                let name = entry.file_name().to_owned();
                if name.to_bytes() != b"." && name.to_bytes() != b".." {
                    names.push((name, entry.file_type()));
                }
            }
            for (name, ty) in names {
                let ty = match ty {
                    FileType::Unknown => FileType::from_raw_mode(
                        rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode,
                    ),
                    ty => ty,
                };
                if ty == FileType::Directory {
                    let sub = rustix::fs::openat(
                        dir,
                        &name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    empty(&sub)?;
                    rustix::fs::unlinkat(dir, &name, AtFlags::REMOVEDIR)?;
                } else {
                    rustix::fs::unlinkat(dir, &name, AtFlags::empty())?;
                }
            }
            Ok(())
        }
        let host = self.host_of(path);
        let (parent, name) = self.parent(path, OFlags::PATH)?;
        let removed = rustix::fs::openat(
            &parent,
            &name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .and_then(|dir| empty(&dir))
        .and_then(|()| rustix::fs::unlinkat(&parent, &name, AtFlags::REMOVEDIR));
        removed.map_err(|e| io_err("removing", &host)(e.into()))
    }

    /// `fchown` of a file returned by [`TargetRoot::write_file`].
    pub(crate) fn chown(
        file: &impl AsFd,
        path: &Path,
        uid: u32,
        gid: u32,
    ) -> Result<(), ApplyError> {
        std::os::unix::fs::fchown(file.as_fd(), Some(uid), Some(gid))
            .map_err(io_err("changing owner of", path))
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
    use std::os::unix::fs::{symlink, MetadataExt};

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

    /// A temp dir with `root/` and a sibling `outside/` holding `victim` (a symlink) and `secret`.
    fn planted() -> (tempfile::TempDir, TargetRoot, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join("etc/d")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), "secret").unwrap();
        symlink("secret", outside.join("victim")).unwrap();
        (tmp, TargetRoot::new(&root), outside)
    }

    #[test]
    fn removals_through_dotdot_and_planted_links_stay_inside_the_root() {
        let (_tmp, r, outside) = planted();
        symlink(&outside, r.root.join("etc/out")).unwrap();
        // Lexically both name ../outside/victim; the kernel resolves them inside the root.
        for path in ["/etc/d/../../../outside/victim", "/etc/out/victim"] {
            assert!(r.remove_link(path).is_err(), "{path}");
            assert_eq!(r.read_link(path), None, "{path}");
            assert_eq!(r.file_type(path), None, "{path}");
        }
        assert!(fs::symlink_metadata(outside.join("victim")).is_ok());
        assert_eq!(r.list_dir("/etc/out").unwrap(), Vec::new());
        assert!(r.remove_dir_all("/etc/out").is_err());
        assert!(outside.join("secret").exists());
    }

    #[test]
    fn reads_and_writes_through_planted_links_stay_inside_the_root() {
        let (_tmp, r, outside) = planted();
        symlink(outside.join("secret"), r.root.join("etc/leak")).unwrap();
        assert_eq!(r.read("/etc/leak").unwrap(), None);
        symlink(&outside, r.root.join("etc/out")).unwrap();
        r.write_file("/etc/out/new", b"x", 0o600).unwrap();
        assert!(!outside.join("new").exists());
        let inside = r.root.join(outside.strip_prefix("/").unwrap()).join("new");
        assert_eq!(fs::read(inside).unwrap(), b"x");
        // The final symlink is replaced, not followed.
        r.write_file("/etc/leak", b"mine", 0o644).unwrap();
        assert_eq!(
            fs::read_to_string(outside.join("secret")).unwrap(),
            "secret"
        );
        assert_eq!(r.read_to_string("/etc/leak").unwrap().unwrap(), "mine");
    }

    #[test]
    fn directories_through_planted_links_are_made_inside_and_a_linked_dir_is_not_chmodded() {
        let (_tmp, r, outside) = planted();
        let before = fs::metadata(&outside).unwrap().mode();
        fs::remove_dir(r.root.join("etc/d")).unwrap();
        symlink(&outside, r.root.join("etc/d")).unwrap();
        r.create_dir_all("/etc/d/sub").unwrap();
        assert!(!outside.join("sub").exists());
        assert!(r
            .root
            .join(outside.strip_prefix("/").unwrap())
            .join("sub")
            .is_dir());
        // Changing mode/owner never follows a final symlink, even one inside the root.
        let err = r
            .set_dir_owner_mode("/etc/d", Some(0o700), 0, 0)
            .unwrap_err();
        assert!(err.to_string().contains("etc/d"), "{err}");
        assert_eq!(fs::metadata(&outside).unwrap().mode(), before);
    }
}
