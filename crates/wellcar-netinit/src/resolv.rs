//! `/etc/resolv.conf` for the initramfs.
//!
//! Contract: [`write_resolv_conf`] writes one `nameserver` line per distinct server, in the
//! order given (the kernel's `nameserver=` first, then `ip=` DNS fields, then DHCP), to a
//! temporary file beside `path` and renames it into place, so a reader never sees half a file.
//! Nothing is written when there is no server. The glibc resolver reads at most three servers;
//! all are written anyway.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct ResolvConfError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The file's text for `servers`, duplicates dropped.
pub fn resolv_conf_text(servers: &[Ipv4Addr]) -> String {
    let mut seen = Vec::new();
    let mut text = String::from("# written by wellcar-netinit in the initramfs\n");
    for server in servers {
        if !seen.contains(server) {
            seen.push(*server);
            text.push_str(&format!("nameserver {server}\n"));
        }
    }
    text
}

/// Writes `servers` to `path`; returns whether a file was written (false: no servers).
pub fn write_resolv_conf(path: &Path, servers: &[Ipv4Addr]) -> Result<bool, ResolvConfError> {
    if servers.is_empty() {
        return Ok(false);
    }
    let failed = |source| ResolvConfError {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, resolv_conf_text(servers)).map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_distinct_servers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/resolv.conf");
        let a = Ipv4Addr::new(10, 0, 0, 53);
        let b = Ipv4Addr::new(9, 9, 9, 9);
        assert!(write_resolv_conf(&path, &[a, b, a]).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# written by wellcar-netinit in the initramfs\nnameserver 10.0.0.53\nnameserver 9.9.9.9\n"
        );
        let empty = dir.path().join("none/resolv.conf");
        assert!(!write_resolv_conf(&empty, &[]).unwrap());
        assert!(!empty.exists());
    }

    #[test]
    fn error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let path = blocker.join("resolv.conf");
        let error = write_resolv_conf(&path, &[Ipv4Addr::LOCALHOST]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&format!("writing {}", path.display())),
            "{error}"
        );
    }
}
