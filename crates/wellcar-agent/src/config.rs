//! `update.conf`: Flatcar's keys, layered from several files.
//!
//! Contract:
//! - Files are read in order (by default update_engine's `/usr/share/flatcar/release`, then
//!   `/usr/share/wellcar/update.conf`, `/usr/share/flatcar/update.conf`,
//!   `/etc/flatcar/update.conf`, `/etc/wellcar/update.conf`); a key in a later file overrides
//!   the same key in an earlier one. A missing file is skipped; an unreadable one is an error.
//! - Lines are `KEY=VALUE`, optionally quoted with `"` or `'`, `#` starts a comment line, blank
//!   lines are ignored, `export ` is tolerated (files are also systemd `EnvironmentFile`s).
//! - Keys: `SERVER` (`disabled` or any value that is not an http(s) URL turns updates off, as
//!   in update_engine), `GROUP`, `MACHINE_ALIAS`, `REBOOT_STRATEGY` (see [`RebootStrategy`]:
//!   `reboot` (default), `off`, `etcd-lock`, `fleetlock`, `best-effort`; anything else is an
//!   error naming the valid ones), `LOCKSMITHD_REBOOT_WINDOW_START`/`_LENGTH` (or
//!   `REBOOT_WINDOW_START`/`_LENGTH`; the window applies to every strategy), and the Wellcar
//!   scheduling keys `WELLCAR_FIRST_CHECK_DELAY`, `WELLCAR_CHECK_INTERVAL`,
//!   `WELLCAR_RETRY_DELAY`, `WELLCAR_REBOOT_WARNING` (Go durations such as `7m`, `1h30m`).
//!   Unknown keys are ignored.
//! - Reboot-lock keys ([`lock_keys`]): `FLEETLOCK_URL`, `FLEETLOCK_GROUP`, locksmith's
//!   `LOCKSMITHD_ENDPOINT`, `LOCKSMITHD_ETCD_CAFILE`/`_CERTFILE`/`_KEYFILE`,
//!   `LOCKSMITHD_ETCD_USERNAME`/`_PASSWORD`, `LOCKSMITHD_GROUP`, and
//!   `WELLCAR_LOCK_RETRY_DELAY`. `REBOOT_STRATEGY=fleetlock` without `FLEETLOCK_URL` is an
//!   error.
//! - `SERVER_PUBLIC_KEY` (Wellcar): the absolute path of a PEM ed25519 public key (SPKI, the
//!   `.pub` that `wellcar key generate` writes), the key of the server's `--response-key`, or of
//!   a directory whose `*.pub` keys are all accepted (to rotate: add the new key, switch the
//!   server, drop the old key). When set, every Omaha answer must carry a valid signature
//!   ([`wellcar_omaha::signature`]) or it is rejected and not acted on. The file is read with
//!   the configuration: a missing or unparsable key is an error naming the update.conf line, so
//!   a broken key never silently turns authentication off. Empty means unset.
//! - `FLEET_TOKEN` (Wellcar): sent as the `X-Wellcar-Fleet-Token` header with every Omaha
//!   request; visible ASCII without spaces, at most 1024 bytes. Empty means unset. Never logged.
//! - Identity and downloads (update_engine's): `FLATCAR_RELEASE_APPID` (the Omaha app id,
//!   braces optional; normally from `/usr/share/flatcar/release`, the first file read),
//!   `DOWNLOAD_USER`/`DOWNLOAD_PASSWORD` (HTTP basic auth for payload downloads only; a
//!   password without a user is an error). Never logged.
//! - A bad value is an error naming the file, line, key and value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::window::{RebootWindow, WindowError};

pub mod lock_keys;

pub use lock_keys::{EtcdLockSettings, FleetLockSettings};

/// The public Flatcar-style default when no file sets `SERVER`.
pub const DEFAULT_SERVER: &str = "https://update.wellcar.invalid/v1/update/";

/// What went wrong reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file exists but could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `KEY=VALUE`.
    #[error("{path}:{line}: expected KEY=VALUE, found {text:?}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A value was rejected.
    #[error("{path}:{line}: {key}={value:?}: {reason}")]
    Invalid {
        /// The file that set it.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A window start without a length, or the reverse.
    #[error("{set} is set but {missing} is not: a reboot window needs both")]
    HalfWindow {
        /// The key that is set.
        set: &'static str,
        /// The key that is missing.
        missing: &'static str,
    },
}

