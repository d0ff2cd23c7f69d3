use super::*;
use clap::Parser as _;
use std::time::Duration;
use wellcar_agent::pin::CheckRequest;
use wellcar_agent::state::{AgentState, Phase, StagedUpdate};

fn opts(args: &[&str]) -> InstallOpts {
    let mut argv = vec!["wellcar-update", "install"];
    argv.extend_from_slice(args);
    match crate::Cli::try_parse_from(argv).unwrap().command {
        crate::Command::Install(opts) => opts,
        other => panic!("{other:?}"),
    }
}

fn staged() -> AgentState {
    AgentState::in_phase(Phase::Staged(StagedUpdate {
        version: "1.1.0".into(),
        size: 10,
        slot: wellcar_bootstate::Slot::B,
        boot_id: "b".into(),
    }))
}

/// Stands in for the daemon (the agent's own tests run the real install): takes the request,
/// hands its pin to `answer` and records what that returns as the result.
fn fake_daemon(
    store: StateStore,
    answer: impl FnOnce(Option<InstallPin>) -> (Phase, String) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let text = wellcar_test_support::wait::wait_until(
            "the install request",
            Duration::from_secs(10),
            || std::fs::read_to_string(store.request_path()).ok(),
        );
        std::fs::remove_file(store.request_path()).unwrap();
        let (request, error) = CheckRequest::parse(&text);
        assert_eq!(error, None);
        let (phase, result) = answer(request.pin);
        let mut state = AgentState::in_phase(phase);
        state.last_result = Some(result);
        state.handled_request = Some(request.id);
        store.save(&state).unwrap();
    })
}

#[test]
fn flags_are_flatcars_and_the_payload_path_is_made_absolute() {
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("flatcar_production_update.gz");
    std::fs::write(&payload, b"x").unwrap();
    let o = opts(&[
        "-V",
        "1.2.0",
        "-P",
        payload.to_str().unwrap(),
        "-A",
        "-L",
        "9090",
    ]);
    assert!(o.disable_afterwards);
    let pin = o.pin().unwrap();
    assert_eq!(pin.to_version.as_deref(), Some("1.2.0"));
    assert_eq!(pin.payload, Some(std::fs::canonicalize(&payload).unwrap()));
    let o = opts(&["--to-version", "1.2.0", "--disable-afterwards"]);
    assert_eq!(o.pin().unwrap().payload, None);
}

#[test]
fn usage_errors_name_the_flag() {
    let err = opts(&[]).pin().unwrap_err();
    assert_eq!(err.to_string(), "must specify --to-version or --to-payload");
    let err = opts(&["-V", "1.2.0", "-D"]).pin().unwrap_err();
    assert!(err.to_string().starts_with("--force-dev-key: "), "{err}");
    let err = opts(&["-V", "1.2.0", "-F"]).pin().unwrap_err();
    assert!(
        err.to_string().starts_with("--force-flatcar-key: "),
        "{err}"
    );
    let err = opts(&["-P", "/nonexistent/p.gz", "-E", "oem-qemu.gz"])
        .pin()
        .unwrap_err();
    assert!(err.to_string().starts_with("--extension: "), "{err}");
    let err = opts(&["-P", "/nonexistent/p.gz"]).pin().unwrap_err();
    assert!(
        err.to_string()
            .starts_with("--to-payload /nonexistent/p.gz: "),
        "{err}"
    );
    assert!(crate::Cli::try_parse_from(["wellcar-update", "install", "-O", "maybe"]).is_err());
}

#[test]
fn install_hands_the_pin_to_the_agent_and_reports_the_staged_update() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::new(dir.path().join("agent"));
    let conf = dir.path().join("etc/flatcar/update.conf");
    let daemon = fake_daemon(store.clone(), |pin| {
        assert_eq!(pin.unwrap().to_version.as_deref(), Some("1.1.0"));
        (staged().phase, "1.1.0 staged: reboot to activate it".into())
    });
    let mut o = opts(&["-V", "1.1.0"]);
    o.update_conf = conf.clone();
    let mut lines = Vec::new();
    install_with(&store, &o, &mut |p| lines.push(p.to_string())).unwrap();
    daemon.join().unwrap();
    assert_eq!(
        lines.first().map(String::as_str),
        Some("Checking for updates...")
    );
    assert!(
        lines.contains(&"1.1.0 staged: reboot to activate it".to_owned()),
        "{lines:?}"
    );
    assert!(lines
        .last()
        .unwrap()
        .starts_with("Done, please make sure to reboot"));
    assert!(!conf.exists(), "no -A: update.conf untouched");
}

#[test]
fn a_refused_payload_fails_naming_why_and_disable_afterwards_still_applies() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::new(dir.path().join("agent"));
    let payload = dir.path().join("p.gz");
    std::fs::write(&payload, b"x").unwrap();
    let conf = dir.path().join("update.conf");
    std::fs::write(&conf, "GROUP=beta\nSERVER=https://example.org/v1/update/\n").unwrap();
    let reason = format!(
        "refusing payload {}: wrong key: payload is not signed by a trusted key",
        payload.display()
    );
    let answer = format!("failed: {reason}");
    let daemon = fake_daemon(store.clone(), move |pin| {
        assert!(pin.unwrap().payload.is_some());
        (Phase::Idle { paused: None }, answer)
    });
    let mut o = opts(&["-P", payload.to_str().unwrap(), "-A"]);
    o.update_conf = conf.clone();
    let err = install_with(&store, &o, &mut |_| {}).unwrap_err();
    daemon.join().unwrap();
    assert_eq!(err.to_string(), format!("update failed: {reason}"));
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "GROUP=beta\nSERVER=disabled\n"
    );
}

#[test]
fn a_staged_update_is_refused_before_asking_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::new(dir.path().join("agent"));
    store.save(&staged()).unwrap();
    let err = install_with(&store, &opts(&["-V", "1.2.0"]), &mut |_| {}).unwrap_err();
    assert!(
        err.to_string()
            .contains("'update_engine_client -reset_status'"),
        "{err}"
    );
    assert!(!store.request_path().exists(), "nothing asked of the agent");
}

#[test]
fn disable_updates_replaces_server_lines_and_creates_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("etc/flatcar/update.conf");
    disable_updates(&conf).unwrap();
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "SERVER=disabled\n");
    std::fs::write(&conf, "SERVER=a\nREBOOT_STRATEGY=off\nSERVER=b\n").unwrap();
    disable_updates(&conf).unwrap();
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "REBOOT_STRATEGY=off\nSERVER=disabled\n"
    );
}
