//! `update_engine_client`: Flatcar's client, for scripts written against it.
//!
//! Flags (gflags style, one or two dashes): `-status` prints `LAST_CHECKED_TIME=`,
//! `PROGRESS=`, `CURRENT_OP=`, `NEW_VERSION=`, `NEW_SIZE=` lines; `-check_for_update` asks the
//! agent for a check and returns; `-update` asks and waits, printing the status as it changes,
//! exiting 0 on UPDATED_NEED_REBOOT or IDLE without error. `WELLCAR_UPDATE_STATE_DIR` moves the
//! state directory (tests).

use std::process::ExitCode;
use std::time::Duration;

use wellcar_agent::state::{Operation, StateStore};

fn usage() -> ExitCode {
    eprintln!("usage: update_engine_client [-status] [-check_for_update] [-update]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let dir = std::env::var_os("WELLCAR_UPDATE_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| wellcar_agent::HostPaths::system().state_dir);
    let store = StateStore::new(dir);
    let mut flags = Vec::new();
    for arg in std::env::args().skip(1) {
        let name = arg.trim_start_matches('-').to_owned();
        if name.len() == arg.len() {
            return usage();
        }
        flags.push(name);
    }
    if flags.is_empty() {
        return usage();
    }
    for flag in &flags {
        let result = match flag.as_str() {
            "status" => store
                .load()
                .map(|s| {
                    print!("{}", s.flatcar_status_lines());
                    ExitCode::SUCCESS
                })
                .map_err(|e| e.to_string()),
            "check_for_update" => wellcar_agent::client::request_check(&store)
                .map(|_| {
                    eprintln!("Initiating update check and install.");
                    ExitCode::SUCCESS
                })
                .map_err(|e| e.to_string()),
            "update" => update(&store),
            "help" | "h" => return usage(),
            other => {
                eprintln!("unknown flag -{other}");
                return usage();
            }
        };
        match result {
            Ok(code) if code == ExitCode::SUCCESS => {}
            Ok(code) => return code,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn update(store: &StateStore) -> Result<ExitCode, String> {
    let id = wellcar_agent::client::request_check(store).map_err(|e| e.to_string())?;
    eprintln!("Initiating update check and install.");
    eprintln!("Waiting for update to complete.");
    let state = wellcar_agent::client::wait_for(
        store,
        &id,
        Duration::from_secs(1),
        Duration::from_secs(30),
        &mut |s| print!("{}", s.flatcar_status_lines()),
    )
    .map_err(|e| e.to_string())?;
    match state.operation() {
        Operation::UpdatedNeedReboot => {
            eprintln!("Update succeeded -- reboot needed.");
            Ok(ExitCode::SUCCESS)
        }
        Operation::Idle if state.last_error.is_none() => Ok(ExitCode::SUCCESS),
        _ => {
            eprintln!(
                "Update failed: {}",
                state.last_error.as_deref().unwrap_or("unknown error")
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
