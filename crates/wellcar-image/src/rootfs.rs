//! The Debian root filesystem, made by `mmdebstrap` and cached under
//! `~/.cache/wellcar/rootfs/<key>/tree`, where `<key>` is a sha256 of every input that changes
//! its content: suite, package list, dpkg excludes, the apt sources file's bytes and the
//! mmdebstrap version. A cache entry is complete only once its directory has been renamed into
//! place, so an interrupted build never leaves a half tree that a later build would trust.
//!
//! mmdebstrap runs with `--verbose`; its output is streamed into [`RootfsProgress`] events: its
//! stages (`I: extracting archives...`) and apt's and dpkg's per-package lines counted against
//! the number of packages apt said it would install.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use wellcar_contract::CommandError;

use crate::definition::DebianSource;
use crate::error::{BuildError, IoContext, Result};
use crate::tools::{self, MMDEBSTRAP};

/// What the root filesystem step is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsProgress {
    /// The cache was looked up: `hit` means no mmdebstrap run.
    Cache {
        /// The cache key.
        key: String,
        /// Whether the tree was already cached.
        hit: bool,
    },
    /// mmdebstrap began a stage, e.g. "downloading packages with apt".
    Stage(String),
    /// apt or dpkg finished `step` for one more package: `done` of the `total` being installed.
    Package {
        /// What was done.
        step: PackageStep,
        /// Packages that have had this step so far.
        done: u32,
        /// Packages apt is installing now.
        total: u32,
    },
}

/// One step of installing a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageStep {
    /// apt fetched it (`Get:N ...`).
    Download,
    /// dpkg unpacked it (`Unpacking ...`).
    Unpack,
    /// dpkg configured it (`Setting up ...`).
    Configure,
}

impl std::fmt::Display for PackageStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PackageStep::Download => "downloaded",
            PackageStep::Unpack => "unpacked",
            PackageStep::Configure => "set up",
        })
    }
}

impl std::fmt::Display for RootfsProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootfsProgress::Cache { key, hit: true } => write!(f, "rootfs cache hit: {key}"),
            RootfsProgress::Cache { key, hit: false } => {
                write!(f, "rootfs cache miss: {key}: running mmdebstrap")
            }
            RootfsProgress::Stage(stage) => write!(f, "mmdebstrap: {stage}"),
            RootfsProgress::Package { step, done, total } => {
                write!(f, "mmdebstrap: {step} {done}/{total} packages")
            }
        }
    }
}

/// Turns mmdebstrap's `--verbose` output, line by line, into progress.
#[derive(Debug, Default)]
pub struct MmdebstrapProgress {
    /// Packages in apt's current transaction.
    total: u32,
    /// Per [`PackageStep`], packages done in the current stage.
    done: [u32; 3],
}

impl MmdebstrapProgress {
    /// The progress `line` shows, if any.
    pub fn line(&mut self, line: &str) -> Option<RootfsProgress> {
        if let Some(info) = line.strip_prefix("I: ") {
            // Stages end in "..."; other notes ("I: success in 98 seconds") are no stage.
            let stage = info.strip_suffix("...")?;
            self.done = [0; 3];
            return Some(RootfsProgress::Stage(stage.to_owned()));
        }
        if let Some(total) = apt_summary(line) {
            (self.total, self.done) = (total, [0; 3]);
            return None;
        }
        let step = if line.starts_with("Get:") {
            PackageStep::Download
        } else if line.starts_with("Unpacking ") {
            PackageStep::Unpack
        } else if line.starts_with("Setting up ") {
            PackageStep::Configure
        } else {
            return None;
        };
        if self.total == 0 {
            // `apt-get update` fetching indexes.
            return None;
        }
        let done = &mut self.done[step as usize];
        *done = (*done + 1).min(self.total);
        Some(RootfsProgress::Package {
            step,
            done: *done,
            total: self.total,
        })
    }
}

/// Packages apt is about to install, from its
/// "0 upgraded, 69 newly installed, 0 to remove and 0 not upgraded." line.
fn apt_summary(line: &str) -> Option<u32> {
    let (upgraded, rest) = line.split_once(" upgraded, ")?;
    let (new, _) = rest.split_once(" newly installed")?;
    Some(upgraded.trim().parse::<u32>().ok()? + new.trim().parse::<u32>().ok()?)
}

/// Bumped when the way the tree is made changes.
const CACHE_FORMAT: &str = "wellcar-rootfs-v1";

/// Where cached trees live: `$XDG_CACHE_HOME/wellcar/rootfs` or `~/.cache/wellcar/rootfs`.
pub fn cache_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("wellcar").join("rootfs")
}

