//! File contents staged before anything is written: every `storage.files` entry's
//! `contents` followed by its `append` fragments is streamed (fetched, decompressed, hashed)
//! into one staging file in `<root>/.wellcar-ignition-staging/`, so a 404, a bad hash or an
//! oversized body fails the apply before the root changes, and no content is ever held whole
//! in memory.
//!
//! Contract:
//! - Size bound: one file's contents plus fragments are at most
//!   [`FetchOptions::max_file_bytes`](crate::fetch::FetchOptions::max_file_bytes) (4 GiB by
//!   default), and all staged files together at most the staging filesystem's free space
//!   (`f_bavail`, which already leaves the filesystem's reserved blocks) less a margin kept
//!   for the boot's own writes: 5 % of its size, at most [`STAGING_MARGIN_MAX`]. Past either, the fetch stops with
//!   [`FetchError::TooLarge`](crate::fetch::FetchError::TooLarge) naming the URL: a gzip bomb
//!   writes at most the bound, once.
//! - Staged files are fsynced; [`place`] renames one onto its final path (same filesystem) or,
//!   across filesystems, copies it into a temporary file next to the final path and renames
//!   that (both crash-safe: a reader sees the old node or the whole new file).
//! - The staging directory is removed when [`Staging`] drops (success or failure), and a
//!   leftover from a killed run is removed before staging starts.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use wellcar_contract::PathIoError;

use super::ApplyError;
use crate::fetch::Fetcher;
use crate::model::Config;

/// The staging directory's name under the root.
pub(crate) const STAGING_DIR: &str = ".wellcar-ignition-staging";

/// One file's staged bytes (`None`: neither contents nor fragments).
pub(crate) struct StagedFile {
    pub(crate) path: Option<PathBuf>,
    /// Whether `contents.source` was set (Ignition: then an existing file is an error).
    pub(crate) has_contents: bool,
    /// Bytes staged.
    pub(crate) len: u64,
}

