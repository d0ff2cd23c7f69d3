//! One QEMU machine booting a Wellcar image.
//!
//! [`Machine::spawn`] starts QEMU with the serial console on a pipe (captured into a buffer and
//! a log file) or on the terminal ([`MachineConfig::interactive`]). The built image is never
//! written: QEMU boots a qcow2 overlay in the machine's temp dir.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use wellcar_contract::{IoResultExt, PathIoError};

use wellcar_contract::CommandError;

use crate::accel::Accel;
pub use crate::extra_disk::ExtraDisk;
pub use crate::network::{NetworkBoot, LINK_LOCAL_NETWORK};

/// Failures starting or driving a VM; each names the file, pattern or process concerned.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A file QEMU needs is missing.
    #[error("{what} not found at {path}: {hint}")]
    Missing {
        /// What it is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        hint: &'static str,
    },
    /// An [`ExtraDisk`] serial is empty, too long for virtio (20 bytes), has characters other
    /// than `[A-Za-z0-9_-]`, or repeats another disk's.
    #[error("extra disk serial {0:?}: want 1-20 of [A-Za-z0-9_-], unique within the machine")]
    ExtraDiskSerial(String),
    /// More extra disks than free PCI slots after the automatic ones.
    #[error("{0} extra disks: at most 15 fit the machine's PCI slots 0x10-0x1e")]
    TooManyExtraDisks(usize),
    /// A command (qemu-img, ssh-keygen) failed, or QEMU could not be started.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Text was to be typed on a console that is the terminal's, not captured.
    #[error("the serial console of {dir} is interactive (on the terminal), not captured")]
    ConsoleNotCaptured {
        /// The machine's state directory.
        dir: PathBuf,
    },
    /// The console did not show the pattern in time.
    #[error("console did not show {pattern:?} within {seconds} s; last console lines:\n{tail}")]
    Timeout {
        /// The awaited text.
        pattern: String,
        /// The wait.
        seconds: u64,
        /// The end of the console log.
        tail: String,
    },
    /// QEMU exited while the console was awaited.
    #[error(
        "QEMU exited ({status}) before the console showed {pattern:?}; last console lines:\n{tail}"
    )]
    Exited {
        /// The awaited text.
        pattern: String,
        /// QEMU's status.
        status: String,
        /// The end of the console log.
        tail: String,
    },
    /// An I/O operation on a path failed.
    #[error(transparent)]
    Io(#[from] PathIoError),
}

/// Firmware to boot with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (legacy BIOS, GRUB from the MBR and BIOS-BOOT).
    Bios,
    /// OVMF (UEFI, GRUB from the ESP's removable-media path,
    /// [`wellcar_contract::esp::EFI_LOADER`]).
    Uefi,
}

