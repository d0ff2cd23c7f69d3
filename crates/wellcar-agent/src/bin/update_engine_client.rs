//! `update_engine_client`: Flatcar's client, over update_engine's D-Bus API
//! ([`wellcar_agent::dbus`]) on the system bus (`DBUS_SYSTEM_BUS_ADDRESS` moves it), so it
//! runs as any user the bus policy lets in (`root`, `core`).
//!
//! Flags and answers as Flatcar's (gflags, [`wellcar_agent::dbus::client_flags`]); log lines
//! go to stderr in glog's format. Order and exit codes as in update_engine_client.cc:
//! `-reset_status` (0, or 1 with `ResetStatus failed.`), else `-status` (the five
//! `KEY=value` lines, 0), else `-check_for_update`/`-update` (`-update` then prints the status
//! every poll and exits 0 once the agent is IDLE or UPDATED_NEED_REBOOT), else
//! `-watch_for_updates` (logs every `StatusUpdate`, never returns), else `Done.` and 0. A bus
//! or service that cannot be reached exits 1.

use std::process::ExitCode;
use std::time::Duration;

use wellcar_agent::dbus::client::UpdateClient;
use wellcar_agent::dbus::client_flags::{parse, Parsed};
use wellcar_agent::dbus::BUS_NAME;

/// Flatcar's poll period for `-update`; `UPDATE_ENGINE_CLIENT_POLL_MS` shortens it (tests).
const POLL: Duration = Duration::from_secs(5);

/// One glog line on stderr: `I1201 17:24:04.123456  1234 update_engine_client.cc] text`.
fn log(severity: char, text: &str) {
    let now = jiff::Zoned::now();
    eprintln!(
        "{severity}{} {:>5} update_engine_client.cc] {text}",
        now.strftime("%m%d %H:%M:%S%.6f"),
        std::process::id()
    );
}

fn connect() -> Result<UpdateClient, ExitCode> {
    UpdateClient::connect(None).map_err(|e| {
        log('E', &format!("Failed to get bus: {e}"));
        ExitCode::FAILURE
    })
}

fn give_up(e: impl std::fmt::Display) -> ExitCode {
    log(
        'W',
        &format!("Error getting dbus proxy for {BUS_NAME}: {e}"),
    );
    log(
        'E',
        &format!("Giving up -- unable to get dbus proxy for {BUS_NAME}"),
    );
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let mut args = std::env::args();
    let program = args
        .next()
        .and_then(|p| p.rsplit('/').next().map(str::to_owned))
        .unwrap_or_else(|| "update_engine_client".into());
    let args: Vec<String> = args.collect();
    let actions = match parse(&program, &args) {
        Parsed::Run(actions) => actions,
        Parsed::Exit(text, code) => {
            print!("{text}");
            return ExitCode::from(code);
        }
        Parsed::Error(text) => {
            eprint!("{text}");
            return ExitCode::FAILURE;
        }
    };
    match run(actions) {
        Ok(code) | Err(code) => code,
    }
}

fn run(actions: wellcar_agent::dbus::client_flags::Actions) -> Result<ExitCode, ExitCode> {
    if actions.reset_status {
        log('I', "Setting Update Engine status to idle ...");
        if let Err(e) = connect()?.reset_status() {
            log('I', &format!("{e}"));
            log('E', "ResetStatus failed.");
            return Ok(ExitCode::FAILURE);
        }
        log(
            'I',
            "ResetStatus succeeded; the staged update stays in the boot state (wellcar-update cancel discards it)",
        );
        return Ok(ExitCode::SUCCESS);
    }
    if actions.status {
        log('I', "Querying Update Engine status...");
        let status = connect()?.status().map_err(give_up)?;
        print!("{}", status.flatcar_lines());
        return Ok(ExitCode::SUCCESS);
    }
    if actions.check_for_update || actions.update {
        log('I', "Initiating update check and install.");
        let client = connect()?;
        client.attempt_update().map_err(give_up)?;
        if actions.update {
            log('I', "Waiting for update to complete.");
            return complete_update(&client);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if actions.watch_for_updates {
        log('I', "Watching for status updates.");
        let client = connect()?;
        client
            .watch(&mut |s| {
                log('I', "Got status update:");
                log(
                    'I',
                    &format!("  last_checked_time: {}", s.last_checked_time),
                );
                log('I', &format!("  progress: {}", s.progress));
                log(
                    'I',
                    &format!("  current_operation: {}", s.current_operation),
                );
                log('I', &format!("  new_version: {}", s.new_version));
                log('I', &format!("  new_size: {}", s.new_size));
                true
            })
            .map_err(give_up)?;
        return Ok(ExitCode::FAILURE);
    }
    log('I', "Done.");
    Ok(ExitCode::SUCCESS)
}

/// Polls the status (printing it each time) until the agent is idle or has staged the update.
fn complete_update(client: &UpdateClient) -> Result<ExitCode, ExitCode> {
    let poll = std::env::var("UPDATE_ENGINE_CLIENT_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(POLL, Duration::from_millis);
    loop {
        std::thread::sleep(poll);
        let status = match client.status() {
            Ok(s) => s,
            Err(e) => {
                log('I', &format!("Error getting status: {e}"));
                log('E', "Update failed.");
                return Ok(ExitCode::FAILURE);
            }
        };
        print!("{}", status.flatcar_lines());
        match status.current_operation.as_str() {
            "UPDATE_STATUS_IDLE" => {
                log('I', "No update available");
                return Ok(ExitCode::SUCCESS);
            }
            "UPDATE_STATUS_UPDATED_NEED_REBOOT" => {
                log('I', "Update succeeded -- reboot needed.");
                return Ok(ExitCode::SUCCESS);
            }
            _ => {}
        }
    }
}
