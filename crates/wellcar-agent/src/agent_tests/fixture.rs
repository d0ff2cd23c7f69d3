//! Fixtures shared by the agent's loopback tests: a real Wellcar server with a TCP relay in
//! front of its payload downloads ([`Relay`]), signed payloads, a host layout below a temp
//! root with a sparse disk image and a temp-dir ESP ([`Host`]), and the daemon binary run as
//! a process with `--root` ([`Daemon`]).
//!
//! The relay counts the payload bytes the server sends, records `Range` headers, and can cut
//! a transfer or slow it down (what a flaky network does; the server itself has no byte
//! counter).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wellcar_contract::RootHash;
use wellcar_disk::Slot;
use wellcar_omaha::WELLCAR_APP_ID;
use wellcar_payload::SigningKey;
use wellcar_server::client::{ApiClient, PackageRef};
use wellcar_server::model::{Instance, InstanceEvent};
use wellcar_server::store::{self, Role};
use wellcar_test_support::build::Build;

use crate::agent::Agent;
use crate::host::HostPaths;
use crate::slots::EspSlots;

pub(crate) const MACHINE: &str = "0f6a2d3b9c8e4f1aa7b6c5d4e3f2a1b0";

/// A signed payload for `version` and what it should install.
pub(crate) struct Payload {
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    pub(crate) root_hash: RootHash,
    pub(crate) kernel: Vec<u8>,
}

/// The shared test build of `version` (`wellcar_test_support::build`) in `dir`, and its payload
/// signed by `key`.
pub(crate) fn make_payload(dir: &Path, version: &str, key: &SigningKey) -> Payload {
    let build = Build::create(&dir.join(format!("build-{version}")), version);
    let summary = build.payload(&[key]);
    Payload {
        path: summary.path,
        size: summary.size,
        root_hash: build.root_hash(),
        kernel: build.kernel(),
    }
}

/// A server offering the signed 1.1.0 payload, and a host at 1.0.0 whose update.conf ends
/// with `extra_config`: `(dir, key, payload, server, host)`, the key the payload is signed with
/// and the directory holding the build, all kept until the test ends.
pub(crate) async fn offered(
    extra_config: &str,
) -> (tempfile::TempDir, SigningKey, Payload, Server, Host) {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let payload = make_payload(dir.path(), "1.1.0", &key);
    let server = Server::start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    server.publish("1.1.0", &payload.path).await;
    let host = Host::new(&server.omaha_url(), &key, extra_config);
    (dir, key, payload, server, host)
}

/// A loopback TCP relay in front of the server (see the module docs).
pub(crate) struct Relay {
    /// Response bytes relayed from the server.
    pub(crate) served: Arc<AtomicU64>,
    /// `Range` header values seen, in order.
    pub(crate) ranges: Arc<Mutex<Vec<String>>>,
    /// GET requests without a `Range` header (whole-payload downloads).
    pub(crate) full_gets: Arc<AtomicU64>,
    /// When >= 0: close the connection after this many more response bytes (one shot).
    pub(crate) cut_after: Arc<AtomicI64>,
    /// Pause per 64 KiB relayed, in milliseconds.
    pub(crate) slow_ms: Arc<AtomicU64>,
}

impl Relay {
    pub(crate) fn start(listener: tokio::net::TcpListener, upstream: std::net::SocketAddr) -> Self {
        let relay = Relay {
            served: Arc::default(),
            ranges: Arc::default(),
            full_gets: Arc::default(),
            cut_after: Arc::new(AtomicI64::new(-1)),
            slow_ms: Arc::default(),
        };
        let full_gets = relay.full_gets.clone();
        let (served, ranges, cut, slow) = (
            relay.served.clone(),
            relay.ranges.clone(),
            relay.cut_after.clone(),
            relay.slow_ms.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (served, ranges, cut, slow) =
                    (served.clone(), ranges.clone(), cut.clone(), slow.clone());
                let full_gets = full_gets.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let text = String::from_utf8_lossy(&buf[..n]);
                            let lower = text.to_ascii_lowercase();
                            if text.starts_with("GET ") && !lower.contains("\r\nrange:") {
                                full_gets.fetch_add(1, Ordering::SeqCst);
                            }
                            for line in text.lines() {
                                if let Some(v) = line
                                    .strip_prefix("range: ")
                                    .or(line.strip_prefix("Range: "))
                                {
                                    ranges.lock().unwrap().push(v.trim().to_owned());
                                }
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut n = n;
                        let budget = cut.load(Ordering::SeqCst);
                        let mut cut_now = false;
                        if budget >= 0 {
                            if (n as i64) >= budget {
                                n = budget as usize;
                                cut_now = true;
                                cut.store(-1, Ordering::SeqCst);
                            } else {
                                cut.fetch_sub(n as i64, Ordering::SeqCst);
                            }
                        }
                        served.fetch_add(n as u64, Ordering::SeqCst);
                        if cw.write_all(&buf[..n]).await.is_err() || cut_now {
                            break;
                        }
                        let pause = slow.load(Ordering::SeqCst);
                        if pause > 0 {
                            // Part of the scenario, not a wait: a slow network.
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                        }
                    }
                    up.abort();
                });
            }
        });
        relay
    }
}