/// OVMF firmware code (Debian package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF variable store template.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// How to run a machine.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// The built qcow2 image (never written).
    pub image: PathBuf,
    /// Resize the overlay to this many bytes before boot (ROOT grows into it).
    pub disk_size: Option<u64>,
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// Accelerator.
    pub accel: Accel,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// An Ignition config passed over fw_cfg.
    pub ignition: Option<PathBuf>,
    /// Host loopback port forwarded to the guest's ssh port (0 = pick a free one).
    pub ssh_port: Option<u16>,
    /// `guestfwd`s: (guest IP:port inside 10.0.2.0/24, host loopback port).
    pub guest_forwards: Vec<(String, u16)>,
    /// `guestfwd`s run per guest connection: (guest IP:port, host loopback port). Each guest
    /// connection starts its own relay (`socat`) to the port, so the host server sees one TCP
    /// connection per guest connection: TLS works and a server may close connections. A plain
    /// [`MachineConfig::guest_forwards`] entry is one connection for the machine's lifetime.
    pub guest_relays: Vec<(String, u16)>,
    /// The user network's address range (QEMU `net=`), e.g. `169.254.0.0/16` so that a
    /// platform's link-local metadata address can be forwarded; QEMU's `10.0.2.0/24` when unset.
    pub network: Option<String>,
    /// More `hostfwd`s besides ssh: (host loopback port, guest TCP port).
    pub host_forwards: Vec<(u16, u16)>,
    /// Serial console on this terminal instead of a captured pipe.
    pub interactive: bool,
    /// Directory for the overlay, firmware vars and console log (default: a temp dir).
    pub state_dir: Option<PathBuf>,
    /// A directory made into an OpenStack config drive (FAT, label `CONFIG-2`), attached
    /// read-only as a second virtio disk.
    pub config_drive: Option<PathBuf>,
    /// Arguments for the guest's `/init`, passed over fw_cfg as `opt/org.wellcar/kernel-args`
    /// (the kernel command line itself comes from GRUB on the image).
    pub kernel_args: Vec<String>,
    /// Boot from the network first (BIOS only).
    pub network_boot: Option<NetworkBoot>,
    /// An ISO image in a CD-ROM drive (AHCI), read-only; the firmware boots it when the disk
    /// is not bootable.
    pub cdrom: Option<PathBuf>,
    /// Blank disks attached after the boot disk (and any config drive), in order (`/dev/vdb`,
    /// `/dev/vdc`, … when the boot disk is the only other one).
    pub extra_disks: Vec<ExtraDisk>,
}

