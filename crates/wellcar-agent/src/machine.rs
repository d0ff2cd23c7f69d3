//! The update agent's decisions as a pure state machine.
//!
//! Contract: [`Machine::step`] takes one [`Input`] — something the driver observed (the booted
//! system, the server's answer, a transfer's end, a verification's result, the clock) — changes
//! the [`AgentState`] and returns the [`Effect`]s to carry out, in order. It does no I/O: no
//! HTTP, disk, clock, sleep or log. The driver ([`crate::agent`]) executes each effect and feeds
//! what came of it back as the next input (depth first: an effect's consequences are handled
//! before the next effect of the same list). Every state change is followed by
//! [`Effect::Persist`] before any effect that depends on it, so a crash between effects resumes
//! from a consistent state.
//!
//! Decisions made here: accept, defer or continue an offer; queue events 13/1, 14/1, 3/1,
//! 3/0 (with the update_engine error code), 3/2 and rollback (3/0, 44) exactly once; retry an
//! interrupted transfer up to [`TRANSFER_ATTEMPTS`] times; download once more when a download
//! completed by an earlier run cannot be verified; keep a download a transfer failure
//! interrupted for the next offer of the same payload; drop an install aimed at the booted slot.
//!
//! The inactive slot is made unbootable ([`Effect::Invalidate`], which clears its root hash so
//! a rollback to it is refused afterwards) only once the payload has been authenticated
//! ([`Effect::Authenticate`]: the signed head, whose manifest carries the hash of every block,
//! is verified and the offer accepted by policy), immediately before the first block is written.
//! An offer whose payload fails authentication leaves the slot's boot state untouched.

use wellcar_bootstate::Slot;
use wellcar_contract::RootHash;
use wellcar_payload::Checkpoint;

use crate::state::{AgentState, Busy, Download, Offer, Phase, QueuedEvent, StagedUpdate};

/// Transfer attempts within one install before giving up until the next check.
pub const TRANSFER_ATTEMPTS: u32 = 4;

/// update_engine error codes the agent reports.
pub mod error_code {
    /// Generic error.
    pub const ERROR: u32 = 1;
    /// OmahaResponseHandlerError (offer not acceptable: board, version).
    pub const RESPONSE_HANDLER: u32 = 3;
    /// InstallDeviceOpenError.
    pub const INSTALL_DEVICE_OPEN: u32 = 7;
    /// DownloadTransferError.
    pub const DOWNLOAD_TRANSFER: u32 = 9;
    /// PayloadHashMismatch.
    pub const PAYLOAD_HASH_MISMATCH: u32 = 10;
    /// DownloadPayloadVerificationError (signature, manifest).
    pub const PAYLOAD_VERIFICATION: u32 = 12;
    /// DownloadWriteError.
    pub const DOWNLOAD_WRITE: u32 = 14;
    /// NewRootfsVerificationError (read-back mismatch).
    pub const NEW_ROOTFS_VERIFICATION: u32 = 15;
    /// DownloadStateInitializationError: a delta's source slot is not the one it was made
    /// from (version, size or dm-verity root), or changed while it was read.
    pub const DOWNLOAD_STATE_INITIALIZATION: u32 = 20;
    /// DownloadManifestParseError / decompression.
    pub const MANIFEST_PARSE: u32 = 23;
    /// DownloadOperationExecutionError: an authentic delta patch does not decode.
    pub const DOWNLOAD_OPERATION_EXECUTION: u32 = 28;
    /// DownloadOperationHashMismatch: a delta patch's output has the wrong hash.
    pub const DOWNLOAD_OPERATION_HASH_MISMATCH: u32 = 29;
    /// RollbackError.
    pub const ROLLBACK: u32 = 44;
}

/// The running system, as read at the start of a check or resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    /// Running version.
    pub version: String,
    /// Boot id.
    pub boot_id: String,
    /// The slot /usr was booted from.
    pub slot: Slot,
}

/// A failed install step, with its update_engine error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallFailure {
    /// update_engine error code.
    pub code: u32,
    /// What failed.
    pub reason: String,
    /// A transfer problem: the download can continue from its checkpoint.
    pub retryable: bool,
}

