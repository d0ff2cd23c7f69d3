//! Issue 9: the story a Flatcar operator lives, on real VMs, with no help from the test once an
//! update is published.
//!
//! - builds v1..v4 of the committed OS definition (same packages; v3 adds a `/usr` overlay whose
//!   `/usr/lib/systemd/systemd` exits, so v3 cannot boot);
//! - runs the real update server in-process on the host's loopback (SQLite in a temp dir),
//!   reached from the guest only through QEMU's `guestfwd` (`10.0.2.100:8080`, user networking
//!   with `restrict=on`); group `stable` gets safe mode;
//! - boots v1 with an Ignition config: user `core` with an ssh key made by `ssh-keygen`,
//!   `/etc/flatcar/update.conf` (server, a reboot strategy, short check intervals), a
//!   custom health check `RequiredBy=boot-complete.target`, and a container workload whose OCI
//!   image (Debian's static busybox) the test makes itself and ships in the config;
//! - v2 and v3 are built with a delta from the version before them; v1 → v2 goes by delta in
//!   both stories (the server's activity log shows `delta-served`, no fallback);
//! - BIOS, in full: publish v2 → the agent updates and locksmithd reboots into USR-B; one block
//!   of USR-B is overwritten on disk behind dm-verity's back and v3 is published → the agent
//!   refuses v3's delta (its source's dm-verity root differs; 3/0 errorcode 20, the group is
//!   not halted) and the next check installs v3's full payload (`delta-fallback`); v3's boot
//!   fails, GRUB falls back to v2, the agent reports 3/0 errorcode 44, the server marks
//!   the update failed and halts the group; resume and publish v4 → power cut mid-download →
//!   still v2 → the agent resumes and the machine ends on v4;
//! - UEFI, short: provision and update to v2 under `REBOOT_STRATEGY=fleetlock`: locksmithd takes
//!   the server's FleetLock slot of group `stable` before it reboots and releases it once v2 is
//!   marked good (the activity log shows both, in that order, and no slot stays held).
//!
//! Each run prints a timeline. A failure prints the console tail and the server's view of the
//! instance, group and activity log.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Parser as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use wellcar_test_support::tools::{self, run};
use wellcar_test_support::vm::{shell_status, tail, wait_logged_in, BOOT_TIMEOUT};
use wellcar_vmtests::*;

/// Where the guest finds the update server (forwarded to the host's loopback).
const GUEST_SERVER: &str = "10.0.2.100:8080";
/// An update: check, download ~140 MB, verify the written slot, reboot. TCG is slow.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(1500);
/// A failing boot: kernel panic (`panic=10`), then GRUB picks the other slot.
const FALLBACK_TIMEOUT: Duration = Duration::from_secs(600);
/// The agent's check interval set by the Ignition config.
const CHECK_INTERVAL_SECS: u64 = 20;
/// The workload's image name inside containerd.
const WORKLOAD_IMAGE: &str = "docker.io/wellcar/busybox:e2e";

// ---------------------------------------------------------------------------------------------
// Timeline

/// Named marks with the time since the start of the story.
struct Timeline {
    start: Instant,
    last: Instant,
    marks: Vec<(String, Duration, Duration)>,
}

impl Timeline {
    fn new() -> Timeline {
        let now = Instant::now();
        Timeline {
            start: now,
            last: now,
            marks: Vec::new(),
        }
    }

    /// Records `what` happening now; returns the time since the previous mark.
    fn mark(&mut self, what: &str) -> Duration {
        let now = Instant::now();
        let since = now - self.last;
        self.last = now;
        self.marks.push((what.to_owned(), now - self.start, since));
        eprintln!(
            "[e2e {:>7.1}s] {what} (+{:.1}s)",
            (now - self.start).as_secs_f64(),
            since.as_secs_f64()
        );
        since
    }