impl MachineConfig {
    /// Defaults: BIOS, 1 GiB, 2 vCPUs, no network forwards.
    pub fn new(image: impl Into<PathBuf>, accel: Accel) -> MachineConfig {
        MachineConfig {
            image: image.into(),
            disk_size: None,
            firmware: Firmware::Bios,
            accel,
            memory_mib: 1024,
            cpus: 2,
            ignition: None,
            ssh_port: None,
            guest_forwards: Vec::new(),
            guest_relays: Vec::new(),
            network: None,
            host_forwards: Vec::new(),
            interactive: false,
            state_dir: None,
            config_drive: None,
            kernel_args: Vec::new(),
            network_boot: None,
            cdrom: None,
            extra_disks: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Console {
    text: String,
    closed: bool,
}

/// A running machine.
#[derive(Debug)]
pub struct Machine {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<(Mutex<Console>, Condvar)>,
    /// Host port forwarded to the guest's ssh.
    pub ssh_port: Option<u16>,
    /// The state directory (overlay disk, console log).
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

pub(crate) fn io<T>(
    r: std::io::Result<T>,
    action: &'static str,
    path: &Path,
) -> Result<T, VmError> {
    Ok(r.at_path(action, path)?)
}

pub(crate) fn run(cmd: &mut Command) -> Result<(), VmError> {
    tracing::debug!("exec: {cmd:?}");
    wellcar_contract::command::run(cmd)?;
    Ok(())
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Machine {
    /// Creates the overlay and starts QEMU.
    pub fn spawn(cfg: &MachineConfig) -> Result<Machine, VmError> {
        crate::extra_disk::check_serials(&cfg.extra_disks)?;
        crate::network::check_relays(&cfg.guest_relays)?;
        let image = io(cfg.image.canonicalize(), "opening image", &cfg.image)?;
        let (dir, temp) = match &cfg.state_dir {
            Some(d) => {
                io(std::fs::create_dir_all(d), "creating", d)?;
                (d.clone(), None)
            }
            None => {
                let t = io(
                    tempfile::Builder::new().prefix("wellcar-vm-").tempdir(),
                    "creating temp dir",
                    Path::new("/tmp"),
                )?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let overlay = dir.join("disk.qcow2");
        let _ = std::fs::remove_file(&overlay);
        run(Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                backing_format(&image)?,
                "-b",
            ])
            .arg(&image)
            .arg(&overlay))?;
        if let Some(size) = cfg.disk_size {
            run(Command::new("qemu-img")
                .args(["resize", "-q"])
                .arg(&overlay)
                .arg(size.to_string()))?;
        }

        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-machine",
            "q35",
            "-accel",
            cfg.accel.as_str(),
            "-nodefaults",
            "-no-user-config",
        ])
        .args([
            "-m",
            &cfg.memory_mib.to_string(),
            "-smp",
            &cfg.cpus.to_string(),
        ])
        .args(["-display", "none", "-vga", "none"])
        .args(["-device", "virtio-rng-pci"]);
        if cfg.cdrom.is_some() {
            // The disk first, the CD second (SeaBIOS and OVMF follow bootindex): a blank disk
            // is skipped, so the live ISO boots; once it installed onto the disk, the reboot
            // boots the disk, as a machine with the USB stick left in does.
            cmd.arg("-drive")
                .arg(format!(
                    "if=none,id=disk0,file={},format=qcow2,cache=unsafe",
                    overlay.display()
                ))
                .args(["-device", "virtio-blk-pci,drive=disk0,bootindex=1"]);
        } else {
            cmd.arg("-drive").arg(format!(
                "if=virtio,file={},format=qcow2,cache=unsafe",
                overlay.display()
            ));
        }
        if cfg.accel == Accel::Kvm {
            cmd.args(["-cpu", "host"]);
        } else {
            cmd.args(["-cpu", "max"]);
        }
        if cfg.firmware == Firmware::Uefi {
            for (what, p) in [("OVMF firmware", OVMF_CODE), ("OVMF variables", OVMF_VARS)] {
                if !Path::new(p).exists() {
                    return Err(VmError::Missing {
                        what,
                        path: p.into(),
                        hint: "apt-get install ovmf",
                    });
                }
            }
            let vars = dir.join("OVMF_VARS.fd");
            io(
                std::fs::copy(OVMF_VARS, &vars),
                "copying OVMF variables to",
                &vars,
            )?;
            cmd.arg("-drive")
                .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
            cmd.arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
        }
        if let Some(ign) = &cfg.ignition {
            let ign = io(ign.canonicalize(), "opening Ignition config", ign)?;
            cmd.arg("-fw_cfg").arg(format!(
                "name=opt/org.flatcar-linux/config,file={}",
                ign.display()
            ));
        }
        if let Some(iso) = &cfg.cdrom {
            let iso = io(iso.canonicalize(), "opening ISO image", iso)?;
            cmd.arg("-drive")
                .arg(format!(
                    "if=none,id=cd0,file={},media=cdrom,readonly=on,format=raw",
                    iso.display()
                ))
                .args(["-device", "ide-cd,drive=cd0,bootindex=2"]);
        }
        if let Some(tree) = &cfg.config_drive {
            let drive = dir.join("config-drive.img");
            crate::config_drive::build(tree, &drive)?;
            cmd.arg("-drive").arg(format!(
                "if=virtio,file={},format=raw,readonly=on",
                drive.display()
            ));
        }
        crate::extra_disk::attach(&mut cmd, &dir, &cfg.extra_disks)?;
        if !cfg.kernel_args.is_empty() {
            let args = dir.join("kernel-args");
            io(
                std::fs::write(&args, cfg.kernel_args.join(" ")),
                "writing",
                &args,
            )?;
            cmd.arg("-fw_cfg").arg(format!(
                "name={},file={}",
                wellcar_contract::FW_CFG_KERNEL_ARGS,
                args.display()
            ));
        }
        let ssh_port = match cfg.ssh_port {
            Some(0) => Some(io(free_port(), "picking a port", Path::new("127.0.0.1"))?),
            p => p,
        };
        let netdev = crate::network::netdev(cfg, ssh_port)?;
        if cfg.network_boot.is_some() {
            // SeaBIOS: the NIC's option ROM once, then the disk.
            cmd.args(["-boot", "order=c,once=n"]);
        }
        cmd.args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0"]);

        let console: Arc<(Mutex<Console>, Condvar)> = Arc::default();
        if cfg.interactive {
            cmd.args(["-serial", "mon:stdio"]);
            let child = cmd.spawn().map_err(|e| CommandError::spawn(&cmd, e))?;
            return Ok(Machine {
                child,
                stdin: None,
                console,
                ssh_port,
                dir,
                _temp: temp,
            });
        }
        cmd.args(["-serial", "stdio", "-monitor", "none"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tracing::debug!("exec: {cmd:?}");
        let mut child = cmd.spawn().map_err(|e| CommandError::spawn(&cmd, e))?;
        let log_path = dir.join("console.log");
        let mut log = io(std::fs::File::create(&log_path), "creating", &log_path)?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let c = console.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = stdout.read(&mut buf).unwrap_or(0);
                let (lock, cv) = &*c;
                let mut con = lock.lock().expect("console lock");
                if n == 0 {
                    con.closed = true;
                    cv.notify_all();
                    return;
                }
                let _ = log.write_all(&buf[..n]);
                con.text.push_str(&String::from_utf8_lossy(&buf[..n]));
                cv.notify_all();
            }
        });
        let c = console.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            if !text.trim().is_empty() {
                let (lock, cv) = &*c;
                lock.lock()
                    .expect("console lock")
                    .text
                    .push_str(&format!("\n[qemu stderr] {text}"));
                cv.notify_all();
            }
        });
        let stdin = child.stdin.take();
        Ok(Machine {
            child,
            stdin,
            console,
            ssh_port,
            dir,
            _temp: temp,
        })
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        self.console.0.lock().expect("console lock").text.clone()
    }

