//! The agent's durable state: status with Flatcar's names, the update in progress, the staged
//! update, events not yet acknowledged, and update_engine's prefs (`previous-version`,
//! `aleph-version`).
//!
//! Contract: [`StateStore::save`] writes `status.json` as temp file + fsync + rename + fsync of
//! the directory, so after a `kill -9` or power loss the file is either the old or the new
//! state, never a mix. Readers (`update_engine_client -status`, `wellcar-update status`) only
//! read. A missing file is the initial state.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Status values, named as update_engine names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Operation {
    /// Nothing to do.
    #[default]
    Idle,
    /// An update check is in flight.
    CheckingForUpdate,
    /// The server offered an update; the download has not started.
    UpdateAvailable,
    /// Writing the payload to the inactive slot.
    Downloading,
    /// Reading the written slot back and checking it.
    Verifying,
    /// Marking the verified slot to boot next.
    Finalizing,
    /// Staged; a reboot activates it.
    UpdatedNeedReboot,
    /// Telling the server about a failure.
    ReportingErrorEvent,
}

impl Operation {
    /// update_engine's name (`UPDATE_STATUS_IDLE`, …).
    pub fn flatcar_name(self) -> &'static str {
        match self {
            Self::Idle => "UPDATE_STATUS_IDLE",
            Self::CheckingForUpdate => "UPDATE_STATUS_CHECKING_FOR_UPDATE",
            Self::UpdateAvailable => "UPDATE_STATUS_UPDATE_AVAILABLE",
            Self::Downloading => "UPDATE_STATUS_DOWNLOADING",
            Self::Verifying => "UPDATE_STATUS_VERIFYING",
            Self::Finalizing => "UPDATE_STATUS_FINALIZING",
            Self::UpdatedNeedReboot => "UPDATE_STATUS_UPDATED_NEED_REBOOT",
            Self::ReportingErrorEvent => "UPDATE_STATUS_REPORTING_ERROR_EVENT",
        }
    }

    /// The short name (`IDLE`, `DOWNLOADING`, …).
    pub fn short_name(self) -> &'static str {
        self.flatcar_name()
            .strip_prefix("UPDATE_STATUS_")
            .expect("every name has the prefix")
    }

    /// Whether an install is in progress (a reboot must wait).
    pub fn is_installing(self) -> bool {
        matches!(
            self,
            Self::UpdateAvailable | Self::Downloading | Self::Verifying | Self::Finalizing
        )
    }
}

/// An update being installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpdate {
    /// Offered version.
    pub version: String,
    /// Payload URLs, in order of preference.
    pub urls: Vec<String>,
    /// Payload size in bytes.
    pub size: u64,
    /// sha256 of the payload (hex), from the Omaha response; identifies the offer.
    pub sha256: String,
    /// The slot being written (never the booted one).
    pub target_slot: char,
    /// Whether event 13/1 was queued.
    pub started_reported: bool,
    /// Whether event 14/1 was queued.
    #[serde(default)]
    pub finished_reported: bool,
    /// dm-verity root hash after a successful verification (set before staging).
    pub verified_root_hash: Option<String>,
}

/// A staged update waiting for its reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedUpdate {
    /// Its version.
    pub version: String,
    /// The slot staged.
    pub slot: char,
    /// The boot it was staged in; a different boot id means the machine rebooted.
    pub boot_id: String,
}

/// An Omaha event not yet acknowledged by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedEvent {
    /// `eventtype`.
    pub event_type: u32,
    /// `eventresult`.
    pub event_result: u32,
    /// `errorcode`.
    pub error_code: Option<u32>,
    /// `previousversion`.
    pub previous_version: Option<String>,
    /// The version the machine ran when the event happened (sent as the app version).
    pub version: String,
}

impl QueuedEvent {
    /// The wire event.
    pub fn to_omaha(&self) -> wellcar_omaha::Event {
        wellcar_omaha::Event {
            event_type: self.event_type,
            event_result: self.event_result,
            error_code: self.error_code.map(|raw| wellcar_omaha::ErrorCode { raw }),
            previous_version: self.previous_version.clone(),
        }
    }
}

