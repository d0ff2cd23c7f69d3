//! `status.json` as agents before the install [`Phase`] wrote it, and its migration.
//!
//! Contract: a host updating from that format keeps its state. The old file stored the status
//! name, the progress, the offered version, the update being installed (`pending`) and the
//! staged update side by side, with the download's resume point in `checkpoint.json` next to
//! it. [`from_legacy`] maps that onto one phase: a staged update stays staged (same slot, same
//! boot id, so a reboot is still noticed); an install in progress continues where its
//! checkpoint is (verified ones go on to staging, if the recorded root hash is a
//! [`RootHash`]; otherwise the slot is read back or downloaded again, never staged with a hash
//! the boot state would refuse); an install a transfer failure interrupted
//! (status IDLE, `pending` kept) becomes a paused download; anything else is idle. Events,
//! counters and prefs carry over unchanged. A file is in the old format when it has no `phase`
//! key but one of `operation`, `pending`, `staged`.

use serde::Deserialize;
use wellcar_bootstate::Slot;
use wellcar_contract::RootHash;
use wellcar_payload::Checkpoint;

use crate::state::{
    AgentState, Download, Failures, Offer, Operation, Phase, QueuedEvent, StagedUpdate,
};

/// Whether `value` is a `status.json` of the format before the phase.
pub fn is_legacy(value: &serde_json::Value) -> bool {
    value.get("phase").is_none()
        && ["operation", "pending", "staged"]
            .iter()
            .any(|k| value.get(k).is_some())
}

#[derive(Deserialize)]
struct LegacyPending {
    version: String,
    urls: Vec<String>,
    size: u64,
    sha256: String,
    #[serde(with = "crate::state::slot_letter")]
    target_slot: Slot,
    started_reported: bool,
    #[serde(default)]
    finished_reported: bool,
    verified_root_hash: Option<String>,
}

