//! `resolv.conf` for the initramfs: `nameserver` lines (at most three, as glibc and musl read)
//! from every configured link in order, duplicates dropped, and `search` with the first domain.

use std::path::Path;

use crate::{Configured, NetError};

/// The file's text.
pub fn render(configured: &[Configured]) -> String {
    let mut servers = Vec::new();
    for c in configured {
        for s in &c.dns {
            if !servers.contains(s) {
                servers.push(*s);
            }
        }
    }
    let mut text = String::from("# written by wellcar-init for first-boot provisioning\n");
    if let Some(domain) = configured.iter().find_map(|c| c.domain.as_deref()) {
        text.push_str(&format!("search {domain}\n"));
    }
    for s in servers.iter().take(3) {
        text.push_str(&format!("nameserver {s}\n"));
    }
    text
}

/// Writes [`render`] to `path` (creating its directory).
pub fn write(path: &Path, configured: &[Configured]) -> Result<(), NetError> {
    let err = |source| NetError::Resolv {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(path, render(configured)).map_err(err)
}
