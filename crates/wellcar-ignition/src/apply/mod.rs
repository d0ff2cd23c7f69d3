//! Applying a config to a target root directory (no chroot, no systemctl, no shadow-utils).
//!
//! Order, as Ignition's stages: filesystems on other disks (with their mount units), then the
//! files stage: groups, users (with ssh keys), files/directories/links, systemd units, and the
//! result record `/etc/.ignition-result.json`. Every path is resolved
//! inside the root (see the private `root` module); every replaced file is written atomically. Each action is
//! logged at info level and listed in the [`ApplyReport`].
//!
//! Before anything is written, the config is checked for features this implementation does not
//! apply yet (disks, RAID, LUKS, kernel arguments: refused naming the field, never ignored)
//! and every file's contents and `append` fragments are streamed into staging files in the
//! root (see the private `staging` module: fetched, decompressed, hashed, size-bounded), so a
//! bad hash, an oversized body or an unreachable URL fails the apply without leaving a
//! half-provisioned root; the staged files are then renamed into place.
//!
//! `<root>/etc` may be the upper layer of Wellcar's /etc overlay: the applier simply writes
//! `<root>/etc/...` paths.

mod files;
mod filesystems;
mod root;
mod staging;
mod units;
mod users;

use std::path::{Path, PathBuf};
use wellcar_contract::PathIoError;

use crate::fetch::{FetchError, Fetcher};
use crate::model::Config;
use root::{write_atomic, TargetRoot};

/// Why applying a config failed. Each variant names the field or path involved.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A section this implementation parses and validates but cannot apply yet.
    #[error("{field}: not supported yet")]
    Unsupported {
        /// JSON path of the section, e.g. `storage.disks`.
        field: String,
    },
    /// A file source could not be fetched, decompressed or verified.
    #[error("{field}: fetching {url}")]
    Fetch {
        /// JSON path of the resource.
        field: String,
        /// The source URL (shortened when long).
        url: String,
        /// What went wrong (names the URL).
        #[source]
        source: Box<FetchError>,
    },
    /// An I/O operation on a path failed.
    #[error(transparent)]
    Io(#[from] PathIoError),
    /// A node already exists and `overwrite` is false.
    #[error("{field}: error creating {path:?}: {what}")]
    Exists {
        /// JSON path of the entry.
        field: String,
        /// In-target path.
        path: String,
        /// Ignition's explanation.
        what: &'static str,
    },
    /// A path component that must be a directory is not one.
    #[error("{path}: {host:?} is not a directory")]
    NotADirectory {
        /// In-target path being created.
        path: String,
        /// Host path of the offending component.
        host: PathBuf,
    },
    /// Too many symlinks while resolving a path.
    #[error("{path}: too many levels of symbolic links")]
    SymlinkLoop {
        /// In-target path.
        path: String,
    },
    /// A path that cannot be placed inside the root (e.g. `/` as a file).
    #[error("{path}: path cannot be resolved inside the target root")]
    Escape {
        /// In-target path.
        path: String,
    },
    /// An owner name that the target's /etc/passwd does not have.
    #[error("{field}: no user {name:?} in the target's /etc/passwd")]
    UnknownUser {
        /// JSON path.
        field: String,
        /// User name.
        name: String,
    },
    /// A group name that the target's /etc/group does not have.
    #[error("{field}: no group {name:?} in the target's /etc/group")]
    UnknownGroup {
        /// JSON path.
        field: String,
        /// Group name.
        name: String,
    },
    /// A numeric id outside 0..2^32.
    #[error("{field}: id {id} is out of range")]
    BadId {
        /// JSON path.
        field: String,
        /// The id.
        id: i64,
    },
    /// A requested uid/gid belongs to another entry.
    #[error("{field}: {kind} {id} is already in use")]
    IdInUse {
        /// JSON path.
        field: String,
        /// `uid` or `gid`.
        kind: &'static str,
        /// The id.
        id: i64,
    },
    /// No free id left in the range from login.defs.
    #[error("no free {kind} left in the range from /etc/login.defs")]
    IdsExhausted {
        /// `uid` or `gid`.
        kind: &'static str,
    },
    /// useradd refuses to create a user group whose name is taken.
    #[error("{field}: group {name:?} exists; set primaryGroup or noUserGroup")]
    GroupExists {
        /// JSON path.
        field: String,
        /// Group name.
        name: String,
    },
    /// An external program (mkfs, wipefs, blkid) could not be started or failed.
    #[error("{field}")]
    Command {
        /// JSON path.
        field: String,
        /// The program, its exit status and its stderr.
        #[source]
        source: wellcar_contract::CommandError,
    },
    /// An existing filesystem does not match and `wipeFilesystem` is false.
    #[error("{field}: {device} already holds {found}, which does not match the config, and wipeFilesystem is false")]
    FilesystemMismatch {
        /// JSON path.
        field: String,
        /// Block device.
        device: String,
        /// What blkid found.
        found: String,
    },
    /// A hard link whose target does not exist in the root.
    #[error("{field}: hard link target {target:?} does not exist in the target root")]
    HardLinkTarget {
        /// JSON path.
        field: String,
        /// The configured target.
        target: String,
    },
}

