//! FleetLock over real HTTP on loopback against a real SQLite database: bad input, re-entrancy,
//! max_holders, lease expiry, the admin API and its scopes, metrics.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::protocol::{MAX_BODY_BYTES, PROTOCOL_HEADER};
use crate::client::{ApiClient, Body};
use crate::store::{RebootLockGroup, Role};
use crate::{RunningServer, Settings};

const LEASE: Duration = Duration::from_secs(600);

pub(super) struct Lock {
    pub server: RunningServer,
    pub admin: ApiClient,
    pub anon: ApiClient,
    pub clock: Arc<AtomicI64>,
    _dir: tempfile::TempDir,
}

/// Sends a FleetLock request: `op` is `pre-reboot` or `steady-state`; `header` adds
/// `fleet-lock-protocol: true`. Returns the status and the decoded body.
pub(super) async fn fleetlock(
    client: &ApiClient,
    op: &str,
    header: bool,
    body: &[u8],
) -> (StatusCode, Value) {
    let mut headers = vec![("content-type", "application/json")];
    if header {
        headers.push((PROTOCOL_HEADER, "true"));
    }
    let (status, bytes) = client
        .send_with(
            Method::POST,
            &format!("/fleetlock/v1/{op}"),
            &headers,
            Body::Bytes(body.to_vec()),
        )
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{op}: {status} body is not JSON ({e}): {bytes:?}"));
    (status, v)
}

pub(super) fn params(id: &str, group: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"client_params": {"id": id, "group": group}})).unwrap()
}

pub(super) async fn lock(client: &ApiClient, id: &str, group: &str) -> (StatusCode, Value) {
    fleetlock(client, "pre-reboot", true, &params(id, group)).await
}

pub(super) async fn unlock(client: &ApiClient, id: &str, group: &str) -> (StatusCode, Value) {
    fleetlock(client, "steady-state", true, &params(id, group)).await
}

impl Lock {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(AtomicI64::new(crate::now_ms()));
        let database = format!("sqlite:{}", dir.path().join("server.db").display());
        let mut s = Settings::new(&database, "127.0.0.1:0".parse().unwrap());
        s.payload_dir = dir.path().join("payloads");
        s.fleetlock.lease_ttl = LEASE;
        s.fleetlock.expiry_interval = Duration::from_millis(20);
        let c = clock.clone();
        s.clock = Arc::new(move || c.load(Ordering::SeqCst));
        let server = crate::spawn(s).await.unwrap();
        let now = clock.load(Ordering::SeqCst);
        let token = crate::test_server::token(&server, "ops", Role::Admin, now).await;
        let admin = ApiClient::new(&server.url(), Some(&token));
        let anon = ApiClient::new(&server.url(), None);
        Lock {
            server,
            admin,
            anon,
            clock,
            _dir: dir,
        }
    }

    async fn groups(&self) -> Vec<RebootLockGroup> {
        self.admin.get("/api/v1/fleetlock/groups").await.unwrap()
    }

    async fn group(&self, name: &str) -> RebootLockGroup {
        self.groups()
            .await
            .into_iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("no lock group {name}"))
    }

    async fn holder_ids(&self, name: &str) -> Vec<String> {
        self.group(name)
            .await
            .holders
            .into_iter()
            .map(|h| h.id)
            .collect()
    }

    /// (kind, message) of every FleetLock activity-log entry, oldest first.
    async fn activity(&self) -> Vec<(String, String)> {
        let all: Vec<crate::model::Activity> =
            self.admin.get("/api/v1/activity?limit=1000").await.unwrap();
        let mut out: Vec<_> = all
            .into_iter()
            .filter(|a| a.kind.starts_with("fleetlock-"))
            .map(|a| (a.kind, a.message))
            .collect();
        out.reverse();
        out
    }

    async fn set_max(&self, group: &str, max: i64) -> RebootLockGroup {
        self.admin
            .call(
                Method::PUT,
                &super::admin::group_path(group),
                &json!({"max_holders": max}),
            )
            .await
            .unwrap()
    }
}