/// What the driver observed.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The running system (every check and resume starts with it): notes a reboot, prepares
    /// the boot report, drops an install aimed at what is now the booted slot.
    Booted(Booted),
    /// An update check (with `updatecheck`) is about to be sent.
    CheckStarted,
    /// The check failed (no answer, or an unusable one).
    CheckFailed {
        /// Why.
        error: String,
    },
    /// The server answered a ping-only request (an update is staged).
    Pinged {
        /// Unix time.
        now: i64,
    },
    /// The server has no update.
    NoUpdate {
        /// Unix time.
        now: i64,
    },
    /// The server offers an update for the slot that is not booted.
    Offered {
        /// The offer (its `target` is the inactive slot).
        offer: Offer,
        /// Whether the booted slot is a known-good fallback.
        booted_is_good: bool,
        /// Unix time.
        now: i64,
    },
    /// Continue the install recorded in the state (after a restart), without a check.
    Resume,
    /// The server acknowledged the first `count` events of the outbox.
    Acked {
        /// How many.
        count: usize,
    },
    /// An event report ended (acknowledged or not).
    Reported,
    /// The payload head is authenticated and its first block may be written.
    Authenticated,
    /// The target slot is unbootable and may be written.
    Invalidated,
    /// Payload bytes received (display).
    Received {
        /// Bytes of the payload so far.
        bytes: u64,
    },
    /// A new durable resume point.
    Checkpointed(Checkpoint),
    /// The whole payload is written.
    Downloaded {
        /// It was already complete when this run resumed it (nothing streamed).
        resumed_complete: bool,
    },
    /// The written slot verified.
    Verified {
        /// Its dm-verity root hash.
        root_hash: RootHash,
    },
    /// The slot is staged in the boot state.
    Staged,
    /// An install step failed.
    Failed(InstallFailure),
    /// A check (and what it led to) is over; `request` is the on-demand request it answered.
    CheckDone {
        /// The outcome in words.
        result: String,
        /// The request id.
        request: Option<String>,
    },
    /// Forget a staged update (update_engine's `ResetStatus`): the status returns to idle, so
    /// no reboot is asked for; the boot state is left as it is, as on Flatcar.
    ResetStatus,
}

/// How an install run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Nothing to install.
    Nothing,
    /// The offer waits until the booted slot is marked good.
    Deferred {
        /// The offered version.
        version: String,
    },
    /// Staged.
    Staged {
        /// Its version.
        version: String,
    },
    /// Failed and reported.
    Failed {
        /// The version.
        version: String,
        /// What failed.
        failure: InstallFailure,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Save the state (`status.json`).
    Persist,
    /// Send the outbox; answer [`Input::Acked`] on success, then [`Input::Reported`].
    Report,
    /// Fetch and authenticate the offered payload's head (signature, offered version, board,
    /// version and target size) and get ready to write its first block (the `attempt`-th retry,
    /// 0 = first; wait before retries); answer [`Input::Authenticated`] or [`Input::Failed`].
    Authenticate {
        /// Retry number.
        attempt: u32,
    },
    /// Make `slot` unbootable; answer [`Input::Invalidated`] or [`Input::Failed`].
    Invalidate {
        /// The target slot.
        slot: Slot,
    },
    /// Run a transfer attempt (the `attempt`-th retry, 0 = first; wait before retries);
    /// answer [`Input::Downloaded`] or [`Input::Failed`].
    Download {
        /// Retry number.
        attempt: u32,
    },
    /// Read the slot back (the `attempt`-th retry, 0 = first; wait before retries); answer
    /// [`Input::Verified`] or [`Input::Failed`].
    Verify {
        /// Retry number.
        attempt: u32,
    },
    /// Stage `slot`; answer [`Input::Staged`] or [`Input::Failed`].
    Stage {
        /// The slot.
        slot: Slot,
        /// Its verified root hash.
        root_hash: RootHash,
        /// Its version.
        version: String,
    },
    /// Create `/run/reboot-required`.
    RebootRequired,
    /// The run is over.
    Finish(End),
}

