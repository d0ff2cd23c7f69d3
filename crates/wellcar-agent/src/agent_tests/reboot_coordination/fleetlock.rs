//! `REBOOT_STRATEGY=fleetlock` across the fleet, against the FleetLock server inside the same
//! `wellcar server` that offers the update.

use std::time::{Duration, Instant};

use wellcar_test_support::wait::wait_until_async;

use super::lock_history::{self, Change};
use super::{max_overlap, BootGate, Fleet, FleetHost, HOSTS};

/// The lock group: the agents' `FLEETLOCK_GROUP` defaults to their update `GROUP`.
const GROUP: &str = "stable";

/// A fleet whose server grants `max` holders with leases of `lease_ttl`, its agents on
/// `fleetlock` against it.
async fn fleet(max: u32, lease_ttl: Duration) -> Fleet {
    Fleet::new(
        |s| {
            s.fleetlock.default_slots = max;
            s.fleetlock.lease_ttl = lease_ttl;
            s.fleetlock.expiry_interval = Duration::from_millis(100);
        },
        |server| {
            format!(
                "REBOOT_STRATEGY=fleetlock\nFLEETLOCK_URL={}/fleetlock\nWELLCAR_LOCK_RETRY_DELAY=0.2s\n",
                server.server.url()
            )
        },
    )
    .await
}

/// The group's history from the server's activity log, once every host was granted the lock
/// and nobody holds it any more (the last release follows the last boot marked good by up to
/// the agent's steady-state poll).
async fn history(fleet: &Fleet) -> lock_history::Fleetlock {
    let ids: Vec<String> = fleet.hosts.iter().map(FleetHost::machine).collect();
    wait_until_async(
        "every host to have taken and released the lock",
        Duration::from_secs(60),
        || async {
            let entries: Vec<wellcar_server::model::Activity> = fleet
                .server
                .api
                .get("/api/v1/activity?limit=100000")
                .await
                .unwrap();
            let h = lock_history::from_activity(&entries, GROUP);
            let all_granted = ids.iter().all(|id| {
                h.steps
                    .iter()
                    .any(|s| s.change == Change::Granted(id.clone()))
            });
            let free = h.steps.last().is_some_and(|s| s.holders.is_empty());
            (all_granted && free).then_some(h)
        },
    )
    .await
}

/// Grant and end (release, expiry or force-release) times of `id`'s holds, in order.
fn holds(steps: &[lock_history::Step], id: &str) -> Vec<(i64, Option<(i64, Change)>)> {
    let mut out: Vec<(i64, Option<(i64, Change)>)> = Vec::new();
    for step in steps.iter().filter(|s| s.change.id() == id) {
        let at = step.at_ms.expect("the activity log has times");
        match &step.change {
            Change::Granted(_) => out.push((at, None)),
            ended => {
                let open = out.last_mut().expect("an end after a grant");
                assert!(open.1.is_none(), "{id} released twice: {steps:?}");
                open.1 = Some((at, ended.clone()));
            }
        }
    }
    out
}

/// What every fleetlock run must show: never more than `max` holders (by the log's order and
/// by the server's own count at each grant), every reboot inside a hold of that host, every
/// hold of a live host released in steady state (after its new boot was marked good), and
/// at most `max` hosts at once between reboot and steady state (a `dead` host's stretch ends
/// when its lease was released). Returns the over-grants.
fn asserts_never_over_max(
    fleet: &Fleet,
    h: &lock_history::Fleetlock,
    max: usize,
    dead: Option<(usize, i64)>,
) -> usize {
    let over = lock_history::over_grants(&h.steps, max);
    assert_eq!(over, 0, "over-granted: {:?}", h.steps);
    assert!(lock_history::peak(&h.steps) <= max, "{:?}", h.steps);
    assert!(lock_history::peak(&h.steps) >= 1, "no grant logged");
    for (id, n, m) in &h.slots {
        assert!(n <= m && *m == max, "{id} got slot {n} of {m} (max {max})");
    }
    for host in &fleet.hosts {
        let id = host.machine();
        let holds = holds(&h.steps, &id);
        for &reboot in &host.times.reboots {
            assert!(
                holds.iter().any(
                    |(from, end)| *from <= reboot && end.as_ref().is_none_or(|e| reboot <= e.0)
                ),
                "{id} rebooted at {reboot} outside its holds {holds:?}"
            );
        }
    }
    let mut intervals = fleet.reboot_to_good_intervals();
    if let Some((host, released)) = dead {
        intervals[host].end = released;
    }
    let (peak, at_peak) = max_overlap(&intervals);
    assert!(
        peak <= max,
        "{peak} hosts between reboot and steady state: {at_peak:?}"
    );
    over
}

