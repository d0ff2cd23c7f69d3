//! Applying a config to a target root directory (no chroot, no systemctl, no shadow-utils).
//!
//! Order, as Ignition's stages: partitions, RAID, LUKS, filesystems on other disks (with their
//! mount units; see `storage`), filesystems with a `path` mounted below the root, then the
//! files stage: groups, users (with ssh keys), files/directories/links, systemd units, and the
//! result record `/etc/.ignition-result.json`. Every path is resolved
//! inside the root (see the private `root` module); every replaced file is written atomically. Each action is
//! logged at info level and listed in the [`ApplyReport`].
//!
//! Before anything is written, the config is checked for features this implementation does not
//! apply (LUKS clevis/cex bindings; kernel arguments unless the caller applied them to the OEM
//! `grub.cfg`: refused naming the field, never ignored), every LUKS key is fetched and verified,
//! every file's contents and `append` fragments are streamed into staging files in the root (see
//! the private `staging` module: fetched, decompressed, hashed, size-bounded; renamed into place
//! in the files stage), and every disk is planned, so a bad hash, an oversized body, an
//! unreachable URL, a short key or a conflicting partition fails the apply without leaving a
//! half-provisioned root. Sources are fetched with [`ApplyOptions::fetch`] under the config's
//! own `ignition` section (CAs, proxy, timeouts).
//!
//! `<root>/etc` may be the upper layer of Wellcar's /etc overlay: the applier simply writes
//! `<root>/etc/...` paths.

mod files;
mod filesystems;
mod root;
mod staging;
mod storage;
mod units;
mod users;

use std::path::{Path, PathBuf};
use std::time::Duration;
use wellcar_contract::PathIoError;

use crate::fetch::{FetchError, FetchOptions, Fetcher};
use crate::model::Config;
use root::TargetRoot;
use staging::StagedFile;

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
    /// A name or account field that would leave its directory or its database line (validation
    /// refuses these; the applier checks again before using them).
    #[error("{field}: {reason}")]
    InvalidField {
        /// JSON path, e.g. `systemd.units.3.name`.
        field: String,
        /// What is wrong, naming the value.
        reason: String,
    },
    /// A configured device did not appear in time.
    #[error("{field}: {device} did not appear within {waited:?}")]
    DeviceMissing {
        /// JSON path of the device field.
        field: String,
        /// The configured device path.
        device: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// `kernelArguments` are set but the caller did not apply them (see
    /// [`ApplyOptions::kernel_arguments_applied`]).
    #[error("kernelArguments: must be applied to the OEM grub.cfg (and the machine rebooted) before the files stage; this caller did not")]
    KernelArgumentsNotApplied,
    /// A LUKS key outside the accepted length.
    #[error("{field}: the key is {len} bytes; a LUKS key must be 16 bytes to 8 MiB")]
    KeyLength {
        /// JSON path of the key file.
        field: String,
        /// Its length.
        len: usize,
    },
    /// A partition entry cannot be applied to its disk (overlap, mismatch, no room).
    #[error("{field}: {device}: {what}")]
    Partition {
        /// JSON path of the disk or partition entry.
        field: String,
        /// The disk.
        device: String,
        /// What is wrong.
        what: String,
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

/// Settings of one [`apply_with`] run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    /// How long a configured device (disk, partition, `/dev/disk/by-*` path) may take to appear.
    pub device_wait: Duration,
    /// The caller has already applied `kernelArguments` to the OEM `grub.cfg`
    /// ([`crate::kargs::edit_grub_cfg`], then a reboot if it changed); otherwise a config with
    /// kernel arguments is refused rather than silently half-applied.
    pub kernel_arguments_applied: bool,
    /// How remote sources (file contents, `append`, LUKS key files, CAs) are fetched. The
    /// default is offline (data: URLs only; remote ones fail naming the URL); a caller with a
    /// network sets `FetchOptions::default()` or the platform's options.
    pub fetch: FetchOptions,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            device_wait: Duration::from_secs(60),
            kernel_arguments_applied: false,
            fetch: FetchOptions {
                offline: true,
                ..FetchOptions::default()
            },
        }
    }
}

