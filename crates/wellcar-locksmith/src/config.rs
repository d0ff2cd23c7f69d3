//! How to reach etcd: locksmith's settings.
//!
//! | locksmithctl flag | locksmithd / update.conf | locksmithctl env | field |
//! |---|---|---|---|
//! | `-endpoint` (repeatable, comma list) | `LOCKSMITHD_ENDPOINT` | `LOCKSMITHCTL_ENDPOINT` | [`EtcdConfig::endpoints`] |
//! | `-etcd-cafile` | `LOCKSMITHD_ETCD_CAFILE` | `LOCKSMITHCTL_ETCD_CAFILE` | [`EtcdConfig::ca_file`] |
//! | `-etcd-certfile` | `LOCKSMITHD_ETCD_CERTFILE` | `LOCKSMITHCTL_ETCD_CERTFILE` | [`EtcdConfig::cert_file`] |
//! | `-etcd-keyfile` | `LOCKSMITHD_ETCD_KEYFILE` | `LOCKSMITHCTL_ETCD_KEYFILE` | [`EtcdConfig::key_file`] |
//! | `-etcd-username` | `LOCKSMITHD_ETCD_USERNAME` | `LOCKSMITHCTL_ETCD_USERNAME` | [`EtcdConfig::username`] |
//! | `-etcd-password` | `LOCKSMITHD_ETCD_PASSWORD` | `LOCKSMITHCTL_ETCD_PASSWORD` | [`EtcdConfig::password`] |
//! | `-group` | `LOCKSMITHD_GROUP` | `LOCKSMITHCTL_GROUP` | [`LocksmithSettings::group`] |
//!
//! An empty value counts as unset (locksmith's `flagsFromEnv`).

use std::path::PathBuf;

/// locksmith's default endpoints.
pub const DEFAULT_ENDPOINTS: &[&str] = &["http://127.0.0.1:2379", "http://127.0.0.1:4001"];

/// How to reach etcd.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs, tried in order on connection failures.
    pub endpoints: Vec<String>,
    /// Extra trusted CA (PEM), on top of the system store.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's `--client-cert-auth`; needs [`Self::key_file`].
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM).
    pub key_file: Option<PathBuf>,
    /// Basic-auth user (etcd's v2 auth), sent when set.
    pub username: Option<String>,
    /// Basic-auth password.
    pub password: Option<String>,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for EtcdConfig {
    /// [`DEFAULT_ENDPOINTS`], no TLS files, no auth.
    fn default() -> Self {
        Self::with_endpoints(DEFAULT_ENDPOINTS.iter().copied())
    }
}

impl EtcdConfig {
    /// These endpoints, no TLS files, no auth.
    pub fn with_endpoints<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
        }
    }
}

/// locksmith's settings: where etcd is and which group's semaphore to use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocksmithSettings {
    /// How to reach etcd.
    pub etcd: EtcdConfig,
    /// The lock group (`None`: the default semaphore).
    pub group: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_not_in_debug_output() {
        let c = EtcdConfig {
            password: Some("hunter2".into()),
            ..EtcdConfig::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