/// The state and what this process learned since it started.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    state: AgentState,
    booted: Option<Booted>,
    /// Transfer retries in this install.
    attempts: u32,
    /// The download being verified was completed by an earlier run.
    verify_may_redownload: bool,
    /// A download was already restarted once in this install.
    redownloaded: bool,
}

use Effect::{Persist, Report};

impl Machine {
    /// A machine starting from `state` (as loaded).
    pub fn new(state: AgentState) -> Self {
        Self {
            state,
            ..Self::default()
        }
    }

    /// The state.
    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// Mutable state, for tests that set up a phase.
    #[cfg(test)]
    pub(crate) fn state_mut(&mut self) -> &mut AgentState {
        &mut self.state
    }

    fn queue(&mut self, event_type: u32, event_result: u32, code: Option<u32>) {
        let version = self
            .booted
            .as_ref()
            .map(|b| b.version.clone())
            .unwrap_or_default();
        self.state.outbox.push(QueuedEvent {
            event_type,
            event_result,
            error_code: code,
            previous_version: None,
            version,
        });
    }

    /// Takes one input; returns the effects to carry out, in order.
    pub fn step(&mut self, input: Input) -> Vec<Effect> {
        use wellcar_omaha::{event_result as result, event_type as kind};
        if let Input::Booted(booted) = input {
            let before = self.state.clone();
            let phase = std::mem::take(&mut self.state.phase);
            self.state.phase = self.reconcile(phase, booted);
            return if self.state != before {
                vec![Persist]
            } else {
                vec![]
            };
        }
        let phase = std::mem::take(&mut self.state.phase);
        let (phase, effects) = match (phase, input) {
            (phase, Input::CheckStarted) => {
                self.state.busy = Some(Busy::Checking);
                (phase, vec![Persist])
            }
            (phase, Input::CheckFailed { error }) => {
                self.state.busy = None;
                self.state.failures.checks += 1;
                self.state.last_error = Some(error);
                (phase, vec![Persist])
            }
            (phase, Input::Pinged { now }) => {
                self.state.last_checked_time = now;
                (phase, vec![Persist])
            }
            (phase, Input::NoUpdate { now }) => {
                self.checked(now);
                self.state.last_error = None;
                let phase = match phase {
                    staged @ Phase::Staged(_) => staged,
                    _ => Phase::default(),
                };
                (phase, vec![Persist])
            }
            (
                phase,
                Input::Offered {
                    offer,
                    booted_is_good,
                    now,
                },
            ) => {
                self.checked(now);
                if !booted_is_good {
                    let end = End::Deferred {
                        version: offer.version,
                    };
                    (phase, vec![Persist, Effect::Finish(end)])
                } else {
                    self.accept(phase, offer)
                }
            }
            (phase, Input::Resume) => self.resume(phase),
            (phase, Input::Acked { count }) => {
                let n = count.min(self.state.outbox.len());
                self.state.outbox.drain(..n);
                (phase, if n > 0 { vec![Persist] } else { vec![] })
            }
            (phase, Input::Reported) => {
                if self.state.busy == Some(Busy::ReportingError) {
                    self.state.busy = None;
                    (phase, vec![Persist])
                } else {
                    (phase, vec![])
                }
            }
            (Phase::Offered { offer }, Input::Authenticated) => {
                let slot = offer.target;
                (Phase::Offered { offer }, vec![Effect::Invalidate { slot }])
            }
            (Phase::Offered { offer }, Input::Failed(f))
                if f.retryable && self.attempts + 1 < TRANSFER_ATTEMPTS =>
            {
                self.attempts += 1;
                let attempt = self.attempts;
                (
                    Phase::Offered { offer },
                    vec![Effect::Authenticate { attempt }],
                )
            }
            (Phase::Offered { offer }, Input::Invalidated) => (
                Phase::Downloading(Download::start(offer)),
                vec![Persist, Effect::Download { attempt: 0 }],
            ),
            (Phase::Downloading(d), Input::Invalidated) => (
                Phase::Downloading(d),
                vec![Persist, Effect::Download { attempt: 0 }],
            ),
            (Phase::Verifying(d), Input::Invalidated) => {
                (Phase::Verifying(d), vec![Effect::Verify { attempt: 0 }])
            }
            (Phase::Downloading(mut d), Input::Received { bytes }) => {
                d.received = bytes;
                (Phase::Downloading(d), vec![Persist])
            }
            (Phase::Downloading(mut d), Input::Checkpointed(checkpoint)) => {
                d.received = d.received.max(checkpoint.payload_offset);
                d.checkpoint = Some(checkpoint);
                (Phase::Downloading(d), vec![Persist])
            }
            (Phase::Downloading(mut d), Input::Downloaded { resumed_complete }) => {
                if !d.finish_reported {
                    self.queue(kind::UPDATE_DOWNLOAD_FINISHED, result::SUCCESS, None);
                    d.finish_reported = true;
                }
                d.received = d.offer.size;
                self.verify_may_redownload = resumed_complete && !self.redownloaded;
                let verify = Effect::Verify { attempt: 0 };
                (Phase::Verifying(d), vec![Persist, Report, verify])
            }
            (Phase::Verifying(d), Input::Verified { root_hash }) => {
                let stage = Effect::Stage {
                    slot: d.offer.target,
                    root_hash,
                    version: d.offer.version.clone(),
                };
                let phase = Phase::Verified {
                    offer: d.offer,
                    root_hash,
                };
                (phase, vec![Persist, stage])
            }
            (Phase::Verifying(d), Input::Failed(f))
                if f.retryable && self.attempts + 1 < TRANSFER_ATTEMPTS =>
            {
                self.attempts += 1;
                let attempt = self.attempts;
                (Phase::Verifying(d), vec![Effect::Verify { attempt }])
            }
            (Phase::Verifying(d), Input::Failed(f))
                if !f.retryable && self.verify_may_redownload =>
            {
                self.verify_may_redownload = false;
                self.redownloaded = true;
                self.attempts = 0;
                let d = Download {
                    checkpoint: None,
                    received: 0,
                    ..d
                };
                (
                    Phase::Downloading(d),
                    vec![Persist, Effect::Download { attempt: 0 }],
                )
            }
            (Phase::Downloading(d), Input::Failed(f))
                if f.retryable && self.attempts + 1 < TRANSFER_ATTEMPTS =>
            {
                self.attempts += 1;
                let attempt = self.attempts;
                (Phase::Downloading(d), vec![Effect::Download { attempt }])
            }
            (Phase::Verified { offer, .. }, Input::Staged) => {
                let booted = self.booted.clone();
                self.state.previous_version = booted.as_ref().map(|b| b.version.clone());
                self.state.last_error = None;
                self.queue(kind::UPDATE_COMPLETE, result::SUCCESS, None);
                let version = offer.version.clone();
                let staged = StagedUpdate {
                    version: offer.version,
                    size: offer.size,
                    slot: offer.target,
                    boot_id: booted.map(|b| b.boot_id).unwrap_or_default(),
                };
                self.reset_install();
                (
                    Phase::Staged(staged),
                    vec![
                        Persist,
                        Effect::RebootRequired,
                        Report,
                        Effect::Finish(End::Staged { version }),
                    ],
                )
            }
            (phase, Input::Failed(failure)) => self.fail(phase, failure),
            (phase, Input::CheckDone { result, request }) => {
                self.state.last_result = Some(result);
                if let Some(id) = request {
                    self.state.handled_request = Some(id.trim().to_owned());
                }
                (phase, vec![Persist])
            }
            (Phase::Staged(_), Input::ResetStatus) => (Phase::Idle { paused: None }, vec![Persist]),
            // An answer that does not fit the phase (never sent by the driver): nothing to do.
            (phase, _) => (phase, vec![]),
        };
        self.state.phase = phase;
        effects
    }

