//! Talking to a running agent through its state directory: request a check, watch the status.
//!
//! Contract: [`request_check`] writes `check-request` (an id) atomically; the daemon picks it
//! up within a second, runs an on-demand check and records the id as `handled_request` in
//! `status.json` when the check (and any install) is over. [`wait_for`] polls `status.json`
//! until then. Both only need read/write access to the state directory, no daemon socket.

use std::time::{Duration, Instant};

use crate::state::{write_atomic, AgentState, StateError, StateStore};

/// Asks the daemon for an on-demand check; returns the request id.
pub fn request_check(store: &StateStore) -> Result<String, StateError> {
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
    write_atomic(&store.request_path(), id.as_bytes())?;
    Ok(id)
}

/// Why waiting stopped without an answer.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The state could not be read.
    #[error(transparent)]
    State(#[from] StateError),
    /// No answer in time (is `wellcar-update-agent.service` running?).
    #[error(
        "no answer from the update agent after {0:?} (is wellcar-update-agent.service running?)"
    )]
    Timeout(Duration),
}

/// Polls the state every `poll` until request `id` is handled, calling `on_change` with each
/// new state seen. Returns the final state.
pub fn wait_for(
    store: &StateStore,
    id: &str,
    poll: Duration,
    timeout: Option<Duration>,
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
        if let Some(t) = timeout {
            if start.elapsed() >= t {
                return Err(WaitError::Timeout(t));
            }
        }
        std::thread::sleep(poll);
    }
}
