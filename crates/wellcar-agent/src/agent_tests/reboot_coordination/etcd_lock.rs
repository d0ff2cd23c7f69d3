//! `REBOOT_STRATEGY=etcd-lock` across the fleet, against a real etcd (locksmith's semaphore,
//! v2 keys API) started by the test, and the real `locksmithctl`.

use std::time::{Duration, Instant};

use wellcar_test_support::etcd::Etcd;
use wellcar_test_support::wait::wait_until;

use super::lock_history::{self, Change};
use super::{max_overlap, BootGate, Fleet, FleetHost, HOSTS};
use crate::agent_tests::fixture::{blocking_scope, daemon_binary};

/// locksmith's semaphore key (no `LOCKSMITHD_GROUP`).
const SEMAPHORE: &str = "coreos.com/updateengine/rebootlock/semaphore";

/// Refusals every other host gets after the holder died, before the test unlocks it.
const REFUSALS_BEFORE_UNLOCK: usize = 3;

/// What the agent logs when the semaphore refused it (`reboot_lock`).
const REFUSED: &str = "reboot lock not taken";

async fn fleet(etcd: &Etcd) -> Fleet {
    let mut fleet = Fleet::new(
        |_| {},
        |_| {
            format!(
                "REBOOT_STRATEGY=etcd-lock\nLOCKSMITHD_ENDPOINT={}\nWELLCAR_LOCK_RETRY_DELAY=0.2s\n",
                etcd.url
            )
        },
    )
    .await;
    // At each reboot the harness sees, the rebooting host is in the semaphore (it cannot have
    // let go: its new boot is not up yet).
    let url = etcd.url.clone();
    fleet.holder_probe = Some(Box::new(move |id| holders(&url).contains(&id.to_owned())));
    fleet
}

/// The semaphore's history, once every host of `fleet` was granted it and nobody holds it
/// any more (the last release follows the last boot marked good by up to the agent's
/// steady-state poll).
fn settled_history(fleet: &Fleet, endpoint: &str) -> Vec<lock_history::Step> {
    let ids: Vec<String> = fleet.hosts.iter().map(FleetHost::machine).collect();
    blocking_scope(|| {
        wait_until(
            "every host to have taken and released the semaphore",
            Duration::from_secs(60),
            || {
                let steps = lock_history::etcd_v2_history(endpoint, SEMAPHORE);
                let all_granted = ids.iter().all(|id| {
                    steps
                        .iter()
                        .any(|s| s.change == Change::Granted(id.clone()))
                });
                let free = steps.last().is_some_and(|s| s.holders.is_empty());
                (all_granted && free).then_some(steps)
            },
        )
    })
}

