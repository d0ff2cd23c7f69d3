//! OpenStack config drives: a filesystem (iso9660 or vfat) labelled `config-2` holding
//! `openstack/latest/user_data` (the Ignition config) and `openstack/latest/meta_data.json`
//! (`hostname`, `public_keys`: an object of name → key).
//!
//! Contract: the caller mounts the drive (read-only) and passes the mount point. A drive
//! without `user_data` is "no config"; an unreadable file is an error naming it.

use std::path::Path;

use crate::attributes::Attributes;
use crate::PlatformError;

/// The filesystem label of a config drive (`CONFIG-2` on vfat, where labels are upper case).
pub const LABELS: [&str; 2] = ["config-2", "CONFIG-2"];
/// User data inside the drive.
pub const USER_DATA: &str = "openstack/latest/user_data";
/// Metadata inside the drive.
pub const META_DATA: &str = "openstack/latest/meta_data.json";

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, PlatformError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PlatformError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `openstack/latest/user_data` of the drive mounted at `root`.
pub fn user_data(root: &Path) -> Result<Option<Vec<u8>>, PlatformError> {
    read_optional(&root.join(USER_DATA))
}

/// The hostname and keys of the drive mounted at `root` (empty without `meta_data.json`).
pub fn attributes(root: &Path) -> Result<Attributes, PlatformError> {
    let path = root.join(META_DATA);
    match read_optional(&path)? {
        Some(body) => parse_meta_data(&path.display().to_string(), &body),
        None => Ok(Attributes::default()),
    }
}

/// Parses OpenStack's `meta_data.json`; `what` names where it came from.
pub fn parse_meta_data(what: &str, body: &[u8]) -> Result<Attributes, PlatformError> {
    let bad = |reason: String| PlatformError::BadMetadata {
        what: what.to_string(),
        reason,
    };
    let (value, hostname) = crate::attributes::json_with_hostname(what, body)?;
    let ssh_keys = match value.get("public_keys") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Object(keys)) => {
            // Sorted by name, so the file is the same on every boot.
            let mut named: Vec<(&String, &serde_json::Value)> = keys.iter().collect();
            named.sort_by(|a, b| a.0.cmp(b.0));
            named
                .into_iter()
                .map(|(name, key)| {
                    key.as_str()
                        .map(|k| k.trim().to_string())
                        .ok_or_else(|| bad(format!("public_keys.{name} is not a string")))
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => return Err(bad("public_keys is not an object".into())),
    };
    Attributes { hostname, ssh_keys }.checked(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_drive_directory_gives_user_data_and_attributes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(user_data(dir.path()).unwrap(), None);
        assert_eq!(attributes(dir.path()).unwrap(), Attributes::default());
        let latest = dir.path().join("openstack/latest");
        std::fs::create_dir_all(&latest).unwrap();
        std::fs::write(
            latest.join("user_data"),
            br#"{"ignition":{"version":"3.4.0"}}"#,
        )
        .unwrap();
        std::fs::write(
            latest.join("meta_data.json"),
            br#"{"uuid":"u","hostname":"os-node","public_keys":{"zeta":"ssh-rsa Z","alpha":"ssh-rsa A"}}"#,
        )
        .unwrap();
        assert_eq!(
            user_data(dir.path()).unwrap().unwrap(),
            br#"{"ignition":{"version":"3.4.0"}}"#
        );
        let attrs = attributes(dir.path()).unwrap();
        assert_eq!(attrs.hostname.as_deref(), Some("os-node"));
        assert_eq!(attrs.ssh_keys, ["ssh-rsa A", "ssh-rsa Z"]);
    }

    #[test]
    fn malformed_meta_data_names_the_file() {
        let err = parse_meta_data(
            "/mnt/cd/openstack/latest/meta_data.json",
            br#"{"public_keys":[1]}"#,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("meta_data.json") && msg.contains("not an object"),
            "{msg}"
        );
    }
}
