//! `etcd-lock` and `best-effort` with the real daemon against a real etcd
//! (`wellcar_test_support::etcd`, v2 keys API), the semaphore read and written as locksmith
//! does (`wellcar-locksmith`), so a Flatcar host sharing the etcd sees the same holders.

use wellcar_locksmith::{EtcdConfig, EtcdLock, Semaphore};
use wellcar_test_support::etcd::Etcd;

use super::*;

fn semaphore(etcd: &Etcd) -> (EtcdLock, Semaphore) {
    let lock = EtcdLock::new(&EtcdConfig::with_endpoints([etcd.url.as_str()]), None).unwrap();
    let s = lock.get().unwrap();
    (lock, s)
}

fn holders(etcd: &Etcd) -> Vec<String> {
    semaphore(etcd).1.holders().to_vec()
}

fn wait_for_holders(etcd: &Etcd, wanted: &[&str]) {
    wait_until(
        &format!("etcd holders {wanted:?}"),
        Duration::from_secs(30),
        || (holders(etcd) == wanted).then_some(()),
    );
}

/// locksmith's flow: the semaphore is full (another machine), so no reboot; once it is
/// unlocked (`locksmithctl unlock other-machine`), the daemon locks and reboots; the hold
/// survives the reboot until the new boot is marked good, then the daemon unlocks.
#[test]
fn etcd_lock_no_reboot_without_the_lock_unlock_once_marked_good() {
    let etcd = Etcd::start();
    let (lock, _) = semaphore(&etcd);
    lock.lock("other-machine").unwrap();
    let host = StagedHost::new(&format!(
        "REBOOT_STRATEGY=etcd-lock\nLOCKSMITHD_ENDPOINT={}\nWELLCAR_LOCK_RETRY_DELAY=200ms\n",
        etcd.url
    ));
    let mut daemon = host.daemon();
    host.log_waiter(LOCK_REFUSED, 1)();
    assert!(!host.rebooted().exists(), "rebooted without the lock");
    assert_eq!(holders(&etcd), ["other-machine"]);
    lock.unlock("other-machine").unwrap();
    wait_until("the reboot", Duration::from_secs(30), || {
        host.rebooted().exists().then_some(())
    });
    assert_eq!(holders(&etcd), [MACHINE]);
    daemon.sigkill();

    assert_eq!(host.reboot_into_next(), Slot::B);
    let _daemon = host.daemon();
    host.log_waiter(WAITING_FOR_GOOD, 1)();
    assert_eq!(
        holders(&etcd),
        [MACHINE],
        "held until the boot is marked good"
    );
    host.mark_good(Slot::B);
    wait_for_holders(&etcd, &[]);
    let (_, s) = semaphore(&etcd);
    assert_eq!((s.semaphore, s.max), (1, 1), "{s:?}");
}

/// A lock held from before (`kill -9` between lock and reboot) is unlocked at start (booted
/// slot good); `best-effort` with `LOCKSMITHD_ENDPOINT` then takes the etcd lock to reboot.
#[test]
fn best_effort_with_an_endpoint_uses_the_etcd_lock() {
    let etcd = Etcd::start();
    let (lock, _) = semaphore(&etcd);
    lock.set_max(2).unwrap();
    lock.lock(MACHINE).unwrap();
    lock.lock("other-machine").unwrap();
    let host = StagedHost::new(&format!(
        "REBOOT_STRATEGY=best-effort\nLOCKSMITHD_ENDPOINT={}\nWELLCAR_LOCK_RETRY_DELAY=200ms\n\
         REBOOT_WINDOW_START={}\nREBOOT_WINDOW_LENGTH=1h\n",
        etcd.url,
        local_hh_mm(120)
    ));
    let _daemon = host.daemon();
    wait_for_holders(&etcd, &["other-machine"]);
    host.log_waiter(WAITING_FOR_WINDOW, 1)();
    assert!(!host.rebooted().exists(), "rebooted outside the window");
    host.configure(&format!(
        "REBOOT_STRATEGY=best-effort\nLOCKSMITHD_ENDPOINT={}\nWELLCAR_LOCK_RETRY_DELAY=200ms\n",
        etcd.url
    ));
    wait_until("the reboot", Duration::from_secs(30), || {
        host.rebooted().exists().then_some(())
    });
    let mut now = holders(&etcd);
    now.sort();
    let mut wanted = vec![MACHINE.to_owned(), "other-machine".to_owned()];
    wanted.sort();
    assert_eq!(now, wanted);
}

/// `best-effort` without `LOCKSMITHD_ENDPOINT` is a plain reboot (no etcd needed).
#[test]
fn best_effort_without_an_endpoint_reboots() {
    let host = StagedHost::new("REBOOT_STRATEGY=best-effort\n");
    let _daemon = host.daemon();
    wait_until("the reboot", Duration::from_secs(30), || {
        host.rebooted().exists().then_some(())
    });
}
