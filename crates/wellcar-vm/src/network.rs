//! A machine's network: QEMU user-mode networking with `restrict=on`, so the guest reaches only
//! what is forwarded to it.
//!
//! Contract ([`netdev`] builds the `-netdev` value from a [`MachineConfig`]):
//! - `hostfwd`s from host loopback ports: the guest's ssh and [`MachineConfig::host_forwards`];
//! - [`MachineConfig::guest_forwards`]: plain `guestfwd`s, one host connection for the
//!   machine's lifetime;
//! - [`MachineConfig::guest_relays`]: `guestfwd`s that run [`RELAY`] per guest connection, so
//!   the host server sees one TCP connection per guest connection (TLS, servers that close
//!   connections); refused by name when [`RELAY`] is not installed ([`check_relays`]);
//! - [`MachineConfig::network`]: the address range (`net=`), e.g. [`LINK_LOCAL_NETWORK`];
//! - [`MachineConfig::network_boot`]: QEMU's TFTP server and the DHCP boot file for PXE.

use std::path::PathBuf;

use crate::machine::{io, MachineConfig, VmError};

/// The user network for a guest that must reach a cloud metadata service at its link-local
/// address (`169.254.169.254`); see [`MachineConfig::network`].
pub const LINK_LOCAL_NETWORK: &str = "169.254.0.0/16";

/// The program QEMU runs per guest connection of a [`MachineConfig::guest_relays`] entry.
pub(crate) const RELAY: &str = "socat";

/// Booting from the network (PXE) before the disk: QEMU's own TFTP server serves `tftp_dir`
/// and its DHCP offers `bootfile`, which the NIC's iPXE ROM (Debian `ipxe-qemu`) loads; the
/// firmware tries the network once, later boots (reboots) go to the disk.
#[derive(Debug, Clone)]
pub struct NetworkBoot {
    /// The TFTP root.
    pub tftp_dir: PathBuf,
    /// The file DHCP names (an iPXE script or a kernel), relative to `tftp_dir`.
    pub bootfile: String,
}

/// `name` found in a directory of `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Refuses relays when [`RELAY`] is missing: QEMU starts them itself, per guest connection, so
/// a missing one would only show as refused connections inside the guest.
pub(crate) fn check_relays(relays: &[(String, u16)]) -> Result<(), VmError> {
    if !relays.is_empty() && on_path(RELAY).is_none() {
        return Err(VmError::Missing {
            what: "socat (relays guest connections to host services)",
            path: RELAY.into(),
            hint: "apt-get install socat",
        });
    }
    Ok(())
}

/// The `-netdev` value for `cfg`, with the guest's ssh forwarded from `ssh_port`.
pub(crate) fn netdev(cfg: &MachineConfig, ssh_port: Option<u16>) -> Result<String, VmError> {
    let mut netdev = String::from("user,id=net0,restrict=on");
    if let Some(net) = &cfg.network {
        netdev.push_str(&format!(",net={net}"));
    }
    if let Some(p) = ssh_port {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{p}-:22"));
    }
    for (host_port, guest_port) in &cfg.host_forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"));
    }
    for (guest, host_port) in &cfg.guest_forwards {
        netdev.push_str(&format!(",guestfwd=tcp:{guest}-tcp:127.0.0.1:{host_port}"));
    }
    for (guest, host_port) in &cfg.guest_relays {
        netdev.push_str(&format!(
            ",guestfwd=tcp:{guest}-cmd:{RELAY} STDIO TCP:127.0.0.1:{host_port}"
        ));
    }
    if let Some(boot) = &cfg.network_boot {
        let tftp = io(boot.tftp_dir.canonicalize(), "opening", &boot.tftp_dir)?;
        netdev.push_str(&format!(
            ",tftp={},bootfile={}",
            tftp.display(),
            boot.bootfile
        ));
    }
    Ok(netdev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Machine;
    use crate::Accel;

    #[test]
    fn relays_need_socat_on_path() {
        assert!(on_path("sh").is_some(), "sh is on every PATH");
        assert!(on_path("wellcar-no-such-relay").is_none());
        if on_path(RELAY).is_some() {
            return;
        }
        // Without socat the machine is refused before anything is created.
        let mut cfg = MachineConfig::new("/nonexistent/wellcar.qcow2", Accel::Tcg);
        cfg.guest_relays = vec![("10.0.2.100:80".into(), 8080)];
        let err = Machine::spawn(&cfg).unwrap_err().to_string();
        assert!(err.contains("socat"), "{err}");
    }

    #[test]
    fn the_netdev_carries_every_forward_relay_and_the_pxe_boot_file() {
        let tftp = tempfile::tempdir().unwrap();
        let mut cfg = MachineConfig::new("disk.qcow2", Accel::Tcg);
        cfg.network = Some(LINK_LOCAL_NETWORK.into());
        cfg.host_forwards = vec![(9000, 80)];
        cfg.guest_forwards = vec![("169.254.0.100:8080".into(), 8081)];
        cfg.guest_relays = vec![("169.254.169.254:80".into(), 8082)];
        cfg.network_boot = Some(NetworkBoot {
            tftp_dir: tftp.path().into(),
            bootfile: "boot.ipxe".into(),
        });
        let value = netdev(&cfg, Some(2222)).unwrap();
        assert_eq!(
            value,
            format!(
                "user,id=net0,restrict=on,net=169.254.0.0/16,\
                 hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:9000-:80,\
                 guestfwd=tcp:169.254.0.100:8080-tcp:127.0.0.1:8081,\
                 guestfwd=tcp:169.254.169.254:80-cmd:socat STDIO TCP:127.0.0.1:8082,\
                 tftp={},bootfile=boot.ipxe",
                tftp.path().canonicalize().unwrap().display()
            )
        );
        cfg.network_boot = Some(NetworkBoot {
            tftp_dir: "/nonexistent/tftp".into(),
            bootfile: "boot.ipxe".into(),
        });
        let err = netdev(&cfg, None).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/tftp"), "{err}");
    }
}
