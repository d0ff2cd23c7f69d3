//! The daemon binary's reboot strategies against the real FleetLock server (`wellcar server`,
//! `/fleetlock`, SQLite) over loopback HTTP: a host with an update staged in its boot state,
//! the daemon started with `--root`, its reboot command a `touch`, the next boot simulated by
//! the test (new boot id, the staged slot booted, then marked good).
//!
//! Between agent and server sits [`LockServer`]'s recorder, a loopback axum proxy that
//! forwards each FleetLock request unchanged and records endpoint, client id and status, so
//! the tests can show what the agent asked and when (the server keeps no request log).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use wellcar_contract::fleetlock::{FleetLockRequest, PROTOCOL_HEADER};
use wellcar_contract::RootHash;
use wellcar_disk::Slot;
use wellcar_test_support::wait::wait_until;

use super::fleetlock::{FleetLockClient, FleetLockError};
use super::{LockError, RebootLock};
use crate::agent_tests::fixture::{daemon_binary, locksmithd_binary, Daemon};
use crate::config::Config;
use crate::host::HostPaths;
use crate::state::{AgentState, Phase, StagedUpdate, StateStore};

mod etcd_lock;

const MACHINE: &str = "4c1d5f6e7a8b49c0b1d2e3f405162738";

/// The lock group of these hosts (their update `GROUP`, an Omaha track the server knows).
const GROUP: &str = "stable";

/// One request the recorder forwarded: endpoint (`pre-reboot`/`steady-state`), client id,
/// the server's status.
type Seen = (String, String, u16);

