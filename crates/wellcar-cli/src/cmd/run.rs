//! `wellcar run IMAGE`: boots a built image in QEMU with the serial console on this terminal
//! (crate `wellcar-vm`). Quit QEMU with Ctrl-A X.
//!
//! Without `--ignition`, the VM is provisioned with an Ignition config that lets `core` log in
//! over ssh with a key kept in `~/.cache/wellcar/ssh/id_ed25519` (made once by `ssh-keygen`)
//! and with the user's own `~/.ssh/id_*.pub`, and the ssh command printed names that key.

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use wellcar_vm::{choose_accel, Accel, Firmware, Machine, MachineConfig, LINK_LOCAL_NETWORK};

/// What `wellcar run` tells the user to type to log in.
/// Every `wellcar run` boots a VM with new host keys on the same port, so the command skips
/// the known-hosts check: otherwise the second run meets "REMOTE HOST IDENTIFICATION HAS
/// CHANGED".
fn ssh_command(port: u16, key: Option<&std::path::Path>) -> String {
    let key = key.map_or_else(String::new, |k| format!(" -i {}", k.display()));
    format!(
        "ssh -p {port}{key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
         core@127.0.0.1"
    )
}

/// Whether `core` can log in with `key`: sshd answers *and* logins are allowed (until
/// `systemd-user-sessions` has run, pam_nologin turns them away with "System is booting up").
fn core_can_log_in(port: u16, key: &std::path::Path) -> bool {
    wellcar_vm::core_ssh(port, key, 5)
        .arg("true")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Without a config of the user's: one authorizing the kept key (and `~/.ssh/id_*.pub`) for
/// `core`, written next to the key. Returns the config and the private key.
fn login_config() -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = wellcar_vm::cache_dir()
        .context("neither XDG_CACHE_HOME nor HOME is set: no place for the login key")?
        .join("ssh");
    let key = wellcar_vm::login_key(&dir).context("making the login key")?;
    let home_ssh = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".ssh"))
        .unwrap_or_default();
    let keys = wellcar_vm::authorized_keys(&key, &home_ssh)?;
    let config = dir.join("login.ign");
    std::fs::write(&config, wellcar_vm::core_login_config(&keys))
        .with_context(|| format!("writing {}", config.display()))?;
    Ok((config, key.private))
}

/// Options of `wellcar run`.
#[derive(Debug, clap::Args)]
pub struct Opts {
    /// The qcow2 (or raw) image, e.g. `out/wellcar.qcow2`; it is never modified.
    pub image: PathBuf,
    /// Boot through UEFI (OVMF) instead of BIOS.
    #[arg(long)]
    pub uefi: bool,
    /// Ignition config passed over fw_cfg as `opt/org.flatcar-linux/config`. Without it, a
    /// config that lets `core` log in with the key in `~/.cache/wellcar/ssh` (and with
    /// `~/.ssh/id_*.pub`) is passed.
    #[arg(long)]
    pub ignition: Option<PathBuf>,
    /// Host loopback port forwarded to the guest's ssh (default 2222; 0 picks a free one).
    #[arg(long, default_value_t = 2222)]
    pub ssh_port: u16,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,
    /// Grow the VM's disk to this many GiB (ROOT fills it on first boot).
    #[arg(long)]
    pub disk_gib: Option<u64>,
    /// Let the guest reach a host loopback service: `GUEST_IP:PORT=HOST_PORT`, e.g.
    /// `10.0.2.100:8080=8080` makes the update server on 127.0.0.1:8080 answer at
    /// http://10.0.2.100:8080 inside the VM (repeatable; nothing else is reachable). Each guest
    /// connection gets its own `socat` relay, so TLS and servers that close connections work.
    /// Addresses in 169.254.0.0/16 (a cloud metadata service) put the VM on that network
    /// instead of 10.0.2.0/24; the two cannot be mixed.
    #[arg(long = "guest-forward", value_parser = parse_guest_forward)]
    pub guest_forwards: Vec<(String, u16)>,
    /// Provision as on this platform (`ignition.platform.id=ID` for the guest's /init): qemu,
    /// metal, openstack, aws (ec2), gcp, digitalocean. fw_cfg configs (`--ignition`) are read
    /// on qemu only; metadata platforms read http://169.254.169.254, so pair them with
    /// `--guest-forward 169.254.169.254:80=PORT` (or `--kernel-arg wellcar.metadata.url=URL`).
    #[arg(long, value_parser = parse_platform)]
    pub platform: Option<String>,
    /// An argument for the guest's /init, e.g. `ignition.config.url=http://10.0.2.100:8080/c.ign`
    /// (repeatable; passed over fw_cfg and read on first boot, after the kernel's own line).
    #[arg(long = "kernel-arg")]
    pub kernel_args: Vec<String>,
    /// Attach an OpenStack config drive made from DIR (which holds
    /// `openstack/latest/user_data`, optionally `openstack/latest/meta_data.json`): a FAT image
    /// labelled CONFIG-2, read by `--platform openstack`.
    #[arg(long, value_name = "DIR")]
    pub config_drive: Option<PathBuf>,
    /// Put this ISO (e.g. `out/wellcar_iso_image.iso`, the live system) in a CD drive. The
    /// disk boots first when it is bootable, so give a blank disk (`qemu-img create -f qcow2
    /// blank.qcow2 4G`) to install onto, e.g. with `--kernel-arg wellcar.inst.install_dev=vda`.
    #[arg(long, value_name = "FILE")]
    pub iso: Option<PathBuf>,
}

