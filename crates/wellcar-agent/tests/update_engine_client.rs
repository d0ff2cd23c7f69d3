//! `update_engine_client` as Flatcar scripts call it, against the agent's D-Bus service on a
//! private bus (`DBUS_SYSTEM_BUS_ADDRESS`): Flatcar's output and exit codes, gflags' answers,
//! and Flatcar's bus policy letting a non-root user call the three methods but not introspect.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use wellcar_agent::dbus::{Service, POLICY};
use wellcar_agent::state::{AgentState, Download, Offer, Phase, StagedUpdate, StateStore};
use wellcar_bootstate::Slot;
use wellcar_test_support::dbus::PrivateBus;
use wellcar_test_support::tools::require;
use wellcar_test_support::wait::wait_until;

struct Bus {
    dir: tempfile::TempDir,
    bus: PrivateBus,
    store: StateStore,
    _requests: std::sync::mpsc::Receiver<wellcar_agent::daemon::Request>,
    _service: Option<Service>,
}

fn bus_with(policy_user: Option<&str>, serve: bool) -> Bus {
    let dir = tempfile::tempdir().unwrap();
    // Other users reach the socket (the policy, not the file mode, decides).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = policy_user.map(|user| {
        let path = dir.path().join("com.coreos.update1.conf");
        let text = POLICY.replace("user=\"core\"", &format!("user=\"{user}\""));
        // The permissive test default first, then Flatcar's policy as the system bus applies
        // it; its root and default rules must still let the service and root through.
        std::fs::write(&path, text).unwrap();
        path
    });
    let bus = PrivateBus::with_policy(dir.path(), policy.as_deref());
    let store = StateStore::new(dir.path().join("state"));
    let (tx, requests) = std::sync::mpsc::channel();
    let service = serve.then(|| Service::start(Some(bus.address()), store.clone(), tx).unwrap());
    Bus {
        dir,
        bus,
        store,
        _requests: requests,
        _service: service,
    }
}