    fn render(&self) -> String {
        let mut out = String::from("timeline (at, phase duration, event):\n");
        for (what, at, since) in &self.marks {
            let _ = writeln!(
                out,
                "  {:>7.1}s  {:>7.1}s  {what}",
                at.as_secs_f64(),
                since.as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "  total {:.1}s",
            (self.last - self.start).as_secs_f64()
        );
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The update server

/// `wellcar server …` parsed exactly as the `wellcar` binary parses it.
#[derive(clap::Parser)]
struct ServerCli {
    #[command(subcommand)]
    command: wellcar_server::cli::Command,
}

/// The real update server, in-process, on an ephemeral loopback port.
struct Server {
    rt: tokio::runtime::Runtime,
    running: Option<wellcar_server::RunningServer>,
    api: wellcar_server::client::ApiClient,
    url: String,
    token: String,
    app: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(poll_interval_secs: u32) -> Server {
        let dir = tempfile::tempdir().expect("server temp dir");
        let database = format!("sqlite:{}", dir.path().join("server.db").display());
        let token = {
            let db = wellcar_server::db::Db::open(&database, 1).expect("opening the database");
            let now = wellcar_server::now_ms();
            db.write_blocking(|c| wellcar_server::store::migrate(c, now))
                .expect("migrating");
            db.write_blocking(|c| {
                wellcar_server::store::create_token(
                    c,
                    "e2e-operator",
                    wellcar_server::store::Role::Admin,
                    now,
                )
            })
            .expect("creating a token")
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut settings =
            wellcar_server::Settings::new(&database, "127.0.0.1:0".parse().expect("address"));
        settings.payload_dir = dir.path().join("payloads");
        // Guests reach the server only through the guestfwd address: download URLs name it.
        settings.public_url = Some(format!("http://{GUEST_SERVER}"));
        // QEMU's `guestfwd=…-tcp:` is one chardev connection, opened at QEMU's start, that
        // carries every guest connection in turn: the server's idle timeout would close it
        // during a reboot and cut the guest off for good.
        settings.connection_limits.idle_timeout = Duration::from_secs(24 * 3600);
        settings.poll_interval_secs = poll_interval_secs;
        settings.flush_interval = Duration::from_millis(200);
        let running = rt
            .block_on(wellcar_server::spawn(settings))
            .expect("starting the update server");
        let url = running.url();
        let api = wellcar_server::client::ApiClient::new(&url, Some(&token));
        Server {
            rt,
            running: Some(running),
            api,
            url,
            token,
            app: wellcar_omaha::normalize_app_id(wellcar_omaha::WELLCAR_APP_ID),
            _dir: dir,
        }
    }

    fn port(&self) -> u16 {
        self.running
            .as_ref()
            .expect("server is running")
            .addr
            .port()
    }

    /// Runs `wellcar server <args> --server URL --token T`, as an operator would.
    fn cli(&self, args: &[&str]) {
        let mut argv = vec!["wellcar-server"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--server", &self.url, "--token", &self.token]);
        let cli = ServerCli::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("wellcar server {args:?}: {e}"));
        // `run` owns a runtime of its own: run it off this thread's (absent) runtime context.
        let result = std::thread::spawn(move || {
            wellcar_server::cli::run(cli.command).map_err(|e| format!("{e:#}"))
        })
        .join()
        .expect("cli thread");
        if let Err(e) = result {
            panic!("wellcar server {args:?}: {e}");
        }
    }

    fn get(&self, path: &str) -> Value {
        self.rt
            .block_on(self.api.get::<Value>(path))
            .unwrap_or_else(|e| panic!("GET {path}: {}", chain(&e)))
    }

    /// The only instance, once it has checked in.
    fn instance(&self) -> Option<Value> {
        let list = self.get(&format!("/api/v1/apps/{}/instances?limit=10", self.app));
        let list = list.as_array().expect("instances are a list");
        assert!(list.len() <= 1, "more than one instance: {list:?}");
        list.first().cloned()
    }

    fn instance_field(&self, key: &str) -> Value {
        self.instance()
            .map(|i| i[key].clone())
            .unwrap_or(Value::Null)
    }

    fn group(&self) -> Value {
        self.get(&format!("/api/v1/apps/{}/groups/stable", self.app))
    }

    fn activity(&self) -> Value {
        self.get(&format!("/api/v1/activity?app={}&limit=50", self.app))
    }

    /// The messages of the app's activity log entries of `kind`, newest first.
    fn activity_messages(&self, kind: &str) -> Vec<String> {
        self.activity()
            .as_array()
            .expect("activity is a list")
            .iter()
            .filter(|a| a["kind"] == kind)
            .filter_map(|a| a["message"].as_str().map(str::to_owned))
            .collect()
    }

    /// The activity log's reboot-lock entries of group `stable` (not tied to an app), oldest
    /// first.
    fn lock_activity(&self) -> Vec<String> {
        let all = self.get("/api/v1/activity?limit=200");
        let mut lines: Vec<String> = all
            .as_array()
            .expect("activity is a list")
            .iter()
            .filter_map(|a| a["message"].as_str())
            .filter(|m| m.starts_with("reboot lock stable"))
            .map(str::to_owned)
            .collect();
        lines.reverse();
        lines
    }

    /// Holders of the FleetLock group `stable`.
    fn lock_holders(&self) -> Value {
        let groups = self.get("/api/v1/fleetlock/groups");
        groups
            .as_array()
            .expect("lock groups are a list")
            .iter()
            .find(|g| g["name"] == "stable")
            .map(|g| g["holders"].clone())
            .unwrap_or(Value::Null)
    }

    /// The server's view, for failure reports.
    fn view(&self) -> String {
        let instance = self.instance();
        let group = self.group();
        let activity = self.activity();
        format!(
            "server: instance {}\nserver: group {}\nserver: activity {}",
            serde_json::to_string_pretty(&instance).unwrap_or_default(),
            serde_json::to_string_pretty(&group).unwrap_or_default(),
            serde_json::to_string_pretty(&activity).unwrap_or_default()
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = self.rt.block_on(running.shutdown());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Builds, shared by both tests

struct Builds {
    v1: Built,
    v2: Built,
    v3: Built,
    v4: Built,
}

/// v1 is the standard image; v2 and v4 are the same packages with new versions; v3 is
/// v2's content plus an overlay that replaces systemd with a program that exits.
fn builds() -> &'static Builds {
    static BUILDS: OnceLock<Builds> = OnceLock::new();
    BUILDS.get_or_init(|| {
        // Under `scripts/test.sh` the standard v1 is built once for every VM test; a lone run
        // builds its own, so it cannot race another test process rebuilding `v1`.
        let v1 = if std::env::var_os("WELLCAR_TEST_BUILD_ID").is_some() {
            image_v1()
        } else {
            build("e2e-v1", "1.0.0")
        };
        // v2 and v3 also carry a delta from the version before them, as a release pipeline
        // makes them (`wellcar build --delta-from`); `package publish --build` uploads it.
        let v2 = build_with("e2e-v2", "2.0.0", Vec::new(), Some(&v1));
        let overlay = test_dir().join("e2e-v3-overlay");
        let _ = std::fs::remove_dir_all(&overlay);
        let systemd = overlay.join("lib/systemd/systemd");
        std::fs::create_dir_all(systemd.parent().expect("parent")).expect("overlay dir");
        std::fs::write(
            &systemd,
            "#!/bin/sh\necho 'wellcar-e2e: v3 is broken on purpose: systemd exits' >/dev/console\nexit 1\n",
        )
        .expect("writing the broken systemd");
        make_executable(&systemd);
        let v3 = build_with("e2e-v3", "3.0.0", vec![overlay], Some(&v2));
        let v4 = build("e2e-v4", "4.0.0");
        for b in [&v1, &v2, &v3, &v4] {
            assert!(
                b.manifest.payload.is_some(),
                "{} has no update payload",
                b.dir.display()
            );
        }
        for (b, from) in [(&v2, "1.0.0"), (&v3, "2.0.0")] {
            assert!(
                b.manifest.deltas.iter().any(|d| d.source_version == from),
                "{} has no delta from {from}",
                b.dir.display()
            );
        }
        Builds { v1, v2, v3, v4 }
    })
}

/// A 4 KiB block of v2's /usr image in the middle of `/usr/bin/docker`'s data (the EROFS
/// layout as `dump.erofs -e` prints it: `N: logical.. | len : physical_start.. physical_end |
/// len`, byte offsets).
fn unread_block_of_v2() -> u64 {
    let v2 = &builds().v2;
    let usr = v2.path(&v2.manifest.usr_image);
    let out = run(Command::new("dump.erofs")
        .args(["-e", "--path=/bin/docker"])
        .arg(&usr));
    let text = String::from_utf8_lossy(&out.stdout);
    let physical: Vec<u64> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split('|');
            let (_, middle) = (parts.next()?, parts.next()?);
            let start = middle.split(':').nth(1)?.split("..").next()?;
            start.trim().parse().ok()
        })
        .collect();
    let Some(&offset) = physical.get(physical.len() / 2) else {
        panic!("no extents of /bin/docker in {}: {text}", usr.display());
    };
    assert!(
        offset / 4096 < v2.manifest.verity_data_blocks,
        "extent at byte {offset} lies outside v2's data blocks"
    );
    offset / 4096
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

// ---------------------------------------------------------------------------------------------
// The workload image and the Ignition config

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes a blob into an OCI layout's `blobs/sha256/`; returns its descriptor.
fn oci_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let digest = sha256_hex(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&digest), bytes).expect("writing a blob");
    json!({"mediaType": media_type, "digest": format!("sha256:{digest}"), "size": bytes.len()})
}

/// An OCI image archive (what `ctr image import` reads) holding Debian's static busybox as
/// `/bin/busybox`, plus the `sh` link the workload runs.
fn workload_image(dir: &Path) -> Vec<u8> {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox is missing: install busybox-static (scripts/install-deps.sh does)"
    );
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
    std::fs::copy(busybox, rootfs.join("bin/busybox")).expect("copying busybox");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).expect("sh link");
    let tar = |from: &Path, what: &[&str]| -> Vec<u8> {
        let mut cmd = Command::new("tar");
        cmd.args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@1700000000",
            "--format=posix",
            "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
            "-C",
        ])
        .arg(from)
        .arg("-cf")
        .arg("-")
        .args(what);
        run(&mut cmd).stdout
    };
    let layer = tar(&rootfs, &["bin"]);
    let layout = dir.join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("layout");
    let layer_desc = oci_blob(&layout, "application/vnd.oci.image.layer.v1.tar", &layer);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&layer))]},
    });
    let config_desc = oci_blob(
        &layout,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    });
    let mut manifest_desc = oci_blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    );
    manifest_desc["annotations"] = json!({
        "io.containerd.image.name": WORKLOAD_IMAGE,
        "org.opencontainers.image.ref.name": "e2e",
    });
    manifest_desc["platform"] = json!({"architecture": "amd64", "os": "linux"});
    std::fs::write(
        layout.join("index.json"),
        json!({"schemaVersion": 2, "manifests": [manifest_desc]}).to_string(),
    )
    .expect("index.json");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    tar(&layout, &["blobs", "index.json", "oci-layout"])
}

