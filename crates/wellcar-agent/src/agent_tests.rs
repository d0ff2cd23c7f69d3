//! The agent against the real Wellcar server over loopback HTTP, real signed payloads, a
//! sparse disk image with the Wellcar GPT layout and a temp-dir ESP.
//!
//! The only thing between agent and server is [`Relay`], a real TCP relay on loopback that
//! the server's `public_url` points payload downloads at: it counts the payload bytes the
//! server sends, records `Range` headers, and can cut a transfer or slow it down (what a flaky
//! network does; the server itself has no byte counter).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use wellcar_contract::RootHash;
use wellcar_disk::Slot;
use wellcar_omaha::WELLCAR_APP_ID;
use wellcar_payload::SigningKey;
use wellcar_test_support::build::MIB;
use wellcar_test_support::wait::wait_until;

use crate::agent::{CheckOutcome, InstallSource};
use crate::host::HostPaths;
use crate::state::{Operation, Phase};

mod delta;
pub(crate) mod fixture;
mod local_payload;
mod reboot_coordination;
mod signed_responses;

use fixture::*;

/// A check's outcome when the server has no update and asks for the next check in 30 min.
const NO_UPDATE_POLL_1800: CheckOutcome = CheckOutcome::NoUpdate {
    poll_interval: Some(1800),
};

/// The events (type, result, error code, version) of an update that downloaded, installed and
/// staged: download started (13), download finished (14), update complete (3), each a success.
const INSTALLED_EVENTS: [(i64, i64, Option<i64>, Option<String>); 3] =
    [(13, 1, None, None), (14, 1, None, None), (3, 1, None, None)];

/// Slot B holds nothing bootable and A boots next, as before the update was tried.
fn asserts_nothing_staged(host: &Host) {
    let state = host.boot_state();
    assert_eq!(
        state.b,
        wellcar_bootstate::SlotState::empty(),
        "nothing staged in B"
    );
    assert_eq!(state.next_boot(), Some(Slot::A));
}