    /// Waits until the console output after byte `from` contains `pattern`; returns the offset
    /// just past the match.
    pub fn wait_for_from(
        &mut self,
        from: usize,
        pattern: &str,
        timeout: Duration,
    ) -> Result<usize, VmError> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut con = lock.lock().expect("console lock");
        loop {
            let start = from.min(con.text.len());
            let start = (0..=start)
                .rev()
                .find(|&i| con.text.is_char_boundary(i))
                .unwrap_or(0);
            if let Some(pos) = con.text[start..].find(pattern) {
                return Ok(start + pos + pattern.len());
            }
            let tail = || tail(&con.text, 30);
            if con.closed {
                drop(con);
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                let con = lock.lock().expect("console lock");
                return Err(VmError::Exited {
                    pattern: pattern.into(),
                    status,
                    tail: tail_of(&con.text),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(VmError::Timeout {
                    pattern: pattern.into(),
                    seconds: timeout.as_secs(),
                    tail: tail(),
                });
            }
            con = cv
                .wait_timeout(con, deadline - now)
                .expect("console lock")
                .0;
        }
    }

    /// Waits for `pattern` anywhere in the console output.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<usize, VmError> {
        self.wait_for_from(0, pattern, timeout)
    }

    /// Types `text` on the serial console.
    pub fn send(&mut self, text: &str) -> Result<(), VmError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| VmError::ConsoleNotCaptured {
                dir: self.dir.clone(),
            })?;
        io(
            stdin.write_all(text.as_bytes()).and_then(|_| stdin.flush()),
            "writing to console of",
            &self.dir,
        )
    }

    /// Runs a shell command on the (logged-in) serial console and returns its output, framed by
    /// unique markers so earlier output cannot match.
    pub fn shell(&mut self, command: &str, timeout: Duration) -> Result<String, VmError> {
        let id = format!("{:08x}", rand_u32());
        let begin = format!("@@B{id}@@");
        let end = format!("@@E{id}@@");
        let from = self.console().len();
        // The markers are printed with a split so the echoed command line never contains them.
        self.send(&format!(
            "echo @@B{id}'@@'; {command}; echo @@E{id}'@@'rc=$?\n"
        ))?;
        let b = self.wait_for_from(from, &begin, timeout)?;
        let e = self.wait_for_from(b, &end, timeout)?;
        // The exit status follows the end marker on the same line: wait for the line's end.
        self.wait_for_from(e, "\n", timeout)?;
        let text = self.console();
        let rc_end = text[e..]
            .find(['\r', '\n'])
            .map(|i| e + i)
            .unwrap_or(text.len());
        let body = &text[b..e - end.len()];
        let rc = text[e..rc_end].trim_start_matches("rc=").to_string();
        Ok(format!("{}\nrc={rc}", body.trim_matches(['\r', '\n'])))
    }

    /// Kills QEMU at once (a power cut).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for QEMU to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Blocks until QEMU exits.
    pub fn wait_exit(&mut self) -> Result<ExitStatus, VmError> {
        io(self.child.wait(), "waiting for QEMU of", &self.dir)
    }

    /// The overlay disk the machine writes.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail_of(text: &str) -> String {
    tail(text, 30)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        return std::process::id() ^ Instant::now().elapsed().subsec_nanos();
    }
    u32::from_le_bytes(b)
}

