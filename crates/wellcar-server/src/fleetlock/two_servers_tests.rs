//! Two servers (each its own connection pool, caches and expiry ticker, as two processes would
//! have) on one private PostgreSQL, driven over loopback HTTP.
//!
//! The over-grant check is strict in the direction that matters: a client counts itself as a
//! holder only between receiving its 200 and sending its steady-state, a window inside the
//! server's grant-to-release interval, so the count exceeding max_holders proves an over-grant;
//! while it holds, each client also counts the group's committed holders in the database
//! through a third, independent pool. Holding spans a database round trip, so two grants that
//! should have excluded each other overlap in both views.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::json;

use super::tests::{lock, unlock};
use crate::client::ApiClient;
use crate::db::{query_one, Db};
use crate::store::{RebootLockGroup, Role};
use crate::{params, RunningServer, Settings};

const MAX_HOLDERS: i64 = 2;
const CLIENTS: usize = 16;
const GRANTS_PER_CLIENT: usize = 8;
const GROUP: &str = "hammer";

async fn database() -> String {
    tokio::task::spawn_blocking(|| {
        wellcar_test_support::pg_cluster::shared_cluster()
            .unwrap_or_else(|e| panic!("postgresql tests need a server: {e}"))
            .create_database()
            .expect("creating a test database")
    })
    .await
    .unwrap()
}

async fn server(url: &str, dir: &std::path::Path, clock: &Arc<AtomicI64>) -> RunningServer {
    let mut s = Settings::new(url, "127.0.0.1:0".parse().unwrap());
    s.payload_dir = dir.join("payloads");
    s.max_connections = 8;
    s.fleetlock.expiry_interval = Duration::from_millis(20);
    s.fleetlock.lease_ttl = Duration::from_secs(600);
    let c = clock.clone();
    s.clock = Arc::new(move || c.load(Ordering::SeqCst));
    crate::spawn(s).await.unwrap()
}

