//! The agent's durable state: the install [`Phase`] carrying its data, the event outbox, the
//! failure counters, and update_engine's prefs (`previous-version`, `aleph-version`).
//!
//! Contract: `status.json` is the serialized [`AgentState`]; the Flatcar status names
//! ([`Operation`]), the progress and the offered version are computed from the phase, never
//! stored beside it, so they cannot contradict it. [`StateStore::save`] writes it as a temp file,
//! fsyncs it, renames it over the old one and fsyncs the directory, so after a `kill -9` or power loss the file is
//! either the old or the new state, never a mix. Readers (`update_engine_client -status`,
//! `wellcar-update status`) only read. A missing file is the initial state; a file in the
//! format written before the phase existed is migrated on load (see [`crate::migrate`]).

use std::path::{Path, PathBuf};
use wellcar_contract::PathIoError;

use serde::{Deserialize, Serialize};
use wellcar_bootstate::Slot;
use wellcar_contract::RootHash;
use wellcar_payload::Checkpoint;

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

/// A slot as its lower-case letter (`"a"`, `"b"`), the form `status.json` has always used.
pub(crate) mod slot_letter {
    use serde::{Deserialize, Deserializer, Serializer};
    use wellcar_bootstate::Slot;

    pub fn serialize<S: Serializer>(slot: &Slot, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_char(slot.letter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Slot, D::Error> {
        let text = String::deserialize(d)?;
        Slot::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a USR slot")))
    }
}

/// An update the server offered, and the slot it goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Offered version.
    pub version: String,
    /// Payload URLs, in order of preference.
    pub urls: Vec<String>,
    /// Payload size in bytes.
    pub size: u64,
    /// sha256 of the payload (hex), from the Omaha response; identifies the offer.
    pub sha256: String,
    /// The slot being written (never the booted one).
    #[serde(with = "slot_letter")]
    pub target: Slot,
    /// The server flagged the payload a delta (`IsDeltaPayload="true"`): its head is fetched
    /// on its own, so no payload stream stays open while the source slot is verified. The
    /// signed manifest decides how it is applied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_delta: bool,
}

impl Offer {
    /// Whether `other` is the same payload for the same slot (its download can continue).
    pub fn same_payload(&self, other: &Offer) -> bool {
        self.sha256 == other.sha256 && self.target == other.target
    }
}

/// A download into the target slot and where it can resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    /// What is downloaded.
    pub offer: Offer,
    /// The last durable resume point (`None`: start from the beginning).
    pub checkpoint: Option<Checkpoint>,
    /// Payload bytes received so far (display only; may run ahead of the checkpoint).
    #[serde(default)]
    pub received: u64,
    /// Whether event 14/1 was queued for this offer (a second download does not repeat it).
    #[serde(default)]
    pub finish_reported: bool,
}

impl Download {
    /// A download of `offer` from the beginning.
    pub fn start(offer: Offer) -> Self {
        Self {
            offer,
            checkpoint: None,
            received: 0,
            finish_reported: false,
        }
    }

    fn fraction(&self) -> f64 {
        if self.offer.size > 0 {
            (self.received as f64 / self.offer.size as f64).min(1.0)
        } else {
            0.0
        }
    }
}

/// A staged update waiting for its reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedUpdate {
    /// Its version.
    pub version: String,
    /// Its payload size.
    #[serde(default)]
    pub size: u64,
    /// The slot staged.
    #[serde(with = "slot_letter")]
    pub slot: Slot,
    /// The boot it was staged in; a different boot id means the machine rebooted.
    pub boot_id: String,
}

/// Where the update is. Each phase carries exactly the data it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Phase {
    /// Nothing in progress. `paused` is a download a transfer failure interrupted; the next
    /// offer of the same payload for the same slot continues it.
    Idle {
        /// The interrupted download, if any.
        #[serde(default)]
        paused: Option<Download>,
    },
    /// Accepted an offer (event 13/1 queued); the target slot is being made unbootable.
    Offered {
        /// The offer.
        offer: Offer,
    },
    /// Streaming the payload into the target slot.
    Downloading(Download),
    /// The payload is written (its checkpoint is complete); reading the slot back.
    Verifying(Download),
    /// The written slot verified; staging it.
    Verified {
        /// The offer.
        offer: Offer,
        /// The dm-verity root hash the read-back produced.
        root_hash: RootHash,
    },
    /// Staged in the boot state; a reboot activates it.
    Staged(StagedUpdate),
}

impl Default for Phase {
    fn default() -> Self {
        Self::Idle { paused: None }
    }
}

impl Phase {
    /// The Flatcar status of this phase.
    pub fn operation(&self) -> Operation {
        match self {
            Self::Idle { .. } => Operation::Idle,
            Self::Offered { .. } => Operation::UpdateAvailable,
            Self::Downloading(_) => Operation::Downloading,
            Self::Verifying(_) => Operation::Verifying,
            Self::Verified { .. } => Operation::Finalizing,
            Self::Staged(_) => Operation::UpdatedNeedReboot,
        }
    }