/// `REBOOT_STRATEGY`. Every strategy but `off` reboots only inside the reboot window (if one
/// is set); the lock strategies take their lock inside the window only (see
/// [`crate::reboot_lock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootStrategy {
    /// Reboot as soon as an update is staged (or at the next window start).
    Reboot,
    /// Never reboot; stay in UPDATED_NEED_REBOOT.
    Off,
    /// locksmith's semaphore in etcd (v2 keys API, `LOCKSMITHD_*`): lock before rebooting,
    /// unlock once the booted slot is good.
    EtcdLock,
    /// FleetLock (`FLEETLOCK_URL`): pre-reboot before rebooting, steady-state once the booted
    /// slot is good.
    FleetLock,
    /// locksmith's removed `best-effort` (before v0.6.0: etcd-lock when an etcd was found,
    /// else reboot): `etcd-lock` when `LOCKSMITHD_ENDPOINT` is set, else `reboot`.
    BestEffort,
}

impl RebootStrategy {
    /// Every valid `REBOOT_STRATEGY` value.
    pub const NAMES: [&'static str; 5] = ["reboot", "off", "etcd-lock", "fleetlock", "best-effort"];

    /// Parses a `REBOOT_STRATEGY` value (any case; empty is `reboot`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "reboot" => Ok(Self::Reboot),
            "off" => Ok(Self::Off),
            "etcd-lock" => Ok(Self::EtcdLock),
            "fleetlock" => Ok(Self::FleetLock),
            "best-effort" => Ok(Self::BestEffort),
            other => Err(format!(
                "unknown reboot strategy {other:?} (valid: {})",
                Self::NAMES.join(", ")
            )),
        }
    }

    /// The `REBOOT_STRATEGY` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reboot => "reboot",
            Self::Off => "off",
            Self::EtcdLock => "etcd-lock",
            Self::FleetLock => "fleetlock",
            Self::BestEffort => "best-effort",
        }
    }
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Omaha endpoint; `None` when updates are disabled.
    pub server: Option<String>,
    /// `GROUP`, sent as the Omaha `track`.
    pub group: String,
    /// `MACHINE_ALIAS`.
    pub machine_alias: String,
    /// `REBOOT_STRATEGY`.
    pub reboot_strategy: RebootStrategy,
    /// The reboot window, if one is set.
    pub reboot_window: Option<RebootWindow>,
    /// Delay from daemon start to the first check (before jitter).
    pub first_check_delay: Duration,
    /// Delay between checks (before jitter), unless the server sends `PollInterval`.
    pub check_interval: Duration,
    /// First delay after a failed check; doubles per consecutive failure, up to 4 hours.
    pub retry_delay: Duration,
    /// How long logged-in users are warned before a reboot.
    pub reboot_warning: Duration,
    /// `SERVER_PUBLIC_KEY`: the key Omaha answers must be signed with, if any.
    pub server_public_key: Option<ServerPublicKey>,
    /// `FLEET_TOKEN`, if set.
    pub fleet_token: Option<FleetToken>,
    /// `FLEETLOCK_URL`, `FLEETLOCK_GROUP`.
    pub fleetlock: FleetLockSettings,
    /// locksmith's `LOCKSMITHD_*` etcd settings.
    pub etcd_lock: EtcdLockSettings,
    /// `WELLCAR_LOCK_RETRY_DELAY`: first pause after a failed lock or unlock (doubling).
    pub lock_retry_delay: Duration,
    /// The Omaha application id sent (`FLATCAR_RELEASE_APPID`, as update_engine reads it
    /// from `/usr/share/flatcar/release` or update.conf), without braces; Wellcar's by default.
    pub app_id: String,
    /// `DOWNLOAD_USER` and `DOWNLOAD_PASSWORD`: HTTP basic auth for payload downloads.
    pub download_credentials: Option<(String, String)>,
}

