//! Reboot coordination across a fleet: six agent daemons run as host processes, each below
//! its own `--root`, against one real update server on loopback, all offered the same update
//! at once.
//!
//! Each daemon's reboot command is a script that appends the wall-clock time (nanoseconds
//! since the epoch) to `reboot-log` next to the host's root. The harness ([`Fleet::drive`])
//! watches those logs; once a host's reboot command has run it powers the host off (SIGKILL
//! of the daemon), plays the bootloader (GRUB's pick: the highest-priority bootable slot,
//! one of its tries consumed in place), boots it (new boot id, the picked slot on the
//! command line, the slot's version in os-release), starts the daemon again as the next boot
//! and marks the boot good as `wellcar-mark-good.service` does.
//!
//! What the hosts went through is kept per host ([`HostTimes`]: when the reboot command ran,
//! when the new boot was marked good). [`max_overlap`] counts the most hosts inside a
//! `[start, end]` interval at once by a sweep over every start and end point, counting
//! touching intervals as overlapping (it can over-count, never miss).

mod etcd_lock;
mod fleetlock;
mod lock_history;

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use wellcar_disk::Slot;
use wellcar_payload::SigningKey;
use wellcar_test_support::wait::wait_until_async;

use super::fixture::{blocking_scope, key, make_payload, Daemon, Host, Server};
use crate::state::{Operation, StateStore};

/// Hosts in the fleet.
const HOSTS: usize = 6;

/// Generous bound for the whole fleet to get through an update on a busy 2-core machine (a
/// deadline for a failure message, not a speed assertion). Hosts waiting for the lock retry
/// with a backoff that doubles per refusal, in lockstep (no jitter), so with max_holders 1
/// the n-th host waits about twice as long as the one before it: after a dead holder a run
/// takes one to two minutes, the worst seen three and a half.
const FLEET_TIMEOUT: Duration = Duration::from_secs(420);

/// Wall-clock milliseconds since the epoch (the clock the reboot script and the lock
/// services stamp with).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// What one host went through, in wall-clock milliseconds since the epoch.
#[derive(Debug, Default, Clone, PartialEq)]
struct HostTimes {
    /// Each run of the reboot command.
    reboots: Vec<i64>,
    /// Each boot of the new slot marked good (steady state).
    good: Vec<i64>,
}

/// A host between two points in time (inclusive), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Interval {
    host: usize,
    start: i64,
    end: i64,
}

/// The most intervals that contain one point in time, and the hosts of one such peak. An
/// interval that ends when another starts counts as overlapping it.
fn max_overlap(intervals: &[Interval]) -> (usize, Vec<usize>) {
    // Starts sort before ends at the same time: touching intervals overlap.
    let mut points: Vec<(i64, u8, usize)> = intervals
        .iter()
        .flat_map(|i| [(i.start, 0, i.host), (i.end, 1, i.host)])
        .collect();
    points.sort();
    let mut inside: Vec<usize> = Vec::new();
    let mut peak: Vec<usize> = Vec::new();
    for (_, kind, host) in points {
        if kind == 0 {
            inside.push(host);
            if inside.len() > peak.len() {
                peak = inside.clone();
            }
        } else if let Some(at) = inside.iter().position(|&h| h == host) {
            inside.remove(at);
        }
    }
    peak.sort();
    (peak.len(), peak)
}

/// One host of the fleet: its root, its reboot log and its daemon process.
struct FleetHost {
    host: Host,
    /// `--root` of the daemon.
    root: PathBuf,
    /// One line per run of the reboot command: nanoseconds since the epoch.
    reboot_log: PathBuf,
    daemon: Option<Daemon>,
    times: HostTimes,
    /// Reboot-log lines the harness has acted on.
    reboots_handled: usize,
}

impl FleetHost {
    fn new(index: usize, server_url: &str, key: &SigningKey, extra_config: &str) -> Self {
        let machine = format!("{:032x}", 0x000f_1ee7_0000_u64 + index as u64);
        let host = Host::for_machine(&machine, server_url, key, extra_config);
        let root = host.paths.state_dir.ancestors().nth(4).unwrap().to_owned();
        let reboot_log = host.dir.path().join("reboot-log");
        let script = host.dir.path().join("reboot");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nset -e\ndate +%s%N >> '{}'\n",
                reboot_log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        FleetHost {
            host,
            root,
            reboot_log,
            daemon: None,
            times: HostTimes::default(),
            reboots_handled: 0,
        }
    }

    fn start_daemon(&mut self) {
        let script = self.host.dir.path().join("reboot");
        self.daemon = Some(Daemon::start_logging(
            &self.root,
            &[
                "--reboot-command".into(),
                script.display().to_string(),
                "--transfer-retry-secs".into(),
                "0".into(),
            ],
            &self.log_path(),
        ));
    }