/// The staging directory; removed on drop.
pub(crate) struct Staging {
    dir: PathBuf,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn io_at(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ApplyError {
    let path = path.to_path_buf();
    move |source| ApplyError::Io(PathIoError::new(what, path, source))
}

/// The largest margin staging leaves free for the boot's own writes.
pub(crate) const STAGING_MARGIN_MAX: u64 = 64 << 20;

/// Free bytes for staging on the filesystem holding `dir`.
fn staging_budget(dir: &Path) -> Result<u64, ApplyError> {
    let st = rustix::fs::statvfs(dir)
        .map_err(|e| io_at("inspecting free space of", dir)(io::Error::from(e)))?;
    Ok(budget_from(
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

/// Staging may use the available bytes less 5 % of the filesystem's size, capped at
/// [`STAGING_MARGIN_MAX`]: a nearly full large disk still stages what fits.
fn budget_from(available: u64, size: u64) -> u64 {
    available.saturating_sub((size / 20).min(STAGING_MARGIN_MAX))
}

/// Streams every file's contents and fragments into the staging directory under `root`.
pub(crate) fn stage_files(
    root: &Path,
    config: &Config,
    fetcher: &Fetcher,
) -> Result<(Staging, Vec<StagedFile>), ApplyError> {
    let dir = root.join(STAGING_DIR);
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&dir).map_err(io_at("removing", &dir))?,
        Ok(_) => fs::remove_file(&dir).map_err(io_at("removing", &dir))?,
        Err(_) => {}
    }
    let needs_staging = config
        .storage
        .files
        .iter()
        .any(|f| f.contents.source.is_some() || !f.append.is_empty());
    let staging = Staging { dir: dir.clone() };
    if !needs_staging {
        return Ok((
            staging,
            config.storage.files.iter().map(|_| empty()).collect(),
        ));
    }
    fs::create_dir(&dir).map_err(io_at("creating directory", &dir))?;
    let mut budget = staging_budget(&dir)?;
    let cap = fetcher.options().max_file_bytes;
    let mut staged = Vec::with_capacity(config.storage.files.len());
    for (i, f) in config.storage.files.iter().enumerate() {
        if f.contents.source.is_none() && f.append.is_empty() {
            staged.push(empty());
            continue;
        }
        let path = dir.join(i.to_string());
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_at("creating", &path))?;
        let mut limit = cap.min(budget);
        let mut len = 0;
        let parts = std::iter::once((format!("storage.files.{i}.contents"), &f.contents)).chain(
            f.append
                .iter()
                .enumerate()
                .map(|(j, a)| (format!("storage.files.{i}.append.{j}"), a)),
        );
        for (field, resource) in parts {
            let mut out = io::BufWriter::with_capacity(64 << 10, &mut file);
            let n = fetcher
                .fetch_to(resource, &mut out, limit)
                .map_err(|source| ApplyError::Fetch {
                    field,
                    url: super::short_source(resource),
                    source: Box::new(source),
                })?;
            out.flush().map_err(io_at("writing", &path))?;
            len += n;
            limit -= n;
        }
        file.sync_all().map_err(io_at("syncing", &path))?;
        budget -= len;
        staged.push(StagedFile {
            path: Some(path),
            has_contents: f.contents.source.is_some(),
            len,
        });
    }
    Ok((staging, staged))
}

fn empty() -> StagedFile {
    StagedFile {
        path: None,
        has_contents: false,
        len: 0,
    }
}

/// Moves a staged file to `host` (which must not be a directory), replacing what is there.
pub(crate) fn place(staged: &Path, host: &Path, mode: u32) -> Result<(), ApplyError> {
    fs::set_permissions(staged, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(io_at("setting mode of", staged))?;
    match fs::rename(staged, host) {
        Ok(()) => wellcar_contract::atomic_file::sync_parent(host).map_err(io_at("syncing", host)),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            let mut source = File::open(staged).map_err(io_at("reading", staged))?;
            wellcar_contract::atomic_file::write_with(host, mode, |out| {
                io::copy(&mut source, out).map(drop)
            })
            .map(drop)
            .map_err(io_at("writing", host))
        }
        Err(e) => Err(io_at("renaming staged contents to", host)(e)),
    }
}

/// Writes `existing`'s bytes then the staged fragments to `host` atomically, with `mode`.
pub(crate) fn append_to_existing(
    existing: &Path,
    staged: &Path,
    host: &Path,
    mode: u32,
) -> Result<(), ApplyError> {
    let mut old = File::open(existing).map_err(io_at("reading", existing))?;
    let mut fragments = File::open(staged).map_err(io_at("reading", staged))?;
    fragments.rewind().map_err(io_at("reading", staged))?;
    wellcar_contract::atomic_file::write_with(host, mode, |out| {
        io::copy(&mut old, out)?;
        io::copy(&mut fragments, out).map(drop)
    })
    .map(drop)
    .map_err(io_at("writing", host))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::apply::ApplyOptions;
    use crate::fetch::tests::{quick_options, Reply, Server};

    #[test]
    fn the_margin_is_five_percent_capped_so_a_nearly_full_large_disk_still_stages() {
        const GIB: u64 = 1 << 30;
        // A small disk keeps 5 %: 1 GiB size, 100 MiB free leaves 100 - 51.2 MiB.
        assert_eq!(budget_from(100 << 20, GIB), (100 << 20) - GIB / 20);
        // A 250 GiB disk that is 96 % full keeps 64 MiB, not 12.5 GiB.
        assert_eq!(
            budget_from(10 * GIB, 250 * GIB),
            10 * GIB - STAGING_MARGIN_MAX
        );
        // Less free than the margin stages nothing.
        assert_eq!(budget_from(10 << 20, 250 * GIB), 0);
    }
    use crate::fetch::{FetchError, FetchOptions};

    fn online(fetch: FetchOptions) -> ApplyOptions {
        ApplyOptions {
            fetch,
            ..ApplyOptions::default()
        }
    }

    fn root() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("etc")).unwrap();
        fs::write(
            tmp.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n",
        )
        .unwrap();
        fs::write(tmp.path().join("etc/group"), "root:x:0:\n").unwrap();
        tmp
    }

    fn config(json: &str) -> Config {
        crate::parse_config(json.as_bytes()).unwrap().config
    }