/// The semaphore's holders now.
fn holders(endpoint: &str) -> Vec<String> {
    let url = format!("{endpoint}/v2/keys/{SEMAPHORE}");
    let mut response = ureq::get(&url).call().unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    let node: serde_json::Value = serde_json::from_str(&text).unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(node["node"]["value"].as_str().expect("semaphore value")).unwrap();
    doc["holders"]
        .as_array()
        .map(|a| a.iter().map(|h| h.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The real `locksmithctl` with `args` against `endpoint`: its stdout.
fn locksmithctl(endpoint: &str, args: &[&str]) -> String {
    let program = daemon_binary().with_file_name("locksmithctl");
    assert!(
        program.exists(),
        "{} is missing: build it with `cargo build -p wellcar-locksmith`",
        program.display()
    );
    let out = std::process::Command::new(&program)
        .env("LOCKSMITHCTL_ENDPOINT", endpoint)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "locksmithctl {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Six agents on `etcd-lock` (locksmith's default max 1), all offered 1.1.0 at once: every
/// version of the semaphore (etcd's event history) has at most one holder, at most one host
/// is between reboot and steady state at a time, every host was a holder when it rebooted,
/// and all end on 1.1.0 with the semaphore empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lock_lets_one_host_reboot_at_a_time() {
    let started = Instant::now();
    let etcd = Etcd::start();
    let mut fleet = fleet(&etcd).await;
    fleet.drive(BootGate::Immediately, None);
    fleet.server_sees_all_updated().await;
    fleet.asserts_one_reboot_each();
    let steps = settled_history(&fleet, &etcd.url);
    let over = lock_history::over_grants(&steps, 1);
    assert_eq!(over, 0, "{steps:?}");
    assert_eq!(lock_history::peak(&steps), 1, "{steps:?}");
    for host in &fleet.hosts {
        let id = host.machine();
        let grants = steps
            .iter()
            .filter(|s| s.change == Change::Granted(id.clone()))
            .count();
        assert_eq!(grants, 1, "{id}: {steps:?}");
    }
    assert!(holders(&etcd.url).is_empty(), "every host let go");
    let (peak, at_peak) = max_overlap(&fleet.reboot_to_good_intervals());
    assert_eq!(peak, 1, "{at_peak:?}");
    eprintln!(
        "etcd-lock max 1: {HOSTS} hosts, {} semaphore versions, peak {} holders, {over} over-grants, {:?}",
        steps.len(),
        lock_history::peak(&steps),
        started.elapsed()
    );
}

/// A holder that dies right after its reboot command keeps the semaphore (locksmith has no
/// lease): while every other host is refused three more times, it stays the holder
/// (`locksmithctl status` shows it); `locksmithctl unlock <id>` frees it, and then the
/// others go through, one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lock_dead_holder_stays_until_locksmithctl_unlock() {
    let started = Instant::now();
    let etcd = Etcd::start();
    let mut fleet = fleet(&etcd).await;
    let url = etcd.url.clone();
    let mut refusals_at_death: Option<Vec<usize>> = None;
    let mut unlocked_at: Option<i64> = None;
    let mut status_before = String::new();
    let mut hook = |dead: usize, hosts: &[FleetHost]| {
        if unlocked_at.is_some() {
            return;
        }
        let refusals: Vec<usize> = hosts
            .iter()
            .map(|h| h.log().matches(REFUSED).count())
            .collect();
        let at_death = refusals_at_death.get_or_insert_with(|| refusals.clone());
        // Every other host was refused REFUSALS_BEFORE_UNLOCK more times since the death (more
        // would only stretch the test: the refused agents' backoff doubles in lockstep), and
        // the dead host still holds the semaphore.
        let waited = (0..hosts.len())
            .filter(|&i| i != dead)
            .all(|i| refusals[i] >= at_death[i] + REFUSALS_BEFORE_UNLOCK);
        if waited {
            let id = hosts[dead].machine();
            assert_eq!(
                holders(&url),
                std::slice::from_ref(&id),
                "the dead host still holds the lock"
            );
            status_before = locksmithctl(&url, &["status"]);
            locksmithctl(&url, &["unlock", &id]);
            unlocked_at = Some(super::now_ms());
        }
    };
    let dead = fleet
        .drive(BootGate::Immediately, Some(&mut hook))
        .expect("a host died holding the lock");
    let dead_id = fleet.hosts[dead].machine();
    let unlocked_at = unlocked_at.expect("the others finished without an unlock");
    assert!(
        status_before.contains("Available: 0") && status_before.contains(&dead_id),
        "{status_before}"
    );
    fleet.server_sees_all_updated().await;
    fleet.asserts_one_reboot_each();
    let steps = settled_history(&fleet, &etcd.url);
    let over = lock_history::over_grants(&steps, 1);
    assert_eq!(over, 0, "{steps:?}");
    // The dead host's hold ended by the unlock, before anyone else was granted.
    let first_other = steps
        .iter()
        .position(|s| matches!(&s.change, Change::Granted(id) if *id != dead_id))
        .unwrap();
    assert_eq!(
        steps[first_other - 1].change,
        Change::Released(dead_id.clone()),
        "{steps:?}"
    );
    let died = fleet.hosts[dead].times.reboots[0];
    eprintln!(
        "etcd-lock dead holder: held {} ms, until locksmithctl unlock (every other host refused {REFUSALS_BEFORE_UNLOCK} more times meanwhile); {over} over-grants; {:?}",
        unlocked_at - died,
        started.elapsed()
    );
}
