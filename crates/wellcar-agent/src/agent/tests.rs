//! Unit tests of the driver: progress and request shape.

use super::install::ProgressReader;
use super::*;
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
        booted_root_hash: None,
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
