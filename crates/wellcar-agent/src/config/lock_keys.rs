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

/// locksmith's `LOCKSMITHD_*` settings as update.conf sets them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EtcdLockSettings {
    /// Endpoints, TLS files, credentials and group, in `wellcar-locksmith`'s type (the one
    /// `locksmithctl` uses too).
    pub locksmith: wellcar_locksmith::LocksmithSettings,
    /// Whether `LOCKSMITHD_ENDPOINT` was set (what `best-effort` looks at).
    pub endpoint_configured: bool,
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
        etcd.locksmith.etcd.endpoints = s
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
    etcd.locksmith.etcd.ca_file = path("LOCKSMITHD_ETCD_CAFILE")?;
    etcd.locksmith.etcd.cert_file = path("LOCKSMITHD_ETCD_CERTFILE")?;
    etcd.locksmith.etcd.key_file = path("LOCKSMITHD_ETCD_KEYFILE")?;
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
    etcd.locksmith.etcd.username =
        get(settings, "LOCKSMITHD_ETCD_USERNAME").map(|s| s.value.clone());
    etcd.locksmith.etcd.password =
        get(settings, "LOCKSMITHD_ETCD_PASSWORD").map(|s| s.value.clone());
    etcd.locksmith.group = get(settings, "LOCKSMITHD_GROUP").map(|s| s.value.trim().to_owned());
    Ok(etcd)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, RebootStrategy};
    use crate::reboot_lock::{lock_kind, LockKind};

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/wellcar/update.conf")).map_err(|e| e.to_string())
    }

    #[test]
    fn fleetlock_keys_and_the_group_default() {
        let config =
            parse("GROUP=beta\nREBOOT_STRATEGY=fleetlock\nFLEETLOCK_URL=http://10.0.0.1:8080/fleetlock/\n")
                .unwrap();
        assert_eq!(config.reboot_strategy, RebootStrategy::FleetLock);
        assert_eq!(
            config.fleetlock.url.as_deref(),
            Some("http://10.0.0.1:8080/fleetlock")
        );
        assert_eq!(config.fleetlock.group, "beta", "defaults to GROUP");
        assert_eq!(lock_kind(&config), Some(LockKind::FleetLock));
        let config = parse(
            "GROUP=beta\nREBOOT_STRATEGY=FleetLock\nFLEETLOCK_URL=https://lock.example\nFLEETLOCK_GROUP=workers\n",
        )
        .unwrap();
        assert_eq!(config.fleetlock.group, "workers");
    }

    /// Each bad value names the file, the line and the key.
    #[test]
    fn bad_fleetlock_values_name_file_line_and_key() {
        let err = parse("GROUP=x\nREBOOT_STRATEGY=fleetlock\n").unwrap_err();
        assert!(
            err.contains("update.conf:2")
                && err.contains("REBOOT_STRATEGY")
                && err.contains("FLEETLOCK_URL"),
            "{err}"
        );
        let err = parse("FLEETLOCK_URL=ftp://lock\n").unwrap_err();
        assert!(
            err.contains("update.conf:1") && err.contains("FLEETLOCK_URL"),
            "{err}"
        );
        let err = parse("FLEETLOCK_URL=http://\n").unwrap_err();
        assert!(err.contains("no host"), "{err}");
        let err = parse("\nFLEETLOCK_GROUP=a_b\n").unwrap_err();
        assert!(
            err.contains("update.conf:2") && err.contains("FLEETLOCK_GROUP"),
            "{err}"
        );
        // A GROUP that is no FleetLock group is fine for Omaha, but not as the lock group.
        assert!(parse("GROUP=my_group\n").is_ok());
        let err = parse("GROUP=my_group\nREBOOT_STRATEGY=fleetlock\nFLEETLOCK_URL=http://l\n")
            .unwrap_err();
        assert!(
            err.contains("update.conf:1")
                && err.contains("GROUP")
                && err.contains("set FLEETLOCK_GROUP"),
            "{err}"
        );
        assert!(parse(
            "GROUP=my_group\nREBOOT_STRATEGY=fleetlock\nFLEETLOCK_URL=http://l\nFLEETLOCK_GROUP=g\n"
        )
        .is_ok());
    }

    #[test]
    fn unknown_strategy_names_the_valid_ones() {
        let err = parse("REBOOT_STRATEGY=etcd\n").unwrap_err();
        assert!(
            err.contains("REBOOT_STRATEGY")
                && err.contains("valid: reboot, off, etcd-lock, fleetlock, best-effort"),
            "{err}"
        );
    }

    #[test]
    fn locksmith_keys() {
        let config = parse("REBOOT_STRATEGY=etcd-lock\n").unwrap();
        assert_eq!(
            config.etcd_lock.locksmith.etcd.endpoints,
            wellcar_locksmith::DEFAULT_ENDPOINTS
        );
        assert_eq!(
            config.etcd_lock.locksmith.group, None,
            "locksmith's global semaphore"
        );
        assert_eq!(lock_kind(&config), Some(LockKind::Etcd));
        let config = parse(
            "REBOOT_STRATEGY=etcd-lock\nLOCKSMITHD_ENDPOINT=http://10.0.0.2:2379, https://10.0.0.3:2379\n\
             LOCKSMITHD_ETCD_CAFILE=/etc/ssl/etcd/ca.pem\nLOCKSMITHD_ETCD_CERTFILE=/etc/ssl/etcd/c.pem\n\
             LOCKSMITHD_ETCD_KEYFILE=/etc/ssl/etcd/k.pem\nLOCKSMITHD_GROUP=db\n\
             LOCKSMITHD_ETCD_USERNAME=root\nLOCKSMITHD_ETCD_PASSWORD=hunter2\n",
        )
        .unwrap();
        let (etcd, group) = (
            &config.etcd_lock.locksmith.etcd,
            &config.etcd_lock.locksmith.group,
        );
        assert_eq!(
            etcd.endpoints,
            ["http://10.0.0.2:2379", "https://10.0.0.3:2379"]
        );
        assert_eq!(
            etcd.ca_file.as_deref(),
            Some(Path::new("/etc/ssl/etcd/ca.pem"))
        );
        assert_eq!(
            etcd.cert_file.as_deref(),
            Some(Path::new("/etc/ssl/etcd/c.pem"))
        );
        assert_eq!(
            etcd.key_file.as_deref(),
            Some(Path::new("/etc/ssl/etcd/k.pem"))
        );
        assert_eq!(group.as_deref(), Some("db"));
        assert_eq!(etcd.username.as_deref(), Some("root"));
        assert_eq!(etcd.password.as_deref(), Some("hunter2"));
        assert!(!format!("{config:?}").contains("hunter2"));

        let err = parse("\n\nLOCKSMITHD_ENDPOINT=http://a:2379,etcd:2379\n").unwrap_err();
        assert!(
            err.contains("update.conf:3")
                && err.contains("LOCKSMITHD_ENDPOINT")
                && err.contains("\"etcd:2379\""),
            "{err}"
        );
        let err = parse("LOCKSMITHD_ETCD_CERTFILE=/c.pem\n").unwrap_err();
        assert!(
            err.contains("LOCKSMITHD_ETCD_KEYFILE must be set too"),
            "{err}"
        );
        let err = parse("LOCKSMITHD_ETCD_CAFILE=ca.pem\n").unwrap_err();
        assert!(
            err.contains("LOCKSMITHD_ETCD_CAFILE") && err.contains("absolute"),
            "{err}"
        );
        let err = parse("LOCKSMITHD_ETCD_PASSWORD=hunter2\n").unwrap_err();
        assert!(
            err.contains("LOCKSMITHD_ETCD_USERNAME must be set too"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    /// `best-effort`: etcd-lock when `LOCKSMITHD_ENDPOINT` is set, plain reboot otherwise.
    #[test]
    fn best_effort_uses_etcd_only_when_configured() {
        let config = parse("REBOOT_STRATEGY=best-effort\n").unwrap();
        assert_eq!(config.reboot_strategy, RebootStrategy::BestEffort);
        assert_eq!(lock_kind(&config), None);
        let config =
            parse("REBOOT_STRATEGY=best-effort\nLOCKSMITHD_ENDPOINT=http://127.0.0.1:2379\n")
                .unwrap();
        assert_eq!(lock_kind(&config), Some(LockKind::Etcd));
        assert_eq!(lock_kind(&parse("REBOOT_STRATEGY=off\n").unwrap()), None);
        assert_eq!(lock_kind(&parse("REBOOT_STRATEGY=reboot\n").unwrap()), None);
    }

    #[test]
    fn lock_retry_delay() {
        assert_eq!(
            parse("WELLCAR_LOCK_RETRY_DELAY=300ms\n")
                .unwrap()
                .lock_retry_delay,
            std::time::Duration::from_millis(300)
        );
        assert_eq!(
            Config::default().lock_retry_delay,
            super::DEFAULT_LOCK_RETRY_DELAY
        );
        let err = parse("WELLCAR_LOCK_RETRY_DELAY=0s\n").unwrap_err();
        assert!(
            err.contains("WELLCAR_LOCK_RETRY_DELAY") && err.contains("greater than zero"),
            "{err}"
        );
    }
}
