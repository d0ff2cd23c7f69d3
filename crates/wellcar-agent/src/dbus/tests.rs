//! The service against a private `dbus-daemon`, driven by the real `busctl` as a script
//! written against update_engine would drive it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use wellcar_bootstate::Slot;
use wellcar_test_support::dbus::PrivateBus;
use wellcar_test_support::tools::{output, require};
use wellcar_test_support::wait::wait_until;

use super::*;
use crate::state::{Download, Offer, Phase, StagedUpdate};

struct Fixture {
    _dir: tempfile::TempDir,
    bus: PrivateBus,
    store: StateStore,
    requests: Receiver<Request>,
    service: Service,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start(dir.path());
    let store = StateStore::new(dir.path().join("state"));
    let (tx, requests) = std::sync::mpsc::channel();
    let service = Service::start(Some(bus.address()), store.clone(), tx).unwrap();
    Fixture {
        _dir: dir,
        bus,
        store,
        requests,
        service,
    }
}

fn staged() -> AgentState {
    AgentState {
        last_checked_time: 1718000000,
        ..AgentState::in_phase(Phase::Staged(StagedUpdate {
            version: "1.1.0".into(),
            size: 12345,
            slot: Slot::B,
            boot_id: "b".into(),
        }))
    }
}

fn downloading(received: u64) -> AgentState {
    AgentState::in_phase(Phase::Downloading(Download {
        received,
        ..Download::start(Offer {
            version: "1.2.0".into(),
            urls: vec![],
            size: 400,
            sha256: String::new(),
            target: Slot::B,
            is_delta: false,
        })
    }))
}

fn busctl(bus: &PrivateBus, args: &[&str]) -> std::process::Output {
    output(
        Command::new(require("busctl"))
            .arg(format!("--address={}", bus.address()))
            .args(args),
    )
}

const CALL: [&str; 4] = ["call", BUS_NAME, OBJECT_PATH, INTERFACE];

#[test]
fn busctl_sees_update_engines_interface_and_status() {
    let f = fixture();
    let out = busctl(&f.bus, &["introspect", BUS_NAME, OBJECT_PATH, INTERFACE]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let members: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with('.'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    // update_engine.xml: three methods and one signal, with these signatures, nothing else.
    assert_eq!(
        members,
        vec![
            vec![".AttemptUpdate", "method", "-", "-", "-"],
            vec![".GetStatus", "method", "-", "xdssx", "-"],
            vec![".ResetStatus", "method", "-", "-", "-"],
            vec![".StatusUpdate", "signal", "xdssx", "-", "-"],
        ],
        "{text}"
    );
    let xml = busctl(
        &f.bus,
        &["--xml-interface", "introspect", BUS_NAME, OBJECT_PATH],
    );
    let xml = String::from_utf8(xml.stdout).unwrap();
    // update_engine.xml's argument names and types, in order.
    for arg in [
        r#"<arg name="last_checked_time" type="x" direction="out"/>
      <arg name="progress" type="d" direction="out"/>
      <arg name="current_operation" type="s" direction="out"/>
      <arg name="new_version" type="s" direction="out"/>
      <arg name="new_size" type="x" direction="out"/>"#,
        r#"<signal name="StatusUpdate">
      <arg name="last_checked_time" type="x"/>
      <arg name="progress" type="d"/>
      <arg name="current_operation" type="s"/>
      <arg name="new_version" type="s"/>
      <arg name="new_size" type="x"/>"#,
    ] {
        assert!(xml.contains(arg), "{arg} missing from {xml}");
    }

    let out = busctl(&f.bus, &[&CALL[..], &["GetStatus"]].concat());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "xdssx 0 0 \"UPDATE_STATUS_IDLE\" \"0.0.0\" 0\n"
    );
    f.store.save(&staged()).unwrap();
    let out = busctl(&f.bus, &[&CALL[..], &["GetStatus"]].concat());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "xdssx 1718000000 0 \"UPDATE_STATUS_UPDATED_NEED_REBOOT\" \"1.1.0\" 12345\n"
    );
}

#[test]
fn attempt_update_leaves_a_check_request() {
    let f = fixture();
    let out = busctl(&f.bus, &[&CALL[..], &["AttemptUpdate"]].concat());
    assert!(out.status.success(), "{out:?}");
    let id = std::fs::read_to_string(f.store.request_path()).unwrap();
    assert!(!id.is_empty());
}