fn asserts_staged(host: &Host, payload: &Payload) {
    let state = host.boot_state();
    assert_eq!(state.next_boot(), Some(Slot::B), "B boots next");
    assert_eq!((state.b.tries, state.b.successful), (1, false), "once");
    assert_eq!(state.b.root_hash, Some(payload.root_hash));
    assert_eq!(state.b.version, "1.1.0");
    assert!(
        state.a.successful && state.a.priority > 0,
        "A stays the fallback"
    );
    let (kernel, _) = host.paths.boot_files(Slot::B);
    assert_eq!(std::fs::read(kernel).unwrap(), payload.kernel);
    assert!(
        host.slot_bytes(Slot::A, MIB).iter().all(|&b| b == 0),
        "booted slot untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_update() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let host = Host::new(&server.omaha_url(), &key(), "");
    let mut agent = host.agent();
    let (outcome, agent) =
        blocking(move || (agent.check(InstallSource::Scheduler).unwrap(), agent)).await;
    assert_eq!(outcome, NO_UPDATE_POLL_1800);
    assert_eq!(agent.state().operation(), Operation::Idle);
    assert!(agent.state().last_checked_time > 0);
    assert_eq!(agent.state().aleph_version.as_deref(), Some("1.0.0"));
    let instance = server.instance().await;
    assert_eq!(
        (
            instance.facts.version.as_str(),
            instance.facts.track.as_str()
        ),
        ("1.0.0", "stable")
    );
    assert_eq!(instance.facts.alias, "agent-test");
    assert_eq!(instance.facts.oem, "qemu");
    assert!(
        server.events().await.is_empty(),
        "a plain check reports no event"
    );
    assert_eq!(host.boot_state().b, wellcar_bootstate::SlotState::empty());
    assert!(!host.paths.reboot_required.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_reports_every_event_then_the_reboot() {
    let (dir, key, payload, server, host) = offered("").await;
    let mut agent = host.agent();
    let (outcome, mut agent) =
        blocking(move || (agent.check(InstallSource::OnDemand).unwrap(), agent)).await;
    assert!(
        matches!(outcome, CheckOutcome::Staged { ref version, .. } if version == "1.1.0"),
        "{outcome:?}"
    );
    assert_eq!(agent.state().operation(), Operation::UpdatedNeedReboot);
    assert!(agent.state().outbox.is_empty(), "every event acknowledged");
    assert_eq!(server.events().await, INSTALLED_EVENTS);
    assert_eq!(server.instance().await.status, "installed");
    asserts_staged(&host, &payload);
    assert!(host.paths.reboot_required.exists());
    assert!(server.relay.served.load(Ordering::SeqCst) >= payload.size);

    // Before the reboot, checks only ping and never download again.
    let served = server.relay.served.load(Ordering::SeqCst);
    let (outcome, mut agent) =
        blocking(move || (agent.check(InstallSource::Scheduler).unwrap(), agent)).await;
    assert_eq!(outcome, CheckOutcome::AwaitingReboot);
    assert_eq!(server.relay.served.load(Ordering::SeqCst), served);

    // Reboot into B running 1.1.0: the first check reports 3/2 with the previous version.
    host.boot("1.1.0", Slot::B);
    let (outcome, agent) =
        blocking(move || (agent.check(InstallSource::Scheduler).unwrap(), agent)).await;
    assert!(
        matches!(outcome, CheckOutcome::NoUpdate { .. }),
        "{outcome:?}"
    );
    assert_eq!(agent.state().operation(), Operation::Idle);
    let events = server.events().await;
    assert_eq!(events.last().unwrap(), &(3, 2, None, Some("1.0.0".into())));
    let instance = server.instance().await;
    assert_eq!(
        (instance.status.as_str(), instance.facts.version.as_str()),
        ("complete", "1.1.0")
    );
    // A newer version while B is on trial (not marked good): deferred, A is not touched.
    let payload2 = make_payload(dir.path(), "1.2.0", &key);
    server.publish("1.2.0", &payload2.path).await;
    let mut agent = agent;
    let (outcome, agent) =
        blocking(move || (agent.check(InstallSource::Scheduler).unwrap(), agent)).await;
    assert_eq!(
        outcome,
        CheckOutcome::Deferred {
            version: "1.2.0".into()
        }
    );
    assert_eq!(agent.state().operation(), Operation::Idle);
    assert_eq!(agent.state().phase, Phase::Idle { paused: None });
    assert_eq!(host.boot_state().a.version, "1.0.0", "the fallback is kept");
    let events = server.events().await;
    // Only once.
    let mut agent = agent;
    let agent_events = blocking(move || {
        agent.check(InstallSource::Scheduler).unwrap();
        agent.state().outbox.len()
    })
    .await;
    assert_eq!(agent_events, 0);
    assert_eq!(server.events().await.len(), events.len());
    // Once B is marked good (wellcar-mark-good.service), 1.2.0 goes into A.
    wellcar_bootstate::Esp::new(&host.paths.esp)
        .update(|s| {
            s.mark_good(Slot::B);
            Ok(())
        })
        .unwrap();
    let mut agent = host.agent();
    let outcome = blocking(move || agent.check(InstallSource::Scheduler).unwrap()).await;
    assert!(
        matches!(outcome, CheckOutcome::Staged { ref version, .. } if version == "1.2.0"),
        "{outcome:?}"
    );
    let state = host.boot_state();
    assert_eq!(state.next_boot(), Some(Slot::A));
    assert_eq!((state.a.version.as_str(), state.a.tries), ("1.2.0", 1));
    assert_eq!(state.a.root_hash, Some(payload2.root_hash));
    assert!(state.b.successful, "the running 1.1.0 is the fallback now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_download_resumes_with_range() {
    let (_dir, _key, payload, server, host) = offered("").await;
    let cut = (payload.size * 2 / 3) as i64;
    server.relay.cut_after.store(cut, Ordering::SeqCst);
    let mut agent = host.agent();
    let (outcome, _agent) =
        blocking(move || (agent.check(InstallSource::Scheduler).unwrap(), agent)).await;
    assert!(
        matches!(outcome, CheckOutcome::Staged { .. }),
        "{outcome:?}"
    );
    asserts_staged(&host, &payload);
    let ranges = server.relay.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 1, "one resumed request: {ranges:?}");
    assert_eq!(server.relay.full_gets.load(Ordering::SeqCst), 1);
    let start: u64 = ranges[0]
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        start > 0 && start <= cut as u64,
        "resumed at {start}, cut at {cut}"
    );
    // Served: the cut first attempt plus the rest from `start` (plus HTTP headers), never a
    // second full download.
    let served = server.relay.served.load(Ordering::SeqCst);
    let expected = cut as u64 + (payload.size - start);
    assert!(
        served >= expected && served < expected + 4096,
        "served {served}, expected {expected} + headers (payload {})",
        payload.size
    );
    assert_eq!(server.events().await, INSTALLED_EVENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_payload_is_rejected_reported_and_nothing_staged() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let payload = make_payload(dir.path(), "1.1.0", &key);
    // Flip one byte in the middle of the data section (the server hashes what it gets, so
    // the Omaha sha256 matches; the payload's own blob hashes do not).
    let mut bytes = std::fs::read(&payload.path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    let corrupt = dir.path().join("corrupt.bin");
    std::fs::write(&corrupt, &bytes).unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    server.publish("1.1.0", &corrupt).await;
    let host = Host::new(&server.omaha_url(), &key, "");
    let mut agent = host.agent();
    let (result, agent) = blocking(move || (agent.check(InstallSource::Scheduler), agent)).await;
    let err = result.unwrap_err().to_string();
    assert!(err.contains("error code 10"), "{err}");
    assert_eq!(agent.state().operation(), Operation::Idle);
    assert_eq!(agent.state().phase, Phase::Idle { paused: None });
    assert!(agent
        .state()
        .last_error
        .as_deref()
        .unwrap()
        .contains("sha256"));
    assert!(agent.state().phase.checkpoint().is_none());
    assert!(!agent.store().legacy_checkpoint_path().exists());
    assert_eq!(
        server.events().await,
        [(13, 1, None, None), (3, 0, Some(10), None)]
    );
    let instance = server.instance().await;
    assert_eq!(
        (instance.status.as_str(), instance.last_error_code),
        ("error", Some(10))
    );
    asserts_nothing_staged(&host);
    assert!(!host.paths.boot_files(Slot::B).0.exists());
    assert!(!host.paths.reboot_required.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_backs_off_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{port}/v1/update/");
    let host = Host::new(
        &url,
        &key,
        "WELLCAR_RETRY_DELAY=10s\nWELLCAR_CHECK_INTERVAL=30m\n",
    );
    let config = crate::config::Config::load(&host.paths.config_files).unwrap();
    let mut agent = host.agent();
    let (delays, mut agent) = blocking(move || {
        let mut delays = Vec::new();
        for _ in 0..3 {
            let err = agent.check(InstallSource::Scheduler).unwrap_err();
            assert!(err.to_string().contains(&port.to_string()), "{err}");
            assert_eq!(agent.state().operation(), Operation::Idle);
            delays.push(crate::schedule::next_delay(
                &config,
                agent.state().consecutive_failures(),
                None,
                0.0,
            ));
        }
        (delays, agent)
    })
    .await;
    assert_eq!(delays, [10, 20, 40].map(Duration::from_secs));
    assert_eq!(agent.state().consecutive_failures(), 3);
    assert!(agent.state().last_error.is_some());
    // The server comes up on that address.
    let server = Server::start(dir.path(), port).await;
    let config = crate::config::Config::load(&host.paths.config_files).unwrap();
    let (outcome, agent) =
        blocking(move || (agent.check(InstallSource::Scheduler).unwrap(), agent)).await;
    assert_eq!(outcome, NO_UPDATE_POLL_1800);
    assert_eq!(agent.state().consecutive_failures(), 0);
    assert_eq!(
        crate::schedule::next_delay(&config, 0, outcome.poll_interval(), 0.0),
        Duration::from_secs(1800),
        "back to the server's poll interval"
    );
    assert_eq!(server.instance().await.facts.version, "1.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_is_reported_once() {
    let (_dir, _key, _payload, server, host) = offered("").await;
    let mut agent = host.agent();
    let (outcome, mut agent) =
        blocking(move || (agent.check(InstallSource::Scheduler).unwrap(), agent)).await;
    assert!(matches!(outcome, CheckOutcome::Staged { .. }));
    // The new slot failed to boot: GRUB fell back to A, still 1.0.0, new boot id.
    host.boot("1.0.0", Slot::A);
    let (outcome, mut agent) =
        blocking(move || (agent.check(InstallSource::Scheduler).unwrap(), agent)).await;
    assert!(
        matches!(outcome, CheckOutcome::NoUpdate { .. }),
        "the server must not re-offer: {outcome:?}"
    );
    assert_eq!(agent.state().operation(), Operation::Idle);
    assert!(agent.state().previous_version.is_none());
    let events = server.events().await;
    assert_eq!(events.last().unwrap(), &(3, 0, Some(44), None));
    let instance = server.instance().await;
    assert_eq!(
        (instance.status.as_str(), instance.last_error_code),
        ("error", Some(44))
    );
    // Further checks, also after another reboot, do not report it again.
    host.boot("1.0.0", Slot::A);
    for _ in 0..2 {
        agent = blocking(move || {
            agent.check(InstallSource::Scheduler).unwrap();
            agent
        })
        .await;
    }
    let rollbacks = server
        .events()
        .await
        .iter()
        .filter(|e| e.2 == Some(44))
        .count();
    assert_eq!(rollbacks, 1);
}

/// The real daemon binary, killed with SIGKILL at many points of an update (and once with a
/// simulated power cut: new boot id) and restarted each time, ends with the update staged exactly as an uninterrupted run would, every event
/// reported, and no reboot before the slot was staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_any_step_then_restart_continues() {
    let config = "REBOOT_STRATEGY=reboot\nWELLCAR_FIRST_CHECK_DELAY=0s\nWELLCAR_RETRY_DELAY=1s\n";
    let (_dir, _key, payload, server, host) = offered(config).await;
    // Slow transfers so kills land mid-download: ~8 MiB at 64 KiB per 12 ms, ~1.5 s a download.
    server.relay.slow_ms.store(12, Ordering::SeqCst);
    let rebooted = host.dir.path().join("rebooted");
    let root = host.paths.state_dir.ancestors().nth(4).unwrap().to_owned();
    assert_eq!(HostPaths::under_root(&root).state_dir, host.paths.state_dir);
    let spawn = || {
        Daemon::start(
            &root,
            &[
                "--reboot-command".into(),
                format!("touch {}", rebooted.display()),
                "--sync-interval".into(),
                "131072".into(),
                "--transfer-retry-secs".into(),
                "0".into(),
            ],
        )
    };
    let store = crate::state::StateStore::new(&host.paths.state_dir);
    // Each run: start the daemon, watch status.json closely, SIGKILL it as soon as `kill_when`
    // holds (or after `limit`). Returns the state seen at the kill. The kill time is the
    // scenario (kills at arbitrary points), so reaching `limit` is not a failure here; what the
    // kills hit is asserted below.
    let run_and_kill = |kill_when: &dyn Fn(&crate::state::AgentState) -> bool, limit: Duration| {
        let mut child = spawn();
        let start = std::time::Instant::now();
        let mut at_kill = None;
        while start.elapsed() < limit {
            if let Ok(state) = store.load() {
                assert!(
                    !rebooted.exists() || state.phase.staged().is_some(),
                    "rebooted before the update was staged"
                );
                if kill_when(&state) {
                    at_kill = Some(state);
                    break;
                }
            }
            // Poll interval of the watch (not a wait for something to happen).
            std::thread::sleep(Duration::from_millis(1));
        }
        child.sigkill();
        at_kill.or_else(|| store.load().ok())
    };
    let op_progress = |s: &crate::state::AgentState| (s.operation(), (s.progress() * 100.0) as u32);
    let mut seen = Vec::new();
    let (seen_ref, run_ref, rebooted_ref, host_ref) = (&mut seen, &run_and_kill, &rebooted, &host);
    let outcome = blocking_scope(move || {
        // Targeted kills: mid-download (twice), while verifying, while finalizing.
        for (target, min_progress) in [
            (Operation::Downloading, 0.2),
            (Operation::Downloading, 0.6),
            (Operation::Verifying, 0.0),
            (Operation::Finalizing, 0.0),
        ] {
            let state = run_ref(
                &|s| s.operation() == target && s.progress() >= min_progress,
                Duration::from_secs(30),
            );
            seen_ref.push(state.as_ref().map(op_progress));
            if min_progress == 0.6 {
                // A power cut mid-download: the machine comes back on the same slot with a new
                // boot id; the download resumes as after a daemon restart.
                host_ref.boot("1.0.0", Slot::A);
            }
        }
        // Then kills after growing delays until the update is staged and the reboot ran.
        let mut delay = Duration::from_millis(100);
        for _ in 0..30 {
            let state = run_ref(&|_| false, delay);
            seen_ref.push(state.as_ref().map(op_progress));
            if state.is_some_and(|s| s.operation() == Operation::UpdatedNeedReboot)
                && rebooted_ref.exists()
            {
                return true;
            }
            delay += Duration::from_millis(150);
        }
        false
    });
    assert!(outcome, "never finished; states at kills: {seen:?}");
    let killed_in = |ops: &[Operation]| seen.iter().flatten().any(|(op, _)| ops.contains(op));
    assert!(
        killed_in(&[Operation::Downloading]),
        "no kill mid-download: {seen:?}"
    );
    assert!(
        killed_in(&[Operation::Verifying, Operation::Finalizing]),
        "no kill between download and staging: {seen:?}"
    );
    let kills = seen.len();
    asserts_staged(&host, &payload);
    let state = store.load().unwrap();
    assert_eq!(state.operation(), Operation::UpdatedNeedReboot);
    assert!(state.outbox.is_empty(), "{:?}", state.outbox);
    let events = server.events().await;
    for wanted in [(13, 1), (14, 1), (3, 1)] {
        assert!(
            events.iter().any(|e| (e.0, e.1) == wanted),
            "event {wanted:?} missing: {events:?}"
        );
    }
    assert!(
        events.iter().all(|e| e.1 != 0),
        "no error reported: {events:?}"
    );
    // Resumed, never restarted: one whole download, then ranges whose start only grows.
    let ranges = server.relay.ranges.lock().unwrap().clone();
    assert_eq!(
        server.relay.full_gets.load(Ordering::SeqCst),
        1,
        "{ranges:?}"
    );
    let resume_points: Vec<u64> = ranges
        .iter()
        .filter_map(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .collect();
    assert!(
        !resume_points.is_empty(),
        "a restart resumed with Range: {ranges:?}"
    );
    assert!(
        resume_points.windows(2).all(|w| w[0] <= w[1]),
        "resume points never go back: {resume_points:?}"
    );
    let served = server.relay.served.load(Ordering::SeqCst);
    eprintln!(
        "{kills} kills, states at kills: {seen:?}, ranges {ranges:?}, served {served} of {}",
        payload.size
    );
}

/// `update_engine_client -update` against the running daemon over D-Bus (a private bus): the
/// on-demand check installs, the client prints Flatcar's status lines while waiting and exits
/// 0; with `REBOOT_STRATEGY=off` the machine stays in UPDATED_NEED_REBOOT and does not reboot;
/// `-reset_status` then takes the daemon back to IDLE (update_engine's ResetStatus).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_engine_client_update_drives_the_daemon() {
    let (_dir, _key, payload, server, host) = offered("WELLCAR_FIRST_CHECK_DELAY=1h\n").await;
    let rebooted = host.dir.path().join("rebooted");
    let root = host.paths.state_dir.ancestors().nth(4).unwrap().to_owned();
    let bus = wellcar_test_support::dbus::PrivateBus::start(host.dir.path());
    let mut daemon = Daemon::start(
        &root,
        &[
            "--reboot-command".into(),
            format!("touch {}", rebooted.display()),
            "--dbus-address".into(),
            bus.address().into(),
        ],
    );
    let client = daemon_binary().with_file_name("update_engine_client");
    let uec = {
        let address = bus.address().to_owned();
        move |flag: &'static str| {
            std::process::Command::new(&client)
                .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
                .env("UPDATE_ENGINE_CLIENT_POLL_MS", "300")
                .arg(flag)
                .output()
                .unwrap()
        }
    };
    let out = {
        let uec = uec.clone();
        // The service is up once -status answers.
        blocking(move || {
            wait_until(
                "the daemon's D-Bus service",
                Duration::from_secs(30),
                || uec("-status").status.success().then_some(()),
            );
            uec("-update")
        })
        .await
    };
    // The daemon makes its reboot decision right after it records the check the client waited
    // for, on the same thread: once it has handled a second request, a wrong reboot would have
    // run (or would still block the loop, and this wait would fail).
    let store = crate::state::StateStore::new(&host.paths.state_dir);
    let second = crate::client::request_check(&store).unwrap();
    blocking(move || {
        wait_until(
            "the daemon to handle a second check request",
            Duration::from_secs(30),
            || {
                store
                    .load()
                    .ok()
                    .filter(|s| s.handled_request.as_deref() == Some(second.as_str()))
            },
        )
    })
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("Update succeeded -- reboot needed."),
        "{stderr}"
    );
    assert!(
        stdout.ends_with(&format!(
            "CURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT\nNEW_VERSION=1.1.0\nNEW_SIZE={}\n",
            payload.size
        )),
        "{stdout}"
    );
    assert!(stdout.contains("LAST_CHECKED_TIME="), "{stdout}");
    asserts_staged(&host, &payload);
    assert!(host.paths.reboot_required.exists());
    assert!(!rebooted.exists(), "REBOOT_STRATEGY=off never reboots");
    let (reset, status) = blocking(move || (uec("-reset_status"), uec("-status"))).await;
    daemon.sigkill();
    assert!(reset.status.success(), "{reset:?}");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("CURRENT_OP=UPDATE_STATUS_IDLE\nNEW_VERSION=0.0.0\nNEW_SIZE=0\n"),
        "{status}"
    );
    assert_eq!(server.events().await, INSTALLED_EVENTS);
}

/// The daemon against a server that is down (connections accepted and closed at once): its
/// retries back off by doubling; once the server is up on that address, the next check gets
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_backs_off_while_the_server_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = down.local_addr().unwrap();
    let host = Host::new(
        &format!("http://{addr}/v1/update/"),
        &key,
        "WELLCAR_FIRST_CHECK_DELAY=0s\nWELLCAR_RETRY_DELAY=300ms\n",
    );
    let root = host.paths.state_dir.ancestors().nth(4).unwrap().to_owned();
    let mut daemon = Daemon::start(&root, &[]);
    // A thread takes the daemon's first four connections, timing each as it arrives, then
    // closes the listener; the test waits for each attempt with a deadline.
    let (attempt, attempts) = std::sync::mpsc::channel();
    let acceptor = std::thread::spawn(move || {
        for _ in 0..4 {
            let Ok((conn, _)) = down.accept() else {
                return;
            };
            let _ = attempt.send(std::time::Instant::now());
            drop(conn);
        }
    });
    let attempts = blocking(move || {
        (1..=4)
            .map(|n| {
                attempts
                    .recv_timeout(Duration::from_secs(30))
                    .unwrap_or_else(|_| panic!("the daemon made no attempt {n} within 30 s"))
            })
            .collect::<Vec<_>>()
    })
    .await;
    acceptor.join().unwrap();
    let gaps: Vec<f64> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    // 300 ms, 600 ms, 1200 ms, each ±1/9: only lower bounds, a loaded machine adds delay. The
    // third gap alone shows the doubling: at least 1.06 s with a 300 ms retry delay.
    for (gap, expected) in gaps.iter().zip([0.3, 0.6, 1.2]) {
        assert!(*gap >= expected * 8.0 / 9.0 - 0.01, "gaps {gaps:?}");
    }
    let state = crate::state::StateStore::new(&host.paths.state_dir)
        .load()
        .unwrap();
    assert!(state.consecutive_failures() >= 3, "{state:?}");
    // The server comes back on that address (the listener above is closed).
    let server = Server::start(dir.path(), addr).await;
    let store = crate::state::StateStore::new(&host.paths.state_dir);
    blocking(move || {
        wait_until(
            "the daemon to get through after the server came back",
            Duration::from_secs(30),
            || {
                store
                    .load()
                    .ok()
                    .filter(|s| s.consecutive_failures() == 0 && s.last_checked_time > 0)
            },
        )
    })
    .await;
    daemon.sigkill();
    assert_eq!(server.instance().await.facts.version, "1.0.0");
}

/// A restart right after the previous run's verification moved kernel and initramfs into place
/// but before it recorded that: the complete checkpoint cannot be verified again (its partial
/// files are gone), so the agent downloads once more instead of reporting a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_verification_but_before_recording_it_downloads_again() {
    use wellcar_payload::{ApplyPolicy, InstallTargets, Installer, PayloadHead};
    let (_dir, _key, payload, server, host) = offered("").await;
    let agent = host.agent();
    // What the earlier run did: the whole payload written, checkpoint complete, `finish` done.
    let (kernel, initramfs) = host.paths.boot_files(Slot::B);
    std::fs::create_dir_all(kernel.parent().unwrap()).unwrap();
    let mut file = std::fs::File::open(&payload.path).unwrap();
    let trusted = wellcar_payload::TrustedKeys::from_dir(&host.paths.trusted_keys).unwrap();
    let head = PayloadHead::read(&mut file)
        .unwrap()
        .authenticate(&trusted)
        .unwrap();
    let targets = InstallTargets {
        usr: crate::slots::PartitionWindow::open(host.paths.disk.as_ref().unwrap(), Slot::B)
            .unwrap(),
        kernel,
        initramfs,
    };
    let mut installer = Installer::new(
        head,
        &ApplyPolicy::new("amd64-usr", Some("1.0.0".into())),
        targets,
    )
    .unwrap();
    installer.write_from(&mut file).unwrap();
    let checkpoint = installer.checkpoint().clone();
    installer.finish().unwrap();
    use sha2::Digest as _;
    let state = crate::state::AgentState {
        aleph_version: Some("1.0.0".into()),
        ..crate::state::AgentState::in_phase(Phase::Verifying(crate::state::Download {
            offer: crate::state::Offer {
                version: "1.1.0".into(),
                urls: vec![format!("{}/1.1.0/wellcar_update.bin", server.payload_base)],
                size: payload.size,
                sha256: hex::encode(sha2::Sha256::digest(std::fs::read(&payload.path).unwrap())),
                target: Slot::B,
                is_delta: false,
            },
            received: checkpoint.payload_offset,
            checkpoint: Some(checkpoint),
            finish_reported: true,
        }))
    };
    agent.store().save(&state).unwrap();
    let mut agent = host.agent();
    let (result, agent) = blocking(move || (agent.resume_pending(), agent)).await;
    assert_eq!(result.unwrap().as_deref(), Some("1.1.0"));
    assert_eq!(agent.state().operation(), Operation::UpdatedNeedReboot);
    assert_eq!(
        server.relay.full_gets.load(Ordering::SeqCst),
        1,
        "downloaded once more"
    );
    asserts_staged(&host, &payload);
    let events = server.events().await;
    assert_eq!(
        events,
        [(3, 1, None, None)],
        "no error reported, 14/1 not repeated"
    );
}

