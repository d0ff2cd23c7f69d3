//! `update_engine_client` as Flatcar scripts call it, against a state directory.

use std::process::Command;

use wellcar_agent::state::{AgentState, Phase, StagedUpdate, StateStore};
use wellcar_bootstate::Slot;

fn client(state_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_update_engine_client"))
        .env("WELLCAR_UPDATE_STATE_DIR", state_dir)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn status_prints_flatcar_key_value_lines() {
    let dir = tempfile::tempdir().unwrap();
    let out = client(dir.path(), &["-status"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "LAST_CHECKED_TIME=0\nPROGRESS=0.000000\nCURRENT_OP=UPDATE_STATUS_IDLE\nNEW_VERSION=0.0.0\nNEW_SIZE=0\n"
    );
    let store = StateStore::new(dir.path());
    store
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
    let out = client(dir.path(), &["--status"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("CURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT\n"),
        "{text}"
    );
    assert!(
        text.contains("NEW_VERSION=1.1.0\nNEW_SIZE=12345\n"),
        "{text}"
    );
}

#[test]
fn check_for_update_leaves_a_request_for_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let out = client(dir.path(), &["-check_for_update"]);
    assert!(out.status.success());
    let id = std::fs::read_to_string(StateStore::new(dir.path()).request_path()).unwrap();
    assert!(!id.is_empty());
    let out = client(dir.path(), &["status"]);
    assert_eq!(out.status.code(), Some(2), "flags need a dash");
    let out = client(dir.path(), &["-frobnicate"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown flag -frobnicate"));
}