#[test]
fn reset_status_follows_update_engine() {
    let f = fixture();
    // Idle: nothing to do, success, and the loop is not asked.
    let out = busctl(&f.bus, &[&CALL[..], &["ResetStatus"]].concat());
    assert!(out.status.success(), "{out:?}");
    assert!(f.requests.try_recv().is_err());
    // Downloading: refused, naming the state.
    f.store.save(&downloading(100)).unwrap();
    let out = busctl(&f.bus, &[&CALL[..], &["ResetStatus"]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Reset not allowed in this state (UPDATE_STATUS_DOWNLOADING)"),
        "{err}"
    );
    // Staged: handed to the daemon loop, whose answer is returned.
    f.store.save(&staged()).unwrap();
    let loop_thread = std::thread::spawn(move || {
        let Request::ResetStatus(reply) = f.requests.recv().unwrap();
        reply.send(Ok(true)).unwrap();
        f.requests
    });
    let out = busctl(&f.bus, &[&CALL[..], &["ResetStatus"]].concat());
    assert!(out.status.success(), "{out:?}");
    let requests = loop_thread.join().unwrap();
    drop(requests);
    // With the loop gone, a staged reset fails instead of hanging.
    let out = busctl(&f.bus, &[&CALL[..], &["ResetStatus"]].concat());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loop is not running"),
        "{out:?}"
    );
}

#[test]
fn status_update_signal_reaches_busctl_monitor_and_the_client() {
    let f = fixture();
    let mut monitor = Command::new(require("busctl"))
        .arg(format!("--address={}", f.bus.address()))
        .args(["monitor", "--json=short", BUS_NAME])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = monitor.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // The monitor is listening once it shows our own GetStatus call.
    let mut seen = Vec::new();
    wait_until(
        "busctl monitor to show a GetStatus call",
        Duration::from_secs(20),
        || {
            busctl(&f.bus, &[&CALL[..], &["GetStatus"]].concat());
            while let Ok(l) = lines.recv_timeout(Duration::from_millis(200)) {
                seen.push(l);
            }
            seen.iter()
                .any(|l| l.contains("\"GetStatus\""))
                .then_some(())
        },
    );

    let client = client::UpdateClient::connect(Some(f.bus.address())).unwrap();
    let (statuses_tx, statuses) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || {
        client.watch(&mut |s| statuses_tx.send(s).is_ok()).unwrap();
    });
    // The client's match rule is in place once a signal it receives arrives; keep changing
    // the status until one does.
    let mut received = 0;
    let first = wait_until(
        "the client to receive StatusUpdate",
        Duration::from_secs(20),
        || {
            received += 100;
            f.store.save(&downloading(received)).unwrap();
            statuses.recv_timeout(Duration::from_secs(1)).ok()
        },
    );
    assert_eq!(first.current_operation, "UPDATE_STATUS_DOWNLOADING");
    assert_eq!(first.new_version, "1.2.0");
    assert_eq!(first.new_size, 400);
    f.store.save(&staged()).unwrap();
    let last = wait_until("the staged StatusUpdate", Duration::from_secs(20), || {
        statuses
            .recv_timeout(Duration::from_secs(1))
            .ok()
            .filter(|s| s.current_operation == "UPDATE_STATUS_UPDATED_NEED_REBOOT")
    });
    assert_eq!(last, Status::of(&staged()));
    let signal = wait_until(
        "busctl monitor to show StatusUpdate",
        Duration::from_secs(20),
        || {
            while let Ok(l) = lines.recv_timeout(Duration::from_millis(200)) {
                seen.push(l);
            }
            seen.iter()
                .find(|l| {
                    l.contains("\"StatusUpdate\"")
                        && l.contains("UPDATE_STATUS_UPDATED_NEED_REBOOT")
                })
                .cloned()
        },
    );
    assert!(signal.contains("\"type\":\"signal\""), "{signal}");
    assert!(
        signal.contains(&format!("\"interface\":\"{INTERFACE}\"")),
        "{signal}"
    );
    assert!(
        signal.contains(r#""payload":{"type":"xdssx","data":[1718000000,"#),
        "{signal}"
    );
    let _ = monitor.kill();
    let _ = monitor.wait();
    drop(f.service);
    drop(watcher);
}