/// What [`apply`] did, one line per action (also logged at info level).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Human-readable actions, in order.
    pub actions: Vec<String>,
}

/// Collects and logs actions.
pub(crate) struct Recorder {
    report: ApplyReport,
}

impl Recorder {
    pub(crate) fn action(&mut self, line: String) {
        tracing::info!("ignition: {line}");
        self.report.actions.push(line);
    }
}

fn refuse_unsupported(config: &Config) -> Result<(), ApplyError> {
    let s = &config.storage;
    let sections = [
        ("storage.disks", s.disks.is_empty()),
        ("storage.raid", s.raid.is_empty()),
        ("storage.luks", s.luks.is_empty()),
        (
            "kernelArguments.shouldExist",
            config.kernel_arguments.should_exist.is_empty(),
        ),
        (
            "kernelArguments.shouldNotExist",
            config.kernel_arguments.should_not_exist.is_empty(),
        ),
    ];
    match sections.iter().find(|(_, empty)| !empty) {
        Some((field, _)) => Err(ApplyError::Unsupported {
            field: field.to_string(),
        }),
        None => filesystems::refuse_nodes_on_filesystems(config),
    }
}

fn short_source(resource: &crate::model::Resource) -> String {
    crate::fetch::short_url(resource.source.as_deref().unwrap_or(""))
}

/// Applies `config` (already merged and with references resolved) to the directory `root`,
/// offline: only `data:` sources are fetched, remote ones fail naming the URL (the stage has no
/// network). [`apply_with`] fetches remote sources.
pub fn apply(config: &Config, root: &Path) -> Result<ApplyReport, ApplyError> {
    apply_with(config, root, &Fetcher::offline())
}

/// [`apply`] fetching with `base` (the platform's fetch options), under the settings of the
/// config's own `ignition` section (CAs, proxy, timeouts), as Ignition's files stage does.
pub fn apply_with(config: &Config, root: &Path, base: &Fetcher) -> Result<ApplyReport, ApplyError> {
    refuse_unsupported(config)?;
    let fetcher = base
        .with_config(&config.ignition)
        .map_err(|e| ApplyError::Fetch {
            field: e.field,
            url: e.url,
            source: e.source,
        })?;
    let (_staging, staged) = staging::stage_files(root, config, &fetcher)?;
    let target = TargetRoot::new(root);
    let mut rec = Recorder {
        report: ApplyReport::default(),
    };
    filesystems::apply_filesystems(&target, config, &mut rec)?;
    users::apply_accounts(
        &target,
        &config.passwd.groups,
        &config.passwd.users,
        &mut rec,
    )?;
    files::apply_nodes(&target, &config.storage, &staged, &mut rec)?;
    units::apply_units(&target, &config.systemd, &mut rec)?;
    write_result(&target, &mut rec)?;
    Ok(rec.report)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (civil-from-days, proleptic Gregorian).
fn rfc3339_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Writes `/etc/.ignition-result.json` (mode 0600) like Ignition, keeping a previous record as
/// `previousReport`.
fn write_result(root: &TargetRoot, rec: &mut Recorder) -> Result<(), ApplyError> {
    const RESULT: &str = "/etc/.ignition-result.json";
    let host = root.prepare_parent(RESULT)?;
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut record = serde_json::json!({
        "provisioningBootID": boot_id,
        "provisioningDate": rfc3339_utc(now),
        "userConfigProvided": true,
    });
    if let Ok(previous) = std::fs::read(&host) {
        if let Ok(previous) = serde_json::from_slice::<serde_json::Value>(&previous) {
            tracing::warn!("Ignition has already run on this system");
            record["previousReport"] = previous;
        }
    }
    let text = serde_json::to_string(&record).unwrap_or_default();
    write_atomic(&host, text.as_bytes(), 0o600)?;
    rec.action(format!("wrote result record {RESULT}"));
    Ok(())
}

#[cfg(test)]
mod tests;
