//! The Debian root filesystem, made by `mmdebstrap` and cached under
//! `~/.cache/wellcar/rootfs/<key>/tree`, where `<key>` is a sha256 of every input that changes
//! its content: suite, package list, dpkg excludes, the apt sources file's bytes and the
//! mmdebstrap version. A cache entry is complete only once its directory has been renamed into
//! place, so an interrupted build never leaves a half tree that a later build would trust.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::definition::DebianSource;
use crate::error::{BuildError, IoContext, Result};
use crate::tools::{self, MMDEBSTRAP};

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

/// Returns the cached tree for `src`, running mmdebstrap first if it is not cached.
pub fn ensure(src: &DebianSource, source_date_epoch: u64) -> Result<CachedRootfs> {
    let mmdebstrap = MMDEBSTRAP.find()?;
    let version = tools::run(Command::new(&mmdebstrap).arg("--version"))?;
    let key = cache_key(src, String::from_utf8_lossy(&version.stdout).trim())?;
    let entry = cache_root().join(&key);
    let tree = entry.join("tree");
    if tree.is_dir() {
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
    cmd.arg("--variant=essential")
        .arg(format!("--include={}", src.packages.join(",")))
        .env("SOURCE_DATE_EPOCH", source_date_epoch.to_string());
    for glob in &src.path_exclude {
        cmd.arg(format!("--dpkgopt=path-exclude={glob}"));
    }
    cmd.arg(&src.suite)
        .arg(staging.join("tree"))
        .arg(&src.sources);
    if let Err(err) = tools::run(&mut cmd) {
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
    if let BuildError::Command { stderr, .. } = &err {
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
                };
            }
        }
    }
    err
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

    #[test]
    fn unknown_package_is_named() {
        let err = BuildError::Command {
            command: "mmdebstrap".into(),
            status: "exit status: 1".into(),
            stderr: "E: Unable to locate package wellcar-nope\nE: apt-get failed".into(),
        };
        let e = explain_mmdebstrap_failure(err, Path::new("/s.sources"));
        assert!(
            matches!(&e, BuildError::UnknownPackage { package, .. } if package == "wellcar-nope"),
            "{e}"
        );
    }
}
