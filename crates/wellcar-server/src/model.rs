//! The server's data model as the admin API shows it (JSON), and instance statuses.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An Omaha application (an OS or any other updatable thing).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct App {
    /// Normalized app id (lowercase GUID, no braces).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// A release package of an application for one architecture.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Package {
    /// Row id.
    pub id: String,
    /// Owning app.
    pub app_id: String,
    /// OS version (`wellcar_contract::OsVersion`): `MAJOR.MINOR.PATCH`, optionally `+build`.
    #[schema(example = "3815.2.0")]
    pub version: String,
    /// `amd64` or `arm64`.
    #[schema(example = "amd64")]
    pub arch: String,
    /// Payload file name (appended to the codebase by clients).
    pub filename: String,
    /// External base URL, or empty when the server hosts the payload under `/packages/`.
    pub url: String,
    /// Payload size in bytes.
    pub size: i64,
    /// Hex SHA-256 of the payload.
    pub sha256_hex: String,
    /// Base64 SHA-1 (Flatcar's `package@hash`).
    pub sha1_base64: String,
    /// Base64 SHA-256 (Flatcar's `action@sha256`).
    pub sha256_base64: String,
}

/// A delta payload of a package: it updates a machine running `source_version` to the
/// package's version, and is offered instead of the package to such machines
/// ([`crate::deltas`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct PackageDelta {
    /// The package (target version) it belongs to.
    pub package_id: String,
    /// The OS version it applies to.
    #[schema(example = "3815.1.0")]
    pub source_version: String,
    /// File name, hosted next to the package's file.
    pub filename: String,
    /// Size in bytes.
    pub size: i64,
    /// Hex SHA-256.
    pub sha256_hex: String,
    /// Base64 SHA-1 (Flatcar's `package@hash`).
    pub sha1_base64: String,
    /// Base64 SHA-256 (Flatcar's `action@sha256`).
    pub sha256_base64: String,
}

/// A channel: a named pointer at one package per architecture.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Channel {
    /// Row id.
    pub id: String,
    /// Owning app.
    pub app_id: String,
    /// `stable`, `beta`, `alpha`, …
    pub name: String,
    /// Architecture.
    pub arch: String,
    /// The package the channel points at, if any.
    pub package: Option<Package>,
    /// Mandatory intermediate versions, lowest first.
    #[serde(default)]
    pub floors: Vec<Floor>,
}

/// A mandatory intermediate version on a channel: machines below it are updated to it first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Floor {
    /// The floor package.
    pub package: Package,
    /// Why it is mandatory.
    pub reason: String,
}

/// A weekly maintenance window in the group's time zone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Window {
    /// Days the window starts on: `mon`…`sun` (case-insensitive, 3 letters).
    pub days: Vec<String>,
    /// Start time `HH:MM`, local to the group's time zone.
    #[schema(example = "22:00")]
    pub start: String,
    /// Length in minutes (may run past midnight).
    #[schema(minimum = 1, maximum = 10080)]
    pub minutes: u32,
}

/// A group's rollout policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Policy {
    /// Updates granted at all (false = paused by an operator).
    pub updates_enabled: bool,
    /// One instance goes first; failures or timeouts of granted instances halt the group.
    pub safe_mode: bool,
    /// Safe mode halts the group once this many distinct instances granted the target version
    /// failed or timed out on it (at least 1; default 1: the first failure halts).
    #[serde(default = "default_safe_mode_failures")]
    pub safe_mode_failures: i64,
    /// Grants allowed per `period_secs` (0 = unlimited).
    pub max_updates_per_period: i64,
    /// Length of the grant-counting period in seconds.
    pub period_secs: i64,
    /// Updates allowed in progress at once (0 = unlimited).
    pub max_concurrent: i64,
    /// A granted update not finished within this many seconds has timed out.
    pub update_timeout_secs: i64,
    /// Serve the channel's package even if it is older than the instance's version.
    pub allow_downgrade: bool,
    /// IANA time zone of the windows.
    #[schema(example = "Europe/Berlin")]
    pub timezone: String,
    /// Maintenance windows; empty means always open.
    pub windows: Vec<Window>,
}

/// [`Policy::safe_mode_failures`] when a stored or sent policy does not name it.
pub const DEFAULT_SAFE_MODE_FAILURES: i64 = 1;

fn default_safe_mode_failures() -> i64 {
    DEFAULT_SAFE_MODE_FAILURES
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            updates_enabled: true,
            safe_mode: false,
            safe_mode_failures: DEFAULT_SAFE_MODE_FAILURES,
            max_updates_per_period: 0,
            period_secs: 3600,
            max_concurrent: 0,
            update_timeout_secs: 3600,
            allow_downgrade: false,
            timezone: "UTC".into(),
            windows: Vec::new(),
        }
    }
}