fn gzip(bytes: &[u8], dir: &Path) -> Vec<u8> {
    let path = dir.join("gzip-input");
    std::fs::write(&path, bytes).expect("gzip input");
    run(Command::new("gzip").args(["-9", "-n", "-c"]).arg(&path)).stdout
}

fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// An ssh key pair made by `ssh-keygen`; returns (private key path, public key line).
fn ssh_key(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e@wellcar", "-f"])
        .arg(&key));
    let public = std::fs::read_to_string(dir.join("id_ed25519.pub")).expect("public key");
    (key, public.trim().to_owned())
}

const HEALTH_UNIT: &str = "\
# The operator's own health check: the workload's image arrived and containerd lists it.
[Unit]
Description=E2E health check: the workload image is in containerd
Wants=containerd.service e2e-workload.service
After=containerd.service e2e-workload.service
Before=boot-complete.target

[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=300
ExecStart=/bin/sh -c '/usr/bin/ctr --timeout 240s image ls -q | grep -qx docker.io/wellcar/busybox:e2e && echo e2e-health-ok >/run/e2e-health'

[Install]
RequiredBy=boot-complete.target
";

const WORKLOAD_UNIT: &str = "\
[Unit]
Description=E2E container workload (busybox under containerd)
Requires=containerd.service
After=containerd.service

[Service]
TimeoutStartSec=300
ExecStartPre=/usr/bin/ctr --timeout 240s image import /var/lib/e2e/busybox-oci.tar
ExecStartPre=-/usr/bin/ctr task kill -s SIGKILL workload
ExecStartPre=-/usr/bin/ctr task rm -f workload
ExecStartPre=-/usr/bin/ctr container rm workload
# PID 1 of the container ignores signals it has no handler for: trap TERM so a reboot does not
# wait for the stop timeout.
ExecStart=/usr/bin/ctr run --rm docker.io/wellcar/busybox:e2e workload /bin/sh -c 'trap \"exit 0\" TERM; echo workload up; while true; do sleep 5 & wait $$!; done'
TimeoutStopSec=30
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
";

/// How the story's machine may reboot into an update (its `update.conf` lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    /// `REBOOT_STRATEGY=reboot`: as soon as the update is staged.
    Reboot,
    /// `REBOOT_STRATEGY=fleetlock` against the test's server (group `stable`, from `GROUP`).
    FleetLock,
}