    fn checked(&mut self, now: i64) {
        self.state.busy = None;
        self.state.last_checked_time = now;
        self.state.failures.checks = 0;
    }

    fn reset_install(&mut self) {
        self.attempts = 0;
        self.verify_may_redownload = false;
        self.redownloaded = false;
    }

    fn reconcile(&mut self, phase: Phase, booted: Booted) -> Phase {
        use wellcar_omaha::{event_result as result, event_type as kind};
        self.state.busy = None;
        if self.state.aleph_version.is_none() {
            self.state.aleph_version = Some(booted.version.clone());
        }
        let mut phase = match phase {
            Phase::Staged(s) if s.boot_id != booted.boot_id => Phase::default(),
            other => other,
        };
        if phase.staged().is_none() {
            if let Some(previous) = self.state.previous_version.take() {
                let rollback = previous == booted.version;
                self.state.outbox.push(QueuedEvent {
                    event_type: kind::UPDATE_COMPLETE,
                    event_result: if rollback {
                        result::ERROR
                    } else {
                        result::SUCCESS_REBOOT
                    },
                    error_code: rollback.then_some(error_code::ROLLBACK),
                    previous_version: (!rollback).then_some(previous),
                    version: booted.version.clone(),
                });
            }
        }
        let aimed_at_booted = match &phase {
            Phase::Idle { paused: Some(d) } => d.offer.target == booted.slot,
            other => other.offer().is_some_and(|o| o.target == booted.slot),
        };
        if aimed_at_booted {
            phase = Phase::default();
        }
        self.booted = Some(booted);
        phase
    }