/// Checks a platform id against the ones the guest knows.
fn parse_platform(s: &str) -> Result<String, String> {
    wellcar_platform::Platform::parse(s, "--platform")
        .map(|p| p.id().to_string())
        .map_err(|e| e.to_string())
}

/// Parses `GUEST_IP:PORT=HOST_PORT`.
fn parse_guest_forward(s: &str) -> Result<(String, u16), String> {
    let (guest, host) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected GUEST_IP:PORT=HOST_PORT"))?;
    let (ip, port) = guest
        .rsplit_once(':')
        .ok_or_else(|| format!("`{guest}`: expected GUEST_IP:PORT"))?;
    ip.parse::<std::net::Ipv4Addr>()
        .map_err(|e| format!("`{ip}`: {e}"))?;
    port.parse::<u16>()
        .map_err(|e| format!("guest port `{port}`: {e}"))?;
    let host = host
        .parse::<u16>()
        .map_err(|e| format!("host port `{host}`: {e}"))?;
    Ok((guest.to_string(), host))
}

/// The user network that holds every forwarded guest address: QEMU's default `10.0.2.0/24`
/// (`None`), or [`LINK_LOCAL_NETWORK`] for a metadata service at `169.254.169.254`.
fn user_network(forwards: &[(String, u16)]) -> anyhow::Result<Option<&'static str>> {
    let link_local = forwards
        .iter()
        .filter(|(guest, _)| guest.starts_with("169.254."))
        .count();
    match link_local {
        0 => Ok(None),
        n if n == forwards.len() => Ok(Some(LINK_LOCAL_NETWORK)),
        _ => anyhow::bail!(
            "--guest-forward: addresses in 169.254.0.0/16 and outside it cannot be mixed \
             (QEMU's user network is one range)"
        ),
    }
}

/// Runs `wellcar run`.
pub fn run(opts: Opts) -> anyhow::Result<ExitCode> {
    let kernel = opts
        .image
        .parent()
        .map(|d| d.join("vmlinuz"))
        .filter(|k| k.is_file());
    let accel = match &kernel {
        Some(k) => choose_accel(k),
        None => Accel::Tcg,
    };
    let mut cfg = MachineConfig::new(&opts.image, accel);
    cfg.firmware = if opts.uefi {
        Firmware::Uefi
    } else {
        Firmware::Bios
    };
    let login_key = match opts.ignition {
        Some(config) => {
            cfg.ignition = Some(config);
            None
        }
        None => {
            let (config, key) = login_config()?;
            cfg.ignition = Some(config);
            Some(key)
        }
    };
    cfg.ssh_port = Some(opts.ssh_port);
    cfg.memory_mib = opts.memory;
    cfg.disk_size = opts.disk_gib.map(|g| g << 30);
    cfg.network = user_network(&opts.guest_forwards)?.map(str::to_owned);
    cfg.guest_relays = opts.guest_forwards;
    cfg.kernel_args = opts
        .platform
        .iter()
        .map(|p| format!("ignition.platform.id={p}"))
        .chain(opts.kernel_args)
        .collect();
    cfg.config_drive = opts.config_drive;
    cfg.cdrom = opts.iso;
    cfg.interactive = true;
    let mut vm =
        Machine::spawn(&cfg).with_context(|| format!("booting {}", opts.image.display()))?;
    let port = vm.ssh_port.unwrap_or(opts.ssh_port);
    let ssh = ssh_command(port, login_key.as_deref());
    console_note(&format!(
        "VM started ({}, {}): serial console below, quit with Ctrl-A X; \
         `{ssh}` once sshd is up",
        accel.as_str(),
        if opts.uefi { "UEFI" } else { "BIOS" },
    ));
    std::thread::spawn(move || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while !ssh_banner(addr, Duration::from_secs(3)) {
            std::thread::sleep(Duration::from_secs(1));
        }
        // With the key made here, wait until a login really works; with the user's own
        // config, the banner is all that can be checked.
        if let Some(key) = &login_key {
            while !core_can_log_in(port, key) {
                std::thread::sleep(Duration::from_secs(1));
            }
            console_note(&format!("ssh is up, core can log in: {ssh}"));
        } else {
            console_note(&format!("ssh is up: {ssh}"));
        }
    });
    let status = vm.wait_exit().context("waiting for QEMU")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A line on stderr between the serial console's output (the terminal is raw: `\r\n`).