    /// Current and peak resident memory of this process, in KiB.
    fn peak_rss_kib() -> u64 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_size_cap_with_bounded_memory_and_leaves_nothing() {
        // 512 MiB of zeros, about 0.5 MiB gzipped.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0_u8; 1 << 20];
        for _ in 0..512 {
            enc.write_all(&zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 4 << 20, "{}", bomb.len());
        let server = Server::start(vec![("/bomb.gz", Reply::Body(200, bomb))], None);
        let url = server.url("/bomb.gz");
        let tmp = root();
        let cfg = config(&format!(
            r#"{{"ignition":{{"version":"3.6.0"}},"storage":{{"files":[
                {{"path":"/etc/first","contents":{{"source":"data:,fine"}}}},
                {{"path":"/var/bomb","contents":{{"source":"{url}","compression":"gzip"}}}}]}}}}"#
        ));
        let options = online(FetchOptions {
            max_file_bytes: 8 << 20,
            ..quick_options()
        });
        let before = peak_rss_kib();
        let err = crate::apply::apply_with(&cfg, tmp.path(), &options).unwrap_err();
        let grown_mib = (peak_rss_kib() - before) / 1024;
        let msg = wellcar_contract::error_chain(&err);
        let ApplyError::Fetch { field, source, .. } = &err else {
            panic!("{msg}")
        };
        assert_eq!(field, "storage.files.1.contents");
        assert!(
            matches!(**source, FetchError::TooLarge { limit, .. } if limit == 8 << 20),
            "{msg}"
        );
        assert!(msg.contains(&url), "{msg}");
        // The old in-memory path peaked above the decompressed 512 MiB.
        assert!(grown_mib < 128, "peak memory grew {grown_mib} MiB");
        assert!(
            !tmp.path().join("etc/first").exists(),
            "nothing half-applied"
        );
        assert!(!tmp.path().join("var/bomb").exists());
        assert!(!tmp.path().join(STAGING_DIR).exists());
    }

    #[test]
    fn a_bad_hash_on_a_remote_fragment_leaves_nothing() {
        let server = Server::start(
            vec![
                ("/a", Reply::Body(200, b"contents\n".to_vec())),
                ("/b", Reply::Body(200, b"fragment\n".to_vec())),
            ],
            None,
        );
        let tmp = root();
        let bad = format!("sha256-{}", "0".repeat(64));
        let cfg = config(&format!(
            r#"{{"ignition":{{"version":"3.6.0"}},"storage":{{"files":[
                {{"path":"/etc/good","contents":{{"source":"{a}"}}}},
                {{"path":"/etc/bad","contents":{{"source":"{a}"}},"append":[{{"source":"{b}","verification":{{"hash":"{bad}"}}}}]}}]}}}}"#,
            a = server.url("/a"),
            b = server.url("/b"),
        ));
        let err = crate::apply::apply_with(&cfg, tmp.path(), &online(quick_options())).unwrap_err();
        let msg = wellcar_contract::error_chain(&err);
        assert!(
            msg.contains("storage.files.1.append.0")
                && msg.contains(&server.url("/b"))
                && msg.contains("hash mismatch"),
            "{msg}"
        );
        assert!(!tmp.path().join("etc/good").exists());
        assert!(!tmp.path().join("etc/bad").exists());
        assert!(!tmp.path().join(STAGING_DIR).exists());
        assert!(!tmp.path().join("etc/.ignition-result.json").exists());
    }

    #[test]
    fn remote_contents_and_fragments_land_whole_and_append_to_existing_files() {
        let server = Server::start(
            vec![
                ("/a", Reply::Body(200, b"contents\n".to_vec())),
                ("/b", Reply::Body(200, b"fragment\n".to_vec())),
            ],
            None,
        );
        let tmp = root();
        fs::write(tmp.path().join("etc/existing"), "old\n").unwrap();
        // A leftover staging directory from a killed run is cleared.
        fs::create_dir(tmp.path().join(STAGING_DIR)).unwrap();
        fs::write(tmp.path().join(STAGING_DIR).join("0"), "stale").unwrap();
        let cfg = config(&format!(
            r#"{{"ignition":{{"version":"3.6.0"}},"storage":{{"files":[
                {{"path":"/etc/new","mode":384,"contents":{{"source":"{a}"}},"append":[{{"source":"{b}"}},{{"source":"data:,tail"}}]}},
                {{"path":"/etc/existing","append":[{{"source":"{b}"}}]}}]}}}}"#,
            a = server.url("/a"),
            b = server.url("/b"),
        ));
        crate::apply::apply_with(&cfg, tmp.path(), &online(quick_options())).unwrap();
        assert_eq!(
            fs::read_to_string(tmp.path().join("etc/new")).unwrap(),
            "contents\nfragment\ntail"
        );
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            fs::metadata(tmp.path().join("etc/new"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o600
        );
        assert_eq!(
            fs::read_to_string(tmp.path().join("etc/existing")).unwrap(),
            "old\nfragment\n"
        );
        assert!(!tmp.path().join(STAGING_DIR).exists());
    }
}