/// The cache key of a package set.
pub fn cache_key(src: &DebianSource, mmdebstrap_version: &str) -> Result<String> {
    let sources = std::fs::read(&src.sources).at("reading apt sources", &src.sources)?;
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &[u8]| {
        h.update(name.as_bytes());
        h.update((value.len() as u64).to_le_bytes());
        h.update(value);
    };
    field("format", CACHE_FORMAT.as_bytes());
    field("suite", src.suite.as_bytes());
    let mut packages = src.packages.clone();
    packages.sort();
    field("packages", packages.join(",").as_bytes());
    field("exclude", src.path_exclude.join(",").as_bytes());
    field("sources", &sources);
    field("mmdebstrap", mmdebstrap_version.as_bytes());
    Ok(hex::encode(h.finalize()))
}

/// A root filesystem tree in the cache.
#[derive(Debug, Clone)]
pub struct CachedRootfs {
    /// The tree (read it, never modify it).
    pub tree: PathBuf,
    /// Its cache key.
    pub key: String,
    /// Whether this build made it (false: cache hit).
    pub created: bool,
}

/// Returns the cached tree for `src`, running mmdebstrap first if it is not cached; reports the
/// cache lookup and mmdebstrap's progress to `progress`.
pub fn ensure(
    src: &DebianSource,
    source_date_epoch: u64,
    progress: &dyn Fn(RootfsProgress),
) -> Result<CachedRootfs> {
    let mmdebstrap = MMDEBSTRAP.find()?;
    let version = tools::run(Command::new(&mmdebstrap).arg("--version"))?;
    let key = cache_key(src, String::from_utf8_lossy(&version.stdout).trim())?;
    let entry = cache_root().join(&key);
    let tree = entry.join("tree");
    let hit = tree.is_dir();
    progress(RootfsProgress::Cache {
        key: key.clone(),
        hit,
    });
    if hit {
        return Ok(CachedRootfs {
            tree,
            key,
            created: false,
        });
    }
    let staging = cache_root().join(format!("{key}.partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).at("removing stale staging tree", &staging)?;
    }
    std::fs::create_dir_all(&staging).at("creating", &staging)?;
    let mut cmd = Command::new(&mmdebstrap);
    cmd.args(["--verbose", "--variant=essential"])
        .arg(format!("--include={}", src.packages.join(",")))
        .env("SOURCE_DATE_EPOCH", source_date_epoch.to_string());
    for glob in &src.path_exclude {
        cmd.arg(format!("--dpkgopt=path-exclude={glob}"));
    }
    cmd.arg(&src.suite)
        .arg(staging.join("tree"))
        .arg(&src.sources);
    let mut parser = MmdebstrapProgress::default();
    let run = tools::run_streaming(&mut cmd, |_, line| {
        if let Some(p) = parser.line(line) {
            progress(p);
        }
    });
    if let Err(err) = run {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(explain_mmdebstrap_failure(err, &src.sources));
    }
    std::fs::rename(&staging, &entry).at("publishing cache entry", &entry)?;
    Ok(CachedRootfs {
        tree,
        key,
        created: true,
    })
}

/// Turns apt's "Unable to locate package X" into an error naming the package.
fn explain_mmdebstrap_failure(err: BuildError, sources: &Path) -> BuildError {
    let BuildError::Command(source) = err else {
        return err;
    };
    let CommandError::Failed { stderr, .. } = &source else {
        return BuildError::Command(source);
    };
    for marker in ["Unable to locate package ", "has no installation candidate"] {
        if let Some(line) = stderr.lines().find(|l| l.contains(marker)) {
            let package = if marker.starts_with("Unable") {
                line.split(marker).nth(1).unwrap_or("").trim().to_string()
            } else {
                line.split('\'')
                    .nth(1)
                    .or_else(|| line.split_whitespace().nth(1))
                    .unwrap_or("")
                    .to_string()
            };
            return BuildError::UnknownPackage {
                package,
                sources: sources.into(),
                source: Box::new(source),
            };
        }
    }
    BuildError::Command(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path, packages: &[&str]) -> DebianSource {
        let sources = dir.join("x.sources");
        std::fs::write(&sources, "Types: deb\n").unwrap();
        DebianSource {
            suite: "bookworm".into(),
            sources,
            packages: packages.iter().map(|s| s.to_string()).collect(),
            path_exclude: vec![],
        }
    }

    #[test]
    fn key_ignores_package_order_but_not_content() {
        let d = tempfile::tempdir().unwrap();
        let a = cache_key(&source(d.path(), &["a", "b"]), "1").unwrap();
        let b = cache_key(&source(d.path(), &["b", "a"]), "1").unwrap();
        let c = cache_key(&source(d.path(), &["a", "c"]), "1").unwrap();
        let v = cache_key(&source(d.path(), &["a", "b"]), "2").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, v);
    }

    /// Lines of a real `mmdebstrap --verbose` 1.3.5 run (bookworm), shortened.
    const MMDEBSTRAP_LOG: &str = "\
I: automatically chosen mode: root
I: running apt-get update...
Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]
Get:4 http://deb.debian.org/debian bookworm/main amd64 Packages [8790 kB]
Fetched 9422 kB in 1s (6941 kB/s)
I: downloading packages with apt...
  tar usrmerge util-linux util-linux-extra zlib1g