/// `qcow2` when `image` starts with qcow2's magic, else `raw`: the overlay's backing format
/// (QEMU refuses to guess it).
fn backing_format(image: &Path) -> Result<&'static str, VmError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut file = io(std::fs::File::open(image), "opening", image)?;
    let read = io(file.read(&mut magic), "reading", image)?;
    Ok(if read == 4 && magic == *b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_disk_serials_are_checked_before_anything_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("base.qcow2");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg("1M"))
        .unwrap();
        let state = dir.path().join("state");
        let mut cfg = MachineConfig::new(&image, Accel::Tcg);
        cfg.state_dir = Some(state.clone());
        for bad in ["", "has space", "a-serial-longer-than-20", "ok"] {
            cfg.extra_disks = vec![ExtraDisk::new("ok", 1 << 20), ExtraDisk::new(bad, 1 << 20)];
            let err = Machine::spawn(&cfg).map(|_| ()).unwrap_err();
            assert!(
                matches!(&err, VmError::ExtraDiskSerial(s) if s == bad),
                "{bad:?}: {err:?}"
            );
            assert!(!state.join("disk.qcow2").exists());
            assert!(!ExtraDisk::new("ok", 1).path(&state).exists());
        }
        cfg.extra_disks = (0..16)
            .map(|i| ExtraDisk::new(format!("d{i}"), 1 << 20))
            .collect();
        let err = Machine::spawn(&cfg).map(|_| ()).unwrap_err();
        assert!(matches!(err, VmError::TooManyExtraDisks(16)), "{err:?}");
        assert_eq!(
            ExtraDisk::new("wellcar-docker", 1).path(&state),
            state.join("extra-wellcar-docker.qcow2")
        );
    }

    #[test]
    fn backing_format_is_read_from_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let (qcow2, raw) = (dir.path().join("a.qcow2"), dir.path().join("a.img"));
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&qcow2)
            .arg("1M"))
        .unwrap();
        std::fs::write(&raw, [0u8; 512]).unwrap();
        assert_eq!(backing_format(&qcow2).unwrap(), "qcow2");
        assert_eq!(backing_format(&raw).unwrap(), "raw");
    }

    #[test]
    fn a_failing_qemu_img_names_the_command_and_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.qcow2");
        let err = run(Command::new("qemu-img").arg("info").arg(&missing)).unwrap_err();
        let VmError::Command(CommandError::Failed {
            program,
            args,
            stderr,
            ..
        }) = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(program, "qemu-img");
        assert_eq!(args[1], missing.display().to_string());
        assert!(stderr.contains("missing.qcow2"), "{stderr}");
        assert!(err.to_string().starts_with("`qemu-img info "), "{err}");
    }

    #[test]
    fn missing_image_is_named() {
        let cfg = MachineConfig::new("/nonexistent/wellcar.qcow2", Accel::Tcg);
        let err = Machine::spawn(&cfg).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/wellcar.qcow2"), "{err}");
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
    }
}
