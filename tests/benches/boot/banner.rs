//! Waiting for sshd's banner on the forwarded port, without the waiting itself slowing sshd.

use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use wellcar_vmtests::Machine;

use crate::probe::{tail, TIMEOUT};

/// Probes held while the guest has not answered one. Each one reaches the guest once its
/// network is up (costing it an sshd if sshd listens then), so few; with slirp's 12 s retry
/// period, 3 probes opened 4 s apart get a SYN to the guest at least every 4 s.
const EARLY_PROBES: usize = 3;
/// Time between opening those.
const EARLY_SPACING: Duration = Duration::from_secs(4);
/// Time between probes once the guest refuses them (each refusal is immediate and cheap).
const LATE_SPACING: Duration = Duration::from_millis(250);
/// slirp drops a connection the guest never answered after 75 s; a close after about that
/// long is no refusal.
const SLIRP_GIVES_UP: Duration = Duration::from_secs(70);
/// A probe that gets neither a banner nor a refusal is given up after this; far longer than
/// sshd takes to send its banner on a loaded TCG guest.
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the banner wait checks that QEMU still runs.
const EXIT_CHECK: Duration = Duration::from_secs(2);

/// Polls the forwarded port until the guest's sshd sends "SSH-"; returns when it arrived.
///
/// QEMU (slirp) accepts every connection itself and sends the guest a SYN, retried 3, 9 and
/// 21 s later and then every 12 s, until the guest answers or 75 s have passed. Before the
/// guest has its address every try is lost; once it has one, the guest refuses (nothing
/// listens yet) or hands the connection to sshd, whose banner can take seconds under TCG (a
/// fork and exec per connection). Every probe opened before the network is up reaches the
/// guest then, even one already closed here, and costs it an sshd if sshd listens, which would
/// delay the very banner being measured.
///
/// So until the guest refuses a probe, [`EARLY_PROBES`] probes are held, opened
/// [`EARLY_SPACING`] apart, so that some retry reaches the guest at most that long after its
/// network comes up (the price of few probes: when sshd listens before the network, as a
/// socket-activated one does, the banner is seen up to that much late); one that slirp gives
/// up on is replaced. After a refusal, one probe at a time: refused at once until sshd
/// listens, then waiting as long as sshd needs. No probe is closed before the banner; each
/// stamps its own.
pub fn wait(
    vm: &mut Machine,
    port: u16,
    start: Instant,
    deadline: Instant,
    log: &mut Vec<String>,
) -> Result<Instant> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let at = |t: Instant| t.duration_since(start).as_secs_f64();
    let (tx, rx) = mpsc::channel::<(u64, Outcome)>();
    // Probes waiting: (id, when opened, opened after a refusal, a handle to close it).
    let mut live: Vec<(u64, Instant, bool, TcpStream)> = Vec::new();
    let mut ids = 0u64;
    let mut refused = false;
    let mut next_early = start;
    let mut next_late = start;
    let mut next_exit_check = start + EXIT_CHECK;
    let result = loop {
        let now = Instant::now();
        let early = live.iter().filter(|p| !p.2).count();
        let wants = if refused {
            !live.iter().any(|p| p.2) && now >= next_late
        } else {
            early < EARLY_PROBES && now >= next_early
        };
        // QEMU listens on the port as soon as it runs; until then, try again later.
        if wants {
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                if let Ok(handle) = s.try_clone() {
                    ids += 1;
                    // The guest logs the port (slirp keeps it): `sshd@...-10.0.2.2:PORT`.
                    let local = handle.local_addr().map(|a| a.port()).unwrap_or_default();
                    log.push(format!("{:8.2} probe {ids} opened, port {local}", at(now)));
                    live.push((ids, now, refused, handle));
                    let (tx, id) = (tx.clone(), ids);
                    std::thread::spawn(move || {
                        let _ = tx.send((id, probe_banner(s)));
                    });
                }
            }
            if refused {
                next_late = now + LATE_SPACING;
            } else {
                next_early = now + EARLY_SPACING;
            }
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
        let wake = if refused { next_late } else { next_early };
        match rx.recv_timeout(
            wake.min(next_exit_check)
                .saturating_duration_since(Instant::now()),
        ) {
            Ok((id, outcome)) => {
                let Some(i) = live.iter().position(|p| p.0 == id) else {
                    continue;
                };
                let (_, opened, late, _) = live.remove(i);
                let now = Instant::now();
                let what = match outcome {
                    Outcome::Banner(_) => "banner",
                    // slirp gave up on it (75 s): not an answer from the guest.
                    Outcome::Refused if !late && now - opened >= SLIRP_GIVES_UP => "expired",
                    Outcome::Refused => {
                        refused = true;
                        "refused"
                    }
                    Outcome::Silent => "silent",
                };
                let t = match outcome {
                    Outcome::Banner(t) => t,
                    _ => now,
                };
                log.push(format!("{:8.2} probe {id} {what}", at(t)));
                if let Outcome::Banner(t) = outcome {
                    break Ok(t);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("the loop holds a sender"),
        }
    };
    for (_, _, _, s) in live {
        let _ = s.shutdown(Shutdown::Both);
    }
    result
}

/// How one banner probe ended.
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
