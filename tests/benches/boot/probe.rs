//! One measured boot: QEMU is started, the forwarded ssh port is polled until a real SSH banner
//! arrives, then one ssh session reads the guest's clocks and logs.
//!
//! Everything is put on one axis, seconds since QEMU was started: the host time at which
//! `/proc/uptime` arrived minus the uptime is the host time of the kernel's start; the guest's
//! monotonic timestamps (dmesg's "Run /init", systemd's manager and multi-user.target
//! timestamps) are offsets from it.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wellcar_vmtests::{Machine, MachineConfig};

use crate::banner;

/// How the benchmark logs in to a guest.
#[derive(Debug, Clone)]
pub struct Guest {
    /// Name printed in the report.
    pub name: &'static str,
    /// Login user.
    pub user: &'static str,
    /// The private key.
    pub key: PathBuf,
}

/// What one boot measured; times are seconds since QEMU was started.
#[derive(Debug, Clone, Default)]
pub struct Boot {
    /// The kernel started.
    pub kernel: f64,
    /// The kernel ran the initramfs `/init`.
    pub init: f64,
    /// systemd started on the real root (the initramfs exec'd the real init).
    pub systemd: f64,
    /// multi-user.target was reached.
    pub multi_user: f64,
    /// systemd-networkd logged its DHCPv4 address (the guest's own journal).
    pub network: Option<f64>,
    /// sshd listened: its socket unit started, or sshd logged "Server listening".
    pub sshd_listening: Option<f64>,
    /// The first SSH banner arrived on the forwarded port.
    pub sshd: f64,
    /// systemd's startup finished (what `systemctl is-system-running --wait` waits for).
    pub finished: f64,
    /// The measuring ssh session had logged in (its `/proc/uptime` arrived).
    pub login: f64,
    /// `systemctl is-system-running` after the wait.
    pub state: String,
    /// `uname -r`.
    pub kernel_release: String,
    /// `free -m` "used" after startup finished.
    pub used_mib: f64,
    /// The biggest processes: (RSS in KiB, command).
    pub top: Vec<(u64, String)>,
    /// `systemd-analyze critical-chain`, when asked for.
    pub critical_chain: Option<String>,
    /// With [`Extras::verbose`]: the banner probes and the guest's journal lines, on the same
    /// axis.
    pub log: Vec<String>,
}

/// How long one boot may take until its measurements are read.
pub const TIMEOUT: Duration = Duration::from_secs(600);

/// What a boot collects besides the timings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras {
    /// `systemd-analyze critical-chain`.
    pub chain: bool,
    /// The banner probes' log and the guest's journal lines about ssh, network and targets.
    pub verbose: bool,
}

/// Boots `cfg` and measures it; returns the running machine with the measurements.
pub fn boot(cfg: &MachineConfig, guest: &Guest, extras: Extras) -> Result<(Machine, Boot)> {
    let mut vm = Machine::spawn(cfg).context("starting QEMU")?;
    let start = Instant::now();
    let deadline = start + TIMEOUT;
    let port = vm.ssh_port.context("ssh is not forwarded")?;
    let canary = cfg
        .host_forwards
        .iter()
        .find(|(_, guest)| *guest == banner::CANARY_GUEST_PORT)
        .map(|(host, _)| *host)
        .context("the canary port is not forwarded")?;
    let ports = banner::Ports { ssh: port, canary };
    let mut probes = Vec::new();
    let banner = banner::wait(&mut vm, ports, start, deadline, &mut probes)
        .with_context(|| format!("{}: waiting for sshd", guest.name))?;
    let remote = read_guest(&mut vm, guest, port, extras, deadline)
        .with_context(|| format!("{}: reading the guest's timestamps", guest.name))?;
    let mut boot = remote
        .into_boot(start, banner, extras)
        .with_context(|| format!("{}: parsing the guest's timestamps", guest.name))?;
    if extras.verbose {
        boot.log.extend(probes);
        let time = |l: &String| {
            l.split_whitespace()
                .next()
                .and_then(|t| t.parse::<f64>().ok())
        };
        boot.log.sort_by(|a, b| {
            time(a)
                .unwrap_or(f64::MAX)
                .total_cmp(&time(b).unwrap_or(f64::MAX))
        });
    } else {
        boot.log.clear();
    }
    Ok((vm, boot))
}