/// A one-answer HTTP server on loopback: every request gets `body` as `text/xml`.
fn canned_omaha(body: String) -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/update/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains("</request>") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
    });
    url
}

/// An offer whose version the boot state could never record (not an OS version) is refused at
/// the check, before anything is downloaded or the inactive slot is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_with_a_version_that_is_not_an_os_version_is_refused_before_download() {
    use wellcar_omaha::{Action, AppResponse, Manifest, Package, Response, UpdateCheckResponse};
    let offer = |version: &str| {
        Response {
            server: "canned".into(),
            elapsed_seconds: 0,
            elapsed_days: Some(7000),
            apps: vec![AppResponse {
                app_id: WELLCAR_APP_ID.into(),
                status: "ok".into(),
                ping_ok: true,
                update_check: Some(UpdateCheckResponse {
                    status: "ok".into(),
                    poll_interval: Some(1800),
                    codebases: vec!["http://127.0.0.1:9/packages/".into()],
                    manifests: vec![Manifest {
                        version: version.into(),
                        packages: vec![Package {
                            name: "wellcar_update.bin".into(),
                            sha1_base64: None,
                            sha256_hex: None,
                            size: 10,
                            required: Some(true),
                        }],
                        actions: vec![Action {
                            event: "postinstall".into(),
                            sha256_base64: Some(
                                "stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA=".into(),
                            ),
                            ..Action::default()
                        }],
                        ..Manifest::default()
                    }],
                }),
                event_acks: 0,
            }],
        }
        .to_xml()
    };
    let url = canned_omaha(offer("1.2"));
    let host = Host::new(&url, &key(), "");
    let mut agent = host.agent();
    let (result, agent) = blocking(move || (agent.check(InstallSource::Scheduler), agent)).await;
    let err = result.expect_err("a 1.2 offer is refused");
    assert!(
        matches!(&err, crate::agent::AgentError::Omaha { reason, .. }
            if reason.starts_with("offered version: ") && reason.contains("\"1.2\"")),
        "{err}"
    );
    assert_eq!(
        agent.state().phase,
        Phase::Idle { paused: None },
        "nothing accepted"
    );
    assert_eq!(agent.state().consecutive_failures(), 1);
    assert_eq!(host.boot_state().b, wellcar_bootstate::SlotState::empty());
}

