//! The Wellcar update agent (`wellcar-update-agent`, `update-engine.service`): finds the next
//! version through Omaha, installs it into the inactive USR slot without touching the running
//! system and reports every step to the server; and its reboot manager (`locksmithd`,
//! `locksmithd.service`), which reboots into the staged version when the operator's strategy
//! allows.
//!
//! Pieces:
//! - [`config`]: `update.conf` (Flatcar's keys), layered;
//! - [`host`]: every path and command the agent touches ([`host::HostPaths`], injectable for
//!   tests) and the facts it reads (version, machine id, boot id, OEM, booted slot);
//! - [`machine`]: the update's decisions as a pure state machine, `step(input) -> effects`;
//! - [`agent`]: the driver: one check and the install it leads to, carrying out the machine's
//!   effects (see its docs for the order of steps);
//! - [`slots`]: the [`slots::SlotControl`] interface to the boot-state core
//!   (`wellcar-bootstate`) and a bounded window onto the target USR partition;
//! - [`state`]: `status.json`, the serialized install phase (Flatcar's status names computed
//!   from it), written atomically; [`migrate`]: the format before the phase;
//! - [`schedule`], [`window`]: when to check and when to reboot;
//! - [`reboot_lock`]: the reboot strategies that take a lock before rebooting (FleetLock,
//!   locksmith's etcd semaphore, `best-effort`) and release it once the new boot is marked
//!   good; the decisions are pure ([`reboot_lock::coordinator`]); [`locksmithd`]: the reboot
//!   manager's loop, a separate process that only reads the agent's state;
//! - [`pin`]: pinned installs (`flatcar-update --to-version`/`--to-payload`);
//! - [`daemon`]: the loop; [`client`]: on-demand checks and status for the CLIs; [`cli`]: the
//!   command-line layout options and logging the binaries share;
//! - [`dbus`]: update_engine's `com.coreos.update1` D-Bus API, served by the daemon.
//!
//! Guarantees: the booted slot is never written; nothing is marked bootable before the
//! payload's signature, every blob and the read-back image verified; no reboot unless the
//! agent's persisted state says an update is staged (so never while an install is in progress); every state change is durable before the next step, so `kill -9` at any
//! point resumes correctly (an interrupted download resumes with HTTP Range); the inactive slot
//! is invalidated only after the payload is authenticated; with a lock strategy, no reboot
//! without the lock, and the lock is released only once the booted slot is marked good; with `SERVER_PUBLIC_KEY` set, no
//! Omaha answer without a valid signature for its own request is acted on.

#![deny(missing_docs)]

pub mod agent;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dbus;
pub mod host;
pub mod http;
pub mod locksmithd;
pub mod machine;
pub mod migrate;
pub mod pin;
pub mod reboot_lock;
pub mod schedule;
pub mod slots;
pub mod state;
pub mod window;

#[cfg(test)]
mod agent_tests;

pub use agent::{Agent, AgentError, CheckOutcome, InstallSource};

/// The agent's systemd unit (update_engine's name on Flatcar).
pub const AGENT_UNIT: &str = "update-engine.service";

/// The reboot manager's systemd unit (locksmith's name on Flatcar).
pub const REBOOT_MANAGER_UNIT: &str = "locksmithd.service";
pub use config::{Config, RebootStrategy};
pub use host::{HostFacts, HostPaths};
pub use machine::{Effect, Input, Machine};
pub use slots::{EspSlots, SlotControl};
pub use state::{AgentState, Operation, Phase, StateStore};

/// The `update` section of `wellcar-update status`: status, progress, versions, last check
/// and error, one `Key: value` per line.
pub fn status_report(state: &AgentState) -> String {
    let operation = state.operation();
    let mut out = format!("Update status: {}\n", operation.short_name());
    if operation == Operation::Downloading {
        out.push_str(&format!("Progress: {:.1}%\n", state.progress() * 100.0));
    }
    if let Some(version) = state.new_version() {
        out.push_str(&format!(
            "New version: {version} ({} bytes)\n",
            state.new_size()
        ));
    }
    if let Some(staged) = state.phase.staged() {
        out.push_str(&format!(
            "Staged: {} in {}, reboot to activate\n",
            staged.version, staged.slot
        ));
    }
    out.push_str(&format!(
        "Last check: {}\n",
        if state.last_checked_time == 0 {
            "never".to_owned()
        } else {
            jiff::Timestamp::from_second(state.last_checked_time)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| state.last_checked_time.to_string())
        }
    ));
    if let Some(r) = &state.last_result {
        out.push_str(&format!("Last result: {r}\n"));
    }
    if let Some(e) = &state.last_error {
        out.push_str(&format!("Last error: {e}\n"));
    }
    if !state.outbox.is_empty() {
        out.push_str(&format!(
            "Events waiting to be reported: {}\n",
            state.outbox.len()
        ));
    }
    out
}

/// The update section of `wellcar-update status --json` (keys only ever added).
pub fn status_json(state: &AgentState) -> serde_json::Value {
    serde_json::json!({
        "status": state.operation().short_name(),
        "current_op": state.operation().flatcar_name(),
        "progress": state.progress(),
        "new_version": state.new_version().unwrap_or("0.0.0"),
        "new_size": state.new_size(),
        "last_checked_time": state.last_checked_time,
        "staged": state.phase.staged().map(|s| serde_json::json!({
            "version": s.version,
            "slot": s.slot.to_string(),
        })),
        "last_error": state.last_error,
        "last_result": state.last_result,
        "events_waiting": state.outbox.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_report_and_json_name_the_state() {
        let state = AgentState {
            last_error: Some("boom".into()),
            ..AgentState::in_phase(Phase::Downloading(state::Download {
                received: 5,
                ..state::Download::start(state::Offer {
                    version: "1.1.0".into(),
                    urls: vec![],
                    size: 10,
                    sha256: String::new(),
                    target: wellcar_bootstate::Slot::B,
                    is_delta: false,
                })
            }))
        };
        let text = status_report(&state);
        assert!(
            text.contains("Update status: DOWNLOADING\nProgress: 50.0%\n"),
            "{text}"
        );
        assert!(text.contains("Last check: never"), "{text}");
        assert!(text.contains("Last error: boom"), "{text}");
        let json = status_json(&state);
        assert_eq!(json["status"], "DOWNLOADING");
        assert_eq!(json["current_op"], "UPDATE_STATUS_DOWNLOADING");
        assert_eq!(json["new_version"], "1.1.0");
    }
}