fn client(bus: &Bus, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_update_engine_client"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.bus.address())
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn status_prints_flatcar_key_value_lines() {
    let bus = bus_with(None, true);
    let out = client(&bus, &["-status"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "LAST_CHECKED_TIME=0\nPROGRESS=0.000000\nCURRENT_OP=UPDATE_STATUS_IDLE\nNEW_VERSION=0.0.0\nNEW_SIZE=0\n"
    );
    assert!(
        text(&out.stderr).contains("update_engine_client.cc] Querying Update Engine status..."),
        "{}",
        text(&out.stderr)
    );
    bus.store
        .save(&AgentState {
            last_checked_time: 1718000000,
            ..AgentState::in_phase(Phase::Staged(StagedUpdate {
                version: "1.1.0".into(),
                size: 12345,
                slot: Slot::B,
                boot_id: "5e6b2a4e-0c8d-4d7a-9a62-1f7c1c1f0b3e".into(),
            }))
        })
        .unwrap();
    let out = client(&bus, &["--status"]);
    assert_eq!(
        text(&out.stdout),
        "LAST_CHECKED_TIME=1718000000\nPROGRESS=0.000000\nCURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT\nNEW_VERSION=1.1.0\nNEW_SIZE=12345\n"
    );
}

#[test]
fn check_for_update_asks_the_agent_and_flags_answer_as_gflags() {
    let bus = bus_with(None, true);
    let out = client(&bus, &["-check_for_update"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("Initiating update check and install."));
    let id = std::fs::read_to_string(bus.store.request_path()).unwrap();
    assert!(!id.is_empty());
    // gflags: an unknown flag is an error and exit 1; no flag at all is "Done.".
    let out = client(&bus, &["-frobnicate"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "ERROR: unknown command line flag 'frobnicate'\n"
    );
    let out = client(&bus, &["status"]);
    assert_eq!(out.status.code(), Some(0), "not a flag: ignored");
    assert!(text(&out.stderr).ends_with("] Done.\n"), "{out:?}");
    let out = client(&bus, &["-help"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("-reset_status (Sets the status in update_engine to idle.)"));
}

#[test]
fn reset_status_outside_need_reboot_fails_like_flatcars() {
    let bus = bus_with(None, true);
    let out = client(&bus, &["-reset_status"]);
    assert_eq!(out.status.code(), Some(0), "idle: a no-op {out:?}");
    bus.store
        .save(&AgentState::in_phase(Phase::Downloading(Download::start(
            Offer {
                version: "1.2.0".into(),
                urls: vec![],
                size: 10,
                sha256: String::new(),
                target: Slot::B,
                is_delta: false,
            },
        ))))
        .unwrap();
    let out = client(&bus, &["-reset_status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("] ResetStatus failed."), "{err}");
    assert!(err.contains("UPDATE_STATUS_DOWNLOADING"), "{err}");
}

#[test]
fn no_service_on_the_bus_exits_1() {
    let bus = bus_with(None, false);
    let out = client(&bus, &["-status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("Giving up -- unable to get dbus proxy for com.coreos.update1"),
        "{out:?}"
    );
}

#[test]
fn watch_for_updates_logs_each_status_update() {
    let bus = bus_with(None, true);
    let mut watch = Command::new(env!("CARGO_BIN_EXE_update_engine_client"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.bus.address())
        .arg("-watch_for_updates")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = watch.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut received = 0;
    let mut seen = String::new();
    wait_until(
        "the watcher to log a StatusUpdate",
        Duration::from_secs(20),
        || {
            received += 1;
            bus.store
                .save(&AgentState::in_phase(Phase::Downloading(Download {
                    received,
                    ..Download::start(Offer {
                        version: "1.2.0".into(),
                        urls: vec![],
                        size: 1000,
                        sha256: String::new(),
                        target: Slot::B,
                        is_delta: false,
                    })
                })))
                .unwrap();
            while let Ok(l) = lines.recv_timeout(Duration::from_millis(500)) {
                seen.push_str(&l);
                seen.push('\n');
            }
            seen.contains("]   current_operation: UPDATE_STATUS_DOWNLOADING")
                .then_some(())
        },
    );
    assert!(seen.contains("] Got status update:"), "{seen}");
    assert!(seen.contains("]   new_version: 1.2.0"), "{seen}");
    assert!(seen.contains("]   new_size: 1000"), "{seen}");
    assert_eq!(watch.try_wait().unwrap(), None, "never returns");
    let _ = watch.kill();
    let _ = watch.wait();
}

/// Flatcar's policy, with `core` played by `nobody`: that user gets the status and asks for
/// a check through update_engine_client, but introspection is denied, as on Flatcar.
#[test]
fn flatcar_policy_lets_a_non_root_user_use_the_client() {
    let bus = bus_with(Some("nobody"), true);
    let as_nobody = |program: &str, args: &[&str]| {
        Command::new(require("setpriv"))
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(program)
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus.bus.address())
            .current_dir(bus.dir.path())
            .output()
            .unwrap()
    };
    let exe = env!("CARGO_BIN_EXE_update_engine_client");
    let out = as_nobody(exe, &["-status"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("CURRENT_OP=UPDATE_STATUS_IDLE"));
    let out = as_nobody(exe, &["-check_for_update"]);
    assert!(out.status.success(), "{out:?}");
    assert!(bus.store.request_path().exists());
    let busctl = require("busctl");
    let address = format!("--address={}", bus.bus.address());
    let busctl = busctl.to_str().unwrap();
    let out = as_nobody(
        busctl,
        &[
            &address,
            "introspect",
            "com.coreos.update1",
            "/com/coreos/update1",
        ],
    );
    assert!(!out.status.success(), "introspection is denied: {out:?}");
    assert!(text(&out.stderr).contains("denied"), "{out:?}");
    // Root is allowed everything.
    let out = Command::new(busctl)
        .args([
            &address,
            "introspect",
            "com.coreos.update1",
            "/com/coreos/update1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