impl Strategy {
    fn update_conf(self) -> String {
        match self {
            Strategy::Reboot => "REBOOT_STRATEGY=reboot\n".to_owned(),
            Strategy::FleetLock => format!(
                "REBOOT_STRATEGY=fleetlock\nFLEETLOCK_URL=http://{GUEST_SERVER}/fleetlock\n"
            ),
        }
    }
}

/// The Ignition config: user, update.conf, health check, workload.
fn ignition_config(dir: &Path, strategy: Strategy) -> (PathBuf, PathBuf) {
    let (key, public) = ssh_key(dir);
    let update_conf = format!(
        "SERVER=http://{GUEST_SERVER}/v1/update/\nGROUP=stable\n{}\
         WELLCAR_FIRST_CHECK_DELAY=5s\nWELLCAR_CHECK_INTERVAL={CHECK_INTERVAL_SECS}s\n\
         WELLCAR_RETRY_DELAY=10s\nWELLCAR_REBOOT_WARNING=0s\n",
        strategy.update_conf()
    );
    let image = gzip(&workload_image(&dir.join("image")), dir);
    let config = json!({
        "ignition": {"version": "3.4.0"},
        "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": [public]}]},
        "storage": {"files": [
            {"path": "/etc/flatcar/update.conf", "mode": 0o644,
             "contents": {"source": data_url(update_conf.as_bytes())}},
            {"path": "/var/lib/e2e/busybox-oci.tar", "mode": 0o644,
             "contents": {"compression": "gzip", "source": data_url(&image)}},
        ]},
        "systemd": {"units": [
            {"name": "e2e-health.service", "enabled": true, "contents": HEALTH_UNIT},
            {"name": "e2e-workload.service", "enabled": true, "contents": WORKLOAD_UNIT},
        ]},
    });
    let path = dir.join("config.ign");
    std::fs::write(&path, config.to_string()).expect("writing config.ign");
    (path, key)
}

// ---------------------------------------------------------------------------------------------
// The machine