/// The server's response-signing public keys, and the file or directory they came from (for
/// messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPublicKey {
    /// The file or directory named by `SERVER_PUBLIC_KEY`.
    pub path: PathBuf,
    /// The keys (one for a file; every `*.pub`, in name order, for a directory).
    pub keys: Vec<wellcar_omaha::signature::VerifyingKey>,
}

impl ServerPublicKey {
    /// Checks a response signature header against the keys; any one verifying is enough.
    pub fn verify(
        &self,
        request_body: &[u8],
        request_nonce: &[u8],
        response_body: &[u8],
        header: Option<&str>,
    ) -> Result<(), wellcar_omaha::signature::SignatureError> {
        let mut outcome = Err(wellcar_omaha::signature::SignatureError::Invalid);
        for key in &self.keys {
            outcome = wellcar_omaha::signature::verify_response(
                key,
                request_body,
                request_nonce,
                response_body,
                header,
            );
            if matches!(
                outcome,
                Ok(()) | Err(wellcar_omaha::signature::SignatureError::Missing)
            ) {
                break;
            }
        }
        outcome
    }
}

/// `FLEET_TOKEN`: a shared secret, redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetToken(String);

impl FleetToken {
    /// Longest token accepted.
    pub const MAX_LEN: usize = 1024;

    /// Accepts visible ASCII without spaces (a valid HTTP header value), 1 to [`Self::MAX_LEN`]
    /// bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > Self::MAX_LEN {
            return Err(format!(
                "the token must be 1 to {} bytes, not {}",
                Self::MAX_LEN,
                text.len()
            ));
        }
        if let Some(bad) = text.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "the token may hold only visible ASCII without spaces, found {bad:?}"
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// The token, for the request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for FleetToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetToken(<redacted>)")
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: Some(DEFAULT_SERVER.to_owned()),
            group: "stable".to_owned(),
            machine_alias: String::new(),
            reboot_strategy: RebootStrategy::Reboot,
            reboot_window: None,
            first_check_delay: Duration::from_secs(7 * 60),
            check_interval: Duration::from_secs(45 * 60),
            retry_delay: Duration::from_secs(60),
            reboot_warning: Duration::from_secs(5 * 60),
            server_public_key: None,
            fleet_token: None,
            fleetlock: FleetLockSettings {
                url: None,
                group: "stable".to_owned(),
            },
            etcd_lock: EtcdLockSettings::default(),
            lock_retry_delay: lock_keys::DEFAULT_LOCK_RETRY_DELAY,
            app_id: wellcar_omaha::WELLCAR_APP_ID.to_owned(),
            download_credentials: None,
        }
    }
}

/// One `KEY=VALUE` with where it came from.
/// The "path" of settings that came from the environment, in errors.
pub const ENVIRONMENT_SOURCE: &str = "(environment)";

#[derive(Debug, Clone)]
struct Setting {
    value: String,
    path: PathBuf,
    line: usize,
}

/// Parses `KEY=VALUE` lines (see the module docs).
fn parse_lines(
    text: &str,
    path: &Path,
    into: &mut BTreeMap<String, Setting>,
) -> Result<(), ConfigError> {
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(ConfigError::Syntax {
                path: path.to_owned(),
                line: index + 1,
                text: raw.to_owned(),
            });
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ConfigError::Syntax {
                path: path.to_owned(),
                line: index + 1,
                text: raw.to_owned(),
            });
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| {
                value
                    .strip_prefix(*q)
                    .and_then(|v| v.strip_suffix(*q))
                    .filter(|_| value.len() >= 2)
            })
            .unwrap_or(value);
        into.insert(
            key.to_owned(),
            Setting {
                value: value.to_owned(),
                path: path.to_owned(),
                line: index + 1,
            },
        );
    }
    Ok(())
}

/// Parses a Go `time.ParseDuration` string (`90s`, `1h30m`, `1.5h`, `300ms`); a bare number
/// is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{text:?}: number without a unit"))?;
        if num_len == 0 {
            return Err(format!("{text:?}: expected a number at {rest:?}"));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("{text:?}: bad number {:?}", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => return Err(format!("{text:?}: unknown unit {unit:?}")),
        };
        total += number * seconds_per;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("{text:?}: too long"))
}

