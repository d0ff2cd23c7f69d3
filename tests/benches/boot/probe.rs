//! One measured boot: QEMU is started, the forwarded ssh port is polled until a real SSH banner
//! arrives, then one ssh session reads the guest's clocks and logs.
//!
//! Everything is put on one axis, seconds since QEMU was started: the host time at which
//! `/proc/uptime` arrived minus the uptime is the host time of the kernel's start; the guest's
//! monotonic timestamps (dmesg's "Run /init", systemd's manager and multi-user.target
//! timestamps) are offsets from it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use wellcar_vmtests::{Machine, MachineConfig};

/// How the benchmark logs in to a guest.
#[derive(Debug, Clone)]
pub struct Guest {
    /// Name printed in the report.
    pub name: &'static str,
    /// Login user.
    pub user: &'static str,
    /// Whether root commands need `sudo`.
    pub sudo: bool,
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
    /// sshd logged "Server listening" (the guest's own journal).
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
}

/// How long one boot may take until its measurements are read.
pub const TIMEOUT: Duration = Duration::from_secs(600);
/// Time between banner probes while the guest has no network.
const EARLY_INTERVAL: Duration = Duration::from_millis(500);
/// Probes held by QEMU at most while the guest has no network.
const EARLY_PROBES: usize = 10;
/// Time between banner probes once the guest refuses them.
const LATE_INTERVAL: Duration = Duration::from_millis(250);
/// A probe that gets neither a banner nor a refusal is given up after this; far longer than
/// sshd takes to send its banner on a loaded TCG guest.
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the banner wait checks that QEMU still runs.
const EXIT_CHECK: Duration = Duration::from_secs(2);

/// Boots `cfg` and measures it; returns the running machine with the measurements.
pub fn boot(cfg: &MachineConfig, guest: &Guest, chain: bool) -> Result<(Machine, Boot)> {
    let mut vm = Machine::spawn(cfg).context("starting QEMU")?;
    let start = Instant::now();
    let deadline = start + TIMEOUT;
    let port = vm.ssh_port.context("ssh is not forwarded")?;
    let banner = wait_for_banner(&mut vm, port, deadline)
        .with_context(|| format!("{}: waiting for sshd", guest.name))?;
    let remote = read_guest(&mut vm, guest, port, chain, deadline)
        .with_context(|| format!("{}: reading the guest's timestamps", guest.name))?;
    let boot = remote
        .into_boot(start, banner, chain)
        .with_context(|| format!("{}: parsing the guest's timestamps", guest.name))?;
    Ok((vm, boot))
}