/// What is parsed but not applied here: kernel arguments the caller has not applied (LUKS
/// clevis/cex bindings are refused by `storage::luks`).
fn refuse_unsupported(config: &Config, options: &ApplyOptions) -> Result<(), ApplyError> {
    let kargs = &config.kernel_arguments;
    let has_kargs = !(kargs.should_exist.is_empty() && kargs.should_not_exist.is_empty());
    if has_kargs && !options.kernel_arguments_applied {
        return Err(ApplyError::KernelArgumentsNotApplied);
    }
    Ok(())
}

pub(crate) fn short_source(resource: &crate::model::Resource) -> String {
    crate::fetch::short_url(resource.source.as_deref().unwrap_or(""))
}

/// The fetcher `options` and the config's `ignition` section ask for.
fn fetcher_for(config: &Config, options: &ApplyOptions) -> Result<Fetcher, ApplyError> {
    let base = Fetcher::new(options.fetch.clone()).map_err(|source| ApplyError::Fetch {
        field: "ApplyOptions.fetch.ca_pems".into(),
        url: String::new(),
        source: Box::new(source),
    })?;
    base.with_config(&config.ignition)
        .map_err(|e| ApplyError::Fetch {
            field: e.field,
            url: e.url,
            source: e.source,
        })
}

/// Applies `config` (already merged and with references resolved) to the directory `root`,
/// with the default [`ApplyOptions`].
pub fn apply(config: &Config, root: &Path) -> Result<ApplyReport, ApplyError> {
    apply_with(config, root, &ApplyOptions::default())
}

/// Applies `config` to the directory `root`. Stages in Ignition's order: disks (partitions),
/// filesystems (with their mount units), filesystems with a `path` mounted below `root`, the
/// files stage (accounts, files, directories, links, units), unmount, the result record.
pub fn apply_with(
    config: &Config,
    root: &Path,
    options: &ApplyOptions,
) -> Result<ApplyReport, ApplyError> {
    refuse_unsupported(config, options)?;
    let fetcher = fetcher_for(config, options)?;
    let luks_keys = storage::luks::fetch_keys(config, &fetcher)?;
    let (_staging, staged) = staging::stage_files(root, config, &fetcher)?;
    storage::raid::check(config)?;
    let target = TargetRoot::new(root);
    let mut rec = Recorder {
        report: ApplyReport::default(),
    };
    storage::apply_disks(config, options.device_wait, &mut rec)?;
    storage::raid::apply_raid(&target, config, options.device_wait, &mut rec)?;
    storage::luks::apply_luks(&target, config, &luks_keys, options.device_wait, &mut rec)?;
    filesystems::apply_filesystems(&target, config, options.device_wait, &mut rec)?;
    let mounted =
        storage::mounts::mount_filesystems(&target, config, options.device_wait, &mut rec)?;
    files_stage(&target, config, &staged, &mut rec)?;
    mounted.unmount(&mut rec)?;
    write_result(&target, &mut rec)?;
    Ok(rec.report)
}

/// Ignition's files stage, with the configured filesystems mounted.
fn files_stage(
    target: &TargetRoot,
    config: &Config,
    staged: &[StagedFile],
    rec: &mut Recorder,
) -> Result<(), ApplyError> {
    users::apply_accounts(target, &config.passwd.groups, &config.passwd.users, rec)?;
    files::apply_nodes(target, &config.storage, staged, rec)?;
    units::apply_units(target, &config.systemd, rec)?;
    Ok(())
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
/// `previousReport`. The previous record is read inside the root (a planted symlink to a host
/// file reads the root's file of that name, not the host's).
fn write_result(root: &TargetRoot, rec: &mut Recorder) -> Result<(), ApplyError> {
    const RESULT: &str = "/etc/.ignition-result.json";
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
    if let Ok(Some(previous)) = root.read(RESULT) {
        if let Ok(previous) = serde_json::from_slice::<serde_json::Value>(&previous) {
            tracing::warn!("Ignition has already run on this system");
            record["previousReport"] = previous;
        }
    }
    let text = serde_json::to_string(&record).unwrap_or_default();
    root.write_file(RESULT, text.as_bytes(), 0o600)?;
    rec.action(format!("wrote result record {RESULT}"));
    Ok(())
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