impl Config {
    /// `loaded`, or `last_good` while the files are broken (logged; a daemon keeps running on
    /// the last good one). A good read becomes the new `last_good`.
    pub fn reload(loaded: Result<Config, ConfigError>, last_good: &mut Config) -> Config {
        match loaded {
            Ok(config) => {
                *last_good = config.clone();
                config
            }
            Err(e) => {
                tracing::warn!("{e}; keeping the last good configuration");
                last_good.clone()
            }
        }
    }

    /// Reads and layers `files` (missing ones skipped), then interprets the keys.
    pub fn load(files: &[PathBuf]) -> Result<Self, ConfigError> {
        Self::load_over_environment(files, std::iter::empty())
    }

    /// [`Config::load`] over a lowest layer of locksmith's variables from `environment`
    /// (`REBOOT_STRATEGY` and `LOCKSMITHD_*`, as locksmithd reads them from its unit's
    /// environment; the rest is ignored). The files win over it, as systemd's
    /// `EnvironmentFile=` (Flatcar's locksmithd.service reads update.conf so) wins over a
    /// drop-in's `Environment=`. Errors in a variable name [`ENVIRONMENT_SOURCE`] as the path.
    pub fn load_over_environment(
        files: &[PathBuf],
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut settings = BTreeMap::new();
        for (key, value) in environment {
            if key == "REBOOT_STRATEGY" || key.starts_with("LOCKSMITHD_") {
                let setting = Setting {
                    value,
                    path: PathBuf::from(ENVIRONMENT_SOURCE),
                    line: 0,
                };
                settings.insert(key, setting);
            }
        }
        for path in files {
            match std::fs::read_to_string(path) {
                Ok(text) => parse_lines(&text, path, &mut settings)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ConfigError::Read {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        Self::from_settings(&settings)
    }

    /// Interprets the text of one file as [`Config::load`] does, `path` naming it in errors.
    /// Reads no file itself (except a file a key names, such as a key file).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut settings = BTreeMap::new();
        parse_lines(text, path, &mut settings)?;
        Self::from_settings(&settings)
    }

    fn from_settings(settings: &BTreeMap<String, Setting>) -> Result<Self, ConfigError> {
        let mut config = Config::default();
        let invalid = |key: &str, s: &Setting, reason: String| ConfigError::Invalid {
            path: s.path.clone(),
            line: s.line,
            key: key.to_owned(),
            value: s.value.clone(),
            reason,
        };
        if let Some(s) = settings.get("SERVER") {
            let v = s.value.trim();
            config.server =
                (v.starts_with("http://") || v.starts_with("https://")).then(|| v.to_owned());
        }
        if let Some(s) = settings.get("GROUP") {
            if !s.value.trim().is_empty() {
                config.group = s.value.trim().to_owned();
            }
        }
        if let Some(s) = settings.get("MACHINE_ALIAS") {
            config.machine_alias = s.value.clone();
        }
        if let Some(s) = settings.get("FLATCAR_RELEASE_APPID") {
            let id = wellcar_omaha::normalize_app_id(&s.value);
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(invalid(
                    "FLATCAR_RELEASE_APPID",
                    s,
                    "expected an Omaha app id such as {e96281a6-d1af-4bde-9a0a-97b76e56dc57}"
                        .into(),
                ));
            }
            config.app_id = id;
        }
        match (
            settings.get("DOWNLOAD_USER"),
            settings.get("DOWNLOAD_PASSWORD"),
        ) {
            (Some(user), password) if !user.value.is_empty() => {
                if user.value.contains(':') {
                    return Err(invalid(
                        "DOWNLOAD_USER",
                        user,
                        "a basic-auth user name cannot contain ':'".into(),
                    ));
                }
                config.download_credentials = Some((
                    user.value.clone(),
                    password.map(|p| p.value.clone()).unwrap_or_default(),
                ));
            }
            (_, Some(password)) if !password.value.is_empty() => {
                return Err(invalid(
                    "DOWNLOAD_PASSWORD",
                    password,
                    "DOWNLOAD_USER is not set".into(),
                ));
            }
            _ => {}
        }
        if let Some(s) = settings.get("SERVER_PUBLIC_KEY") {
            let path = s.value.trim();
            if !path.is_empty() {
                let path = Path::new(path);
                if !path.is_absolute() {
                    return Err(invalid(
                        "SERVER_PUBLIC_KEY",
                        s,
                        "must be an absolute path to a PEM ed25519 public key or a directory of them"
                            .into(),
                    ));
                }
                let keys =
                    wellcar_payload::TrustedKeys::from_paths(&[path.to_owned()]).map_err(|e| {
                        invalid("SERVER_PUBLIC_KEY", s, wellcar_contract::error_chain(&e))
                    })?;
                config.server_public_key = Some(ServerPublicKey {
                    path: path.to_owned(),
                    keys: keys.keys().iter().map(|k| k.verifying_key).collect(),
                });
            }
        }
        if let Some(s) = settings.get("FLEET_TOKEN") {
            if !s.value.is_empty() {
                config.fleet_token =
                    Some(
                        FleetToken::parse(&s.value).map_err(|reason| ConfigError::Invalid {
                            path: s.path.clone(),
                            line: s.line,
                            key: "FLEET_TOKEN".into(),
                            value: "<redacted>".into(),
                            reason,
                        })?,
                    );
            }
        }
        if let Some(s) = settings.get("REBOOT_STRATEGY") {
            config.reboot_strategy =
                RebootStrategy::parse(&s.value).map_err(|r| invalid("REBOOT_STRATEGY", s, r))?;
        }
        for (key, field) in [
            ("WELLCAR_FIRST_CHECK_DELAY", &mut config.first_check_delay),
            ("WELLCAR_CHECK_INTERVAL", &mut config.check_interval),
            ("WELLCAR_RETRY_DELAY", &mut config.retry_delay),
            ("WELLCAR_REBOOT_WARNING", &mut config.reboot_warning),
            ("WELLCAR_LOCK_RETRY_DELAY", &mut config.lock_retry_delay),
        ] {
            if let Some(s) = settings.get(key) {
                *field = parse_duration(&s.value).map_err(|r| invalid(key, s, r))?;
            }
        }
        if config.check_interval.is_zero() {
            let s = &settings["WELLCAR_CHECK_INTERVAL"];
            return Err(invalid(
                "WELLCAR_CHECK_INTERVAL",
                s,
                "must be greater than zero".into(),
            ));
        }
        if config.lock_retry_delay.is_zero() {
            let s = &settings["WELLCAR_LOCK_RETRY_DELAY"];
            return Err(invalid(
                "WELLCAR_LOCK_RETRY_DELAY",
                s,
                "must be greater than zero".into(),
            ));
        }
        config.fleetlock = lock_keys::fleetlock(settings, &config.group)?;
        config.etcd_lock = lock_keys::etcd(settings)?;
        if config.reboot_strategy == RebootStrategy::FleetLock {
            lock_keys::require_fleetlock(settings, &config.fleetlock)?;
        }
        let pick = |keys: [&'static str; 2]| {
            keys.iter()
                .find_map(|k| settings.get(*k).map(|s| (*k, s)))
                .filter(|(_, s)| !s.value.trim().is_empty())
        };
        let start = pick(["LOCKSMITHD_REBOOT_WINDOW_START", "REBOOT_WINDOW_START"]);
        let length = pick(["LOCKSMITHD_REBOOT_WINDOW_LENGTH", "REBOOT_WINDOW_LENGTH"]);
        config.reboot_window = match (start, length) {
            (None, None) => None,
            (Some((k, _)), None) => {
                return Err(ConfigError::HalfWindow {
                    set: k,
                    missing: "LOCKSMITHD_REBOOT_WINDOW_LENGTH",
                })
            }
            (None, Some((k, _))) => {
                return Err(ConfigError::HalfWindow {
                    set: k,
                    missing: "LOCKSMITHD_REBOOT_WINDOW_START",
                })
            }
            (Some((start_key, start)), Some((length_key, length))) => {
                let len =
                    parse_duration(&length.value).map_err(|r| invalid(length_key, length, r))?;
                Some(
                    RebootWindow::parse(&start.value, len)
                        .map_err(|e: WindowError| invalid(start_key, start, e.to_string()))?,
                )
            }
        };
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
