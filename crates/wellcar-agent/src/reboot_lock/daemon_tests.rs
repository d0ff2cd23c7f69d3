//! The daemon binary's reboot strategies against a real FleetLock endpoint over loopback HTTP:
//! a host with an update staged in its boot state, the daemon started with `--root`, its
//! reboot command a `touch`, the next boot simulated by the test (new boot id, the staged slot
//! booted, then marked good).
//!
//! The FleetLock endpoint is [`StandIn`], a small axum handler implementing the documented
//! protocol (Zincati's `docs/development/fleetlock/protocol.md`: header, body, 200 or
//! `{"kind","value"}`), **a stand-in until the server's FleetLock (`wellcar server`,
//! `/fleetlock`) is merged**; these tests then run against the real server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use wellcar_contract::fleetlock::{FleetLockRequest, PROTOCOL_HEADER};
use wellcar_contract::RootHash;
use wellcar_disk::Slot;
use wellcar_test_support::wait::wait_until;

use super::fleetlock::{FleetLockClient, FleetLockError};
use super::{LockError, RebootLock};
use crate::config::Config;
use crate::host::HostPaths;
use crate::state::{AgentState, Phase, StagedUpdate, StateStore};

const MACHINE: &str = "4c1d5f6e7a8b49c0b1d2e3f405162738";

/// One request the stand-in answered: endpoint (`pre-reboot`/`steady-state`), client id,
/// status.
type Seen = (String, String, u16);

#[derive(Debug, Default)]
struct Semaphore {
    max: usize,
    holders: Vec<String>,
    seen: Vec<Seen>,
    bodies: Vec<serde_json::Value>,
}

/// A FleetLock endpoint at `<base>/v1/…` (see the module docs): one group, `max` slots.
#[derive(Clone)]
struct StandIn {
    state: Arc<Mutex<Semaphore>>,
    base: String,
}

fn rejection(status: StatusCode, kind: &str, value: &str) -> (StatusCode, Json<serde_json::Value>) {
    (
        status,
        Json(serde_json::json!({ "kind": kind, "value": value })),
    )
}

async fn handle(
    state: Arc<Mutex<Semaphore>>,
    endpoint: &str,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, Json<serde_json::Value>) {
    let mut s = state.lock().unwrap();
    if headers.get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok()) != Some("true") {
        s.seen.push((endpoint.into(), String::new(), 400));
        return rejection(
            StatusCode::BAD_REQUEST,
            "missing_protocol_header",
            "no header",
        );
    }
    s.bodies
        .push(serde_json::from_str(&body).unwrap_or_default());
    let Ok(request) = serde_json::from_str::<FleetLockRequest>(&body) else {
        s.seen.push((endpoint.into(), String::new(), 400));
        return rejection(StatusCode::BAD_REQUEST, "invalid_client_params", "bad JSON");
    };
    let id = request.client_params.id;
    let status = if endpoint == "pre-reboot" {
        if s.holders.contains(&id) {
            StatusCode::OK
        } else if s.holders.len() < s.max {
            s.holders.push(id.clone());
            StatusCode::OK
        } else {
            StatusCode::CONFLICT
        }
    } else {
        s.holders.retain(|h| *h != id);
        StatusCode::OK
    };
    s.seen.push((endpoint.into(), id, status.as_u16()));
    if status == StatusCode::CONFLICT {
        return rejection(
            status,
            "failed_lock_semaphore_full",
            "semaphore currently full, all slots are locked already",
        );
    }
    (status, Json(serde_json::json!({})))
}