/// Everything persisted in `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct AgentState {
    /// Current status.
    pub operation: Operation,
    /// Download progress, 0.0 to 1.0.
    pub progress: f64,
    /// Unix time of the last completed update check.
    pub last_checked_time: i64,
    /// Version offered or installed, `0.0.0` when none.
    pub new_version: String,
    /// Payload size of that version.
    pub new_size: u64,
    /// The update being installed.
    pub pending: Option<PendingUpdate>,
    /// The staged update, until the reboot (or rollback) is reported.
    pub staged: Option<StagedUpdate>,
    /// update_engine's `previous-version`: the version that installed the staged update.
    pub previous_version: Option<String>,
    /// update_engine's `aleph-version`: the first version this machine ran.
    pub aleph_version: Option<String>,
    /// Events waiting for an acknowledgement, oldest first.
    pub outbox: Vec<QueuedEvent>,
    /// The last error, for status displays.
    pub last_error: Option<String>,
    /// Consecutive failed checks (drives the backoff).
    pub consecutive_failures: u32,
    /// Id of the last on-demand check request handled.
    pub handled_request: Option<String>,
    /// What the last check came to, in words (`no update`, `staged 1.1.0`, …).
    pub last_result: Option<String>,
}

impl AgentState {
    /// The Flatcar `-status` lines (`LAST_CHECKED_TIME=…` … `NEW_SIZE=…`).
    pub fn flatcar_status_lines(&self) -> String {
        let version = if self.new_version.is_empty() {
            "0.0.0"
        } else {
            &self.new_version
        };
        format!(
            "LAST_CHECKED_TIME={}\nPROGRESS={:.6}\nCURRENT_OP={}\nNEW_VERSION={}\nNEW_SIZE={}\n",
            self.last_checked_time,
            self.progress,
            self.operation.flatcar_name(),
            version,
            self.new_size
        )
    }
}

/// Failure reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on a state file.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `status.json` is not valid.
    #[error("{path} is not a valid agent state")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync
/// of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let io = |action, source| StateError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating a temp file for", e))?;
        f.write_all(bytes).map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io("renaming into place", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing the directory of", e))
}

/// The state directory (`/var/lib/wellcar/update-agent`).
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// A store in `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `status.json`.
    pub fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    /// The payload checkpoint (`checkpoint.json`, written by the payload library's format).
    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir.join("checkpoint.json")
    }

    /// The on-demand check request file.
    pub fn request_path(&self) -> PathBuf {
        self.dir.join("check-request")
    }

    /// Loads the state; a missing file is the default state.
    pub fn load(&self) -> Result<AgentState, StateError> {
        let path = self.status_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
            Err(source) => Err(StateError::Io {
                action: "reading",
                path,
                source,
            }),
        }
    }

    /// Saves the state atomically.
    pub fn save(&self, state: &AgentState) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(state).expect("the state always serializes");
        write_atomic(&self.status_path(), &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatcar_status_lines_match_update_engine_client() {
        let state = AgentState {
            operation: Operation::Downloading,
            progress: 0.25,
            last_checked_time: 1718000000,
            new_version: "1.2.3".into(),
            new_size: 42,
            ..AgentState::default()
        };
        assert_eq!(
            state.flatcar_status_lines(),
            "LAST_CHECKED_TIME=1718000000\nPROGRESS=0.250000\nCURRENT_OP=UPDATE_STATUS_DOWNLOADING\nNEW_VERSION=1.2.3\nNEW_SIZE=42\n"
        );
        assert!(AgentState::default()
            .flatcar_status_lines()
            .contains("CURRENT_OP=UPDATE_STATUS_IDLE\nNEW_VERSION=0.0.0\n"));
        assert_eq!(
            Operation::UpdatedNeedReboot.short_name(),
            "UPDATED_NEED_REBOOT"
        );
    }

    #[test]
    fn save_load_round_trip_and_no_temp_files_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("agent"));
        assert_eq!(store.load().unwrap(), AgentState::default());
        let state = AgentState {
            operation: Operation::UpdatedNeedReboot,
            previous_version: Some("1.0.0".into()),
            outbox: vec![QueuedEvent {
                event_type: 3,
                event_result: 1,
                error_code: None,
                previous_version: None,
                version: "1.0.0".into(),
            }],
            ..AgentState::default()
        };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        let names: Vec<_> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["status.json"]);
        let text = std::fs::read_to_string(store.status_path()).unwrap();
        assert!(text.contains("\"UPDATED_NEED_REBOOT\""), "{text}");
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        std::fs::write(store.status_path(), b"{not json").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("status.json"), "{err}");
    }
}