/// A payload whose signed manifest is another version than the server offered (published as
/// 1.1.0, built as 1.2.0) is refused as soon as its head is authenticated: nothing is written to
/// the inactive slot, nothing is staged, and the failure is reported (error code 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_whose_manifest_is_another_version_than_the_offer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let payload = make_payload(dir.path(), "1.2.0", &key);
    let server = Server::start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    server.publish("1.1.0", &payload.path).await;
    let host = Host::new(&server.omaha_url(), &key, "");
    let mut agent = host.agent();
    let (result, agent) = blocking(move || (agent.check(InstallSource::Scheduler), agent)).await;
    let err = result.expect_err("a 1.2.0 payload offered as 1.1.0 is refused");
    match &err {
        crate::agent::AgentError::OfferVersionMismatch { offered, manifest } => {
            assert_eq!((offered.as_str(), manifest.as_str()), ("1.1.0", "1.2.0"))
        }
        other => panic!("expected OfferVersionMismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("offered as version 1.1.0")
            && message.contains("manifest is version 1.2.0"),
        "{message}"
    );
    assert_eq!(agent.state().operation(), Operation::Idle);
    assert_eq!(agent.state().phase, Phase::Idle { paused: None });
    assert_eq!(agent.state().last_error.as_deref(), Some(message.as_str()));
    assert!(agent.state().phase.checkpoint().is_none());
    assert!(!agent.store().legacy_checkpoint_path().exists());
    assert_eq!(
        server.events().await,
        [(13, 1, None, None), (3, 0, Some(12), None)]
    );
    asserts_nothing_staged(&host);
    assert!(
        host.slot_bytes(Slot::B, MIB).iter().all(|&b| b == 0),
        "nothing written to the inactive slot"
    );
    assert!(!host.paths.boot_files(Slot::B).0.exists());
    assert!(!host.paths.reboot_required.exists());
}

