//! A private `dbus-daemon` on a unix socket in a directory the caller owns, killed on drop.
//! Its configuration is session-like (EXTERNAL auth, anyone may own and call anything,
//! monitoring allowed) unless the caller includes a policy file, which then applies on top.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running private bus.
pub struct PrivateBus {
    child: Child,
    address: String,
}

impl PrivateBus {
    /// A permissive bus with its socket and config in `dir`.
    pub fn start(dir: &Path) -> Self {
        Self::with_policy(dir, None)
    }

    /// A bus whose default policy allows everything, then `policy` (a system.d-style file)
    /// included after it, as the system bus includes `system.d/*.conf`.
    pub fn with_policy(dir: &Path, policy: Option<&Path>) -> Self {
        let dbus_daemon = crate::tools::require("dbus-daemon");
        let socket = dir.join("bus.socket");
        let include = policy
            .map(|p| format!("  <include>{}</include>\n", p.display()))
            .unwrap_or_default();
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
    <allow user="*"/>
  </policy>
{include}</busconfig>
"#,
            socket.display()
        );
        let config_path = dir.join("bus.conf");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(dbus_daemon)
            .arg(format!("--config-file={}", config_path.display()))
            .args(["--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // The daemon prints its address once it listens.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("unix:"),
            "dbus-daemon did not print its address (config {}): {line:?}",
            config_path.display()
        );
        Self {
            child,
            address: line.trim().to_owned(),
        }
    }

    /// The bus address (`unix:path=…,guid=…`).
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