    /// The offer being installed (not a paused one).
    pub fn offer(&self) -> Option<&Offer> {
        match self {
            Self::Offered { offer } | Self::Verified { offer, .. } => Some(offer),
            Self::Downloading(d) | Self::Verifying(d) => Some(&d.offer),
            Self::Idle { .. } | Self::Staged(_) => None,
        }
    }

    /// The resume point of the download in progress or paused.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        match self {
            Self::Downloading(d) | Self::Verifying(d) | Self::Idle { paused: Some(d) } => {
                d.checkpoint.as_ref()
            }
            _ => None,
        }
    }

    /// The staged update.
    pub fn staged(&self) -> Option<&StagedUpdate> {
        match self {
            Self::Staged(s) => Some(s),
            _ => None,
        }
    }
}

/// Something the agent is doing right now, shown instead of the phase's status. Stale after a
/// crash; the next start clears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Busy {
    /// An update check is in flight.
    Checking,
    /// A failed install is being reported.
    ReportingError,
}

/// Failure counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Failures {
    /// Consecutive failed checks (drives the backoff).
    pub checks: u32,
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
    /// Where the update is.
    pub phase: Phase,
    /// What is in flight, if anything.
    pub busy: Option<Busy>,
    /// Unix time of the last completed update check.
    pub last_checked_time: i64,
    /// update_engine's `previous-version`: the version that installed the staged update.
    pub previous_version: Option<String>,
    /// update_engine's `aleph-version`: the first version this machine ran.
    pub aleph_version: Option<String>,
    /// Events waiting for an acknowledgement, oldest first.
    pub outbox: Vec<QueuedEvent>,
    /// Failure counters.
    pub failures: Failures,
    /// The last error, for status displays.
    pub last_error: Option<String>,
    /// Id of the last on-demand check request handled.
    pub handled_request: Option<String>,
    /// What the last check came to, in words (`no update`, `staged 1.1.0`, …).
    pub last_result: Option<String>,
}

impl AgentState {
    /// A state in `phase`, everything else initial.
    pub fn in_phase(phase: Phase) -> Self {
        Self {
            phase,
            ..Self::default()
        }
    }

    /// The oldest outbox events, as many as one Omaha `<app>` may carry
    /// ([`wellcar_omaha::MAX_EVENTS_PER_APP`]): a server refuses a request with more, so a long
    /// outage must never make every report too large to send. The rest go in later requests.
    pub fn outbox_batch(&self) -> Vec<wellcar_omaha::Event> {
        self.outbox
            .iter()
            .take(wellcar_omaha::MAX_EVENTS_PER_APP)
            .map(QueuedEvent::to_omaha)
            .collect()
    }

    /// The Flatcar status: what is in flight, else the phase's.
    pub fn operation(&self) -> Operation {
        match self.busy {
            Some(Busy::Checking) => Operation::CheckingForUpdate,
            Some(Busy::ReportingError) => Operation::ReportingErrorEvent,
            None => self.phase.operation(),
        }
    }

    /// Download progress, 0.0 to 1.0 (1.0 once the payload is written, until it is staged).
    pub fn progress(&self) -> f64 {
        match &self.phase {
            Phase::Downloading(d) => d.fraction(),
            Phase::Verifying(_) | Phase::Verified { .. } => 1.0,
            _ => 0.0,
        }
    }

    /// The version offered, installing or staged (`None` when idle).
    pub fn new_version(&self) -> Option<&str> {
        match &self.phase {
            Phase::Staged(s) => Some(&s.version),
            other => other.offer().map(|o| o.version.as_str()),
        }
    }

    /// The payload size of [`AgentState::new_version`] (0 when none).
    pub fn new_size(&self) -> u64 {
        match &self.phase {
            Phase::Staged(s) => s.size,
            other => other.offer().map_or(0, |o| o.size),
        }
    }

    /// Consecutive failed checks.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.checks
    }

    /// The Flatcar `-status` lines (`LAST_CHECKED_TIME=…` … `NEW_SIZE=…`).
    pub fn flatcar_status_lines(&self) -> String {
        format!(
            "LAST_CHECKED_TIME={}\nPROGRESS={:.6}\nCURRENT_OP={}\nNEW_VERSION={}\nNEW_SIZE={}\n",
            self.last_checked_time,
            self.progress(),
            self.operation().flatcar_name(),
            self.new_version().unwrap_or("0.0.0"),
            self.new_size()
        )
    }
}