fn kind(v: &Value) -> &str {
    v["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("no kind in {v}"))
}

/// What is wrong, endpoint, header sent, body, expected status and error kind.
type BadCase<'a> = (&'a str, &'a str, bool, Vec<u8>, StatusCode, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_protocol_error_and_changes_nothing() {
    let t = Lock::start().await;
    let good = params("node-1", "default");
    let long_id = "x".repeat(wellcar_contract::fleetlock::MAX_ID_LEN + 1);
    let oversized = format!(
        r#"{{"client_params":{{"id":"a","group":"default"}},"pad":"{}"}}"#,
        "p".repeat(MAX_BODY_BYTES)
    );
    let cases: Vec<BadCase<'_>> = vec![
        (
            "no header",
            "pre-reboot",
            false,
            good.clone(),
            StatusCode::BAD_REQUEST,
            "missing_protocol_header",
        ),
        (
            "no header",
            "steady-state",
            false,
            good.clone(),
            StatusCode::BAD_REQUEST,
            "missing_protocol_header",
        ),
        (
            "malformed json",
            "pre-reboot",
            true,
            b"{\"client_params\": {".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_client_params",
        ),
        (
            "not an object",
            "pre-reboot",
            true,
            b"[1,2]".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_client_params",
        ),
        (
            "missing id",
            "pre-reboot",
            true,
            br#"{"client_params":{"group":"default"}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_client_params",
        ),
        (
            "empty id",
            "pre-reboot",
            true,
            params("", "default"),
            StatusCode::BAD_REQUEST,
            "invalid_client_params",
        ),
        (
            "id too long",
            "pre-reboot",
            true,
            params(&long_id, "default"),
            StatusCode::BAD_REQUEST,
            "invalid_client_params",
        ),
        (
            "id too long",
            "steady-state",
            true,
            params(&long_id, "default"),
            StatusCode::BAD_REQUEST,
            "invalid_client_params",
        ),
        (
            "group regexp",
            "pre-reboot",
            true,
            params("node-1", "work ers"),
            StatusCode::BAD_REQUEST,
            "invalid_client_params",
        ),
        (
            "group regexp",
            "pre-reboot",
            true,
            params("node-1", "a_b"),
            StatusCode::BAD_REQUEST,
            "invalid_client_params",
        ),
        (
            "unknown group",
            "pre-reboot",
            true,
            params("node-1", "workers"),
            StatusCode::BAD_REQUEST,
            "unknown_group",
        ),
        (
            "unknown group",
            "steady-state",
            true,
            params("node-1", "workers"),
            StatusCode::BAD_REQUEST,
            "unknown_group",
        ),
        (
            "oversized body",
            "pre-reboot",
            true,
            oversized.into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
        ),
    ];
    for (what, op, header, body, status, want) in cases {
        let (got, v) = fleetlock(&t.anon, op, header, &body).await;
        assert_eq!((got, kind(&v)), (status, want), "{what} ({op}): {v}");
        assert!(
            v["value"].as_str().is_some_and(|s| !s.is_empty()),
            "{what}: value must be a non-empty string: {v}"
        );
    }
    // The id limit is inclusive.
    let max_id = "y".repeat(wellcar_contract::fleetlock::MAX_ID_LEN);
    let (status, _) = unlock(&t.anon, &max_id, "default").await;
    assert_eq!(status, StatusCode::OK);
    // Steady-state without a hold is an idempotent success, twice.
    for _ in 0..2 {
        let (status, v) = unlock(&t.anon, "node-1", "default").await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    // Nothing changed: no group was created, nobody holds anything, nothing was logged.
    let groups = t.groups().await;
    assert!(
        groups.iter().all(|g| g.holders.is_empty() && g.grants == 0),
        "{groups:?}"
    );
    assert!(!groups.iter().any(|g| g.name == "workers"), "{groups:?}");
    assert!(t.activity().await.is_empty());
    let rows = t
        .server
        .state
        .db
        .read(|c| {
            Ok(
                crate::db::query_one(c, "SELECT COUNT(*) FROM fleetlock_groups", &[])?
                    .map(|r| r.int(0))
                    .transpose()?,
            )
        })
        .await
        .unwrap();
    assert_eq!(rows, Some(0), "no lock group row was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_reentrant_and_never_exceed_max_holders() {
    let t = Lock::start().await;
    let (status, v) = lock(&t.anon, "a", "default").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let first = t.group("default").await.holders[0].clone();
    t.clock.fetch_add(1000, Ordering::SeqCst);
    let (status, _) = lock(&t.anon, "a", "default").await;
    assert_eq!(status, StatusCode::OK, "re-entrant lock by the holder");
    let renewed = t.group("default").await;
    assert_eq!(renewed.holders.len(), 1);
    assert_eq!(renewed.grants, 1, "a renewal is not a new grant");
    assert_eq!(renewed.holders[0].acquired_at, first.acquired_at);
    assert_eq!(
        renewed.holders[0].expires_at,
        first.expires_at + 1000,
        "lease renewed"
    );
    let (status, v) = lock(&t.anon, "b", "default").await;
    assert_eq!(
        (status, kind(&v)),
        (StatusCode::CONFLICT, "failed_lock_semaphore_full")
    );
    assert_eq!(t.holder_ids("default").await, ["a"]);
    // Ids are case-sensitive.
    let (status, _) = lock(&t.anon, "A", "default").await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Only the holder's steady-state frees the slot.
    let (status, _) = unlock(&t.anon, "b", "default").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(t.holder_ids("default").await, ["a"]);
    let (status, _) = unlock(&t.anon, "a", "default").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = lock(&t.anon, "b", "default").await;
    assert_eq!(status, StatusCode::OK);
    // Two slots: c joins b, d waits.
    let g = t.set_max("default", 2).await;
    assert_eq!((g.max_holders, g.max_configured), (2, true));
    assert_eq!(lock(&t.anon, "c", "default").await.0, StatusCode::OK);
    assert_eq!(lock(&t.anon, "d", "default").await.0, StatusCode::CONFLICT);
    let g = t.group("default").await;
    let seqs: Vec<_> = g
        .holders
        .iter()
        .map(|h| (h.id.as_str(), h.grant_seq, h.holders_at_grant))
        .collect();
    assert_eq!(seqs, [("b", 2, 1), ("c", 3, 2)]);
    // An Omaha group's track is a lock group with the default slots, separate from `default`.
    assert_eq!(lock(&t.anon, "d", "stable").await.0, StatusCode::OK);
    assert_eq!(lock(&t.anon, "e", "stable").await.0, StatusCode::CONFLICT);
    // Closing a group (max 0) keeps its holders and grants nothing more.
    t.set_max("default", 0).await;
    assert_eq!(
        lock(&t.anon, "b", "default").await.0,
        StatusCode::OK,
        "holders may renew"
    );
    assert_eq!(t.holder_ids("default").await, ["b", "c"]);
    // The clock stood still, so entries share a timestamp: compare them as a multiset.
    let mut kinds: Vec<String> = t.activity().await.into_iter().map(|(k, _)| k).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "fleetlock-granted",
            "fleetlock-granted",
            "fleetlock-granted",
            "fleetlock-granted",
            "fleetlock-max-set",
            "fleetlock-max-set",
            "fleetlock-released",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_released_and_logged() {
    let t = Lock::start().await;
    assert_eq!(
        lock(&t.anon, "dead-node", "default").await.0,
        StatusCode::OK
    );
    assert_eq!(
        lock(&t.anon, "next", "default").await.0,
        StatusCode::CONFLICT
    );
    // Just before the lease ends, the sweep keeps it.
    t.clock
        .fetch_add(LEASE.as_millis() as i64 - 1, Ordering::SeqCst);
    super::expire_leases(&t.server.state).await.unwrap();
    assert_eq!(t.holder_ids("default").await, ["dead-node"]);
    t.clock.fetch_add(1, Ordering::SeqCst);
    wellcar_test_support::wait::wait_until_async(
        "the sweep to release the dead holder",
        Duration::from_secs(30),
        || async { t.holder_ids("default").await.is_empty().then_some(()) },
    )
    .await;
    let log = t.activity().await;
    let expired: Vec<_> = log
        .iter()
        .filter(|(k, _)| k == "fleetlock-lease-expired")
        .collect();
    assert_eq!(expired.len(), 1, "{log:?}");
    assert!(expired[0].1.contains("dead-node"), "{log:?}");
    assert_eq!(lock(&t.anon, "next", "default").await.0, StatusCode::OK);
    // The dead node comes back and reports steady-state: success, and next keeps its slot.
    assert_eq!(
        unlock(&t.anon, "dead-node", "default").await.0,
        StatusCode::OK
    );
    assert_eq!(t.holder_ids("default").await, ["next"]);
    let (_, metrics) = t.admin.get_text("/metrics").await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics).to_string();
    assert_eq!(
        crate::metrics::sample(&metrics, "wellcar_server_fleetlock_lease_expiries_total"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("wellcar_server_fleetlock_holders{group=\"default\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wellcar_server_fleetlock_max_holders{group=\"default\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wellcar_server_fleetlock_holders{group=\"stable\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_frees_its_slot_for_the_next_pre_reboot_even_before_the_sweep() {
    let t = Lock::start().await;
    // A lease that ends while the sweep cannot run: pre-reboot itself expires it.
    let now = t.clock.load(Ordering::SeqCst);
    assert_eq!(
        lock(&t.anon, "dead-node", "default").await.0,
        StatusCode::OK
    );
    let state = t.server.state.clone();
    let group = t.group("default").await;
    assert_eq!(group.holders[0].expires_at, now + LEASE.as_millis() as i64);
    t.clock
        .fetch_add(LEASE.as_millis() as i64, Ordering::SeqCst);
    let (status, v) = lock(&t.anon, "next", "default").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(t.holder_ids("default").await, ["next"]);
    let expired = t
        .activity()
        .await
        .into_iter()
        .filter(|(k, _)| k == "fleetlock-lease-expired")
        .count();
    assert_eq!(expired, 1);
    // A later sweep finds nothing more to expire.
    assert_eq!(super::expire_leases(&state).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_their_scopes() {
    let t = Lock::start().await;
    let now = t.clock.load(Ordering::SeqCst);
    let read = crate::test_server::token(&t.server, "viewer", Role::Read, now).await;
    let publish = crate::test_server::token(&t.server, "releaser", Role::Publish, now).await;
    let read = ApiClient::new(&t.server.url(), Some(&read));
    let publish = ApiClient::new(&t.server.url(), Some(&publish));
    assert_eq!(lock(&t.anon, "node/1 é", "default").await.0, StatusCode::OK);
    let set_max = super::admin::group_path("workers");
    let release = super::admin::holder_path("default", "node/1 é");
    let body = serde_json::to_vec(&json!({"max_holders": 3})).unwrap();
    let send = |c: &ApiClient, m: Method, p: &str, b: &[u8]| {
        let (c, p, b) = (c.clone(), p.to_owned(), b.to_vec());
        async move {
            c.send(m, &p, Some("application/json"), Body::Bytes(b))
                .await
                .unwrap()
                .0
        }
    };
    let list = "/api/v1/fleetlock/groups";
    assert_eq!(
        send(&t.anon, Method::GET, list, &[]).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(send(&read, Method::GET, list, &[]).await, StatusCode::OK);
    for (who, c, want) in [
        ("no token", &t.anon, StatusCode::UNAUTHORIZED),
        ("read", &read, StatusCode::FORBIDDEN),
        ("publish", &publish, StatusCode::FORBIDDEN),
    ] {
        assert_eq!(send(c, Method::PUT, &set_max, &body).await, want, "{who}");
        assert_eq!(send(c, Method::DELETE, &release, &[]).await, want, "{who}");
    }
    assert!(!t.groups().await.iter().any(|g| g.name == "workers"));
    assert_eq!(t.holder_ids("default").await, ["node/1 é"]);
    // Admin: set-max creates the group, release frees the slot, both logged under the token.
    let g = t.set_max("workers", 3).await;
    assert_eq!((g.name.as_str(), g.max_holders), ("workers", 3));
    assert_eq!(lock(&t.anon, "w1", "workers").await.0, StatusCode::OK);
    assert_eq!(
        send(&t.admin, Method::DELETE, &release, &[]).await,
        StatusCode::OK
    );
    assert!(t.holder_ids("default").await.is_empty());
    assert_eq!(
        send(&t.admin, Method::DELETE, &release, &[]).await,
        StatusCode::NOT_FOUND
    );
    let bad = serde_json::to_vec(&json!({"max_holders": -1})).unwrap();
    assert_eq!(
        send(&t.admin, Method::PUT, &set_max, &bad).await,
        StatusCode::BAD_REQUEST
    );
    let bad_name = super::admin::group_path("no_underscores");
    assert_eq!(
        send(&t.admin, Method::PUT, &bad_name, &body).await,
        StatusCode::BAD_REQUEST
    );
    let g = t.group("workers").await;
    assert_eq!((g.max_holders, g.holders.len()), (3, 1));
    let all: Vec<crate::model::Activity> = t.admin.get("/api/v1/activity?limit=100").await.unwrap();
    let mut by_ops: Vec<_> = all
        .iter()
        .filter(|a| a.actor == "ops")
        .map(|a| a.kind.as_str())
        .collect();
    by_ops.sort_unstable();
    assert_eq!(by_ops, ["fleetlock-force-released", "fleetlock-max-set"]);
    let (_, doc) = t.anon.get_text("/api/v1/openapi.json").await.unwrap();
    let doc: Value = serde_json::from_slice(&doc).unwrap();
    for path in [
        "/api/v1/fleetlock/groups",
        "/api/v1/fleetlock/groups/{group}",
        "/api/v1/fleetlock/groups/{group}/holders/{id}",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_the_admin_api() {
    let t = Lock::start().await;
    let server = crate::cli::ServerArgs {
        server: Some(t.server.url()),
        token: Some(t.admin_token().await),
        ca_file: None,
        app: wellcar_omaha::WELLCAR_APP_ID.to_owned(),
    };
    use crate::cli::LocksCommand;
    crate::cli::run_locks(LocksCommand::SetMax {
        server: server.clone(),
        group: "db".into(),
        max: 2,
    })
    .await
    .unwrap();
    assert_eq!(lock(&t.anon, "n1", "db").await.0, StatusCode::OK);
    // Reboot-lock entries belong to no app: `activity --all` shows them, the app's view not.
    let admin = ApiClient::new(&t.server.url(), server.token.as_deref());
    let mut shown = Vec::new();
    for all in [false, true] {
        let opts = crate::cli::ActivityOpts {
            server: server.clone(),
            limit: 50,
            all,
        };
        let entries: serde_json::Value = admin.get(&opts.path()).await.unwrap();
        shown.push(entries.to_string().contains("reboot lock db granted"));
    }
    assert_eq!(shown, [false, true]);
    crate::cli::run_locks(LocksCommand::List {
        server: server.clone(),
    })
    .await
    .unwrap();
    crate::cli::run_locks(LocksCommand::Release {
        server: server.clone(),
        group: "db".into(),
        id: "n1".into(),
    })
    .await
    .unwrap();
    assert!(t.holder_ids("db").await.is_empty());
    let err = crate::cli::run_locks(LocksCommand::Release {
        server,
        group: "db".into(),
        id: "n1".into(),
    })
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("404"), "{err:#}");
}

impl Lock {
    async fn admin_token(&self) -> String {
        let now = self.clock.load(Ordering::SeqCst);
        crate::test_server::token(&self.server, "cli", Role::Admin, now).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_token_server_requires_it_on_fleetlock_too() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite:{}", dir.path().join("server.db").display());
    let mut s = Settings::new(&database, "127.0.0.1:0".parse().unwrap());
    s.payload_dir = dir.path().join("payloads");
    s.fleet_token = crate::admission::FleetToken::new("fleet-secret");
    let server = crate::spawn(s).await.unwrap();
    let anon = ApiClient::new(&server.url(), None);
    let (status, v) = lock(&anon, "n1", "default").await;
    assert_eq!(
        (status, kind(&v)),
        (StatusCode::UNAUTHORIZED, "fleet_token_required")
    );
    let headers = [
        (PROTOCOL_HEADER, "true"),
        (wellcar_omaha::headers::FLEET_TOKEN, "fleet-secret"),
    ];
    let (status, _) = anon
        .send_with(
            Method::POST,
            "/fleetlock/v1/pre-reboot",
            &headers,
            Body::Bytes(params("n1", "default")),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let held = server
        .state
        .db
        .read(|c| crate::store::fleetlock_holders(c, "default"))
        .await
        .unwrap();
    assert_eq!(held.len(), 1, "only the request with the token was granted");
}
