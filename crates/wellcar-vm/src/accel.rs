//! Choosing between KVM and TCG.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// QEMU's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// How long a KVM guest gets to print a panic from a kernel booted without a root filesystem.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// KVM if `/dev/kvm` exists and a probe boot of `kernel` under KVM reaches its final panic,
/// else TCG. `WELLCAR_ACCEL=kvm|tcg` overrides.
pub fn choose_accel(kernel: &Path) -> Accel {
    match std::env::var("WELLCAR_ACCEL").as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    if !Path::new("/dev/kvm").exists() {
        return Accel::Tcg;
    }
    let cache = cache_file();
    if let Some(c) = &cache {
        if let Ok(s) = std::fs::read_to_string(c) {
            return if s.trim() == "kvm" {
                Accel::Kvm
            } else {
                Accel::Tcg
            };
        }
    }
    let accel = if probe_kvm(kernel) {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    tracing::info!(accel = accel.as_str(), "probed KVM");
    if let Some(c) = cache {
        let _ = std::fs::create_dir_all(c.parent().expect("cache file has a parent"));
        let _ = std::fs::write(c, accel.as_str());
    }
    accel
}

fn cache_file() -> Option<PathBuf> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .unwrap_or("");
    let flags = cpu.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()?;
    let mut h = Sha256::new();
    for part in [
        model.as_bytes(),
        flags.as_bytes(),
        kernel.as_bytes(),
        &qemu.stdout,
    ] {
        h.update(part);
    }
    let key = hex::encode(&h.finalize()[..8]);
    Some(crate::login::cache_dir()?.join(format!("accel-{key}")))
}

fn probe_kvm(kernel: &Path) -> bool {
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-machine",
            "q35",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio", "-append", "console=ttyS0 panic=-1"])
        .arg("-kernel")
        .arg(kernel)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let mut out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = out.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&buf).contains("Kernel panic") {
                let _ = tx.send(true);
                return;
            }
        }
        let _ = tx.send(false);
    });
    let start = Instant::now();
    let ok = rx
        .recv_timeout(PROBE_TIMEOUT.saturating_sub(start.elapsed()))
        .unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_wins() {
        // The env var is read first, before any probing; a missing kernel proves no probe ran.
        std::env::set_var("WELLCAR_ACCEL", "tcg");
        assert_eq!(choose_accel(Path::new("/nonexistent")), Accel::Tcg);
        std::env::remove_var("WELLCAR_ACCEL");
        assert_eq!(Accel::Kvm.as_str(), "kvm");
    }
}