/// What the recorder forwards to and what it saw.
#[derive(Clone)]
struct Recorder {
    upstream: String,
    http: ureq::Agent,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn forward(
    State(rec): State<Recorder>,
    axum::extract::Path(op): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Bytes) {
    let id = serde_json::from_slice::<FleetLockRequest>(&body)
        .map(|r| r.client_params.id)
        .unwrap_or_default();
    let (status, answer) = tokio::task::spawn_blocking({
        let rec = rec.clone();
        let op = op.clone();
        move || {
            let mut request = rec.http.post(format!("{}/v1/{op}", rec.upstream));
            for (name, value) in &headers {
                if name.as_str() == PROTOCOL_HEADER || name.as_str() == "content-type" {
                    request = request.header(name.as_str(), value.to_str().unwrap());
                }
            }
            let response = request.send(&body[..]).unwrap();
            let status = response.status().as_u16();
            (status, response.into_body().read_to_vec().unwrap())
        }
    })
    .await
    .unwrap();
    rec.seen.lock().unwrap().push((op, id, status));
    (StatusCode::from_u16(status).unwrap(), Bytes::from(answer))
}

/// The real server with its FleetLock, the recorder in front (see the module docs).
struct LockServer {
    server: wellcar_server::RunningServer,
    recorder: Recorder,
    /// The FleetLock base URL the agents use (through the recorder).
    base: String,
    _dir: tempfile::TempDir,
}

impl LockServer {
    /// A server with the default one slot per group; `holders` take theirs first (straight to
    /// the server, unrecorded).
    async fn start(holders: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = wellcar_server::Settings::new(
            &format!("sqlite:{}", dir.path().join("server.db").display()),
            "127.0.0.1:0".parse().unwrap(),
        );
        settings.payload_dir = dir.path().join("payloads");
        let server = wellcar_server::spawn(settings).await.unwrap();
        let recorder = Recorder {
            upstream: format!("{}/fleetlock", server.url()),
            http: wellcar_http::system_client(&wellcar_http::ClientOptions::new("recorder")),
            seen: Arc::default(),
        };
        let app = Router::new()
            .route("/fleetlock/v1/{op}", post(forward))
            .with_state(recorder.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let lock = Self {
            server,
            recorder,
            base: format!("http://{addr}/fleetlock"),
            _dir: dir,
        };
        for holder in holders {
            let mut client = lock.direct_client(holder);
            blocking(move || client.acquire().unwrap()).await;
        }
        lock
    }

    /// A client for `id` talking to the server directly.
    fn direct_client(&self, id: &str) -> FleetLockClient {
        let mut config = Config::default();
        config.fleetlock.url = Some(self.recorder.upstream.clone());
        FleetLockClient::from_config(&config, id).unwrap()
    }

    /// The holders of [`GROUP`], as the server stores them.
    async fn holders(&self) -> Vec<String> {
        let groups = wellcar_server::fleetlock::list_groups(&self.server.state)
            .await
            .unwrap();
        let group = groups.iter().find(|g| g.name == GROUP).unwrap();
        group.holders.iter().map(|h| h.id.clone()).collect()
    }

    /// Grants of [`GROUP`] so far (a re-entrant renewal is no new grant).
    async fn grants(&self) -> i64 {
        let groups = wellcar_server::fleetlock::list_groups(&self.server.state)
            .await
            .unwrap();
        groups.iter().find(|g| g.name == GROUP).unwrap().grants
    }

    fn seen(&self) -> Vec<Seen> {
        self.recorder.seen.lock().unwrap().clone()
    }

    /// A probe for waits off the runtime: how many `(endpoint, status)` were seen.
    fn counter(&self) -> impl Fn(&str, u16) -> usize + Send + 'static {
        let seen = self.recorder.seen.clone();
        move |endpoint, status| {
            seen.lock()
                .unwrap()
                .iter()
                .filter(|(e, _, s)| e == endpoint && *s == status)
                .count()
        }
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
            self.paths.config_files.last().unwrap(),
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

    fn log(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// The agent and locksmithd for this host, logging to [`StagedHost::log`].
    fn daemon(&self) -> Daemon {
        Daemon::start_logging(
            &self.root(),
            &[
                "--reboot-command".into(),
                format!("touch {}", self.rebooted().display()),
            ],
            &self.log(),
        )
    }

    /// A wait (for [`blocking`] or to call) until the log holds `text` `times` times in all
    /// (locksmithd logs each start of a wait once: see [`crate::reboot_lock::RebootDriver`]).
    fn log_waiter(&self, text: &'static str, times: usize) -> impl FnOnce() + Send + 'static {
        let log = self.log();
        move || {
            wait_until(
                &format!("{text:?} logged {times} times"),
                Duration::from_secs(30),
                || {
                    let seen = std::fs::read_to_string(&log).unwrap_or_default();
                    (seen.matches(text).count() >= times).then_some(())
                },
            )
        }
    }
}

/// What locksmithd logs when a staged update waits for the reboot window.
const WAITING_FOR_WINDOW: &str = "update staged, waiting for the reboot window";

/// What locksmithd logs when it keeps the lock until the new boot is marked good.
const WAITING_FOR_GOOD: &str = "booted slot not marked good yet, keeping the reboot lock";

/// What locksmithd logs when the lock is refused.
const LOCK_REFUSED: &str = "reboot lock not taken";

fn put(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn fleetlock_config(base: &str) -> String {
    format!("REBOOT_STRATEGY=fleetlock\nFLEETLOCK_URL={base}\nWELLCAR_LOCK_RETRY_DELAY=200ms\n")
}

/// The client against the server: the protocol's body (machine id, group defaulting to
/// `GROUP`) is accepted; re-entrant; a full semaphore is an error naming the URL, status, kind
/// and value; releasing what is not held succeeds; no server is an error naming the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetlock_client_speaks_the_protocol() {
    let lock = LockServer::start(&[]).await;
    let mut config = Config::default();
    config.fleetlock.url = Some(lock.base.clone());
    let (mut a, mut b) = (
        FleetLockClient::from_config(&config, "machine-a").unwrap(),
        FleetLockClient::from_config(&config, "machine-b").unwrap(),
    );
    let err = blocking(move || {
        a.acquire().unwrap();
        a.acquire().unwrap();
        let err = b.acquire().unwrap_err();
        b.release().unwrap();
        err
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
        text.contains(&lock.base) && text.contains("currently full"),
        "{text}"
    );
    assert_eq!(lock.holders().await, ["machine-a"]);
    assert_eq!(lock.grants().await, 1, "the second lock renewed the first");
    assert_eq!(
        lock.seen(),
        [
            ("pre-reboot".to_owned(), "machine-a".to_owned(), 200),
            ("pre-reboot".to_owned(), "machine-a".to_owned(), 200),
            ("pre-reboot".to_owned(), "machine-b".to_owned(), 409),
            ("steady-state".to_owned(), "machine-b".to_owned(), 200),
        ]
    );
    // Nobody listening: a transport error naming the URL.
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
    let lock = LockServer::start(&["other-machine"]).await;
    let host = StagedHost::new(&fleetlock_config(&lock.base));
    let mut daemon = host.daemon();
    let count = lock.counter();
    blocking(move || {
        wait_until(
            "three refused pre-reboot requests",
            Duration::from_secs(30),
            || (count("pre-reboot", 409) >= 3).then_some(()),
        )
    })
    .await;
    assert!(!host.rebooted().exists(), "rebooted without the lock");
    assert_eq!(lock.holders().await, ["other-machine"]);
    let mut other = lock.direct_client("other-machine");
    blocking(move || other.release().unwrap()).await;
    let rebooted = host.rebooted();
    blocking(move || {
        wait_until("the reboot", Duration::from_secs(30), || {
            rebooted.exists().then_some(())
        })
    })
    .await;
    assert_eq!(lock.holders().await, [MACHINE]);
    assert_eq!(lock.counter()("pre-reboot", 200), 1, "{:?}", lock.seen());
    daemon.sigkill();

    // The next boot: B is booted on trial (not marked good yet).
    assert_eq!(host.reboot_into_next(), Slot::B);
    let mut daemon = host.daemon();
    let before = lock.seen().len();
    let waiting = host.log_waiter(WAITING_FOR_GOOD, 1);
    blocking(waiting).await;
    assert_eq!(
        lock.seen()[before..],
        [],
        "nothing sent before the boot is marked good"
    );
    assert_eq!(lock.holders().await, [MACHINE], "held across the reboot");
    host.mark_good(Slot::B);
    let count = lock.counter();
    blocking(move || {
        wait_until("the release", Duration::from_secs(30), || {
            (count("steady-state", 200) == 1).then_some(())
        })
    })
    .await;
    daemon.sigkill();
    assert_eq!(lock.holders().await, Vec::<String>::new());
    assert_eq!(
        lock.seen()[before..],
        [("steady-state".to_owned(), MACHINE.to_owned(), 200)]
    );
    // Grants: the other machine's, then this one's, once.
    assert_eq!(lock.grants().await, 2);
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
    let lock = LockServer::start(&[MACHINE]).await;
    let closed = format!(
        "{}REBOOT_WINDOW_START={}\nREBOOT_WINDOW_LENGTH=1h\n",
        fleetlock_config(&lock.base),
        local_hh_mm(120)
    );
    let host = StagedHost::new(&closed);
    let _daemon = host.daemon();
    let count = lock.counter();
    blocking(move || {
        wait_until("the release at start", Duration::from_secs(30), || {
            (count("steady-state", 200) == 1).then_some(())
        })
    })
    .await;
    assert_eq!(lock.holders().await, Vec::<String>::new());
    let waiting = host.log_waiter(WAITING_FOR_WINDOW, 1);
    blocking(waiting).await;
    assert_eq!(
        lock.seen(),
        [("steady-state".to_owned(), MACHINE.to_owned(), 200)],
        "no lock outside the window"
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
    assert_eq!(lock.holders().await, [MACHINE]);
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
        for binary in [daemon_binary(), locksmithd_binary()] {
            let root = host.root();
            let rebooted = host.rebooted();
            let out = blocking(move || {
                let mut command = std::process::Command::new(&binary);
                command.arg("--root").arg(root);
                if binary == locksmithd_binary() {
                    command
                        .arg("--reboot-command")
                        .arg(format!("touch {}", rebooted.display()));
                } else {
                    command.args(["--dbus-address", "none"]);
                }
                command.output().unwrap()
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
}

/// `REBOOT_STRATEGY=off`: locksmithd exits at once, successfully, saying why (as locksmith
/// does); the agent alone never reboots (what `systemctl mask locksmithd.service` leaves) and
/// still answers, with the update staged.
#[test]
fn strategy_off_stops_locksmithd_and_the_agent_alone_never_reboots() {
    let host = StagedHost::new("REBOOT_STRATEGY=off\n");
    let out = std::process::Command::new(locksmithd_binary())
        .arg("--root")
        .arg(host.root())
        .arg("--reboot-command")
        .arg(format!("touch {}", host.rebooted().display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("reboot strategy is \"off\", shutting down"),
        "{stderr}"
    );
    // Strategy `reboot`, but no locksmithd: the agent handles check requests, never reboots.
    host.configure("REBOOT_STRATEGY=reboot\n");
    let _agent = Daemon::start(&host.root(), &[]);
    let store = StateStore::new(&host.paths.state_dir);
    for _ in 0..2 {
        let id = crate::client::request_check(&store).unwrap();
        wait_until(
            "the agent to handle a check request",
            Duration::from_secs(30),
            || {
                store
                    .load()
                    .ok()
                    .filter(|s| s.handled_request.as_deref() == Some(id.as_str()))
            },
        );
    }
    assert!(!host.rebooted().exists(), "the agent rebooted by itself");
    assert_eq!(
        store.load().unwrap().operation(),
        crate::state::Operation::UpdatedNeedReboot
    );
}