/// Powers the guest off cleanly and waits for QEMU to exit.
pub fn poweroff(vm: &mut Machine, guest: &Guest) -> Result<()> {
    let port = vm.ssh_port.context("ssh is not forwarded")?;
    // The session may be cut by the shutdown; the exit of QEMU is what counts.
    let _ = ssh(guest, port)
        .arg(root_command("systemctl poweroff --no-block"))
        .stdin(Stdio::null())
        .output();
    match vm.wait(TIMEOUT) {
        Some(_) => Ok(()),
        None => bail!(
            "{}: QEMU still runs {} s after poweroff; console:\n{}",
            guest.name,
            TIMEOUT.as_secs(),
            tail(&vm.console())
        ),
    }
}

/// `command` as root. Through `sudo` even for root, so the measuring session runs the same
/// processes on every guest.
fn root_command(command: &str) -> String {
    format!("sudo {command}")
}

fn ssh(guest: &Guest, port: u16) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null"])
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30"])
        .arg("-i")
        .arg(&guest.key)
        .args(["-p", &port.to_string()])
        .arg(format!("{}@127.0.0.1", guest.user));
    cmd
}

/// The script run in the one measuring session, as root. `/proc/uptime` comes first: its
/// arrival time on the host anchors the guest's clock.
fn script(extras: Extras) -> String {
    // Memory is read as soon as startup finished; the slower log reading comes after it.
    let mut s = String::from(
        "cat /proc/uptime\n\
         echo @@state; systemctl is-system-running --wait\n\
         echo @@free; free -m\n\
         echo @@ps; ps -eo rss=,comm= --sort=-rss | head -n 5\n\
         echo @@uname; uname -r\n\
         echo @@init; dmesg | grep -m1 'Run /init as init process'\n\
         echo @@manager; systemctl show -p UserspaceTimestampMonotonic -p FinishTimestampMonotonic\n\
         echo @@multiuser; systemctl show -p ActiveEnterTimestampMonotonic multi-user.target\n\
         echo @@network; journalctl -b -o short-monotonic --no-pager -u systemd-networkd.service | grep -m1 'DHCPv4 address'\n\
         echo @@sshsocket; systemctl show -p ActiveEnterTimestampMonotonic sshd.socket ssh.socket\n\
         echo @@sshd; journalctl -b -o short-monotonic --no-pager -u ssh.service | grep -m1 'Server listening'\n",
    );
    if extras.chain {
        s.push_str("echo @@chain; systemd-analyze critical-chain --no-pager\n");
    }
    if extras.verbose {
        s.push_str(
            "echo @@journal; journalctl -b -o short-monotonic --no-pager \
             | grep -E 'sshd|ssh\\.socket|networkd|udevd|Reached target|Startup finished' | head -n 90\n",
        );
    }
    s.push_str("echo @@end\n");
    s
}

/// The session's output lines, each with the host time it arrived.
struct Remote {
    lines: Vec<(Instant, String)>,
}