/// Powers the guest off cleanly and waits for QEMU to exit.
pub fn poweroff(vm: &mut Machine, guest: &Guest) -> Result<()> {
    let port = vm.ssh_port.context("ssh is not forwarded")?;
    // The session may be cut by the shutdown; the exit of QEMU is what counts.
    let _ = ssh(guest, port)
        .arg(root_command(guest, "systemctl poweroff --no-block"))
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

fn root_command(guest: &Guest, command: &str) -> String {
    if guest.sudo {
        format!("sudo {command}")
    } else {
        command.to_string()
    }
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

/// Polls the forwarded port until the guest's sshd sends "SSH-"; returns when it arrived.
///
/// QEMU accepts every connection itself, and then:
/// - while the guest has no address, holds it and retries the SYN (seconds apart): such a
///   probe costs the guest nothing, and closing it costs nothing either;
/// - once the guest has one and nothing listens, closes it at once (the guest's RST);
/// - once sshd listens, hands it to sshd, whose banner can take seconds under TCG (a fork
///   and re-exec per connection). A probe closed then still costs the guest that work, so
///   closing probes on a timeout piles up sshd children and delays the banner it measures.
///
/// So: until the first refusal, a new probe every [`EARLY_INTERVAL`], at most
/// [`EARLY_PROBES`] held (the oldest is closed, to keep young probes whose SYN QEMU retries
/// soon); after it, one probe at a time, each waiting as long as sshd needs. Each probe stamps
/// its own banner.
fn wait_for_banner(vm: &mut Machine, port: u16, deadline: Instant) -> Result<Instant> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (tx, rx) = mpsc::channel::<(u64, Outcome)>();
    // Probes still waiting: (id, started after the first refusal, a handle to close it).
    let mut live: VecDeque<(u64, bool, TcpStream)> = VecDeque::new();
    let mut ids = 0u64;
    let mut refused = false;
    let mut next_probe = Instant::now();
    let mut next_exit_check = Instant::now() + EXIT_CHECK;
    let result = loop {
        let now = Instant::now();
        let room = if refused {
            !live.iter().any(|(_, late, _)| *late)
        } else {
            true
        };
        if now >= next_probe && room {
            if !refused && live.len() >= EARLY_PROBES {
                if let Some((_, _, oldest)) = live.pop_front() {
                    let _ = oldest.shutdown(Shutdown::Both);
                }
            }
            // QEMU listens on the port as soon as it starts; until then, try again later.
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                if let Ok(handle) = s.try_clone() {
                    ids += 1;
                    live.push_back((ids, refused, handle));
                    let (tx, id) = (tx.clone(), ids);
                    std::thread::spawn(move || {
                        let _ = tx.send((id, probe_banner(s)));
                    });
                }
            }
            next_probe = now
                + if refused {
                    LATE_INTERVAL
                } else {
                    EARLY_INTERVAL
                };
        }
        if now >= next_exit_check {
            // Waits for QEMU's exit, at most one of its 100 ms polls.
            if let Some(status) = vm.wait(Duration::from_millis(1)) {
                break Err(anyhow!(
                    "QEMU exited ({status}); console:\n{}",
                    tail(&vm.console())
                ));
            }
            next_exit_check = now + EXIT_CHECK;
        }
        if now > deadline {
            break Err(anyhow!(
                "no SSH banner on port {port} within {} s; console:\n{}",
                TIMEOUT.as_secs(),
                tail(&vm.console())
            ));
        }
        let wake = if room { next_probe } else { next_exit_check };
        match rx.recv_timeout(
            wake.min(next_exit_check)
                .saturating_duration_since(Instant::now()),
        ) {
            Ok((id, outcome)) => {
                // A probe closed above reports too; only live ones count.
                let Some(i) = live.iter().position(|(l, _, _)| *l == id) else {
                    continue;
                };
                live.remove(i);
                match outcome {
                    Outcome::Banner(t) => break Ok(t),
                    Outcome::Refused => refused = true,
                    Outcome::Silent => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("the loop holds a sender"),
        }
    };
    for (_, _, s) in live {
        let _ = s.shutdown(Shutdown::Both);
    }
    result
}

/// How one banner probe ended.
enum Outcome {
    /// "SSH-" arrived at this host time.
    Banner(Instant),
    /// Closed or reset without a banner (the guest refused, or the probe was closed).
    Refused,
    /// Nothing within [`PROBE_TIMEOUT`].
    Silent,
}

fn probe_banner(mut s: TcpStream) -> Outcome {
    if s.set_read_timeout(Some(PROBE_TIMEOUT)).is_err() {
        return Outcome::Silent;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Outcome::Refused,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"SSH-") {
                    return Outcome::Banner(Instant::now());
                }
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Outcome::Refused,
            Err(_) => return Outcome::Silent,
        }
    }
}

/// The script run in the one measuring session, as root. `/proc/uptime` comes first: its
/// arrival time on the host anchors the guest's clock.
fn script(chain: bool) -> String {
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
         echo @@sshd; journalctl -b -o short-monotonic --no-pager -u ssh.service | grep -m1 'Server listening'\n",
    );
    if chain {
        s.push_str("echo @@chain; systemd-analyze critical-chain --no-pager\n");
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
    chain: bool,
    deadline: Instant,
) -> Result<Remote> {
    let script = script(chain);
    loop {
        let mut child = ssh(guest, port)
            .arg(root_command(guest, "sh -s"))
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

    fn into_boot(self, qemu: Instant, banner: Instant, chain: bool) -> Result<Boot> {
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
            sshd_listening: self
                .section("sshd")
                .first()
                .and_then(|l| bracketed(l))
                .map(|t| kernel + t),
            sshd: banner.duration_since(qemu).as_secs_f64(),
            finished: kernel + self.property("manager", "FinishTimestampMonotonic")?,
            login: read_at.duration_since(qemu).as_secs_f64(),
            state: self.section("state").join(" ").trim().to_string(),
            kernel_release: self.section("uname").join(" ").trim().to_string(),
            used_mib,
            top,
            critical_chain: chain.then(|| self.section("chain").join("\n")),
        })
    }
}

/// The seconds in a `[  12.345678] ...` line (dmesg, journalctl -o short-monotonic).
fn bracketed(line: &str) -> Option<f64> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    line[open + 1..close].trim().parse().ok()
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A fresh state directory for one machine under `dir`.
pub fn state_dir(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}
