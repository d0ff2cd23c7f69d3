//! The reboot-lock keys of `update.conf`: FleetLock's (`FLEETLOCK_*`, Wellcar's) and
//! locksmith's (`LOCKSMITHD_*`, read as locksmithd reads them from the same file).
//!
//! Contract (see [`crate::config`] for the file format):
//! - `FLEETLOCK_URL`: the FleetLock server's base URL (`http://` or `https://`); requests go
//!   to `<base>/v1/pre-reboot` and `<base>/v1/steady-state` (a trailing `/` is ignored).
//!   Required by `REBOOT_STRATEGY=fleetlock`.
//! - `FLEETLOCK_GROUP`: the lock group, default the update `GROUP` (Zincati's default is the
//!   fixed `default`); either must match the protocol's `^[a-zA-Z0-9.-]+$` when the strategy
//!   is `fleetlock`.
//! - `LOCKSMITHD_ENDPOINT`: comma-separated etcd URLs, default
//!   `http://127.0.0.1:2379,http://127.0.0.1:4001` (locksmith's); `LOCKSMITHD_ETCD_CAFILE`,
//!   `LOCKSMITHD_ETCD_CERTFILE`, `LOCKSMITHD_ETCD_KEYFILE` (absolute paths; certificate and key
//!   together), `LOCKSMITHD_ETCD_USERNAME`/`_PASSWORD` (together), `LOCKSMITHD_GROUP`
//!   (locksmith's group; empty: the global semaphore, as locksmith — it does not default to
//!   `GROUP`, so Wellcar and Flatcar hosts with the same settings share one lock).
//! - `WELLCAR_LOCK_RETRY_DELAY` (Go duration, default `5s`, locksmith's): the first pause after
//!   a failed or refused lock or unlock; it doubles per failure up to 5 minutes.
//! - Empty values mean unset. A bad value is an error naming the file, line, key and value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, Setting};

/// locksmith's default etcd endpoints.
pub const DEFAULT_ETCD_ENDPOINTS: [&str; 2] = ["http://127.0.0.1:2379", "http://127.0.0.1:4001"];

/// Default first pause after a failed lock or unlock (locksmith's initial interval).
pub const DEFAULT_LOCK_RETRY_DELAY: Duration = Duration::from_secs(5);

/// `FLEETLOCK_URL`, `FLEETLOCK_GROUP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLockSettings {
    /// The base URL, without a trailing `/`.
    pub url: Option<String>,
    /// The lock group (`FLEETLOCK_GROUP`, else `GROUP`).
    pub group: String,
}

/// locksmith's `LOCKSMITHD_*` etcd settings.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdLockSettings {
    /// etcd client URLs, tried in order.
    pub endpoints: Vec<String>,
    /// Whether `LOCKSMITHD_ENDPOINT` was set (what `best-effort` looks at).
    pub endpoint_configured: bool,
    /// `LOCKSMITHD_ETCD_CAFILE`.
    pub ca_file: Option<PathBuf>,
    /// `LOCKSMITHD_ETCD_CERTFILE`.
    pub cert_file: Option<PathBuf>,
    /// `LOCKSMITHD_ETCD_KEYFILE`.
    pub key_file: Option<PathBuf>,
    /// `LOCKSMITHD_ETCD_USERNAME`.
    pub username: Option<String>,
    /// `LOCKSMITHD_ETCD_PASSWORD` (redacted in `Debug`).
    pub password: Option<String>,
    /// `LOCKSMITHD_GROUP`; `None`: locksmith's global semaphore.
    pub group: Option<String>,
}

impl std::fmt::Debug for EtcdLockSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLockSettings")
            .field("endpoints", &self.endpoints)
            .field("endpoint_configured", &self.endpoint_configured)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("group", &self.group)
            .finish()
    }
}

impl Default for EtcdLockSettings {
    fn default() -> Self {
        Self {
            endpoints: DEFAULT_ETCD_ENDPOINTS.map(str::to_owned).to_vec(),
            endpoint_configured: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
            group: None,
        }
    }
}

fn invalid(key: &str, s: &Setting, reason: String) -> ConfigError {
    ConfigError::Invalid {
        path: s.path.clone(),
        line: s.line,
        key: key.to_owned(),
        value: if key.ends_with("PASSWORD") {
            "<redacted>".into()
        } else {
            s.value.clone()
        },
        reason,
    }
}

/// The non-empty setting of `key`, if any.
fn get<'a>(settings: &'a BTreeMap<String, Setting>, key: &str) -> Option<&'a Setting> {
    settings.get(key).filter(|s| !s.value.trim().is_empty())
}