#[derive(Deserialize)]
struct LegacyStaged {
    version: String,
    #[serde(with = "crate::state::slot_letter")]
    slot: Slot,
    boot_id: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LegacyState {
    operation: Operation,
    progress: f64,
    last_checked_time: i64,
    new_size: u64,
    pending: Option<LegacyPending>,
    staged: Option<LegacyStaged>,
    previous_version: Option<String>,
    aleph_version: Option<String>,
    outbox: Vec<QueuedEvent>,
    last_error: Option<String>,
    consecutive_failures: u32,
    handled_request: Option<String>,
    last_result: Option<String>,
}

/// The phase-based state for an old `status.json` (`value`) and its `checkpoint.json`.
pub fn from_legacy(
    value: serde_json::Value,
    checkpoint: Option<Checkpoint>,
) -> Result<AgentState, serde_json::Error> {
    let old: LegacyState = serde_json::from_value(value)?;
    let phase = match (old.staged, old.pending) {
        (Some(s), _) => Phase::Staged(StagedUpdate {
            version: s.version,
            size: old.new_size,
            slot: s.slot,
            boot_id: s.boot_id,
        }),
        (None, Some(p)) => {
            let offer = Offer {
                version: p.version,
                urls: p.urls,
                size: p.size,
                sha256: p.sha256,
                target: p.target_slot,
                is_delta: false,
            };
            let received = checkpoint.as_ref().map_or_else(
                || (old.progress * offer.size as f64) as u64,
                |c| c.payload_offset,
            );
            let download = Download {
                offer,
                checkpoint,
                received,
                finish_reported: p.finished_reported,
            };
            // Old agents recorded the read-back's root hash, always 64 lower-case hex digits;
            // anything else is treated as not verified.
            let verified = p.verified_root_hash.and_then(|text| {
                text.parse::<RootHash>()
                    .inspect_err(|e| {
                        tracing::warn!(
                            "status.json: verified root hash {text:?} ignored, the slot is \
                             verified again: {e}"
                        )
                    })
                    .ok()
            });
            match (verified, old.operation) {
                (Some(root_hash), _) => Phase::Verified {
                    offer: download.offer,
                    root_hash,
                },
                (None, op) if !op.is_installing() => Phase::Idle {
                    paused: Some(download),
                },
                (None, _) if !p.started_reported => Phase::Offered {
                    offer: download.offer,
                },
                (None, Operation::Verifying) if download.checkpoint.is_some() => {
                    Phase::Verifying(download)
                }
                (None, _) => Phase::Downloading(download),
            }
        }
        (None, None) => Phase::default(),
    };
    Ok(AgentState {
        phase,
        busy: None,
        last_checked_time: old.last_checked_time,
        previous_version: old.previous_version,
        aleph_version: old.aleph_version,
        outbox: old.outbox,
        failures: Failures {
            checks: old.consecutive_failures,
        },
        last_error: old.last_error,
        handled_request: old.handled_request,
        last_result: old.last_result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateStore;

    /// What `StateStore::save` wrote before the phase, for an idle machine that checked once.
    const IDLE: &str = r#"{
  "operation": "IDLE",
  "progress": 0.0,
  "last_checked_time": 1764500000,
  "new_version": "",
  "new_size": 0,
  "pending": null,
  "staged": null,
  "previous_version": null,
  "aleph_version": "1.0.0",
  "outbox": [],
  "last_error": null,
  "consecutive_failures": 2,
  "handled_request": "1764499999000-0011223344556677",
  "last_result": "no update available"
}"#;

    /// Mid-download of 1.1.0 into USR-B, 13/1 not yet acknowledged.
    const DOWNLOADING: &str = r#"{
  "operation": "DOWNLOADING",
  "progress": 0.42,
  "last_checked_time": 1764500000,
  "new_version": "1.1.0",
  "new_size": 6000000,
  "pending": {
    "version": "1.1.0",
    "urls": ["http://updates.example/packages/1.1.0/wellcar_update.bin"],
    "size": 6000000,
    "sha256": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "target_slot": "b",
    "started_reported": true,
    "finished_reported": false,
    "verified_root_hash": null
  },
  "staged": null,
  "previous_version": null,
  "aleph_version": "1.0.0",
  "outbox": [
    {"event_type": 13, "event_result": 1, "error_code": null, "previous_version": null, "version": "1.0.0"}
  ],
  "last_error": null,
  "consecutive_failures": 0,
  "handled_request": null,
  "last_result": null
}"#;

    /// The `checkpoint.json` beside [`DOWNLOADING`] (the payload library's format).
    const CHECKPOINT: &str = r#"{"payload_digest":"5555555555555555555555555555555555555555555555555555555555555555","data_start":4096,"payload_offset":2520000,"next_operation":3}"#;

    /// 1.1.0 staged in USR-B, waiting for the reboot.
    const STAGED: &str = r#"{
  "operation": "UPDATED_NEED_REBOOT",
  "progress": 0.0,
  "last_checked_time": 1764500000,
  "new_version": "1.1.0",
  "new_size": 6000000,
  "pending": null,
  "staged": {
    "version": "1.1.0",
    "slot": "b",
    "boot_id": "5e6b2a4e-0c8d-4d7a-9a62-1f7c1c1f0b3e"
  },
  "previous_version": "1.0.0",
  "aleph_version": "1.0.0",
  "outbox": [],
  "last_error": null,
  "consecutive_failures": 0,
  "handled_request": null,
  "last_result": "1.1.0 staged: reboot to activate it"
}"#;

    fn load(status: &str, checkpoint: Option<&str>) -> (AgentState, StateStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        std::fs::write(store.status_path(), status).unwrap();
        if let Some(cp) = checkpoint {
            std::fs::write(store.legacy_checkpoint_path(), cp).unwrap();
        }
        (store.load().unwrap(), store, dir)
    }