/// Six agents on `fleetlock`, all offered 1.1.0 at once: with max_holders 1 and then 2, no
/// more than that many hold the lock or are between reboot and steady state at any time, each
/// host takes the lock once, releases it in steady state (after its new boot was marked
/// good, never by lease expiry), and all end on 1.1.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetlock_never_lets_more_than_max_holders_reboot() {
    for max in [1, 2] {
        let started = Instant::now();
        let mut fleet = fleet(max as u32, Duration::from_secs(120)).await;
        fleet.drive(BootGate::Immediately, None);
        fleet.server_sees_all_updated().await;
        fleet.asserts_one_reboot_each();
        let h = history(&fleet).await;
        let over = asserts_never_over_max(&fleet, &h, max, None);
        for host in &fleet.hosts {
            let id = host.machine();
            let holds = holds(&h.steps, &id);
            assert_eq!(holds.len(), 1, "{id}: {holds:?}");
            let (_, end) = &holds[0];
            let (released, how) = end.clone().expect("released");
            assert_eq!(how, Change::Released(id.clone()), "in steady state");
            assert!(
                released >= host.times.good[0],
                "{id} released at {released} before its boot was marked good at {}",
                host.times.good[0]
            );
        }
        eprintln!(
            "fleetlock max_holders={max}: {HOSTS} hosts, peak {} holders, {over} over-grants, {:?}",
            lock_history::peak(&h.steps),
            started.elapsed()
        );
    }
}

/// A holder that dies right after its reboot command (powered off, never back) keeps its
/// slot until its lease ends; then the server releases it, logs the expiry, and the others
/// go through one at a time. The dead host, booted last, finishes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetlock_dead_holder_is_released_after_the_lease() {
    let started = Instant::now();
    let ttl = Duration::from_secs(5);
    let mut fleet = fleet(1, ttl).await;
    let mut noop = |_: usize, _: &[FleetHost]| {};
    let dead = fleet
        .drive(BootGate::Immediately, Some(&mut noop))
        .expect("a host died holding the lock");
    fleet.server_sees_all_updated().await;
    fleet.asserts_one_reboot_each();
    let h = history(&fleet).await;
    let dead_id = fleet.hosts[dead].machine();
    let dead_holds = holds(&h.steps, &dead_id);
    let (granted, end) = dead_holds[0].clone();
    let (expired, how) = end.expect("the dead holder's slot was freed");
    let over = asserts_never_over_max(&fleet, &h, 1, Some((dead, expired)));
    assert_eq!(how, Change::LeaseExpired(dead_id.clone()), "{:?}", h.steps);
    assert!(
        expired - granted >= ttl.as_millis() as i64,
        "released before its lease ended: granted {granted}, expired {expired}"
    );
    // The next grant to another host comes after the expiry.
    let next = h
        .steps
        .iter()
        .find(|s| matches!(&s.change, Change::Granted(id) if *id != dead_id))
        .and_then(|s| s.at_ms)
        .expect("another host got the lock");
    assert!(
        next >= expired,
        "granted at {next} while the dead holder held until {expired}"
    );
    let died = fleet.hosts[dead].times.reboots[0];
    eprintln!(
        "fleetlock dead holder: lease {ttl:?}; held {} ms from grant to expiry; group blocked {} ms from the death to the next grant; {over} over-grants; {:?}",
        expired - granted,
        next - died,
        started.elapsed()
    );
}