/// A machine living through the story, with what is needed to restart it and report failures.
struct Story {
    vm: Machine,
    server: Server,
    tl: Timeline,
    firmware: Firmware,
    base: Built,
    dir: PathBuf,
    runs: usize,
    ssh_key: PathBuf,
    strategy: Strategy,
}

impl Story {
    fn start(name: &str, firmware: Firmware, strategy: Strategy) -> Story {
        let builds = builds();
        let mut tl = Timeline::new();
        tl.mark("builds ready (v1..v4)");
        let server = Server::start(CHECK_INTERVAL_SECS as u32);
        server.cli(&[
            "group",
            "update",
            "--group",
            "stable",
            "--channel",
            "stable",
            "--safe-mode",
            "--update-timeout-secs",
            "3600",
        ]);
        assert_eq!(
            server.group()["policy"]["safe_mode"],
            true,
            "safe mode did not stick: {}",
            server.group()
        );
        tl.mark("server up, group stable in safe mode");
        let dir = test_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let (ignition, ssh_key) = ignition_config(&dir, strategy);
        let base = builds.v1.clone();
        let vm = spawn(
            &base,
            base.path(&base.manifest.qcow2_image),
            &dir,
            0,
            firmware,
            &server,
            Some(ignition),
        );
        Story {
            vm,
            server,
            tl,
            firmware,
            base,
            dir,
            runs: 0,
            ssh_key,
            strategy,
        }
    }