/// Logs in (retrying while logins are refused, e.g. before systemd-user-sessions) and runs
/// [`script`].
fn read_guest(
    vm: &mut Machine,
    guest: &Guest,
    port: u16,
    extras: Extras,
    deadline: Instant,
) -> Result<Remote> {
    let script = script(extras);
    loop {
        let mut child = ssh(guest, port)
            .arg(root_command("sh -s"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ssh")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(script.as_bytes())
            .context("writing to ssh")?;
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => lines.push(l),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "the ssh session did not finish within {} s; got:\n{}",
                        TIMEOUT.as_secs(),
                        lines
                            .iter()
                            .map(|(_, l)| l.as_str())
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                }
            }
        }
        let status = child.wait().context("waiting for ssh")?;
        let stderr = err.join().unwrap_or_default();
        if lines.iter().any(|(_, l)| l == "@@end") {
            return Ok(Remote { lines });
        }
        if !lines.is_empty() {
            bail!(
                "ssh session ended early ({status}): {}\n{}",
                stderr.trim(),
                lines
                    .iter()
                    .map(|(_, l)| l.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        // Login refused or connection dropped: wait (for QEMU's exit, at most 1 s), retry.
        if let Some(s) = vm.wait(Duration::from_secs(1)) {
            bail!("QEMU exited ({s}); console:\n{}", tail(&vm.console()));
        }
        if Instant::now() > deadline {
            bail!("ssh never logged in: {status}: {}", stderr.trim());
        }
    }
}

impl Remote {
    /// Lines after the `@@name` marker, up to the next marker.
    fn section(&self, name: &str) -> Vec<&str> {
        let marker = format!("@@{name}");
        self.lines
            .iter()
            .map(|(_, l)| l.as_str())
            .skip_while(|l| *l != marker)
            .skip(1)
            .take_while(|l| !l.starts_with("@@"))
            .collect()
    }

    fn property(&self, section: &str, key: &str) -> Result<f64> {
        let prefix = format!("{key}=");
        let value = self
            .section(section)
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .with_context(|| format!("no {key} in {:?}", self.section(section)))?
            .trim()
            .parse::<f64>()
            .with_context(|| format!("{key} is not a number"))?;
        if value == 0.0 {
            bail!("{key} is 0 (not reached)");
        }
        Ok(value / 1e6)
    }

    /// When sshd listened: its socket unit's start (socket activation), else sshd's own
    /// "Server listening" line.
    fn sshd_listening(&self) -> Option<f64> {
        let socket = self
            .section("sshsocket")
            .iter()
            .filter_map(|l| l.strip_prefix("ActiveEnterTimestampMonotonic="))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .filter(|v| *v > 0.0)
            .map(|v| v / 1e6)
            .reduce(f64::min);
        socket.or_else(|| self.section("sshd").first().and_then(|l| bracketed(l)))
    }

    fn into_boot(self, qemu: Instant, banner: Instant, extras: Extras) -> Result<Boot> {
        let (read_at, uptime) = self.lines.first().context("no output")?;
        let uptime: f64 = uptime
            .split_whitespace()
            .next()
            .and_then(|u| u.parse().ok())
            .with_context(|| format!("not /proc/uptime: {uptime:?}"))?;
        let kernel = read_at.duration_since(qemu).as_secs_f64() - uptime;
        let init = self
            .section("init")
            .first()
            .and_then(|l| bracketed(l))
            .with_context(|| {
                format!(
                    "no 'Run /init as init process' in dmesg: {:?}",
                    self.section("init")
                )
            })?;
        let used_mib = self
            .section("free")
            .iter()
            .find(|l| l.starts_with("Mem:"))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|u| u.parse().ok())
            .with_context(|| format!("no Mem: line in {:?}", self.section("free")))?;
        let top = self
            .section("ps")
            .iter()
            .filter_map(|l| {
                let (rss, comm) = l.trim().split_once(char::is_whitespace)?;
                Some((rss.parse().ok()?, comm.trim().to_string()))
            })
            .collect();
        Ok(Boot {
            kernel,
            init: kernel + init,
            systemd: kernel + self.property("manager", "UserspaceTimestampMonotonic")?,
            multi_user: kernel + self.property("multiuser", "ActiveEnterTimestampMonotonic")?,
            network: self
                .section("network")
                .first()
                .and_then(|l| bracketed(l))
                .map(|t| kernel + t),
            sshd_listening: self.sshd_listening().map(|t| kernel + t),
            sshd: banner.duration_since(qemu).as_secs_f64(),
            finished: kernel + self.property("manager", "FinishTimestampMonotonic")?,
            login: read_at.duration_since(qemu).as_secs_f64(),
            state: self.section("state").join(" ").trim().to_string(),
            kernel_release: self.section("uname").join(" ").trim().to_string(),
            used_mib,
            top,
            critical_chain: extras.chain.then(|| self.section("chain").join("\n")),
            log: self
                .section("journal")
                .iter()
                .map(|l| match bracketed(l) {
                    Some(t) => format!("{:8.2} {}", kernel + t, &l[l.find(']').unwrap_or(0) + 1..]),
                    None => l.to_string(),
                })
                .collect(),
        })
    }
}

/// The seconds in a `[  12.345678] ...` line (dmesg, journalctl -o short-monotonic).
fn bracketed(line: &str) -> Option<f64> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    line[open + 1..close].trim().parse().ok()
}

/// The last 30 lines of a console log.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A fresh state directory for one machine under `dir`.
pub fn state_dir(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}