/// Failure reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O operation on a path failed.
    #[error(transparent)]
    Io(#[from] PathIoError),
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

/// Writes `bytes` to `path` with [`wellcar_contract::atomic_file`] (mode 0644), creating
/// its directory first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let io = |action, source| StateError::Io(PathIoError::new(action, path.to_owned(), source));
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    wellcar_contract::atomic_file::write(path, bytes, 0o644).map_err(|e| io("writing", e))
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

    /// The payload checkpoint of the format before the phase carried it (`checkpoint.json`);
    /// read once by the migration, removed by the first save.
    pub fn legacy_checkpoint_path(&self) -> PathBuf {
        self.dir.join("checkpoint.json")
    }

    /// The on-demand check request file.
    pub fn request_path(&self) -> PathBuf {
        self.dir.join("check-request")
    }

    /// Loads the state; a missing file is the default state, an older format is migrated.
    pub fn load(&self) -> Result<AgentState, StateError> {
        let path = self.status_path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AgentState::default()),
            Err(source) => return Err(StateError::Io(PathIoError::new("reading", path, source))),
        };
        let corrupt = |source| StateError::Corrupt {
            path: path.clone(),
            source,
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(corrupt)?;
        if crate::migrate::is_legacy(&value) {
            let checkpoint = std::fs::read(self.legacy_checkpoint_path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Checkpoint>(&b).ok());
            return crate::migrate::from_legacy(value, checkpoint).map_err(corrupt);
        }
        serde_json::from_value(value).map_err(corrupt)
    }

    /// Saves the state atomically (and drops a migrated `checkpoint.json`).
    pub fn save(&self, state: &AgentState) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(state).expect("the state always serializes");
        write_atomic(&self.status_path(), &json)?;
        match std::fs::remove_file(self.legacy_checkpoint_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!("removing the migrated checkpoint.json: {e}")
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn offer(version: &str, size: u64) -> Offer {
        Offer {
            version: version.into(),
            urls: vec!["http://u/p".into()],
            size,
            sha256: "ab".repeat(32),
            target: Slot::B,
            is_delta: false,
        }
    }

    /// A long outage leaves more events queued than one request may carry: the batch is the
    /// oldest ones, within the server's limit.
    #[test]
    fn outbox_batches_fit_one_omaha_app() {
        let event = |n: u32| QueuedEvent {
            event_type: 3,
            event_result: 0,
            error_code: Some(n),
            previous_version: None,
            version: "1.0.0".into(),
        };
        let total = wellcar_omaha::MAX_EVENTS_PER_APP as u32 + 5;
        let state = AgentState {
            outbox: (0..total).map(event).collect(),
            ..AgentState::default()
        };
        let batch = state.outbox_batch();
        assert_eq!(batch.len(), wellcar_omaha::MAX_EVENTS_PER_APP);
        assert_eq!(batch[0].error_code.map(|c| c.raw), Some(0), "oldest first");
    }

    #[test]
    fn flatcar_status_lines_match_update_engine_client() {
        let state = AgentState {
            last_checked_time: 1718000000,
            ..AgentState::in_phase(Phase::Downloading(Download {
                received: 10,
                ..Download::start(offer("1.2.3", 40))
            }))
        };
        assert_eq!(
            state.flatcar_status_lines(),
            "LAST_CHECKED_TIME=1718000000\nPROGRESS=0.250000\nCURRENT_OP=UPDATE_STATUS_DOWNLOADING\nNEW_VERSION=1.2.3\nNEW_SIZE=40\n"
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
    fn operation_is_computed_from_phase_and_busy() {
        let o = offer("1.1.0", 10);
        let d = Download::start(o.clone());
        let staged = StagedUpdate {
            version: "1.1.0".into(),
            size: 10,
            slot: Slot::B,
            boot_id: "x".into(),
        };
        for (phase, op) in [
            (Phase::default(), Operation::Idle),
            (
                Phase::Idle {
                    paused: Some(d.clone()),
                },
                Operation::Idle,
            ),
            (
                Phase::Offered { offer: o.clone() },
                Operation::UpdateAvailable,
            ),
            (Phase::Downloading(d.clone()), Operation::Downloading),
            (Phase::Verifying(d), Operation::Verifying),
            (
                Phase::Verified {
                    offer: o,
                    root_hash: RootHash::from_bytes([0x5a; 32]),
                },
                Operation::Finalizing,
            ),
            (Phase::Staged(staged), Operation::UpdatedNeedReboot),
        ] {
            let mut state = AgentState::in_phase(phase);
            assert_eq!(state.operation(), op);
            state.busy = Some(Busy::Checking);
            assert_eq!(state.operation(), Operation::CheckingForUpdate);
            state.busy = Some(Busy::ReportingError);
            assert_eq!(state.operation(), Operation::ReportingErrorEvent);
        }
    }

    #[test]
    fn save_load_round_trip_and_no_temp_files_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("agent"));
        assert_eq!(store.load().unwrap(), AgentState::default());
        let state = AgentState {
            previous_version: Some("1.0.0".into()),
            outbox: vec![QueuedEvent {
                event_type: 3,
                event_result: 1,
                error_code: None,
                previous_version: None,
                version: "1.0.0".into(),
            }],
            ..AgentState::in_phase(Phase::Staged(StagedUpdate {
                version: "1.1.0".into(),
                size: 5,
                slot: Slot::B,
                boot_id: "b".into(),
            }))
        };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        let names: Vec<_> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["status.json"]);
        let text = std::fs::read_to_string(store.status_path()).unwrap();
        assert!(text.contains("\"state\": \"staged\""), "{text}");
        assert!(text.contains("\"slot\": \"b\""), "{text}");
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