fn http_url(text: &str) -> Result<String, String> {
    let url = text.trim();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| "must be an http:// or https:// URL".to_owned())?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("the URL has no host".into());
    }
    if let Some(bad) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("the URL may not contain {bad:?}"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// `FLEETLOCK_*`; `group` is the update `GROUP` (the default lock group).
pub(super) fn fleetlock(
    settings: &BTreeMap<String, Setting>,
    group: &str,
) -> Result<FleetLockSettings, ConfigError> {
    let url = get(settings, "FLEETLOCK_URL")
        .map(|s| http_url(&s.value).map_err(|r| invalid("FLEETLOCK_URL", s, r)))
        .transpose()?;
    let group = match get(settings, "FLEETLOCK_GROUP") {
        Some(s) => {
            let g = s.value.trim();
            wellcar_contract::fleetlock::check_group(g)
                .map_err(|r| invalid("FLEETLOCK_GROUP", s, r))?;
            g.to_owned()
        }
        None => group.to_owned(),
    };
    Ok(FleetLockSettings { url, group })
}

/// Checks what `REBOOT_STRATEGY=fleetlock` needs: a URL, and a valid group when it is the
/// update `GROUP` (an explicit `FLEETLOCK_GROUP` was checked when read).
pub(super) fn require_fleetlock(
    settings: &BTreeMap<String, Setting>,
    fleetlock: &FleetLockSettings,
) -> Result<(), ConfigError> {
    let strategy = &settings["REBOOT_STRATEGY"];
    if fleetlock.url.is_none() {
        return Err(invalid(
            "REBOOT_STRATEGY",
            strategy,
            "fleetlock needs FLEETLOCK_URL, the FleetLock server's base URL".into(),
        ));
    }
    if get(settings, "FLEETLOCK_GROUP").is_none() {
        if let Err(reason) = wellcar_contract::fleetlock::check_group(&fleetlock.group) {
            let reason =
                format!("{reason}; set FLEETLOCK_GROUP (the lock group defaults to GROUP)");
            return Err(match settings.get("GROUP") {
                Some(s) => invalid("GROUP", s, reason),
                None => invalid("REBOOT_STRATEGY", strategy, reason),
            });
        }
    }
    Ok(())
}

/// `LOCKSMITHD_*`.
pub(super) fn etcd(settings: &BTreeMap<String, Setting>) -> Result<EtcdLockSettings, ConfigError> {
    let mut etcd = EtcdLockSettings::default();
    if let Some(s) = get(settings, "LOCKSMITHD_ENDPOINT") {
        etcd.endpoints = s
            .value
            .split(',')
            .map(|e| {
                http_url(e).map_err(|r| invalid("LOCKSMITHD_ENDPOINT", s, format!("{e:?}: {r}")))
            })
            .collect::<Result<_, _>>()?;
        etcd.endpoint_configured = true;
    }
    let path = |key: &str| {
        get(settings, key)
            .map(|s| {
                let p = PathBuf::from(s.value.trim());
                if p.is_absolute() {
                    Ok(p)
                } else {
                    Err(invalid(key, s, "must be an absolute path".into()))
                }
            })
            .transpose()
    };
    etcd.ca_file = path("LOCKSMITHD_ETCD_CAFILE")?;
    etcd.cert_file = path("LOCKSMITHD_ETCD_CERTFILE")?;
    etcd.key_file = path("LOCKSMITHD_ETCD_KEYFILE")?;
    for (set, missing) in [
        ("LOCKSMITHD_ETCD_CERTFILE", "LOCKSMITHD_ETCD_KEYFILE"),
        ("LOCKSMITHD_ETCD_KEYFILE", "LOCKSMITHD_ETCD_CERTFILE"),
        ("LOCKSMITHD_ETCD_USERNAME", "LOCKSMITHD_ETCD_PASSWORD"),
        ("LOCKSMITHD_ETCD_PASSWORD", "LOCKSMITHD_ETCD_USERNAME"),
    ] {
        if let (Some(s), None) = (get(settings, set), get(settings, missing)) {
            return Err(invalid(set, s, format!("{missing} must be set too")));
        }
    }
    etcd.username = get(settings, "LOCKSMITHD_ETCD_USERNAME").map(|s| s.value.clone());
    etcd.password = get(settings, "LOCKSMITHD_ETCD_PASSWORD").map(|s| s.value.clone());
    etcd.group = get(settings, "LOCKSMITHD_GROUP").map(|s| s.value.trim().to_owned());
    Ok(etcd)
}