/// A group of instances, selected by the Omaha `track`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Group {
    /// Row id.
    pub id: String,
    /// Owning app.
    pub app_id: String,
    /// Display name.
    pub name: String,
    /// The Omaha `track` that selects this group.
    pub track: String,
    /// Name of the channel this group follows.
    pub channel: String,
    /// Free text.
    pub description: String,
    /// Rollout policy.
    pub policy: Policy,
    /// Halted by the safe-mode brake (independent of `policy.updates_enabled`).
    pub halted: bool,
    /// Why the brake halted the group.
    pub halted_reason: Option<String>,
}

/// Fields of a group that `PATCH` may change; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct GroupPatch {
    /// New display name.
    pub name: Option<String>,
    /// New channel name.
    pub channel: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// Pause or resume.
    pub updates_enabled: Option<bool>,
    /// Safe mode.
    pub safe_mode: Option<bool>,
    /// Distinct failed instances that halt a safe-mode group.
    pub safe_mode_failures: Option<i64>,
    /// Grants per period.
    pub max_updates_per_period: Option<i64>,
    /// Period length.
    pub period_secs: Option<i64>,
    /// Concurrency limit.
    pub max_concurrent: Option<i64>,
    /// Update timeout.
    pub update_timeout_secs: Option<i64>,
    /// Downgrades.
    pub allow_downgrade: Option<bool>,
    /// Time zone.
    pub timezone: Option<String>,
    /// Maintenance windows.
    pub windows: Option<Vec<Window>>,
}

/// What a machine tells about itself when it checks in: the facts its instance row keeps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct InstanceFacts {
    /// App.
    pub app_id: String,
    /// Omaha `machineid`.
    pub machine_id: String,
    /// `machinealias`.
    pub alias: String,
    /// Client IP.
    pub ip: String,
    /// OEM.
    pub oem: String,
    /// Installed version.
    pub version: String,
    /// Last track sent.
    pub track: String,
    /// Group id, if the track matched one.
    pub group_id: Option<String>,
    /// Architecture.
    pub arch: String,
}

/// A machine running an application.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Instance {
    /// What it last told about itself (its keys appear at the top level in JSON).
    #[serde(flatten)]
    pub facts: InstanceFacts,
    /// `undefined`, `granted`, `downloading`, `downloaded`, `installed`, `complete`, `error` or
    /// `timeout` (the [`status`] values).
    pub status: String,
    /// Last check-in (unix ms; persisted at the configured resolution).
    pub last_check: i64,
    /// Version last granted.
    pub granted_version: Option<String>,
    /// When it was granted (unix ms).
    pub granted_at: Option<i64>,
    /// Last reported update_engine error code.
    pub last_error_code: Option<i64>,
}

/// One Omaha event a machine reported, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct InstanceEvent {
    /// When the server stored it (unix ms).
    pub created_at: i64,
    /// Omaha `eventtype` (3 update complete, 13 download started, 14 download finished, …).
    pub event_type: i64,
    /// Omaha `eventresult` (0 error, 1 success, 2 success and reboot).
    pub event_result: i64,
    /// update_engine error code, if the machine sent one.
    pub error_code: Option<i64>,
    /// `previousversion`, if the machine sent one.
    pub previous_version: Option<String>,
    /// The version the machine was running when it reported the event.
    pub version: String,
    /// Whether the event came from an instance the server granted that update to, for the
    /// version it was granted (see [`crate::event_trust`]); only verified events change rollout
    /// state. Unverified events are kept for the operator, never acted on.
    #[serde(default = "verified_by_default")]
    pub verified: bool,
}

fn verified_by_default() -> bool {
    true
}

/// One line of the activity log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Activity {
    /// Unix ms.
    pub created_at: i64,
    /// `system` or the API token name that made the change.
    pub actor: String,
    /// Machine-readable kind (`rollout-started`, `group-halted`, `channel-published`, …).
    pub kind: String,
    /// App, if any.
    pub app_id: Option<String>,
    /// Group, if any.
    pub group_id: Option<String>,
    /// `info`, `warning` or `error`.
    pub severity: String,
    /// Human-readable sentence.
    pub message: String,
}

/// Instance statuses.
pub mod status {
    /// Seen, nothing in progress.
    pub const UNDEFINED: &str = "undefined";
    /// Update granted, client has not reported yet.
    pub const GRANTED: &str = "granted";
    /// Event 13/1.
    pub const DOWNLOADING: &str = "downloading";
    /// Event 14/1.
    pub const DOWNLOADED: &str = "downloaded";
    /// Event 3/1 or 800/1: installed, waiting for reboot.
    pub const INSTALLED: &str = "installed";
    /// Event 3/2: running the new version.
    pub const COMPLETE: &str = "complete";
    /// An event with result 0 (including a 44 rollback report).
    pub const ERROR: &str = "error";
    /// The update did not finish within the group's timeout.
    pub const TIMEOUT: &str = "timeout";

    /// Statuses that mean "an update is in progress".
    pub const IN_PROGRESS: [&str; 4] = [GRANTED, DOWNLOADING, DOWNLOADED, INSTALLED];
}