async fn holders(db: &Arc<Db>, group: &'static str) -> i64 {
    db.read(move |c| {
        Ok(query_one(
            c,
            "SELECT COUNT(*) FROM fleetlock_holders WHERE group_name = $1",
            &params![group],
        )?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_postgres_never_over_grant() {
    let dir = tempfile::tempdir().unwrap();
    let url = database().await;
    let clock = Arc::new(AtomicI64::new(crate::now_ms()));
    let a = server(&url, &dir.path().join("a"), &clock).await;
    let b = server(&url, &dir.path().join("b"), &clock).await;
    let token = crate::test_server::token(&a, "ops", Role::Admin, crate::now_ms()).await;
    let admin = ApiClient::new(&b.url(), Some(&token));
    let g: RebootLockGroup = admin
        .call(
            Method::PUT,
            &super::admin::group_path(GROUP),
            &json!({"max_holders": MAX_HOLDERS}),
        )
        .await
        .unwrap();
    assert_eq!(g.max_holders, MAX_HOLDERS);
    let observer = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || Db::open(&url, 4))
            .await
            .unwrap()
            .unwrap()
    };
    let servers = [
        ApiClient::new(&a.url(), None),
        ApiClient::new(&b.url(), None),
    ];
    // Both slots can be held at once, one granted by each server; a third waits.
    assert_eq!(lock(&servers[0], "warm-a", GROUP).await.0, StatusCode::OK);
    assert_eq!(lock(&servers[1], "warm-b", GROUP).await.0, StatusCode::OK);
    for s in &servers {
        assert_eq!(lock(s, "warm-c", GROUP).await.0, StatusCode::CONFLICT);
    }
    assert_eq!(unlock(&servers[1], "warm-a", GROUP).await.0, StatusCode::OK);
    assert_eq!(unlock(&servers[0], "warm-b", GROUP).await.0, StatusCode::OK);
    const WARM_UP_GRANTS: usize = 2;
    let in_hold = Arc::new(AtomicI64::new(0));
    let peak = Arc::new(AtomicI64::new(0));
    let over_grants = Arc::new(AtomicU64::new(0));
    let db_over_grants = Arc::new(AtomicU64::new(0));
    let refusals = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let servers = servers.clone();
        let (in_hold, peak, over, db_over, refusals, observer) = (
            in_hold.clone(),
            peak.clone(),
            over_grants.clone(),
            db_over_grants.clone(),
            refusals.clone(),
            observer.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let id = format!("node-{client:02}");
            for round in 0..GRANTS_PER_CLIENT {
                // Lock through one server, unlock through the other, alternating.
                let (locker, unlocker) = if (client + round) % 2 == 0 {
                    (&servers[0], &servers[1])
                } else {
                    (&servers[1], &servers[0])
                };
                loop {
                    let (status, v) = lock(locker, &id, GROUP).await;
                    if status == StatusCode::OK {
                        break;
                    }
                    assert_eq!(status, StatusCode::CONFLICT, "{v}");
                    assert_eq!(v["kind"], "failed_lock_semaphore_full", "{v}");
                    refusals.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
                let now = in_hold.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                if now > MAX_HOLDERS {
                    over.fetch_add(1, Ordering::SeqCst);
                }
                if holders(&observer, GROUP).await > MAX_HOLDERS {
                    db_over.fetch_add(1, Ordering::SeqCst);
                }
                in_hold.fetch_sub(1, Ordering::SeqCst);
                let (status, v) = unlock(unlocker, &id, GROUP).await;
                assert_eq!(status, StatusCode::OK, "{v}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let groups: Vec<RebootLockGroup> = admin.get("/api/v1/fleetlock/groups").await.unwrap();
    let g = groups.iter().find(|g| g.name == GROUP).unwrap();
    let (over, db_over) = (
        over_grants.load(Ordering::SeqCst),
        db_over_grants.load(Ordering::SeqCst),
    );
    eprintln!(
        "fleetlock two servers, one postgres: {} grants, {} refusals (semaphore full), peak {} of {MAX_HOLDERS} holders, over-grants seen by clients {over}, by the database {db_over}",
        g.grants,
        refusals.load(Ordering::SeqCst),
        peak.load(Ordering::SeqCst)
    );
    assert_eq!((over, db_over), (0, 0), "over-grants");
    assert_eq!(
        g.grants,
        (CLIENTS * GRANTS_PER_CLIENT + WARM_UP_GRANTS) as i64,
        "every grant counted once"
    );
    assert!(g.holders.is_empty(), "{g:?}");
    // The activity log has one grant and one release per hold, each grant within the slots.
    let log: Vec<crate::model::Activity> = admin.get("/api/v1/activity?limit=10000").await.unwrap();
    let granted: Vec<_> = log
        .iter()
        .filter(|e| e.kind == "fleetlock-granted")
        .collect();
    let released = log
        .iter()
        .filter(|e| e.kind == "fleetlock-released")
        .count();
    assert_eq!(
        (granted.len(), released),
        (
            CLIENTS * GRANTS_PER_CLIENT + WARM_UP_GRANTS,
            CLIENTS * GRANTS_PER_CLIENT + WARM_UP_GRANTS
        )
    );
    for e in granted {
        assert!(
            e.message.contains(" of 2,") && !e.message.contains("slot 3"),
            "{}",
            e.message
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_expire_a_dead_holder_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = database().await;
    let clock = Arc::new(AtomicI64::new(crate::now_ms()));
    let a = server(&url, &dir.path().join("a"), &clock).await;
    let b = server(&url, &dir.path().join("b"), &clock).await;
    let client = ApiClient::new(&a.url(), None);
    assert_eq!(
        lock(&client, "dead-node", "default").await.0,
        StatusCode::OK
    );
    let other = ApiClient::new(&b.url(), None);
    assert_eq!(
        lock(&other, "next", "default").await.0,
        StatusCode::CONFLICT
    );
    clock.fetch_add(600_000, Ordering::SeqCst);
    let observer = a.state.db.clone();
    wellcar_test_support::wait::wait_until_async(
        "a sweep to release the dead holder",
        Duration::from_secs(30),
        || {
            let db = observer.clone();
            async move { (holders(&db, "default").await == 0).then_some(()) }
        },
    )
    .await;
    // Both tickers keep sweeping; let each run at least once more before counting.
    for s in [&a, &b] {
        super::expire_leases(&s.state).await.unwrap();
    }
    let expiries = a.state.metrics.fleetlock_expiries() + b.state.metrics.fleetlock_expiries();
    assert_eq!(expiries, 1, "exactly one process expired the lease");
    let logged = a
        .state
        .db
        .read(|c| crate::store::list_activity(c, None, 1000))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "fleetlock-lease-expired")
        .count();
    assert_eq!(logged, 1, "the expiry is logged once");
    assert_eq!(lock(&other, "next", "default").await.0, StatusCode::OK);
}