fn console_note(text: &str) {
    eprint!("\r\n[wellcar] {text}\r\n");
}

/// Whether an SSH server answers at `addr`: QEMU's port forward accepts connections even when
/// the guest does not listen, so only the banner ("SSH-2.0-...") counts.
fn ssh_banner(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    if stream.set_read_timeout(Some(timeout)).is_err() {
        return false;
    }
    // RFC 4253: the identification line comes within the first 255 bytes.
    let mut got = [0_u8; 255];
    let mut len = 0;
    while len < got.len() {
        match stream.read(&mut got[len..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => len += n,
        }
        if got[..len].windows(4).any(|w| w == b"SSH-") {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn only_a_banner_means_ssh_is_up() {
        let serve = |reply: &'static [u8]| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                s.write_all(reply).unwrap();
                // Held open without more data, like a real sshd waiting for the client.
                std::thread::sleep(Duration::from_secs(5));
            });
            addr
        };
        let t = Duration::from_millis(500);
        assert!(ssh_banner(serve(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n"), t));
        // QEMU's forward: accepted, then nothing from the guest.
        assert!(!ssh_banner(serve(b""), t));
        assert!(!ssh_banner(serve(b"HTTP/1.1 400 Bad Request\r\n"), t));
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(!ssh_banner(closed, t));
    }

    #[test]
    fn the_printed_command_names_the_key_and_skips_known_hosts() {
        let key = std::path::Path::new("/root/.cache/wellcar/ssh/id_ed25519");
        assert_eq!(
            ssh_command(2222, Some(key)),
            "ssh -p 2222 -i /root/.cache/wellcar/ssh/id_ed25519 -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null core@127.0.0.1"
        );
        assert!(!ssh_command(2222, None).contains(" -i "));
        // Nothing listens: no login (ssh from openssh-client runs and fails).
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(!core_can_log_in(closed.port(), key));
    }

    #[test]
    fn platforms_are_checked_and_ec2_is_aws() {
        assert_eq!(parse_platform("ec2").unwrap(), "aws");
        assert_eq!(parse_platform("openstack").unwrap(), "openstack");
        let err = parse_platform("azure").unwrap_err();
        assert!(
            err.contains("azure") && err.contains("digitalocean"),
            "{err}"
        );
    }

    #[test]
    fn metadata_forwards_move_the_vm_to_the_link_local_network() {
        let forward = |g: &str| (g.to_owned(), 8080_u16);
        assert_eq!(user_network(&[]).unwrap(), None);
        assert_eq!(user_network(&[forward("10.0.2.100:8080")]).unwrap(), None);
        assert_eq!(
            user_network(&[forward("169.254.169.254:80")]).unwrap(),
            Some(LINK_LOCAL_NETWORK)
        );
        let mixed = user_network(&[forward("169.254.169.254:80"), forward("10.0.2.100:80")])
            .unwrap_err()
            .to_string();
        assert!(mixed.contains("cannot be mixed"), "{mixed}");
    }

    #[test]
    fn guest_forwards_parse_and_name_bad_parts() {
        assert_eq!(
            parse_guest_forward("10.0.2.100:8080=18080").unwrap(),
            ("10.0.2.100:8080".into(), 18080)
        );
        assert!(parse_guest_forward("10.0.2.100:8080")
            .unwrap_err()
            .contains("GUEST_IP:PORT=HOST_PORT"));
        assert!(parse_guest_forward("host:80=1")
            .unwrap_err()
            .contains("`host`"));
        assert!(parse_guest_forward("10.0.2.100:80=x")
            .unwrap_err()
            .contains("host port"));
    }
}