    fn accept(&mut self, phase: Phase, offer: Offer) -> (Phase, Vec<Effect>) {
        use wellcar_omaha::{event_result as result, event_type as kind};
        let urls = offer.urls.clone();
        let same = |o: &Offer| o.same_payload(&offer);
        match phase {
            Phase::Idle {
                paused: Some(mut d),
            } if same(&d.offer) => {
                d.offer.urls = urls;
                self.reset_install();
                let slot = d.offer.target;
                (
                    Phase::Downloading(d),
                    vec![Persist, Effect::Invalidate { slot }],
                )
            }
            mut phase if phase.offer().is_some_and(same) => {
                match &mut phase {
                    Phase::Offered { offer } | Phase::Verified { offer, .. } => offer.urls = urls,
                    Phase::Downloading(d) | Phase::Verifying(d) => d.offer.urls = urls,
                    _ => {}
                }
                let (phase, mut effects) = self.resume(phase);
                effects.insert(0, Persist);
                (phase, effects)
            }
            _ => {
                self.reset_install();
                self.queue(kind::UPDATE_DOWNLOAD_STARTED, result::SUCCESS, None);
                (
                    Phase::Offered { offer },
                    vec![Persist, Report, Effect::Authenticate { attempt: 0 }],
                )
            }
        }
    }

    fn resume(&mut self, phase: Phase) -> (Phase, Vec<Effect>) {
        match phase {
            Phase::Offered { offer } => (
                Phase::Offered { offer },
                vec![Effect::Authenticate { attempt: 0 }],
            ),
            Phase::Downloading(d) => {
                let slot = d.offer.target;
                (Phase::Downloading(d), vec![Effect::Invalidate { slot }])
            }
            Phase::Verifying(d) => {
                // Completed by an earlier run: if it cannot be verified (a restart after
                // `finish` moved the boot files), download once more.
                self.verify_may_redownload = !self.redownloaded;
                let slot = d.offer.target;
                (Phase::Verifying(d), vec![Effect::Invalidate { slot }])
            }
            Phase::Verified { offer, root_hash } => {
                let stage = Effect::Stage {
                    slot: offer.target,
                    root_hash,
                    version: offer.version.clone(),
                };
                (Phase::Verified { offer, root_hash }, vec![stage])
            }
            other => (other, vec![Effect::Finish(End::Nothing)]),
        }
    }

    fn fail(&mut self, phase: Phase, failure: InstallFailure) -> (Phase, Vec<Effect>) {
        use wellcar_omaha::{event_result as result, event_type as kind};
        let version = phase.offer().map(|o| o.version.clone()).unwrap_or_default();
        self.state.busy = Some(Busy::ReportingError);
        self.state.last_error = Some(failure.reason.clone());
        self.queue(kind::UPDATE_COMPLETE, result::ERROR, Some(failure.code));
        let paused = match phase {
            Phase::Downloading(d) | Phase::Verifying(d) if failure.retryable => Some(d),
            _ => None,
        };
        self.reset_install();
        (
            Phase::Idle { paused },
            vec![
                Persist,
                Report,
                Effect::Finish(End::Failed { version, failure }),
            ],
        )
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