/// A real server with an admin token, plus the relay for payload downloads.
pub(crate) struct Server {
    pub(crate) server: wellcar_server::RunningServer,
    pub(crate) api: ApiClient,
    pub(crate) relay: Relay,
    /// Base URL of payload downloads (through the relay).
    pub(crate) payload_base: String,
}

impl Server {
    pub(crate) async fn start(dir: &Path, listen: std::net::SocketAddr) -> Self {
        Self::start_with(dir, listen, |_| {}).await
    }

    /// [`Server::start`] with `configure` applied to the settings last.
    pub(crate) async fn start_with(
        dir: &Path,
        listen: std::net::SocketAddr,
        configure: impl FnOnce(&mut wellcar_server::Settings),
    ) -> Self {
        // Payload URLs go through the relay: pick its port first, then point public_url at it.
        let relay_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay_listener.local_addr().unwrap();
        let mut settings = wellcar_server::Settings::new(
            &format!("sqlite:{}", dir.join("server.db").display()),
            listen,
        );
        settings.payload_dir = dir.join("payloads");
        settings.flush_interval = Duration::from_millis(50);
        settings.config_refresh = Duration::from_millis(100);
        settings.poll_interval_secs = 1800;
        settings.public_url = Some(format!("http://{relay_addr}"));
        configure(&mut settings);
        let server = wellcar_server::spawn(settings).await.unwrap();
        // An operator's token, made the way `wellcar server token create` makes one.
        let token = server
            .state
            .db
            .write(|c| store::create_token(c, "agent-test", Role::Admin, wellcar_server::now_ms()))
            .await
            .unwrap();
        let api = ApiClient::new(&server.url(), Some(&token));
        let relay = Relay::start(relay_listener, server.addr);
        Server {
            server,
            api,
            relay,
            payload_base: format!("http://{relay_addr}/packages/{WELLCAR_APP_ID}/amd64"),
        }
    }

    pub(crate) fn omaha_url(&self) -> String {
        format!("{}/v1/update/", self.server.url())
    }

    /// Uploads `payload` as `version` and publishes it to `stable`, through the admin API as
    /// `wellcar server package publish` does.
    pub(crate) async fn publish(&self, version: &str, payload: &Path) {
        let package = PackageRef {
            app: WELLCAR_APP_ID,
            version,
            arch: "amd64",
        };
        let _: serde_json::Value = self
            .api
            .upload_package(&package, "wellcar_update.bin", payload, Arc::new(|_| {}))
            .await
            .unwrap();
        // The server reloads its configuration snapshot when a change is made through the API.
        let _: serde_json::Value = self.api.publish(&package, "stable").await.unwrap();
    }

    /// `GET /api/v1/apps/{Wellcar's app}/{path}` from the admin API, decoded.
    pub(crate) async fn app_get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.api
            .get(&format!("/api/v1/apps/{WELLCAR_APP_ID}/{path}"))
            .await
            .unwrap()
    }

    /// `(type, result, error code, previous version)` of every event of `MACHINE`, in the order
    /// the agent sent them, as the admin API lists them.
    pub(crate) async fn events(&self) -> Vec<(i64, i64, Option<i64>, Option<String>)> {
        let events: Vec<InstanceEvent> = self
            .app_get(&format!("instances/{MACHINE}/events?limit=1000"))
            .await;
        events
            .into_iter()
            .map(|e| {
                (
                    e.event_type,
                    e.event_result,
                    e.error_code,
                    e.previous_version,
                )
            })
            .collect()
    }

    /// The agent's instance, as the admin API lists it (the listing includes check-ins still
    /// queued for the batched write).
    pub(crate) async fn instance(&self) -> Instance {
        let list: Vec<Instance> = self.app_get("instances?limit=1000").await;
        list.into_iter()
            .find(|i| i.facts.machine_id == MACHINE)
            .expect("the agent's instance is listed")
    }
}

/// A host: root dir with os-release, machine id, boot id, cmdline, config, keys, disk image.
pub(crate) struct Host {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) paths: HostPaths,
}

impl Host {
    pub(crate) fn new(server_url: &str, key: &SigningKey, extra_config: &str) -> Self {
        Self::for_machine(MACHINE, server_url, key, extra_config)
    }

    /// [`Host::new`] with machine id `machine` (one server, many hosts).
    pub(crate) fn for_machine(
        machine: &str,
        server_url: &str,
        key: &SigningKey,
        extra_config: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let paths = HostPaths::under_root(&root);
        crate::slots::tests::fresh_esp(&paths.esp, "1.0.0");
        let disk = crate::slots::tests::disk_image(&root);
        assert_eq!(Some(disk), paths.disk);
        let host = Host { dir, paths };
        host.put(&host.paths.machine_id, &format!("{machine}\n"));
        host.put(&host.paths.oem_release[0], "ID=qemu\nVERSION_ID=0.1\n");
        host.boot("1.0.0", Slot::A);
        host.put(
            host.paths.config_files.iter().find(|p| p.ends_with("usr/share/wellcar/update.conf")).unwrap(),
            &format!("SERVER={server_url}\nGROUP=stable\nMACHINE_ALIAS=agent-test\nREBOOT_STRATEGY=off\n"),
        );
        host.put(host.paths.config_files.last().unwrap(), extra_config);
        host.put(
            &host.paths.trusted_keys.join("test.pub"),
            &wellcar_payload::keys::public_key_pem(&key.verifying_key()),
        );
        host
    }