0 upgraded, 2 newly installed, 0 to remove and 0 not upgraded.
Need to get 29.7 MB of archives.
Get:1 http://deb.debian.org/debian bookworm/main amd64 gcc-12-base amd64 12.2.0-14+deb12u1 [37.6 kB]
Get:2 http://deb.debian.org/debian bookworm/main amd64 libc6 amd64 2.36-9+deb12u14 [2759 kB]
/usr/bin/dpkg --status-fd 11 --configure --pending 
I: extracting archives...
I: installing essential packages...
Selecting previously unselected package gcc-12-base:amd64.
Preparing to unpack .../gcc-12-base_12.2.0-14+deb12u1_amd64.deb ...
Unpacking gcc-12-base:amd64 (12.2.0-14+deb12u1) ...
Unpacking libc6:amd64 (2.36-9+deb12u14) ...
Setting up gcc-12-base:amd64 (12.2.0-14+deb12u1) ...
I: installing remaining packages inside the chroot...
0 upgraded, 86 newly installed, 0 to remove and 0 not upgraded.
Get:1 http://deb.debian.org/debian bookworm/main amd64 libcom-err2 amd64 1.47.0-2+b2 [20.0 kB]
Unpacking logsave (1.47.0-2+b2) ...
Chrooting into /tmp/mmd/t2/
Setting up libcom-err2:amd64 (1.47.0-2+b2) ...
I: /vmlinuz is now a symlink to boot/vmlinuz-6.1.0-57-cloud-amd64
W: No zstd in /usr/bin:/sbin:/bin, using gzip
I: cleaning package lists and apt cache...
I: success in 130.0852 seconds";

    #[test]
    fn mmdebstrap_output_becomes_stages_and_package_counts() {
        use PackageStep::*;
        let stage = |s: &str| RootfsProgress::Stage(s.into());
        let pkg = |step, done, total| RootfsProgress::Package { step, done, total };
        let mut parser = MmdebstrapProgress::default();
        let events: Vec<_> = MMDEBSTRAP_LOG
            .lines()
            .filter_map(|l| parser.line(l))
            .collect();
        assert_eq!(
            events,
            [
                stage("running apt-get update"),
                stage("downloading packages with apt"),
                pkg(Download, 1, 2),
                pkg(Download, 2, 2),
                stage("extracting archives"),
                stage("installing essential packages"),
                pkg(Unpack, 1, 2),
                pkg(Unpack, 2, 2),
                pkg(Configure, 1, 2),
                stage("installing remaining packages inside the chroot"),
                pkg(Download, 1, 86),
                pkg(Unpack, 1, 86),
                pkg(Configure, 1, 86),
                stage("cleaning package lists and apt cache"),
            ]
        );
    }

    #[test]
    fn unknown_package_is_named() {
        let err = BuildError::Command(CommandError::failed(
            &Command::new("mmdebstrap"),
            std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
            b"E: Unable to locate package wellcar-nope\nE: apt-get failed\n",
        ));
        let e = explain_mmdebstrap_failure(err, Path::new("/s.sources"));
        assert!(
            matches!(&e, BuildError::UnknownPackage { package, source, .. }
                if package == "wellcar-nope" && source.status().and_then(|s| s.code()) == Some(1)),
            "{e}"
        );
        // Any other failure stays the command's.
        let other = BuildError::Command(CommandError::failed(
            &Command::new("mmdebstrap"),
            std::os::unix::process::ExitStatusExt::from_raw(2 << 8),
            b"E: disk full\n",
        ));
        let e = explain_mmdebstrap_failure(other, Path::new("/s.sources"));
        assert!(
            e.to_string()
                .ends_with("failed (exit status: 2): E: disk full"),
            "{e}"
        );
    }
}
