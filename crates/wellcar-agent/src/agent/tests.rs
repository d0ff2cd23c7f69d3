//! Unit tests of the driver: request shape, reboot decisions and commands.

use super::install::ProgressReader;
use super::*;
use crate::config::RebootStrategy;
use crate::state::{Phase, StagedUpdate};
use crate::window::RebootWindow;
use wellcar_contract::error_chain;
use wellcar_disk::Slot;

#[test]
fn progress_reader_reports_each_percent_once() {
    let data = vec![7u8; 1000];
    let mut cursor = std::io::Cursor::new(data);
    let mut seen = Vec::new();
    let mut reader = ProgressReader {
        inner: &mut cursor,
        offset: 0,
        size: 1000,
        last_percent: u64::MAX,
        on_percent: &mut |offset| seen.push(offset * 100 / 1000),
    };
    let mut buf = [0u8; 3];
    while std::io::Read::read(&mut reader, &mut buf).unwrap() > 0 {}
    assert_eq!(seen, (0..=100).collect::<Vec<_>>());
}

fn offer() -> crate::state::Offer {
    crate::state::Offer {
        version: "1.1.0".into(),
        urls: vec!["http://u/p".into()],
        size: 10,
        sha256: "ab".repeat(32),
        target: Slot::B,
    }
}

fn staged() -> Phase {
    Phase::Staged(StagedUpdate {
        version: "1.1.0".into(),
        size: 10,
        slot: Slot::B,
        boot_id: "b".into(),
    })
}

fn agent_in(dir: &std::path::Path) -> Agent<EspSlots> {
    Agent::open(HostPaths::under_root(dir)).unwrap()
}

#[test]
fn request_has_update_engine_shape_and_boot_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent_in(dir.path());
    let facts = HostFacts {
        version: "1.1.0".into(),
        board: "amd64-usr".into(),
        machine_id: "0f6a2d3b9c8e4f1aa7b6c5d4e3f2a1b0".into(),
        boot_id: "5e6b2a4e-0c8d-4d7a-9a62-1f7c1c1f0b3e".into(),
        oem: "qemu".into(),
        oem_version: "1".into(),
        booted_slot: Slot::B,
    };
    agent.machine.state_mut().aleph_version = Some("1.0.0".into());
    agent.machine.state_mut().previous_version = Some("1.0.0".into());
    agent.reconcile(&facts).unwrap();
    let config = Config {
        group: "beta".into(),
        machine_alias: "web<1>".into(),
        ..Config::default()
    };
    let mut app = agent.app(&facts, &config);
    app.ping = true;
    app.update_check = Some(Default::default());
    app.events = agent.state().outbox.iter().map(|e| e.to_omaha()).collect();
    let xml = agent.request(&facts, InstallSource::OnDemand, app).to_xml();
    for wanted in [
        "installsource=\"ondemandupdate\"",
        "platform=\"CoreOS\"",
        "sp=\"1.1.0_x86_64\"",
        &format!("appid=\"{{{}}}\"", wellcar_omaha::WELLCAR_APP_ID),
        "version=\"1.1.0\" track=\"beta\"",
        "bootid=\"{5e6b2a4e-0c8d-4d7a-9a62-1f7c1c1f0b3e}\"",
        "oem=\"qemu\"",
        "alephversion=\"1.0.0\"",
        "machineid=\"0f6a2d3b9c8e4f1aa7b6c5d4e3f2a1b0\"",
        "machinealias=\"web&lt;1&gt;\"",
        "<ping active=\"1\"></ping>",
        "<updatecheck></updatecheck>",
        "<event eventtype=\"3\" eventresult=\"2\" previousversion=\"1.0.0\"></event>",
    ] {
        assert!(xml.contains(wanted), "{wanted} missing from {xml}");
    }
    let parsed = wellcar_omaha::Request::parse(xml.as_bytes()).unwrap();
    assert_eq!(parsed.apps[0].events.len(), 1);
    assert!(agent.state().previous_version.is_none(), "reported once");
}

#[test]
fn reboot_waits_for_strategy_and_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent_in(dir.path());
    // 2026-11-25 is a Wednesday.
    let now: jiff::civil::DateTime = "2026-11-25T04:00:00".parse().unwrap();
    let now = now.to_zoned(jiff::tz::TimeZone::UTC).unwrap();
    let mut config = Config::default();
    assert_eq!(agent.reboot_wait(&config, &now), None, "nothing staged");
    agent.machine.state_mut().phase = staged();
    assert_eq!(agent.reboot_wait(&config, &now), Some(Duration::ZERO));
    config.reboot_window =
        Some(RebootWindow::parse("Thu 04:00", Duration::from_secs(3600)).unwrap());
    assert_eq!(
        agent.reboot_wait(&config, &now),
        Some(Duration::from_secs(24 * 3600))
    );
    config.reboot_strategy = RebootStrategy::Off;
    assert_eq!(agent.reboot_wait(&config, &now), None);
    agent.machine.state_mut().phase = Phase::Downloading(crate::state::Download::start(offer()));
    config.reboot_strategy = RebootStrategy::Reboot;
    config.reboot_window = None;
    assert_eq!(agent.reboot_wait(&config, &now), None, "never mid-install");
}

#[test]
fn reboot_warns_logged_in_users_and_refuses_mid_install() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent_in(dir.path());
    let marker = dir.path().join("rebooted");
    let wall = dir.path().join("wall.txt");
    agent.paths.reboot_command = vec!["touch".into(), marker.display().to_string()];
    agent.paths.who_command = vec!["echo".into(), "core pts/0".into()];
    agent.paths.wall_command = vec![
        "sh".into(),
        "-c".into(),
        format!("printf %s \"$1\" > {}", wall.display()),
        "sh".into(),
    ];
    agent.machine.state_mut().phase = Phase::Verifying(crate::state::Download::start(offer()));
    let err = agent.reboot(Duration::ZERO).unwrap_err().to_string();
    assert!(err.contains("VERIFYING"), "{err}");
    assert!(!marker.exists() && !wall.exists());
    agent.machine.state_mut().phase = staged();
    agent.reboot(Duration::from_millis(10)).unwrap();
    assert!(marker.exists());
    let message = std::fs::read_to_string(&wall).unwrap();
    assert!(
        message.contains("1.1.0") && message.contains("reboot"),
        "{message}"
    );
    // Nobody logged in: no broadcast.
    std::fs::remove_file(&wall).unwrap();
    agent.paths.who_command = vec!["true".into()];
    agent.reboot(Duration::from_secs(3600)).unwrap();
    assert!(!wall.exists());
}

#[test]
fn a_failed_reboot_command_is_an_error_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent_in(dir.path());
    agent.paths.who_command = vec!["true".into()];
    agent.paths.reboot_command = vec![
        "sh".into(),
        "-c".into(),
        "echo 'Access denied' >&2; exit 1".into(),
    ];
    agent.machine.state_mut().phase = staged();
    let err = agent.reboot(Duration::ZERO).unwrap_err();
    let AgentError::Reboot { version, source } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(version, "1.1.0");
    assert_eq!(source.status().and_then(|s| s.code()), Some(1));
    let line = error_chain(&err);
    assert!(
        line.starts_with("rebooting into 1.1.0: `sh -c ") && line.ends_with(": Access denied"),
        "{line}"
    );
    agent.paths.reboot_command = Vec::new();
    let err = error_chain(&agent.reboot(Duration::ZERO).unwrap_err());
    assert!(err.ends_with("cannot run ``: empty command"), "{err}");
}