    pub(crate) fn put(&self, path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// "Boots" `version` from `slot`: new boot id, command line and os-release.
    pub(crate) fn boot(&self, version: &str, slot: Slot) {
        let boot_id = uuid::Uuid::new_v4().to_string();
        self.put(&self.paths.boot_id, &format!("{boot_id}\n"));
        self.put(
            &self.paths.cmdline,
            &format!(
                "mount.usr=/dev/mapper/usr verity.usr=PARTUUID={} root=LABEL=ROOT\n",
                slot.unique_guid()
            ),
        );
        self.put(
            &self.paths.os_release,
            &format!("ID=wellcar\nVERSION_ID={version}\nWELLCAR_BOARD=amd64-usr\n"),
        );
    }

    pub(crate) fn agent(&self) -> Agent<EspSlots> {
        let mut agent = Agent::open(self.paths.clone()).unwrap();
        agent.set_sync_interval(256 * 1024);
        agent.set_transfer_retry_delay(Duration::from_millis(50));
        agent
    }

    pub(crate) fn boot_state(&self) -> wellcar_bootstate::BootState {
        wellcar_bootstate::Esp::new(&self.paths.esp)
            .load()
            .unwrap()
            .state
    }

    /// The first `len` bytes of `slot`'s partition.
    pub(crate) fn slot_bytes(&self, slot: Slot, len: u64) -> Vec<u8> {
        use std::io::Read as _;
        let mut w =
            crate::slots::PartitionWindow::open(self.paths.disk.as_ref().unwrap(), slot).unwrap();
        let mut buf = vec![0u8; len as usize];
        w.read_exact(&mut buf).unwrap();
        buf
    }
}

/// Runs blocking work that borrows from the caller on this thread, letting the async runtime
/// (server, relay) keep running on its other workers.
pub(crate) fn blocking_scope<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Runs blocking agent work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

pub(crate) fn key() -> SigningKey {
    wellcar_test_support::build::signing_key()
}

/// The agent's binary `name` next to this test binary (`target/<profile>/`); cargo builds
/// the crate's binaries for its tests.
fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run through `cargo test -p wellcar-agent`",
        path.display()
    );
    path
}

/// The update daemon's binary.
pub(crate) fn daemon_binary() -> PathBuf {
    sibling_binary("wellcar-update-agent")
}

/// The reboot manager's binary.
pub(crate) fn locksmithd_binary() -> PathBuf {
    sibling_binary("locksmithd")
}

/// A running host's update services: the agent daemon (`update-engine.service`) and, when the
/// test gives a reboot command, `locksmithd` beside it (`locksmithd.service`), both below the
/// same root. Both are SIGKILLed when dropped (also when a test fails half-way, so none
/// outlives its test).
pub(crate) struct Daemon {
    agent: std::process::Child,
    locksmithd: Option<std::process::Child>,
}

impl Daemon {
    /// Starts the services for the host below `root`: `args` go to the agent, except
    /// `--reboot-command CMD`, which starts locksmithd with it.
    pub(crate) fn start(root: &Path, args: &[String]) -> Self {
        Self::spawn(root, args, "warn", std::process::Stdio::null)
    }

    /// [`Daemon::start`] logging at `info` to the end of `log` (both processes).
    pub(crate) fn start_logging(root: &Path, args: &[String], log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Self::spawn(root, args, "info", || file.try_clone().unwrap().into())
    }

    fn spawn(
        root: &Path,
        args: &[String],
        level: &str,
        stderr: impl Fn() -> std::process::Stdio,
    ) -> Self {
        let mut agent_args = Vec::new();
        let mut reboot_command = None;
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            if arg == "--reboot-command" {
                reboot_command = rest.next().cloned();
            } else {
                agent_args.push(arg.clone());
            }
        }
        // Never the machine's system bus: a test that wants the D-Bus API passes its own.
        if !agent_args.iter().any(|a| a == "--dbus-address") {
            agent_args.extend(["--dbus-address".to_owned(), "none".to_owned()]);
        }
        let spawn = |binary: PathBuf, args: &[String]| {
            std::process::Command::new(binary)
                .arg("--root")
                .arg(root)
                .args(args)
                .env("RUST_LOG", level)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(stderr())
                .spawn()
                .unwrap()
        };
        let agent = spawn(daemon_binary(), &agent_args);
        let locksmithd = reboot_command
            .map(|cmd| spawn(locksmithd_binary(), &["--reboot-command".to_owned(), cmd]));
        Daemon { agent, locksmithd }
    }

    /// SIGKILL and reap both.
    pub(crate) fn sigkill(&mut self) {
        for child in std::iter::once(&mut self.agent).chain(self.locksmithd.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.sigkill();
    }
}
