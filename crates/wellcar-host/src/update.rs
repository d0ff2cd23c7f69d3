//! The update agent's part of `wellcar-update` (issue 8): `check`, and the update section of
//! `status`. Both talk to `wellcar-update-agent` through its state directory
//! (`/var/lib/wellcar/update-agent`; `WELLCAR_UPDATE_STATE_DIR` moves it, for tests).

use std::time::Duration;

use anyhow::Context as _;
use wellcar_agent::state::{Operation, StateStore};

use crate::Event;

/// The agent's state directory.
pub fn state_store() -> StateStore {
    let dir = std::env::var_os("WELLCAR_UPDATE_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| wellcar_agent::HostPaths::system().state_dir);
    StateStore::new(dir)
}

/// `check` options.
#[derive(Debug, clap::Args)]
pub struct CheckOpts {
    /// Seconds to wait for the agent to take the request.
    #[arg(long, default_value_t = 30)]
    pub take_timeout: u64,
}

/// What `check` reports while it waits.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// The agent was asked for a check.
    Requested,
    /// The agent's operation changed, or its download progressed.
    Agent {
        /// What the agent does.
        operation: Operation,
        /// The version on offer ("" before one is known).
        version: String,
        /// How much of the download arrived, 0.0 to 1.0.
        progress: f64,
    },
    /// The check ended well: the agent's result.
    Finished(String),
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Requested => f.write_str("Checking for updates..."),
            Progress::Agent {
                operation: op @ Operation::Downloading,
                version,
                progress,
            } => write!(f, "{} {version} {:.0}%", op.short_name(), progress * 100.0),
            Progress::Agent {
                operation:
                    op @ (Operation::UpdateAvailable | Operation::Verifying | Operation::Finalizing),
                version,
                ..
            } => write!(f, "{} {version}", op.short_name()),
            Progress::Agent { operation, .. } => f.write_str(operation.short_name()),
            Progress::Finished(result) => f.write_str(result),
        }
    }
}

/// `check`: asks the agent to check now, reports progress, waits for the result. Fails if the
/// check or the install failed.
pub fn check(opts: &CheckOpts, on_event: &mut impl FnMut(Event)) -> anyhow::Result<()> {
    check_with(&state_store(), opts, &mut |p| on_event(Event::Check(p)))
}

/// [`check`] against `store`. Consecutive [`Progress::Agent`] reports differ in what they
/// show (a download is reported once per percent).
pub fn check_with(
    store: &StateStore,
    opts: &CheckOpts,
    on_progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<()> {
    let state = request_and_wait(
        store,
        None,
        "asking the update agent for a check",
        opts.take_timeout,
        on_progress,
    )?;
    let result = state.last_result.clone().unwrap_or_default();
    if result.starts_with("failed") {
        anyhow::bail!("update check {result}");
    }
    on_progress(Progress::Finished(result));
    Ok(())
}

/// A `wait_for` callback reporting each agent state that shows differently from the last.
pub fn progress_reporter<'a>(
    on_progress: &'a mut dyn FnMut(Progress),
) -> impl FnMut(&wellcar_agent::AgentState) + 'a {
    let mut last_line = String::new();
    move |s| {
        let progress = Progress::Agent {
            operation: s.operation(),
            version: s.new_version().unwrap_or_default().to_owned(),
            progress: s.progress(),
        };
        let line = progress.to_string();
        if line != last_line {
            on_progress(progress);
            last_line = line;
        }
    }
}

/// The update section of `status`, or `None` when the agent has never run.
pub fn section() -> Option<serde_json::Value> {
    section_from(&state_store())
}

/// [`section`] from `store`.
pub fn section_from(store: &StateStore) -> Option<serde_json::Value> {
    if !store.status_path().exists() {
        return None;
    }
    Some(match store.load() {
        Ok(state) => wellcar_agent::status_json(&state),
        Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
    })
}

/// The text form of the update section of `status`.
pub fn render() -> String {
    render_from(&state_store())
}

/// [`render`] from `store`.
pub fn render_from(store: &StateStore) -> String {
    if !store.status_path().exists() {
        return String::new();
    }
    match store.load() {
        Ok(state) => format!("\n{}", wellcar_agent::status_report(&state)),
        Err(e) => format!("\nUpdate status: unknown ({e:#})\n"),
    }
}

