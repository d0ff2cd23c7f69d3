//! What a metadata service says about the machine (hostname, ssh keys), and how it is applied.
//!
//! Contract: [`Attributes::to_config`] turns them into an Ignition config writing
//! `/etc/hostname` (mode 0644, first label kept whole, like afterburn's `--hostname`) and
//! adding the keys to user `core` (like afterburn's `--ssh-keys=core`). The caller merges the
//! user's config over it (`wellcar_ignition::merge(attributes, user)`), so a hostname file in
//! the user's config wins and its keys for `core` are added to these; one apply writes all.

use wellcar_ignition::Config;

use crate::PlatformError;

/// Hostname and ssh keys from a platform.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// The hostname, when the platform gives one.
    pub hostname: Option<String>,
    /// Public keys for user `core`.
    pub ssh_keys: Vec<String>,
}

/// Longest hostname Linux takes (`HOST_NAME_MAX`).
const HOST_NAME_MAX: usize = 64;

impl Attributes {
    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.hostname.is_none() && self.ssh_keys.is_empty()
    }

    /// DigitalOcean's `metadata/v1.json` (`hostname`, `public_keys` array); `what` names it.
    pub fn from_digitalocean_json(what: &str, body: &[u8]) -> Result<Attributes, PlatformError> {
        let bad = |reason: String| PlatformError::BadMetadata {
            what: what.to_string(),
            reason,
        };
        let (value, hostname) = json_with_hostname(what, body)?;
        let ssh_keys = match value.get("public_keys") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(keys)) => keys
                .iter()
                .map(|k| {
                    k.as_str()
                        .map(|s| s.trim().to_string())
                        .ok_or_else(|| bad("public_keys holds a non-string".into()))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad("public_keys is not an array".into())),
        };
        Attributes { hostname, ssh_keys }.checked(what)
    }

    /// Refuses a hostname Linux would not take; drops empty keys.
    pub fn checked(mut self, what: &str) -> Result<Attributes, PlatformError> {
        self.ssh_keys.retain(|k| !k.is_empty());
        if let Some(h) = &self.hostname {
            let h = h.trim();
            if h.is_empty() {
                self.hostname = None;
            } else if h.len() > HOST_NAME_MAX
                || h.bytes()
                    .any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
            {
                return Err(PlatformError::BadMetadata {
                    what: what.to_string(),
                    reason: format!("hostname {h:?} is not a valid host name"),
                });
            } else {
                self.hostname = Some(h.to_string());
            }
        }
        Ok(self)
    }

    /// An Ignition config applying these (see the module docs).
    pub fn to_config(&self) -> Config {
        let mut files = Vec::new();
        if let Some(hostname) = &self.hostname {
            files.push(serde_json::json!({
                "path": "/etc/hostname",
                "mode": 0o644,
                "overwrite": true,
                "contents": { "source": data_url(&format!("{hostname}\n")) },
            }));
        }
        let mut users = Vec::new();
        if !self.ssh_keys.is_empty() {
            users.push(serde_json::json!({ "name": "core", "sshAuthorizedKeys": self.ssh_keys }));
        }
        let json = serde_json::json!({
            "ignition": { "version": wellcar_ignition::LATEST_SPEC },
            "storage": { "files": files },
            "passwd": { "users": users },
        });
        wellcar_ignition::parse_config(json.to_string().as_bytes())
            .expect("a config built from checked attributes is valid")
            .config
    }
}

/// A percent-encoded `data:` URL of `text`.
fn data_url(text: &str) -> String {
    let mut url = String::from("data:,");
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// A JSON metadata document (DigitalOcean's `v1.json`, OpenStack's `meta_data.json`) and its
/// `hostname`; `what` names the document in errors.
pub(crate) fn json_with_hostname(
    what: &str,
    body: &[u8],
) -> Result<(serde_json::Value, Option<String>), PlatformError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| PlatformError::BadMetadata {
            what: what.to_string(),
            reason: format!("not JSON: {e}"),
        })?;
    let hostname = value
        .get("hostname")
        .and_then(|h| h.as_str())
        .map(str::to_string);
    Ok((value, hostname))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_become_a_hostname_file_and_core_keys() {
        let attrs = Attributes {
            hostname: Some("node-1.example".into()),
            ssh_keys: vec!["ssh-ed25519 AAAA a@b".into()],
        };
        let config = attrs.to_config();
        let file = &config.storage.files[0];
        assert_eq!(file.node.path, "/etc/hostname");
        let bytes = wellcar_ignition::fetch::fetch(&file.contents)
            .unwrap()
            .unwrap();
        assert_eq!(bytes, b"node-1.example\n");
        let user = &config.passwd.users[0];
        assert_eq!(user.name, "core");
        assert_eq!(user.ssh_authorized_keys, ["ssh-ed25519 AAAA a@b"]);
    }

    #[test]
    fn user_config_is_merged_over_the_attributes() {
        let attrs = Attributes {
            hostname: Some("from-metadata".into()),
            ssh_keys: vec!["ssh-rsa META".into()],
        };
        let user = wellcar_ignition::parse_config(
            br#"{"ignition":{"version":"3.4.0"},"passwd":{"users":[{"name":"core","sshAuthorizedKeys":["ssh-rsa USER"]}]},
                 "storage":{"files":[{"path":"/etc/hostname","overwrite":true,"contents":{"source":"data:,mine%0A"}}]}}"#,
        )
        .unwrap()
        .config;
        let merged = wellcar_ignition::merge(attrs.to_config(), user);
        assert_eq!(merged.storage.files.len(), 1);
        let bytes = wellcar_ignition::fetch::fetch(&merged.storage.files[0].contents)
            .unwrap()
            .unwrap();
        assert_eq!(bytes, b"mine\n");
        assert_eq!(
            merged.passwd.users[0].ssh_authorized_keys,
            ["ssh-rsa META", "ssh-rsa USER"]
        );
    }

    #[test]
    fn digitalocean_json_and_bad_hostnames() {
        let a = Attributes::from_digitalocean_json(
            "v1.json",
            br#"{"droplet_id":1,"hostname":"drop","public_keys":["ssh-rsa K1 x"]}"#,
        )
        .unwrap();
        assert_eq!(a.hostname.as_deref(), Some("drop"));
        assert_eq!(a.ssh_keys, ["ssh-rsa K1 x"]);
        let err =
            Attributes::from_digitalocean_json("v1.json", br#"{"hostname":"a b;rm"}"#).unwrap_err();
        assert!(err.to_string().contains("v1.json") && err.to_string().contains("a b;rm"));
        assert!(Attributes::from_digitalocean_json("v1.json", b"nope").is_err());
    }
}
