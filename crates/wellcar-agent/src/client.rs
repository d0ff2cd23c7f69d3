//! Talking to a running agent through its state directory: request a check, watch the status.
//!
//! Contract: [`request_check`] writes `check-request` (an id) atomically; the daemon takes it
//! (removes the file) within a second, runs an on-demand check and records the id as
//! `handled_request` in `status.json` when the check (and any install) is over. [`wait_for`]
//! polls `status.json` until then, and gives up if nobody takes the request in time. Both only need read/write access to the state directory, no daemon socket.

use std::time::{Duration, Instant};

use crate::pin::{CheckRequest, InstallPin};
use crate::state::{write_atomic, AgentState, StateError, StateStore};

/// Asks the daemon for an on-demand check; returns the request id.
pub fn request_check(store: &StateStore) -> Result<String, StateError> {
    request_pinned(store, None)
}

/// Asks the daemon for an on-demand check, pinned to `pin` if given ([`crate::pin`]);
/// returns the request id.
pub fn request_pinned(store: &StateStore, pin: Option<InstallPin>) -> Result<String, StateError> {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    let id = format!(
        "{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
        hex::encode(bytes)
    );
    let request = CheckRequest { id, pin };
    write_atomic(&store.request_path(), request.to_text().as_bytes())?;
    Ok(request.id)
}

/// Why waiting stopped without an answer.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The state could not be read.
    #[error(transparent)]
    State(#[from] StateError),
    /// Nobody took the request in time.
    #[error("the update agent did not take the check request within {0:?} (is {unit} running?)", unit = crate::AGENT_UNIT)]
    NotTaken(Duration),
}

/// Polls the state every `poll` until request `id` is handled, calling `on_change` with each
/// new state seen. Returns the final state. Fails if the request file is still there after
/// `take_timeout` (no daemon).
pub fn wait_for(
    store: &StateStore,
    id: &str,
    poll: Duration,
    take_timeout: Duration,
    on_change: &mut dyn FnMut(&AgentState),
) -> Result<AgentState, WaitError> {
    let start = Instant::now();
    let mut last: Option<AgentState> = None;
    loop {
        let state = store.load()?;
        if last.as_ref() != Some(&state) {
            on_change(&state);
            last = Some(state.clone());
        }
        if state.handled_request.as_deref() == Some(id) {
            return Ok(state);
        }
        if start.elapsed() >= take_timeout && store.request_path().exists() {
            return Err(WaitError::NotTaken(take_timeout));
        }
        std::thread::sleep(poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_handled_id_and_reports_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let id = request_check(&store).unwrap();
        assert_eq!(std::fs::read_to_string(store.request_path()).unwrap(), id);
        let daemon = {
            let store = store.clone();
            let id = id.clone();
            std::thread::spawn(move || {
                std::fs::remove_file(store.request_path()).unwrap();
                let mut state = AgentState {
                    busy: Some(crate::state::Busy::Checking),
                    ..AgentState::default()
                };
                store.save(&state).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                state.busy = None;
                state.handled_request = Some(id);
                store.save(&state).unwrap();
            })
        };
        let mut seen = Vec::new();
        let state = wait_for(
            &store,
            &id,
            Duration::from_millis(5),
            Duration::from_secs(5),
            &mut |s| seen.push(s.operation()),
        )
        .unwrap();
        daemon.join().unwrap();
        assert_eq!(state.handled_request.as_deref(), Some(id.as_str()));
        assert_eq!(seen.last(), Some(&crate::state::Operation::Idle));
    }

    #[test]
    fn gives_up_when_no_daemon_takes_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let id = request_check(&store).unwrap();
        let err = wait_for(
            &store,
            &id,
            Duration::from_millis(5),
            Duration::from_millis(50),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("update-engine.service"), "{err}");
    }
}