    /// The daemon's log (every boot appends to it).
    fn log_path(&self) -> PathBuf {
        self.host.dir.path().join("agent.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The machine id, which is also the holder id of both lock services.
    fn machine(&self) -> String {
        std::fs::read_to_string(&self.host.paths.machine_id)
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Reboot-command runs not yet acted on, in milliseconds since the epoch.
    fn new_reboots(&mut self) -> Vec<i64> {
        let text = std::fs::read_to_string(&self.reboot_log).unwrap_or_default();
        // Only complete lines: the script may be writing one right now.
        let lines: Vec<&str> = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .collect();
        let fresh: Vec<i64> = lines[self.reboots_handled..]
            .iter()
            .map(|l| l.trim().parse::<i64>().expect("reboot-log line") / 1_000_000)
            .collect();
        self.reboots_handled = lines.len();
        self.times.reboots.extend(&fresh);
        fresh
    }

    /// Power off: the daemon dies without a chance to write anything more.
    fn power_off(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.sigkill();
        }
    }

    /// The next boot: the bootloader picks a slot and consumes one of its tries, the host
    /// comes up from it (boot id, command line, os-release), the daemon starts.
    fn boot(&mut self) -> Slot {
        let esp = wellcar_bootstate::Esp::new(&self.host.paths.esp);
        let slot = {
            let _lock = esp.lock().unwrap();
            let loaded = esp.load().unwrap();
            let (slot, write) = esp.plan_bootloader(&loaded);
            if let Some(write) = write {
                wellcar_bootstate::store::write_in_place(&write.path, &write.new).unwrap();
            }
            slot.expect("a bootable slot")
        };
        let version = self.host.boot_state().slot(slot).version.clone();
        self.host.boot(&version, slot);
        self.start_daemon();
        slot
    }

    /// What `wellcar-mark-good.service` does once the boot is healthy. The time is taken
    /// before the write: locksmithd, another process, may see the mark and release the lock
    /// before the write call returns here.
    fn mark_good(&mut self, booted: Slot) {
        self.times.good.push(now_ms());
        wellcar_bootstate::Esp::new(&self.host.paths.esp)
            .update(|s| {
                s.mark_good(booted);
                Ok(())
            })
            .unwrap();
    }

    /// Booted from B, which is marked good, running 1.1.0, the daemon idle.
    fn finished(&self) -> bool {
        let state = self.host.boot_state();
        let os_release = std::fs::read_to_string(&self.host.paths.os_release).unwrap();
        state.b.successful
            && state.next_boot() == Some(Slot::B)
            && os_release.contains("VERSION_ID=1.1.0\n")
            && StateStore::new(&self.host.paths.state_dir)
                .load()
                .is_ok_and(|s| s.operation() == Operation::Idle)
    }
}

/// When the harness lets a host that ran its reboot command come back up.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BootGate {
    /// At once (a fast boot).
    Immediately,
    /// Only once every host has run its reboot command (a slow boot): whatever lets hosts
    /// reboot together shows up as overlap.
    AfterAllRebooted,
}

/// The update server, the signed 1.1.0 payload and six hosts at 1.0.0.
struct Fleet {
    _dir: tempfile::TempDir,
    _key: SigningKey,
    server: Server,
    hosts: Vec<FleetHost>,
    /// Whether a host id holds the reboot lock now, asked at each reboot the harness sees.
    holder_probe: Option<HolderProbe>,
}

/// Called on every poll while the dead holder is down, with its index and the hosts.
type DeadHolderHook<'a> = dyn FnMut(usize, &[FleetHost]) + 'a;

/// See [`Fleet::holder_probe`].
type HolderProbe = Box<dyn Fn(&str) -> bool>;

impl Fleet {
    /// One server (its settings changed by `configure`) offering 1.1.0 and `HOSTS` hosts
    /// whose update.conf ends with `extra_config(&server)`; no daemon runs yet.
    async fn new(
        configure: impl FnOnce(&mut wellcar_server::Settings),
        extra_config: impl FnOnce(&Server) -> String,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = key();
        let payload = make_payload(dir.path(), "1.1.0", &key);
        let server =
            Server::start_with(dir.path(), "127.0.0.1:0".parse().unwrap(), configure).await;
        server.publish("1.1.0", &payload.path).await;
        let config = format!(
            "WELLCAR_FIRST_CHECK_DELAY=0s\nWELLCAR_RETRY_DELAY=1s\nWELLCAR_REBOOT_WARNING=0s\n{}",
            extra_config(&server)
        );
        let hosts = (0..HOSTS)
            .map(|i| FleetHost::new(i, &server.omaha_url(), &key, &config))
            .collect();
        Fleet {
            _dir: dir,
            _key: key,
            server,
            hosts,
            holder_probe: None,
        }
    }