    #[test]
    fn idle_keeps_counters_and_prefs() {
        let (state, _, _dir) = load(IDLE, None);
        assert_eq!(state.phase, Phase::Idle { paused: None });
        assert_eq!(state.operation(), Operation::Idle);
        assert_eq!(state.last_checked_time, 1764500000);
        assert_eq!(state.consecutive_failures(), 2);
        assert_eq!(state.aleph_version.as_deref(), Some("1.0.0"));
        assert_eq!(
            state.handled_request.as_deref(),
            Some("1764499999000-0011223344556677")
        );
        assert_eq!(state.last_result.as_deref(), Some("no update available"));
    }

    #[test]
    fn downloading_continues_from_its_checkpoint() {
        let (state, store, _dir) = load(DOWNLOADING, Some(CHECKPOINT));
        let checkpoint: Checkpoint = serde_json::from_str(CHECKPOINT).unwrap();
        assert_eq!(
            state.phase,
            Phase::Downloading(Download {
                offer: Offer {
                    version: "1.1.0".into(),
                    urls: vec!["http://updates.example/packages/1.1.0/wellcar_update.bin".into()],
                    size: 6_000_000,
                    sha256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                        .into(),
                    target: Slot::B,
                    is_delta: false,
                },
                checkpoint: Some(checkpoint),
                received: 2_520_000,
                finish_reported: false,
            })
        );
        assert_eq!(state.operation(), Operation::Downloading);
        assert!((state.progress() - 0.42).abs() < 1e-9);
        assert_eq!(state.outbox.len(), 1, "13/1 still to be acknowledged");
        // Saved in the new format, the old checkpoint file goes; loading again is the same.
        store.save(&state).unwrap();
        assert!(!store.legacy_checkpoint_path().exists());
        assert_eq!(store.load().unwrap(), state);
    }

    #[test]
    fn downloading_without_its_checkpoint_starts_over() {
        let (state, _, _dir) = load(DOWNLOADING, None);
        let Phase::Downloading(d) = &state.phase else {
            panic!("{:?}", state.phase)
        };
        assert_eq!(d.checkpoint, None);
    }

    #[test]
    fn staged_keeps_slot_and_boot_id() {
        let (state, _, _dir) = load(STAGED, None);
        assert_eq!(
            state.phase,
            Phase::Staged(StagedUpdate {
                version: "1.1.0".into(),
                size: 6_000_000,
                slot: Slot::B,
                boot_id: "5e6b2a4e-0c8d-4d7a-9a62-1f7c1c1f0b3e".into(),
            })
        );
        assert_eq!(state.operation(), Operation::UpdatedNeedReboot);
        assert_eq!(state.previous_version.as_deref(), Some("1.0.0"));
        assert!(state
            .flatcar_status_lines()
            .ends_with("NEW_VERSION=1.1.0\nNEW_SIZE=6000000\n"));
    }

    #[test]
    fn interrupted_and_verified_installs() {
        let base: serde_json::Value = serde_json::from_str(DOWNLOADING).unwrap();
        let with = |op: &str, hash: Option<&str>| {
            let mut v = base.clone();
            v["operation"] = op.into();
            v["pending"]["verified_root_hash"] = hash.into();
            from_legacy(v, None).unwrap().phase
        };
        assert!(matches!(
            with("IDLE", None),
            Phase::Idle { paused: Some(_) }
        ));
        let hash = "cd".repeat(32);
        assert!(matches!(
            with("FINALIZING", Some(&hash)),
            Phase::Verified { root_hash, .. } if root_hash.to_string() == hash
        ));
        // A recorded hash that is not a root hash: not verified, so not staged.
        assert!(matches!(
            with("FINALIZING", Some("cd")),
            Phase::Downloading(_)
        ));
        assert!(matches!(with("VERIFYING", None), Phase::Downloading(_)));
        let mut v = base.clone();
        v["operation"] = "UPDATE_AVAILABLE".into();
        v["pending"]["started_reported"] = false.into();
        assert!(matches!(
            from_legacy(v, None).unwrap().phase,
            Phase::Offered { .. }
        ));
    }
}