/// Hands the agent a check request (pinned to `pin` if given), reports
/// [`Progress::Requested`], and waits up to `timeout_secs` for the agent to handle it,
/// reporting its progress: the one request-and-wait loop of `check` and `install`. A
/// request that cannot be written fails with `asking` as context.
pub(crate) fn request_and_wait(
    store: &StateStore,
    pin: Option<wellcar_agent::pin::InstallPin>,
    asking: &'static str,
    timeout_secs: u64,
    on_progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<wellcar_agent::state::AgentState> {
    let id = wellcar_agent::client::request_pinned(store, pin).context(asking)?;
    on_progress(Progress::Requested);
    let state = wellcar_agent::client::wait_for(
        store,
        &id,
        Duration::from_millis(500),
        Duration::from_secs(timeout_secs),
        &mut progress_reporter(on_progress),
    )?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wellcar_agent::state::{AgentState, Download, Offer, Phase, StagedUpdate};
    use wellcar_bootstate::Slot;

    fn staged() -> Phase {
        Phase::Staged(StagedUpdate {
            version: "1.1.0".into(),
            size: 10,
            slot: Slot::B,
            boot_id: "b".into(),
        })
    }

    /// Stands in for the daemon (which needs a server and a disk; its own tests cover it):
    /// takes the request and records `result` as it would.
    fn fake_daemon(store: StateStore, result: &'static str) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let request = store.request_path();
            let id = loop {
                if let Ok(id) = std::fs::read_to_string(&request) {
                    break id;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            std::fs::remove_file(&request).unwrap();
            let offer = Offer {
                version: "1.1.0".into(),
                urls: vec![],
                size: 10,
                sha256: String::new(),
                target: Slot::B,
                is_delta: false,
            };
            let mut state = AgentState::in_phase(Phase::Downloading(Download {
                received: 5,
                ..Download::start(offer)
            }));
            store.save(&state).unwrap();
            std::thread::sleep(Duration::from_millis(600));
            state.phase = staged();
            state.last_result = Some(result.into());
            state.handled_request = Some(id);
            store.save(&state).unwrap();
        })
    }

    #[test]
    fn check_reports_progress_and_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let daemon = fake_daemon(store.clone(), "1.1.0 staged: reboot to activate it");
        let mut reports = Vec::new();
        check_with(&store, &CheckOpts { take_timeout: 10 }, &mut |p| {
            reports.push(p)
        })
        .unwrap();
        daemon.join().unwrap();
        assert_eq!(reports.first(), Some(&Progress::Requested));
        assert!(reports.contains(&Progress::Agent {
            operation: Operation::Downloading,
            version: "1.1.0".into(),
            progress: 0.5,
        }));
        let text: String = reports.iter().map(|p| format!("{p}\n")).collect();
        assert!(text.starts_with("Checking for updates...\n"), "{text}");
        assert!(text.contains("DOWNLOADING 1.1.0 50%\n"), "{text}");
        assert!(
            text.ends_with("1.1.0 staged: reboot to activate it\n"),
            "{text}"
        );
    }

    #[test]
    fn check_fails_on_a_failed_check_and_without_a_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let daemon = fake_daemon(store.clone(), "failed: server unreachable");
        let err = check_with(&store, &CheckOpts { take_timeout: 10 }, &mut |_| {}).unwrap_err();
        daemon.join().unwrap();
        assert!(err.to_string().contains("server unreachable"), "{err}");
        let err = check_with(&store, &CheckOpts { take_timeout: 0 }, &mut |_| {}).unwrap_err();
        assert!(
            format!("{err:#}").contains("update-engine.service"),
            "{err:#}"
        );
    }

    #[test]
    fn status_section_only_once_the_agent_ran() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("agent"));
        assert_eq!(section_from(&store), None);
        assert_eq!(render_from(&store), "");
        store.save(&AgentState::in_phase(staged())).unwrap();
        let json = section_from(&store).unwrap();
        assert_eq!(json["status"], "UPDATED_NEED_REBOOT");
        assert_eq!(json["new_version"], "1.1.0");
        assert!(render_from(&store).contains("Update status: UPDATED_NEED_REBOOT"));
    }
}
