//! Waiting for sshd's banner on the forwarded port, without the waiting itself slowing sshd or
//! adding QEMU's retry delays to the time measured.
//!
//! QEMU (slirp) accepts every forwarded connection itself and sends the guest a SYN, retried 3,
//! 9 and 21 s later and then every 12 s, until the guest answers or 75 s have passed. Before the
//! guest has its address (DHCP) every try is lost. An ssh probe opened then would reach the guest
//! only at its next retry, up to 12 s after sshd could have answered, and every such probe costs
//! the guest an sshd once one listens.
//!
//! So the wait has two phases:
//! 1. **Network.** Every [`CANARY_SPACING`], a canary connection is opened to a second forwarded
//!    port on which nothing in the guest listens ([`CANARY_GUEST_PORT`]). Each new canary's first
//!    SYN goes out at once, so one reaches the guest at most that long after its network is up;
//!    the guest's kernel refuses it (a reset, no process started), which closes the canary here.
//! 2. **sshd.** From then on one ssh probe at a time: its SYN reaches the guest at once; it is
//!    refused until sshd listens (the next follows [`SSH_SPACING`] later) and then waits as long
//!    as sshd needs to send "SSH-".
//!
//! The banner's time is thus the guest's own readiness to within [`CANARY_SPACING`] or
//! [`SSH_SPACING`], the same for every OS measured, whether sshd listens before its network is
//! up (socket activation) or after.

use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use wellcar_vmtests::Machine;

use crate::probe::{tail, TIMEOUT};

/// The guest port the canaries go to: TCP discard, which neither Wellcar nor the Debian anchor
/// serves, so the guest's kernel answers with a reset.
pub const CANARY_GUEST_PORT: u16 = 9;
/// Time between canaries while the guest's network is not up.
const CANARY_SPACING: Duration = Duration::from_millis(500);
/// Time between ssh probes once the network is up (each refusal is immediate and cheap).
const SSH_SPACING: Duration = Duration::from_millis(250);
/// slirp drops a connection the guest never answered after 75 s; a close after about that
/// long is no answer from the guest.
const SLIRP_GIVES_UP: Duration = Duration::from_secs(70);
/// A probe that gets neither a banner nor a refusal is given up after this; far longer than
/// sshd takes to send its banner on a loaded TCG guest.
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the wait checks that QEMU still runs.
const EXIT_CHECK: Duration = Duration::from_secs(2);

/// The forwarded ports: the guest's sshd and the canary port.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Host port forwarded to the guest's port 22.
    pub ssh: u16,
    /// Host port forwarded to [`CANARY_GUEST_PORT`].
    pub canary: u16,
}

/// What a probe was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Canary,
    Ssh,
}

/// A probe waiting for its answer.
struct Live {
    id: u64,
    kind: Kind,
    opened: Instant,
    handle: TcpStream,
}

/// Polls until the guest's sshd sends "SSH-" on the forwarded port; returns when it arrived.
/// Each probe's opening and ending goes into `log`, stamped in seconds since `start`.
pub fn wait(
    vm: &mut Machine,
    ports: Ports,
    start: Instant,
    deadline: Instant,
    log: &mut Vec<String>,
) -> Result<Instant> {
    let at = |t: Instant| t.duration_since(start).as_secs_f64();
    let (tx, rx) = mpsc::channel::<(u64, Outcome)>();
    let mut live: Vec<Live> = Vec::new();
    let mut ids = 0u64;
    let mut network_up = false;
    let mut next_probe = start;
    let mut next_exit_check = start + EXIT_CHECK;
    let result = loop {
        let now = Instant::now();
        let waiting_ssh = live.iter().any(|p| p.kind == Kind::Ssh);
        let kind = if network_up { Kind::Ssh } else { Kind::Canary };
        if now >= next_probe && !(network_up && waiting_ssh) {
            let port = match kind {
                Kind::Canary => ports.canary,
                Kind::Ssh => ports.ssh,
            };
            // QEMU listens on the port as soon as it runs; until then, try again later.
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                if let Ok(handle) = s.try_clone() {
                    ids += 1;
                    if kind == Kind::Ssh {
                        // The guest logs the port (slirp keeps it): `sshd@...-10.0.2.2:PORT`.
                        let local = handle.local_addr().map(|a| a.port()).unwrap_or_default();
                        log.push(format!(
                            "{:8.2} ssh probe {ids} opened, port {local}",
                            at(now)
                        ));
                    }
                    live.push(Live {
                        id: ids,
                        kind,
                        opened: now,
                        handle,
                    });
                    let (tx, id) = (tx.clone(), ids);
                    std::thread::spawn(move || {
                        let _ = tx.send((id, probe_banner(s)));
                    });
                }
            }
            next_probe = now
                + match kind {
                    Kind::Canary => CANARY_SPACING,
                    Kind::Ssh => SSH_SPACING,
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
                "no SSH banner on port {} within {} s; console:\n{}",
                ports.ssh,
                TIMEOUT.as_secs(),
                tail(&vm.console())
            ));
        }
        match rx.recv_timeout(
            next_probe
                .min(next_exit_check)
                .saturating_duration_since(Instant::now()),
        ) {
            Ok((id, outcome)) => {
                let Some(i) = live.iter().position(|p| p.id == id) else {
                    continue;
                };
                let probe = live.remove(i);
                let now = Instant::now();
                let answered = now - probe.opened < SLIRP_GIVES_UP;
                match (probe.kind, outcome) {
                    (_, Outcome::Banner(t)) => {
                        log.push(format!("{:8.2} ssh probe {id} banner", at(t)));
                        break Ok(t);
                    }
                    (Kind::Canary, Outcome::Refused) if answered && !network_up => {
                        network_up = true;
                        next_probe = now;
                        log.push(format!(
                            "{:8.2} network up: canary {id} refused by the guest",
                            at(now)
                        ));
                        // The rest are not needed; closing them here costs the guest nothing.
                        for p in live.iter().filter(|p| p.kind == Kind::Canary) {
                            let _ = p.handle.shutdown(Shutdown::Both);
                        }
                    }
                    (Kind::Ssh, Outcome::Refused) => {
                        log.push(format!("{:8.2} ssh probe {id} refused", at(now)));
                    }
                    (Kind::Ssh, Outcome::Silent) => {
                        log.push(format!("{:8.2} ssh probe {id} silent", at(now)));
                    }
                    (Kind::Canary, _) => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("the loop holds a sender"),
        }
    };
    for p in live {
        let _ = p.handle.shutdown(Shutdown::Both);
    }
    result
}

/// How one probe ended.
enum Outcome {
    /// "SSH-" arrived at this host time.
    Banner(Instant),
    /// Closed or reset without a banner: the guest refused it (or slirp gave up on it).
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