/// Finding "slot invalidation": the inactive slot was invalidated (its root hash cleared, so a
/// rollback to it was refused afterwards) before any payload byte was authenticated. Slot B holds
/// the earlier good 0.9.0 (a valid rollback target); the server offers a payload signed by a
/// key the host does not trust. The offer fails authentication (reported, error code 12) and
/// B's boot state, root hash included, is exactly as before: a rollback to it is still allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_failing_authentication_leaves_the_inactive_slot_boot_state_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let untrusted = SigningKey::from_bytes(&[0x42; 32]);
    let payload = make_payload(dir.path(), "1.1.0", &untrusted);
    let server = Server::start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    server.publish("1.1.0", &payload.path).await;
    let host = Host::new(&server.omaha_url(), &key(), "");
    let earlier = RootHash::from_bytes([0x0b; 32]);
    wellcar_bootstate::Esp::new(&host.paths.esp)
        .update(|state| {
            *state.slot_mut(Slot::B) = wellcar_bootstate::SlotState {
                priority: 1,
                tries: 0,
                successful: true,
                root_hash: Some(earlier),
                version: "0.9.0".into(),
            };
            state.prioritize(Slot::A);
            Ok(())
        })
        .unwrap();
    let before = host.boot_state();
    assert!(
        before.clone().rollback(Slot::A).is_ok(),
        "B is a rollback target"
    );
    let mut agent = host.agent();
    let (result, agent) = blocking(move || (agent.check(InstallSource::Scheduler), agent)).await;
    let err = result.expect_err("a payload signed by an untrusted key is refused");
    assert!(err.to_string().contains("error code 12"), "{err}");
    assert_eq!(agent.state().phase, Phase::Idle { paused: None });
    assert_eq!(
        server.events().await,
        [(13, 1, None, None), (3, 0, Some(12), None)]
    );
    let after = host.boot_state();
    assert_eq!(after.b.root_hash, Some(earlier), "B's root hash kept");
    assert_eq!(after, before, "boot state untouched");
    assert!(
        after.clone().rollback(Slot::A).is_ok(),
        "rollback still allowed"
    );
}

/// Issue part 6 ("response size is bounded"): an answer one byte over
/// [`wellcar_omaha::MAX_RESPONSE_BYTES`] is refused while reading, with an error naming the
/// server and the limit, and nothing in it is acted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_answer_is_refused_naming_the_limit() {
    let body = format!(
        "<response protocol=\"3.0\">{}</response>",
        " ".repeat(wellcar_omaha::MAX_RESPONSE_BYTES)
    );
    let url = canned_omaha(body);
    let host = Host::new(&url, &key(), "");
    let mut agent = host.agent();
    let (result, agent) = blocking(move || (agent.check(InstallSource::Scheduler), agent)).await;
    let err = result
        .expect_err("an oversized answer is refused")
        .to_string();
    assert!(err.contains(&url), "{err}");
    let limit = format!("at most {} bytes", wellcar_omaha::MAX_RESPONSE_BYTES);
    assert!(err.contains(&limit), "{err}");
    assert_eq!(agent.state().phase, Phase::Idle { paused: None });
    assert_eq!(agent.state().consecutive_failures(), 1);
}