    /// Starts every daemon (all check at once), then plays reboots and boots until every host
    /// is [`finished`](FleetHost::finished). With `dead_holder`, the first host whose reboot
    /// command runs stays down (a machine that died holding the lock) until every other host
    /// finished, `dead_holder` being called on every poll meanwhile; then it boots too.
    /// Returns the index of that host.
    fn drive(
        &mut self,
        gate: BootGate,
        mut dead_holder: Option<&mut DeadHolderHook<'_>>,
    ) -> Option<usize> {
        for host in &mut self.hosts {
            host.start_daemon();
        }
        let hosts = &mut self.hosts;
        let probe = &self.holder_probe;
        blocking_scope(move || {
            let mut down: Vec<usize> = Vec::new();
            let mut dead: Option<usize> = None;
            wellcar_test_support::wait::wait_until(
                "every host to reboot into 1.1.0 and settle",
                FLEET_TIMEOUT,
                || {
                    for (i, host) in hosts.iter_mut().enumerate() {
                        if !host.new_reboots().is_empty() && !down.contains(&i) {
                            if let Some(holds) = probe {
                                let id = host.machine();
                                assert!(holds(&id), "{id} rebooted without holding the lock");
                            }
                            host.power_off();
                            if dead.is_none() && dead_holder.is_some() {
                                dead = Some(i);
                            } else {
                                down.push(i);
                            }
                        }
                    }
                    if let (Some(d), Some(hook)) = (dead, dead_holder.as_mut()) {
                        let others_done = hosts
                            .iter()
                            .enumerate()
                            .all(|(i, h)| i == d || h.finished());
                        if others_done {
                            down.push(d);
                            dead_holder = None;
                        } else {
                            hook(d, hosts);
                        }
                    }
                    let open = match gate {
                        BootGate::Immediately => true,
                        BootGate::AfterAllRebooted => down.len() + finished_count(hosts) >= HOSTS,
                    };
                    if open {
                        for i in std::mem::take(&mut down) {
                            let slot = hosts[i].boot();
                            hosts[i].mark_good(slot);
                        }
                    }
                    (down.is_empty() && hosts.iter().all(FleetHost::finished)).then_some(())
                },
            );
            dead
        })
    }

    /// Every host rebooted once and its new boot was marked good once.
    fn asserts_one_reboot_each(&self) {
        for host in &self.hosts {
            assert_eq!(host.times.reboots.len(), 1, "{:?}", host.times);
            assert_eq!(host.times.good.len(), 1, "{:?}", host.times);
        }
    }

    /// Waits until the server lists every host at 1.1.0 with the update complete (each
    /// daemon's first check after the reboot reported it).
    async fn server_sees_all_updated(&self) {
        let machines: Vec<String> = self.hosts.iter().map(FleetHost::machine).collect();
        wait_until_async(
            "the server to list every host at 1.1.0, complete",
            FLEET_TIMEOUT,
            || async {
                let list: Vec<wellcar_server::model::Instance> =
                    self.server.app_get("instances?limit=1000").await;
                machines
                    .iter()
                    .all(|m| {
                        list.iter().any(|i| {
                            &i.facts.machine_id == m
                                && i.facts.version == "1.1.0"
                                && i.status == "complete"
                        })
                    })
                    .then_some(())
            },
        )
        .await;
    }

    /// Per host: from the first run of its reboot command to its new boot marked good.
    fn reboot_to_good_intervals(&self) -> Vec<Interval> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(host, h)| Interval {
                host,
                start: *h.times.reboots.first().expect("the host rebooted"),
                end: *h.times.good.last().expect("the new boot was marked good"),
            })
            .collect()
    }
}

fn finished_count(hosts: &[FleetHost]) -> usize {
    hosts.iter().filter(|h| h.finished()).count()
}

/// `REBOOT_STRATEGY=reboot`, the baseline without a lock: nothing holds a host back, so with
/// boots that take until every host has rebooted, all six are between reboot and steady state
/// at once, and the recorder sees it. Every host still ends on 1.1.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_strategy_lets_the_whole_fleet_reboot_at_once() {
    let started = Instant::now();
    let mut fleet = Fleet::new(|_| {}, |_| "REBOOT_STRATEGY=reboot\n".into()).await;
    fleet.drive(BootGate::AfterAllRebooted, None);
    fleet.server_sees_all_updated().await;
    fleet.asserts_one_reboot_each();
    let (peak, at_peak) = max_overlap(&fleet.reboot_to_good_intervals());
    assert_eq!(
        (peak, at_peak),
        (HOSTS, (0..HOSTS).collect()),
        "without a lock every host was rebooting at once"
    );
    eprintln!(
        "reboot strategy: {HOSTS} hosts, peak {peak} between reboot and steady state, {:?}",
        started.elapsed()
    );
}

#[test]
fn max_overlap_counts_touching_and_nested_intervals() {
    let iv = |host, start, end| Interval { host, start, end };
    assert_eq!(max_overlap(&[]), (0, vec![]));
    // Disjoint: one at a time.
    assert_eq!(max_overlap(&[iv(0, 0, 5), iv(1, 6, 9)]), (1, vec![0]));
    // Touching counts as overlapping (never miss one).
    assert_eq!(max_overlap(&[iv(0, 0, 5), iv(1, 5, 9)]), (2, vec![0, 1]));
    // Nested and chained: 2 at 3..4 (0 and 1), 3 at 7 (0, 2, 3).
    let set = [iv(0, 0, 10), iv(1, 2, 4), iv(2, 6, 8), iv(3, 7, 12)];
    assert_eq!(max_overlap(&set), (3, vec![0, 2, 3]));
    // A host's own zero-length interval.
    assert_eq!(max_overlap(&[iv(4, 3, 3)]), (1, vec![4]));
}