impl StandIn {
    async fn start(max: usize, holders: &[&str]) -> Self {
        let state = Arc::new(Mutex::new(Semaphore {
            max,
            holders: holders.iter().map(|h| h.to_string()).collect(),
            ..Semaphore::default()
        }));
        let (pre, steady) = (state.clone(), state.clone());
        let app = Router::new()
            .route(
                "/fleetlock/v1/pre-reboot",
                post(move |headers: HeaderMap, body: String| {
                    handle(pre.clone(), "pre-reboot", headers, body)
                }),
            )
            .route(
                "/fleetlock/v1/steady-state",
                post(move |headers: HeaderMap, body: String| {
                    handle(steady.clone(), "steady-state", headers, body)
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            state,
            base: format!("http://{addr}/fleetlock"),
        }
    }

    fn holders(&self) -> Vec<String> {
        self.state.lock().unwrap().holders.clone()
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn count(&self, endpoint: &str, status: u16) -> usize {
        self.seen()
            .iter()
            .filter(|(e, _, s)| e == endpoint && *s == status)
            .count()
    }

    fn release(&self, id: &str) {
        self.state.lock().unwrap().holders.retain(|h| h != id);
    }
}

/// A host below a temp dir with 1.1.0 staged into B (boot state and agent state), booted from
/// A at 1.0.0, marked good.
struct StagedHost {
    dir: tempfile::TempDir,
    paths: HostPaths,
}

impl StagedHost {
    fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::under_root(&dir.path().join("root"));
        let host = Self { dir, paths };
        let esp = crate::slots::tests::fresh_esp(&host.paths.esp, "1.0.0");
        esp.update(|s| {
            s.stage(
                Slot::B,
                Some(Slot::A),
                RootHash::from_bytes([0xbb; 32]),
                "1.1.0",
            )
        })
        .unwrap();
        put(&host.paths.machine_id, &format!("{MACHINE}\n"));
        let boot_id = host.boot("1.0.0", Slot::A);
        StateStore::new(&host.paths.state_dir)
            .save(&AgentState::in_phase(Phase::Staged(StagedUpdate {
                version: "1.1.0".into(),
                size: 1,
                slot: Slot::B,
                boot_id,
            })))
            .unwrap();
        host.configure(config);
        host
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn rebooted(&self) -> PathBuf {
        self.dir.path().join("rebooted")
    }

    /// update.conf: updates off (the update is already staged), checks only on request.
    fn configure(&self, extra: &str) {
        put(
            &self.paths.config_files[2],
            &format!("SERVER=disabled\nGROUP=stable\nWELLCAR_FIRST_CHECK_DELAY=1h\n{extra}"),
        );
    }

    /// "Boots" `version` from `slot` (new boot id, command line, os-release); returns the boot id.
    fn boot(&self, version: &str, slot: Slot) -> String {
        let boot_id = uuid::Uuid::new_v4().to_string();
        put(&self.paths.boot_id, &format!("{boot_id}\n"));
        put(
            &self.paths.cmdline,
            &format!(
                "verity.usr=PARTUUID={} root=LABEL=ROOT\n",
                slot.unique_guid()
            ),
        );
        put(
            &self.paths.os_release,
            &format!("ID=wellcar\nVERSION_ID={version}\nWELLCAR_BOARD=amd64-usr\n"),
        );
        boot_id
    }

    /// What GRUB and the reboot do: the next slot is picked (one try consumed) and booted.
    fn reboot_into_next(&self) -> Slot {
        let esp = wellcar_bootstate::Esp::new(&self.paths.esp);
        let (slot, _) = esp.update(|s| Ok(s.bootloader_pick())).unwrap();
        let slot = slot.unwrap();
        self.boot("1.1.0", slot);
        slot
    }

    /// What `wellcar-mark-good.service` does after the health checks.
    fn mark_good(&self, slot: Slot) {
        wellcar_bootstate::Esp::new(&self.paths.esp)
            .update(|s| {
                s.mark_good(slot);
                Ok(())
            })
            .unwrap();
    }

    fn daemon(&self) -> Daemon {
        Daemon::start(&self.root(), &self.rebooted())
    }
}

/// Two on-demand checks handled by the daemon of `state_dir`: its loop has run at least one
/// whole tick (reboot decision included) since the first was asked.
fn two_ticks(state_dir: &Path) {
    let store = StateStore::new(state_dir);
    for _ in 0..2 {
        let id = crate::client::request_check(&store).unwrap();
        wait_until(
            "the daemon to handle a check request",
            Duration::from_secs(30),
            || {
                store
                    .load()
                    .ok()
                    .filter(|s| s.handled_request.as_deref() == Some(id.as_str()))
            },
        );
    }
}

fn put(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The daemon binary next to this test binary (cargo builds it for `tests/`).
fn daemon_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("wellcar-update-agent");
    assert!(
        path.exists(),
        "{} is missing: run through `cargo test -p wellcar-agent`",
        path.display()
    );
    path
}

/// The daemon process, SIGKILLed when dropped.
struct Daemon(std::process::Child);

impl Daemon {
    fn start(root: &Path, rebooted: &Path) -> Self {
        let child = std::process::Command::new(daemon_binary())
            .arg("--root")
            .arg(root)
            .arg("--reboot-command")
            .arg(format!("touch {}", rebooted.display()))
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Daemon(child)
    }

    fn sigkill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.sigkill();
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn fleetlock_config(base: &str) -> String {
    format!("REBOOT_STRATEGY=fleetlock\nFLEETLOCK_URL={base}\nWELLCAR_LOCK_RETRY_DELAY=200ms\n")
}

/// The client sends the protocol's header and body (machine id, group defaulting to
/// `GROUP`); a full semaphore is an error naming the URL, status, kind and value; releasing
/// what is not held succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetlock_client_speaks_the_protocol() {
    let lock = StandIn::start(1, &[]).await;
    let mut config = Config::default();
    config.fleetlock.url = Some(lock.base.clone());
    let (mut a, mut b) = (
        FleetLockClient::from_config(&config, "machine-a").unwrap(),
        FleetLockClient::from_config(&config, "machine-b").unwrap(),
    );
    let (a, b, err) = blocking(move || {
        a.acquire().unwrap();
        a.acquire().unwrap();
        let err = b.acquire().unwrap_err();
        b.release().unwrap();
        (a, b, err)
    })
    .await;
    assert!(err.is_full(), "{err:?}");
    let LockError::FleetLock(FleetLockError::Rejected {
        url, status, kind, ..
    }) = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(
        (url.as_str(), *status, kind.as_str()),
        (
            format!("{}/v1/pre-reboot", lock.base).as_str(),
            409,
            "failed_lock_semaphore_full"
        )
    );
    let text = err.to_string();
    assert!(
        text.contains(&lock.base) && text.contains("semaphore currently full"),
        "{text}"
    );
    assert_eq!(lock.holders(), ["machine-a"]);
    assert_eq!(
        lock.state.lock().unwrap().bodies[0],
        serde_json::json!({"client_params": {"id": "machine-a", "group": "stable"}})
    );
    drop((a, b));
    // Nobody listening: a transport error naming the URL.
    let mut config = Config::default();
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    config.fleetlock.url = Some(format!("http://{addr}/fl"));
    let mut c = FleetLockClient::from_config(&config, "m").unwrap();
    let err = blocking(move || c.release().unwrap_err()).await.to_string();
    assert!(
        err.contains(&format!("http://{addr}/fl/v1/steady-state")),
        "{err}"
    );
}

/// The whole fleetlock flow with the real daemon: the lock is full (another machine holds
/// it), so the daemon does not reboot and retries; once the slot frees, it takes the lock
/// once and reboots; after the reboot it keeps the lock until the new boot is marked good,
/// then releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetlock_no_reboot_without_the_lock_release_once_marked_good() {
    let lock = StandIn::start(1, &["other-machine"]).await;
    let host = StagedHost::new(&fleetlock_config(&lock.base));
    let mut daemon = host.daemon();
    let probe = lock.clone();
    blocking(move || {
        wait_until(
            "three refused pre-reboot requests",
            Duration::from_secs(30),
            || (probe.count("pre-reboot", 409) >= 3).then_some(()),
        )
    })
    .await;
    assert!(!host.rebooted().exists(), "rebooted without the lock");
    assert_eq!(lock.holders(), ["other-machine"]);
    lock.release("other-machine");
    let rebooted = host.rebooted();
    blocking(move || {
        wait_until("the reboot", Duration::from_secs(30), || {
            rebooted.exists().then_some(())
        })
    })
    .await;
    assert_eq!(lock.holders(), [MACHINE]);
    assert_eq!(
        lock.count("pre-reboot", 200),
        1,
        "taken once: {:?}",
        lock.seen()
    );
    daemon.sigkill();

    // The next boot: B is booted on trial (not marked good yet).
    assert_eq!(host.reboot_into_next(), Slot::B);
    let mut daemon = host.daemon();
    let before = lock.seen().len();
    let state_dir = host.paths.state_dir.clone();
    blocking(move || two_ticks(&state_dir)).await;
    assert_eq!(
        lock.seen()[before..],
        [],
        "nothing sent before the boot is marked good"
    );
    assert_eq!(lock.holders(), [MACHINE], "held across the reboot");
    host.mark_good(Slot::B);
    let probe = lock.clone();
    blocking(move || {
        wait_until("the release", Duration::from_secs(30), || {
            probe.holders().is_empty().then_some(())
        })
    })
    .await;
    daemon.sigkill();
    let after: Vec<Seen> = lock.seen()[before..].to_vec();
    assert_eq!(
        after,
        [("steady-state".to_owned(), MACHINE.to_owned(), 200)]
    );
    assert_eq!(lock.count("pre-reboot", 200), 1, "taken once");
}

/// Local `HH:MM` of now plus `minutes` (may be negative).
fn local_hh_mm(minutes: i64) -> String {
    let t = jiff::Zoned::now()
        .checked_add(jiff::Span::new().minutes(minutes))
        .unwrap();
    format!("{:02}:{:02}", t.hour(), t.minute())
}

/// A lock held from before (a `kill -9` between lock and reboot) is released at start, as
/// the booted slot is good; with the reboot window closed, no lock is taken and no reboot
/// happens; once update.conf opens the window, the daemon takes the lock and reboots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetlock_release_at_start_and_the_window_is_respected() {
    let lock = StandIn::start(1, &[MACHINE]).await;
    let closed = format!(
        "{}REBOOT_WINDOW_START={}\nREBOOT_WINDOW_LENGTH=1h\n",
        fleetlock_config(&lock.base),
        local_hh_mm(120)
    );
    let host = StagedHost::new(&closed);
    let _daemon = host.daemon();
    let probe = lock.clone();
    blocking(move || {
        wait_until("the release at start", Duration::from_secs(30), || {
            probe.holders().is_empty().then_some(())
        })
    })
    .await;
    let state_dir = host.paths.state_dir.clone();
    blocking(move || two_ticks(&state_dir)).await;
    assert_eq!(
        lock.count("pre-reboot", 200) + lock.count("pre-reboot", 409),
        0,
        "{:?}",
        lock.seen()
    );
    assert!(!host.rebooted().exists(), "rebooted outside the window");
    host.configure(&format!(
        "{}REBOOT_WINDOW_START={}\nREBOOT_WINDOW_LENGTH=2h\n",
        fleetlock_config(&lock.base),
        local_hh_mm(-1)
    ));
    let rebooted = host.rebooted();
    blocking(move || {
        wait_until("the reboot in the window", Duration::from_secs(30), || {
            rebooted.exists().then_some(())
        })
    })
    .await;
    assert_eq!(lock.holders(), [MACHINE]);
    assert_eq!(
        lock.seen()
            .iter()
            .map(|(e, _, s)| (e.as_str(), *s))
            .collect::<Vec<_>>(),
        [("steady-state", 200), ("pre-reboot", 200)]
    );
}

/// An unknown `REBOOT_STRATEGY`, or fleetlock without its URL, refuses the start: exit
/// non-zero, naming the file, line, key and the valid strategies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_strategy_refuses_to_start() {
    for (config, wanted) in [
        (
            "REBOOT_STRATEGY=sometimes\n",
            "valid: reboot, off, etcd-lock, fleetlock, best-effort",
        ),
        (
            "REBOOT_STRATEGY=fleetlock\n",
            "fleetlock needs FLEETLOCK_URL",
        ),
    ] {
        let host = StagedHost::new(config);
        let root = host.root();
        let out = blocking(move || {
            std::process::Command::new(daemon_binary())
                .arg("--root")
                .arg(root)
                .arg("--reboot-command")
                .arg("false")
                .output()
                .unwrap()
        })
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(wanted), "{stderr}");
        assert!(
            stderr.contains("etc/wellcar/update.conf:4: REBOOT_STRATEGY"),
            "{stderr}"
        );
        assert!(!host.rebooted().exists());
    }
}