    /// Power cut: kills QEMU and starts it again on the disk it left behind.
    fn power_cycle(&mut self) {
        self.vm.kill();
        let disk = self.vm.disk();
        self.runs += 1;
        let vm = spawn(
            &self.base,
            disk,
            &self.dir,
            self.runs,
            self.firmware,
            &self.server,
            None,
        );
        self.vm = vm;
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n{}\n--- console tail ---\n{}\n--- {}\n",
            self.tl.render(),
            tail(&self.vm),
            self.server.view()
        )
    }

    /// Runs `command` on the console; returns its output and exit status.
    fn sh(&mut self, command: &str) -> (String, i32) {
        match shell_status(&mut self.vm, command) {
            Ok(done) => done,
            Err(e) => self.fail(&e),
        }
    }

    fn ok(&mut self, command: &str) -> String {
        let (out, code) = self.sh(command);
        if code != 0 {
            self.fail(&format!("{command} failed ({code}):\n{out}"));
        }
        out
    }

    fn json(&mut self, command: &str) -> Value {
        let out = self.ok(command);
        match serde_json::from_str(out.trim()) {
            Ok(v) => v,
            Err(e) => self.fail(&format!("{command}: {e}: {out:?}")),
        }
    }

    fn status(&mut self) -> Value {
        self.json("sudo wellcar-update status --json")
    }

    fn agent_state(&mut self) -> Value {
        self.json("sudo cat /var/lib/wellcar/update-agent/status.json")
    }

    /// Waits for GRUB to boot a slot after console offset `from`; returns the slot letter and
    /// the offset after it.
    fn next_boot(&mut self, from: usize, timeout: Duration) -> (char, usize) {
        let at = match self
            .vm
            .wait_for_from(from, "Wellcar: booting USR-", timeout)
        {
            Ok(at) => at,
            Err(e) => self.fail(&format!("no boot: {}", chain(&e))),
        };
        for _ in 0..100 {
            // GRUB prints the slot's lower-case letter (`wellcar_disk::Slot::letter`).
            if let Some(c) = self.vm.console()[at..].chars().next() {
                return (c.to_ascii_uppercase(), at);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.fail("GRUB did not print the slot letter")
    }

    fn expect_boot(&mut self, from: usize, slot: char, timeout: Duration) -> usize {
        let (booted, at) = self.next_boot(from, timeout);
        if booted != slot {
            self.fail(&format!("GRUB booted USR-{booted}, expected USR-{slot}"));
        }
        at
    }

    /// Waits for the autologin shell after `from`, then for the boot to settle; returns
    /// whether mark-good ran.
    fn settle(&mut self, from: usize) -> bool {
        if let Err(e) = wait_logged_in(&mut self.vm, from) {
            self.fail(&format!("no autologin: {}", chain(&e)));
        }
        // Kernel messages on the serial console would interleave with command output.
        self.ok("sudo dmesg -n 1");
        let _ = self
            .vm
            .shell("systemctl is-system-running --wait", BOOT_TIMEOUT);
        let out = self.ok("systemctl is-active wellcar-mark-good.service || true");
        out.trim_start().starts_with("active")
    }

    /// Asserts the running system: slot, version, marked good, the health check passed, the
    /// workload container runs.
    fn expect_running(&mut self, slot: char, version: &str) {
        let st = self.status();
        if st["booted"] != format!("USR-{slot}") {
            self.fail(&format!(
                "booted {} instead of USR-{slot}: {st}",
                st["booted"]
            ));
        }
        let index = usize::from(slot == 'B');
        if st["slots"][index]["successful"] != true {
            self.fail(&format!("USR-{slot} is not marked good: {st}"));
        }
        let release = self.ok("grep ^VERSION_ID= /usr/lib/os-release");
        if !release.contains(&format!("VERSION_ID={version}")) {
            self.fail(&format!("runs {release:?}, expected {version}"));
        }
        let health = self.ok("cat /run/e2e-health");
        if !health.contains("e2e-health-ok") {
            self.fail(&format!("health check did not run: {health:?}"));
        }
        self.expect_workload();
    }

    fn expect_workload(&mut self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let (tasks, _) = self.sh("sudo ctr task ls 2>&1");
            if tasks
                .lines()
                .any(|l| l.starts_with("workload") && l.contains("RUNNING"))
            {
                return;
            }
            if Instant::now() > deadline {
                let (unit, _) = self.sh("systemctl status --no-pager -n 20 e2e-workload.service");
                self.fail(&format!("the workload is not running:\n{tasks}\n{unit}"));
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    /// The server's view of the instance (`null` when it has none); marks the timeline when its
    /// status differs from `seen`, which it then updates.
    fn server_instance_marking_changes(&mut self, seen: &mut String) -> Value {
        let instance = self.server.instance().unwrap_or(Value::Null);
        let status = instance["status"].as_str().unwrap_or("none").to_owned();
        if status != *seen {
            self.tl.mark(&format!(
                "server: instance {status} (version {}, granted {})",
                instance["version"], instance["granted_version"]
            ));
            *seen = status;
        }
        instance
    }

    /// Polls the server until `pred` holds for the instance; records server status changes.
    fn wait_server(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut seen = String::new();
        loop {
            let instance = self.server_instance_marking_changes(&mut seen);
            if pred(&instance) {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!("timed out waiting for the server: {what}"));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Waits for GRUB to boot `slot` after `from` while recording the server's status changes.
    fn wait_boot_watching_server(&mut self, from: usize, timeout: Duration) -> (char, usize) {
        let deadline = Instant::now() + timeout;
        let mut seen = String::new();
        while self.vm.console()[from..]
            .find("Wellcar: booting USR-")
            .is_none()
        {
            self.server_instance_marking_changes(&mut seen);
            if Instant::now() > deadline {
                self.fail("the machine did not reboot into the update (agent and locksmithd)");
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        self.next_boot(from, Duration::from_secs(10))
    }

    fn publish(&mut self, built: &Built) {
        let dir = built.dir.to_str().expect("utf-8 path").to_owned();
        self.server
            .cli(&["package", "publish", "--build", &dir, "--channel", "stable"]);
        self.tl
            .mark(&format!("published {}", built.manifest.version));
    }

    /// ssh with the Ignition key, as an operator logs in.
    fn ssh(&self, command: &str) -> String {
        let port = self.vm.ssh_port.expect("ssh is forwarded");
        let out = tools::output(wellcar_vm::core_ssh(port, &self.ssh_key, 60).arg(command));
        if !out.status.success() {
            self.fail(&format!(
                "ssh core@ {command}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Steps 3 and 4: first boot provisions; v2 is found, installed into USR-B and booted
    /// with no action from the test.
    fn provision_and_update_to_v2(&mut self) {
        let builds = builds();
        // 3. First boot.
        let at = self.expect_boot(0, 'A', BOOT_TIMEOUT);
        if !self.settle(at) {
            self.fail("mark-good did not run on the first boot");
        }
        self.expect_running('A', &builds.v1.manifest.version);
        let who = self.ssh("id -un; cat /etc/flatcar/update.conf");
        assert!(who.starts_with("core\n"), "ssh as core: {who:?}");
        assert!(who.contains(&self.strategy.update_conf()), "{who:?}");
        self.tl
            .mark("first boot: provisioned, marked good, workload runs, ssh works");
        let first_check_deadline = Duration::from_secs(300);
        self.wait_server("the first check", first_check_deadline, |i| {
            i["version"] == "1.0.0"
        });

        // 4. Publish v2; the agent does the rest.
        let from = self.vm.console().len();
        self.publish(&builds.v2);
        let (slot, at) = self.wait_boot_watching_server(from, UPDATE_TIMEOUT);
        if slot != 'B' {
            self.fail(&format!("the update to v2 booted USR-{slot}"));
        }
        self.tl.mark("reboot: GRUB boots v2 in USR-B");
        if !self.settle(at) {
            self.fail("USR-B was not marked good after boot-complete.target");
        }
        self.tl.mark("v2 boot settled");
        self.expect_running('B', &builds.v2.manifest.version);
        self.wait_server("v2 complete", Duration::from_secs(300), |i| {
            i["version"] == "2.0.0" && i["status"] == "complete"
        });
        self.tl
            .mark("v2: marked good, workload runs, server shows complete");
        let served = self.server.activity_messages("delta-served");
        let Some(delta) = served
            .iter()
            .find(|m| m.contains("was served the delta of 2.0.0 from 1.0.0"))
        else {
            self.fail(&format!("v2 did not go by delta: delta-served {served:?}"))
        };
        let delta = delta.clone();
        if !self.server.activity_messages("delta-fallback").is_empty() {
            self.fail("the server fell back to the full payload of v2");
        }
        self.tl
            .mark(&format!("server: v2 went by its delta from v1 ({delta})"));
    }

    /// Step 5's setup: v3's delta is made from v2, and USR-B (v2, booted) gets one 4 KiB block
    /// of random bytes written to its raw partition, behind dm-verity's back: a block of
    /// `/usr/bin/docker`'s data, which nothing in this story reads, so dm-verity never sees
    /// it. Returns the command that puts the block back.
    fn corrupt_booted_usr_b(&mut self) -> String {
        let block = unread_block_of_v2();
        let usr_b = "/dev/disk/by-partlabel/USR-B";
        let saved = "/var/tmp/e2e-usr-b-block";
        self.ok(&format!(
            "sudo dd if={usr_b} of={saved} bs=4096 skip={block} count=1 iflag=direct status=none"
        ));
        self.ok(&format!(
            "sudo dd if=/dev/urandom of={usr_b} bs=4096 seek={block} count=1 oflag=direct \
             conv=notrunc status=none"
        ));
        self.tl.mark(&format!(
            "USR-B block {block} overwritten on disk (v2 booted)"
        ));
        format!(
            "sudo dd if={saved} of={usr_b} bs=4096 seek={block} count=1 oflag=direct \
             conv=notrunc status=none"
        )
    }

    /// Waits until the server logged the agent's refusal of v3's delta (error code 20, the
    /// source slot is not what the delta was made from) and the agent says why.
    fn expect_delta_refused(&mut self) {
        let deadline = Instant::now() + UPDATE_TIMEOUT;
        loop {
            let failed = self.server.activity_messages("delta-failed");
            if failed
                .iter()
                .any(|m| m.contains("delta of 3.0.0") && m.contains("error code 20"))
            {
                break;
            }
            if Instant::now() > deadline {
                self.fail(&format!("the delta of v3 was not refused: {failed:?}"));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        let log = self.ok(&format!(
            "journalctl -b -u {} --no-pager -o cat | grep 'update check failed' || true",
            wellcar_agent::AGENT_UNIT
        ));
        if !log.contains("error code 20") || !log.contains("dm-verity root") {
            self.fail(&format!(
                "the agent's journal does not name the source mismatch: {log}"
            ));
        }
        if self.server.group()["halted"] == true {
            self.fail("a refused delta halted the safe-mode group");
        }
        self.tl
            .mark("agent refused v3's delta: USR-B's dm-verity root differs (error 20)");
    }
}

fn spawn(
    b: &Built,
    image: PathBuf,
    dir: &Path,
    run: usize,
    firmware: Firmware,
    server: &Server,
    ignition: Option<PathBuf>,
) -> Machine {
    let mut cfg = machine(b, firmware);
    cfg.image = image;
    cfg.state_dir = Some(dir.join(format!("run{run}")));
    cfg.ignition = ignition;
    cfg.ssh_port = Some(0);
    cfg.guest_forwards = vec![(GUEST_SERVER.to_owned(), server.port())];
    Machine::spawn(&cfg).unwrap_or_else(|e| panic!("starting QEMU: {}", chain(&e)))
}

#[test]
fn bios_provision_update_fallback_power_cut() {
    let builds = builds();
    let _slot = vm_slot();
    let mut story = Story::start("e2e-bios", Firmware::Bios, Strategy::Reboot);
    story.provision_and_update_to_v2();

    // 5. Broken v3, offered as a delta from v2 while USR-B is corrupted on disk: the agent
    //    refuses the delta before writing anything and the next check installs the full
    //    payload into USR-A; v3 fails to boot and GRUB falls back to v2.
    let restore = story.corrupt_booted_usr_b();
    let from = story.vm.console().len();
    story.publish(&builds.v3);
    story.expect_delta_refused();
    // The fallback boots USR-B again: give it its block back.
    story.ok(&restore);
    let (slot, at) = story.wait_boot_watching_server(from, UPDATE_TIMEOUT);
    if slot != 'A' {
        story.fail(&format!("v3 was not tried in USR-A (booted USR-{slot})"));
    }
    story.tl.mark("reboot: GRUB tries v3 in USR-A");
    let fallback = story.server.activity_messages("delta-fallback");
    if !fallback.iter().any(|m| m.contains("full package of 3.0.0")) {
        story.fail(&format!(
            "v3 was not installed from its full payload: {fallback:?}"
        ));
    }
    let at = story.expect_boot(at, 'B', FALLBACK_TIMEOUT);
    story.tl.mark("fallback: GRUB boots USR-B again");
    if !story.settle(at) {
        story.fail("v2 was not marked good after the fallback");
    }
    story.expect_running('B', &builds.v2.manifest.version);
    story.tl.mark("fallback boot settled on v2");
    story.wait_server("the rollback report", Duration::from_secs(300), |i| {
        i["status"] == "error" && i["last_error_code"] == 44 && i["version"] == "2.0.0"
    });
    let group = story.server.group();
    if group["halted"] != true {
        story.fail(&format!("safe mode did not halt the group: {group}"));
    }
    let activity = story.server.activity().to_string();
    if !activity.contains("group halted") {
        story.fail("the activity log does not say the group halted");
    }
    story
        .tl
        .mark("server: update failed (error 44), group halted, activity logged");
    // It keeps v2 and does not retry: several check intervals pass without a download or boot.
    let quiet_from = story.vm.console().len();
    std::thread::sleep(Duration::from_secs(4 * CHECK_INTERVAL_SECS));
    if story.vm.console()[quiet_from..].contains("Wellcar: booting USR-") {
        story.fail("the machine rebooted after the fallback");
    }
    let agent = story.agent_state();
    if agent["phase"]["state"] != "idle" || !agent["phase"]["paused"].is_null() {
        story.fail(&format!("the agent retries after the fallback: {agent}"));
    }
    let st = story.status();
    assert_eq!(st["next_boot"], "USR-B", "{st}");
    assert_eq!(story.server.instance_field("status"), "error");
    story.tl.mark("no retry of v3 over 4 check intervals");

    // 6. Power cut mid-download of v4, after the operator resumes the group.
    story.server.cli(&["group", "resume", "--group", "stable"]);
    assert_eq!(story.server.group()["halted"], false);
    story.publish(&builds.v4);
    let deadline = Instant::now() + UPDATE_TIMEOUT;
    loop {
        let agent = story.agent_state();
        // status.json is the serialized phase (`wellcar_agent::state::Phase`).
        let phase = &agent["phase"];
        let op = phase["state"].as_str().unwrap_or_default().to_owned();
        let received = phase["received"].as_f64().unwrap_or(0.0);
        let size = phase["offer"]["size"].as_f64().unwrap_or(f64::INFINITY);
        let progress = received / size;
        if (op == "downloading" && progress > 0.05) || op == "verifying" || op == "verified" {
            story.tl.mark(&format!(
                "agent {op} v4 at {:.0}%: power cut",
                progress * 100.0
            ));
            break;
        }
        if op == "staged" || Instant::now() > deadline {
            story.fail(&format!("missed the download window: {agent}"));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    story.power_cycle();
    let at = story.expect_boot(0, 'B', BOOT_TIMEOUT);
    story.tl.mark("after the power cut: GRUB boots USR-B (v2)");
    if let Err(e) = story
        .vm
        .wait_for_from(at, "(automatic login)", BOOT_TIMEOUT)
    {
        story.fail(&format!("no autologin after the power cut: {}", chain(&e)));
    }
    // The agent needs minutes to finish v4 on TCG; this look happens long before it reboots.
    let release = story.ok("grep ^VERSION_ID= /usr/lib/os-release");
    if !release.contains("VERSION_ID=2.0.0") {
        story.fail(&format!("after the power cut it runs {release:?}, not v2"));
    }
    let from = story.vm.console().len();
    let (slot, at) = story.wait_boot_watching_server(from, UPDATE_TIMEOUT);
    if slot != 'A' {
        story.fail(&format!("the resumed update booted USR-{slot}"));
    }
    story
        .tl
        .mark("reboot: the resumed update boots v4 in USR-A");
    if !story.settle(at) {
        story.fail("v4 was not marked good");
    }
    story.expect_running('A', &builds.v4.manifest.version);
    story.wait_server("v4 complete", Duration::from_secs(300), |i| {
        i["version"] == "4.0.0" && i["status"] == "complete"
    });
    story
        .tl
        .mark("v4: marked good, workload runs, server shows complete");
    eprintln!("{}", story.tl.render());
}

#[test]
fn uefi_provision_and_update() {
    let _ = builds();
    let _slot = vm_slot();
    let mut story = Story::start("e2e-uefi", Firmware::Uefi, Strategy::FleetLock);
    story.provision_and_update_to_v2();
    // locksmithd took the slot before the reboot and gave it back once v2 was marked good.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let log = story.server.lock_activity();
        let granted = log.iter().position(|m| m.contains("granted"));
        let released = log.iter().position(|m| m.contains("(steady state)"));
        if matches!((granted, released), (Some(g), Some(r)) if g < r) {
            break;
        }
        if Instant::now() > deadline {
            story.fail(&format!(
                "the activity log does not show the FleetLock grant then the steady-state release: {log:?}"
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let holders = story.server.lock_holders();
    if holders.as_array().is_none_or(|h| !h.is_empty()) {
        story.fail(&format!(
            "group stable's reboot slot is still held: {holders}"
        ));
    }
    story
        .tl
        .mark("fleetlock: slot granted before the reboot, released after mark-good");
    eprintln!("{}", story.tl.render());
}
