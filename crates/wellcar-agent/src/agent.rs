//! The update agent: one Omaha check, the install it may lead to, event reporting, reboot.
//!
//! Order of an update (each step persisted before the next, so a `kill -9` anywhere resumes):
//! 1. update check (ping + updatecheck + the boot report: 3/2 with `previousversion` after
//!    booting a new version, or 3/0 errorcode 44 once after a rollback);
//! 2. the offer is recorded (UPDATE_AVAILABLE), event 13/1 queued, the target slot made
//!    unbootable;
//! 3. DOWNLOADING: the payload's head is authenticated and its signed manifest's version must
//!    be the offered version ([`AgentError::OfferVersionMismatch`] otherwise, before anything
//!    is written); the payload streams through [`wellcar_payload::Installer`] into the
//!    inactive slot (never the booted one), verified blob by blob; checkpoints are saved to
//!    `checkpoint.json` and an interrupted transfer resumes with an HTTP Range request, also
//!    after a restart or reboot; event 14/1;
//! 4. VERIFYING: the slot is read back and checked (sha256 and dm-verity root);
//! 5. FINALIZING: only now is the slot staged through [`SlotControl`];
//! 6. UPDATED_NEED_REBOOT, `/run/reboot-required`, event 3/1.
//!
//! Events go to an outbox persisted with the state and are removed when the server
//! acknowledges them, so none is lost to a crash (one may be sent twice).

use std::path::PathBuf;
use std::time::Duration;

use wellcar_contract::OsVersion;
use wellcar_disk::Slot;
use wellcar_omaha::{AppRequest, OsInfo, Request, Response, UpdateDecision, UpdateInfo};
use wellcar_payload::{
    ApplyError, ApplyPolicy, Checkpoint, InstallTargets, Installer, PayloadHead, TrustedKeys,
    VerifiedHead,
};

use crate::config::{Config, ConfigError};
use crate::host::{HostError, HostFacts, HostPaths};
use crate::http::{Http, HttpError};
use crate::slots::{EspSlots, PartitionWindow, SlotControl, SlotError};
use crate::state::{
    AgentState, Operation, PendingUpdate, QueuedEvent, StagedUpdate, StateError, StateStore,
};

/// `updaterversion` sent to the server.
pub const UPDATER_VERSION: &str = concat!("wellcar-update-agent-", env!("CARGO_PKG_VERSION"));

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
    /// DownloadManifestParseError / decompression.
    pub const MANIFEST_PARSE: u32 = 23;
    /// RollbackError.
    pub const ROLLBACK: u32 = 44;
}

/// Why a check or install failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// `update.conf`.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Host facts.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The state directory.
    #[error(transparent)]
    State(#[from] StateError),
    /// HTTP.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The server's answer is not usable.
    #[error("omaha response from {url}: {reason}")]
    Omaha {
        /// The server.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The install failed and was reported with `code`.
    #[error("installing {version} failed (error code {code}): {reason}")]
    Install {
        /// The version.
        version: String,
        /// update_engine error code.
        code: u32,
        /// What failed.
        reason: String,
    },
    /// Slot access or staging.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// Trusted keys.
    #[error(transparent)]
    Keys(#[from] wellcar_payload::KeyError),
    /// The payload's signed manifest is for another version than the server offered: the
    /// version staged into the boot state and reported to the server would not be what the slot
    /// holds. Reported to the server as a failed install (error code 12); nothing is staged.
    #[error("refusing the payload offered as version {offered}: its signed manifest is version {manifest}")]
    OfferVersionMismatch {
        /// The version in the Omaha offer.
        offered: String,
        /// The version in the payload's authenticated manifest.
        manifest: String,
    },
}

/// What a check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// `SERVER=disabled`.
    Disabled,
    /// No update; the server's poll interval if it sent one.
    NoUpdate {
        /// Seconds.
        poll_interval: Option<u32>,
    },
    /// An update was installed and staged.
    Staged {
        /// Its version.
        version: String,
        /// Seconds.
        poll_interval: Option<u32>,
    },
    /// An update is already staged; only a ping was sent.
    AwaitingReboot,
    /// An update was offered but not installed yet: the running slot is on trial (not marked
    /// good), so the other slot is its fallback and must not be overwritten.
    Deferred {
        /// The offered version.
        version: String,
    },
}

impl std::fmt::Display for CheckOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disabled => f.write_str("updates are disabled (SERVER=disabled)"),
            Self::NoUpdate { .. } => f.write_str("no update available"),
            Self::Staged { version, .. } => write!(f, "{version} staged: reboot to activate it"),
            Self::AwaitingReboot => f.write_str("an update is staged: reboot to activate it"),
            Self::Deferred { version } => write!(
                f,
                "{version} is available; deferred until the running slot is marked good"
            ),
        }
    }
}

impl CheckOutcome {
    /// The server's poll interval, if any.
    pub fn poll_interval(&self) -> Option<u32> {
        match self {
            Self::NoUpdate { poll_interval } | Self::Staged { poll_interval, .. } => *poll_interval,
            _ => None,
        }
    }
}

/// Who asked for a check (`installsource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallSource {
    /// The schedule.
    Scheduler,
    /// An operator (`wellcar-update check`, `update_engine_client -check_for_update`).
    OnDemand,
}

impl InstallSource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Scheduler => "scheduler",
            Self::OnDemand => "ondemandupdate",
        }
    }
}

/// Transfer attempts within one install before giving up until the next check.
const TRANSFER_ATTEMPTS: u32 = 4;

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The agent.
pub struct Agent<S: SlotControl = EspSlots> {
    /// Paths and commands.
    pub paths: HostPaths,
    /// Slot staging.
    pub slots: S,
    /// The state directory.
    pub store: StateStore,
    /// The state (always saved before it matters).
    pub state: AgentState,
    /// HTTP client.
    pub http: Http,
    /// Bytes written between durable payload checkpoints.
    pub sync_interval: u64,
    /// Pause between transfer attempts within one install.
    pub transfer_retry_delay: Duration,
}

impl Agent<EspSlots> {
    /// An agent for `paths`, staging through the boot state on the ESP.
    pub fn open(paths: HostPaths) -> Result<Self, AgentError> {
        let slots = EspSlots {
            esp: wellcar_bootstate::Esp::new(&paths.esp),
            mirror_gpt: paths.mirror_gpt.clone(),
        };
        Self::with_slots(paths, slots)
    }
}

impl<S: SlotControl> Agent<S> {
    /// An agent with an explicit slot controller.
    pub fn with_slots(paths: HostPaths, slots: S) -> Result<Self, AgentError> {
        let store = StateStore::new(&paths.state_dir);
        let state = store.load()?;
        Ok(Self {
            paths,
            slots,
            store,
            state,
            http: Http::new(),
            sync_interval: wellcar_payload::apply::DEFAULT_SYNC_INTERVAL,
            transfer_retry_delay: Duration::from_secs(2),
        })
    }

    fn save(&self) -> Result<(), AgentError> {
        Ok(self.store.save(&self.state)?)
    }

    fn set_operation(&mut self, op: Operation) -> Result<(), AgentError> {
        self.state.operation = op;
        self.save()
    }

    fn queue(&mut self, facts: &HostFacts, event_type: u32, event_result: u32, code: Option<u32>) {
        self.state.outbox.push(QueuedEvent {
            event_type,
            event_result,
            error_code: code,
            previous_version: None,
            version: facts.version.clone(),
        });
    }

    fn app(&self, facts: &HostFacts, config: &Config) -> AppRequest {
        AppRequest {
            app_id: format!("{{{}}}", wellcar_omaha::WELLCAR_APP_ID),
            version: facts.version.clone(),
            track: config.group.clone(),
            board: facts.board.clone(),
            machine_id: facts.machine_id.clone(),
            machine_alias: config.machine_alias.clone(),
            boot_id: format!("{{{}}}", facts.boot_id),
            oem: facts.oem.clone(),
            oem_version: facts.oem_version.clone(),
            aleph_version: self.state.aleph_version.clone().unwrap_or_default(),
            ..AppRequest::default()
        }
    }

    fn request(&self, facts: &HostFacts, source: InstallSource, app: AppRequest) -> Request {
        let arch = if facts.board.starts_with("arm64") {
            "aarch64"
        } else {
            "x86_64"
        };
        Request {
            updater_version: UPDATER_VERSION.into(),
            install_source: source.as_str().into(),
            os: Some(OsInfo {
                platform: "CoreOS".into(),
                version: "Chateau".into(),
                sp: format!("{}_{arch}", facts.version),
                arch: String::new(),
            }),
            apps: vec![app],
        }
    }

    /// POSTs `request`; on a parsed answer, drops the first `acked` outbox events.
    fn post(
        &mut self,
        server: &str,
        request: &Request,
        acked: usize,
    ) -> Result<Response, AgentError> {
        let body = self.http.post_omaha(server, &request.to_xml())?;
        let response = Response::parse(&body).map_err(|e| AgentError::Omaha {
            url: server.to_owned(),
            reason: e.to_string(),
        })?;
        if acked > 0 {
            self.state
                .outbox
                .drain(..acked.min(self.state.outbox.len()));
            self.save()?;
        }
        Ok(response)
    }

    /// Sends queued events in an event-only request. Failures leave them queued.
    pub fn flush_events(&mut self, facts: &HostFacts, config: &Config) -> Result<(), AgentError> {
        let Some(server) = config.server.clone() else {
            return Ok(());
        };
        if self.state.outbox.is_empty() {
            return Ok(());
        }
        let mut app = self.app(facts, config);
        app.events = self.state.outbox.iter().map(|e| e.to_omaha()).collect();
        let n = app.events.len();
        let request = self.request(facts, InstallSource::Scheduler, app);
        self.post(&server, &request, n).map(|_| ())
    }

    fn flush_events_logged(&mut self, facts: &HostFacts, config: &Config) {
        if let Err(e) = self.flush_events(facts, config) {
            tracing::warn!("reporting events failed, will retry: {e:#}");
        }
    }

    /// Brings the state in line with the booted system: notes a reboot, prepares the boot
    /// report (3/2 or rollback), drops an install aimed at what is now the booted slot.
    pub fn reconcile(&mut self, facts: &HostFacts) -> Result<(), AgentError> {
        let mut changed = false;
        if self.state.aleph_version.is_none() {
            self.state.aleph_version = Some(facts.version.clone());
            changed = true;
        }
        let rebooted = self
            .state
            .staged
            .as_ref()
            .is_some_and(|s| s.boot_id != facts.boot_id);
        if rebooted {
            self.state.staged = None;
            self.state.operation = Operation::Idle;
            self.state.progress = 0.0;
            changed = true;
        }
        if self.state.staged.is_none() {
            if let Some(previous) = self.state.previous_version.take() {
                let event = if previous == facts.version {
                    tracing::warn!(version = %facts.version, "booted the old version again: rollback");
                    QueuedEvent {
                        event_type: wellcar_omaha::event_type::UPDATE_COMPLETE,
                        event_result: wellcar_omaha::event_result::ERROR,
                        error_code: Some(error_code::ROLLBACK),
                        previous_version: None,
                        version: facts.version.clone(),
                    }
                } else {
                    QueuedEvent {
                        event_type: wellcar_omaha::event_type::UPDATE_COMPLETE,
                        event_result: wellcar_omaha::event_result::SUCCESS_REBOOT,
                        error_code: None,
                        previous_version: Some(previous),
                        version: facts.version.clone(),
                    }
                };
                self.state.outbox.push(event);
                changed = true;
            }
        }
        if let Some(p) = &self.state.pending {
            if p.target_slot == facts.booted_slot.letter() {
                tracing::warn!(
                    "dropping the install into {}: it is booted now",
                    facts.booted_slot
                );
                self.state.pending = None;
                self.state.operation = Operation::Idle;
                remove_if_exists(&self.store.checkpoint_path());
                changed = true;
            }
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }

    /// One update check, and the install it leads to.
    pub fn check(&mut self, source: InstallSource) -> Result<CheckOutcome, AgentError> {
        let config = Config::load(&self.paths.config_files)?;
        let facts = HostFacts::read(&self.paths)?;
        self.reconcile(&facts)?;
        let Some(server) = config.server.clone() else {
            tracing::info!("updates are disabled (SERVER)");
            return Ok(CheckOutcome::Disabled);
        };
        let mut app = self.app(&facts, &config);
        app.ping = true;
        app.events = self.state.outbox.iter().map(|e| e.to_omaha()).collect();
        let queued = app.events.len();
        if self.state.operation == Operation::UpdatedNeedReboot {
            let request = self.request(&facts, source, app);
            self.post(&server, &request, queued)?;
            self.state.last_checked_time = now_unix();
            self.save()?;
            return Ok(CheckOutcome::AwaitingReboot);
        }
        app.update_check = Some(Default::default());
        let request = self.request(&facts, source, app);
        let resume_op = if self.state.operation.is_installing() {
            self.state.operation
        } else {
            Operation::Idle
        };
        self.set_operation(Operation::CheckingForUpdate)?;
        let answer = self.post(&server, &request, queued).and_then(|response| {
            let decision = response.update_decision().map_err(|e| AgentError::Omaha {
                url: server.clone(),
                reason: e.to_string(),
            })?;
            // The offered version is staged into the boot state after the download: refuse one
            // the boot state (and every other crate) would refuse before fetching anything.
            if let UpdateDecision::Update(info) = &decision {
                OsVersion::parse(&info.version).map_err(|e| AgentError::Omaha {
                    url: server.clone(),
                    reason: format!("offered version: {e}"),
                })?;
            }
            Ok(decision)
        });
        let decision = match answer {
            Ok(d) => d,
            Err(e) => {
                self.state.consecutive_failures += 1;
                self.state.last_error = Some(e.to_string());
                self.state.operation = resume_op;
                self.save()?;
                return Err(e);
            }
        };
        self.state.last_checked_time = now_unix();
        self.state.consecutive_failures = 0;
        match decision {
            UpdateDecision::NoUpdate { poll_interval } => {
                if self.state.pending.take().is_some() {
                    remove_if_exists(&self.store.checkpoint_path());
                }
                self.state.operation = Operation::Idle;
                self.state.progress = 0.0;
                self.state.last_error = None;
                self.save()?;
                Ok(CheckOutcome::NoUpdate { poll_interval })
            }
            UpdateDecision::Update(info) => {
                let poll_interval = info.poll_interval;
                if !self.slots.booted_is_good(facts.booted_slot)? {
                    tracing::info!(
                        version = %info.version,
                        "update offered, deferred until {} is marked good",
                        facts.booted_slot
                    );
                    self.state.operation = resume_op;
                    self.save()?;
                    return Ok(CheckOutcome::Deferred {
                        version: info.version,
                    });
                }
                self.accept_offer(&facts, &info)?;
                let version = self.install(&facts, &config)?;
                Ok(CheckOutcome::Staged {
                    version,
                    poll_interval,
                })
            }
        }
    }

    fn accept_offer(&mut self, facts: &HostFacts, info: &UpdateInfo) -> Result<(), AgentError> {
        let sha256 = hex::encode(info.sha256);
        let target = facts.booted_slot.other();
        let same = self
            .state
            .pending
            .as_ref()
            .is_some_and(|p| p.sha256 == sha256 && p.target_slot == target.letter());
        if !same {
            remove_if_exists(&self.store.checkpoint_path());
            self.state.pending = Some(PendingUpdate {
                version: info.version.clone(),
                urls: info.urls.clone(),
                size: info.size,
                sha256,
                target_slot: target.letter(),
                started_reported: false,
                finished_reported: false,
                verified_root_hash: None,
            });
            self.state.progress = 0.0;
        } else if let Some(p) = &mut self.state.pending {
            p.urls = info.urls.clone();
        }
        self.state.new_version = info.version.clone();
        self.state.new_size = info.size;
        self.state.operation = Operation::UpdateAvailable;
        self.save()
    }

    /// Continues an install recorded in the state (after a restart), without a new check.
    pub fn resume_pending(&mut self) -> Result<Option<String>, AgentError> {
        let facts = HostFacts::read(&self.paths)?;
        self.reconcile(&facts)?;
        if self.state.pending.is_none() || !self.state.operation.is_installing() {
            return Ok(None);
        }
        let config = Config::load(&self.paths.config_files)?;
        if config.server.is_none() {
            return Ok(None);
        }
        tracing::info!("resuming the interrupted install");
        self.install(&facts, &config).map(Some)
    }

    /// Installs `state.pending` into the inactive slot and stages it.
    fn install(&mut self, facts: &HostFacts, config: &Config) -> Result<String, AgentError> {
        let pending = self
            .state
            .pending
            .clone()
            .expect("install needs a pending update");
        let target = Slot::parse(&pending.target_slot.to_string()).expect("slot letter");
        if target == facts.booted_slot {
            return Err(AgentError::Install {
                version: pending.version,
                code: error_code::INSTALL_DEVICE_OPEN,
                reason: format!("{target} is the booted slot"),
            });
        }
        if !pending.started_reported {
            self.queue(
                facts,
                wellcar_omaha::event_type::UPDATE_DOWNLOAD_STARTED,
                wellcar_omaha::event_result::SUCCESS,
                None,
            );
            if let Some(p) = &mut self.state.pending {
                p.started_reported = true;
            }
            self.save()?;
            self.flush_events_logged(facts, config);
        }
        let root_hash = match pending.verified_root_hash.clone() {
            Some(hash) => hash,
            None => match self.download_and_verify(facts, config, &pending, target) {
                Ok(hash) => hash,
                Err(failure) => return Err(self.fail(facts, config, &pending, failure)),
            },
        };
        self.set_operation(Operation::Finalizing)?;
        if let Err(e) = self
            .slots
            .stage(target, facts.booted_slot, &root_hash, &pending.version)
        {
            let failure = Failure {
                code: error_code::ERROR,
                reason: format!("{:#}", anyhow::Error::from(e)),
                retryable: false,
                error: None,
            };
            return Err(self.fail(facts, config, &pending, failure));
        }
        tracing::info!(version = %pending.version, slot = %target, "update staged");
        self.state.staged = Some(StagedUpdate {
            version: pending.version.clone(),
            slot: target.letter(),
            boot_id: facts.boot_id.clone(),
        });
        self.state.previous_version = Some(facts.version.clone());
        self.state.pending = None;
        self.state.operation = Operation::UpdatedNeedReboot;
        self.state.progress = 0.0;
        self.state.last_error = None;
        self.queue(
            facts,
            wellcar_omaha::event_type::UPDATE_COMPLETE,
            wellcar_omaha::event_result::SUCCESS,
            None,
        );
        self.save()?;
        if let Err(e) = crate::state::write_atomic(&self.paths.reboot_required, b"") {
            tracing::warn!("{e:#}");
        }
        self.flush_events_logged(facts, config);
        Ok(pending.version)
    }

    /// Reports a failed install and resets to IDLE. Non-retryable failures discard the
    /// download; retryable ones keep the checkpoint for the next check.
    fn fail(
        &mut self,
        facts: &HostFacts,
        config: &Config,
        pending: &PendingUpdate,
        failure: Failure,
    ) -> AgentError {
        tracing::error!(version = %pending.version, code = failure.code, "install failed: {}", failure.reason);
        self.state.operation = Operation::ReportingErrorEvent;
        self.state.last_error = Some(failure.reason.clone());
        self.queue(
            facts,
            wellcar_omaha::event_type::UPDATE_COMPLETE,
            wellcar_omaha::event_result::ERROR,
            Some(failure.code),
        );
        if !failure.retryable {
            self.state.pending = None;
            self.state.progress = 0.0;
            remove_if_exists(&self.store.checkpoint_path());
        }
        if let Err(e) = self.save() {
            tracing::error!("{e:#}");
        }
        self.flush_events_logged(facts, config);
        self.state.operation = Operation::Idle;
        if let Err(e) = self.save() {
            tracing::error!("{e:#}");
        }
        match failure.error {
            Some(error) => *error,
            None => AgentError::Install {
                version: pending.version.clone(),
                code: failure.code,
                reason: failure.reason,
            },
        }
    }

    fn download_and_verify(
        &mut self,
        facts: &HostFacts,
        config: &Config,
        pending: &PendingUpdate,
        target: Slot,
    ) -> Result<String, Failure> {
        let disk = self
            .paths
            .resolve_disk()
            .map_err(Failure::fatal(error_code::INSTALL_DEVICE_OPEN))?;
        let trusted = TrustedKeys::from_dir(&self.paths.trusted_keys)
            .map_err(Failure::fatal(error_code::PAYLOAD_VERIFICATION))?;
        let policy = ApplyPolicy {
            sync_interval: self.sync_interval,
            ..ApplyPolicy::new(facts.board.clone(), Some(facts.version.clone()))
        };
        self.slots
            .invalidate(target, facts.booted_slot)
            .map_err(|e| Failure {
                code: error_code::INSTALL_DEVICE_OPEN,
                reason: format!("{:#}", anyhow::Error::from(e)),
                retryable: false,
                error: None,
            })?;
        let (kernel, initramfs) = self.paths.boot_files(target);
        if let Some(dir) = kernel.parent() {
            std::fs::create_dir_all(dir).map_err(Failure::fatal(error_code::DOWNLOAD_WRITE))?;
        }
        let targets = || -> Result<InstallTargets<PartitionWindow>, Failure> {
            Ok(InstallTargets {
                usr: PartitionWindow::open(&disk, target)
                    .map_err(Failure::fatal(error_code::INSTALL_DEVICE_OPEN))?,
                kernel: kernel.clone(),
                initramfs: initramfs.clone(),
            })
        };
        self.set_operation(Operation::Downloading)
            .map_err(Failure::fatal(error_code::ERROR))?;
        let checkpoint_path = self.store.checkpoint_path();
        // A restart right after a previous run's `finish` moved kernel and initramfs into place
        // finds a complete checkpoint but no partial files; verifying fails, and the only way
        // on is to download again (once).
        for retry_from_zero in [false, true] {
            let mut attempt = 0u32;
            let mut resumed_complete = false;
            let mut installer: Option<Installer<PartitionWindow>> = None;
            loop {
                let url = &pending.urls[attempt as usize % pending.urls.len().max(1)];
                let job = TransferJob {
                    url,
                    offered_version: &pending.version,
                    trusted: &trusted,
                    policy: &policy,
                    targets: &targets,
                    size: pending.size,
                };
                let step = self.transfer(&job, &mut installer, &mut resumed_complete);
                match step {
                    Ok(()) => break,
                    Err(f) if f.retryable && attempt + 1 < TRANSFER_ATTEMPTS => {
                        attempt += 1;
                        tracing::warn!(attempt, "download interrupted, resuming: {}", f.reason);
                        std::thread::sleep(self.transfer_retry_delay * attempt);
                    }
                    Err(f) => return Err(f),
                }
            }
            let installer = installer.expect("a finished transfer has an installer");
            if !self
                .state
                .pending
                .as_ref()
                .is_some_and(|p| p.finished_reported)
            {
                self.queue(
                    facts,
                    wellcar_omaha::event_type::UPDATE_DOWNLOAD_FINISHED,
                    wellcar_omaha::event_result::SUCCESS,
                    None,
                );
                if let Some(p) = &mut self.state.pending {
                    p.finished_reported = true;
                }
            }
            self.state.operation = Operation::Verifying;
            self.state.progress = 1.0;
            self.save().map_err(Failure::fatal(error_code::ERROR))?;
            self.flush_events_logged(facts, config);
            match installer.finish() {
                Ok(report) => {
                    let hash = report.verity_root_hash.to_string();
                    if let Some(p) = &mut self.state.pending {
                        p.verified_root_hash = Some(hash.clone());
                    }
                    self.save().map_err(Failure::fatal(error_code::ERROR))?;
                    remove_if_exists(&checkpoint_path);
                    return Ok(hash);
                }
                Err(e) if resumed_complete && !retry_from_zero => {
                    tracing::warn!("verifying the download completed before a restart failed ({e}); downloading again");
                    remove_if_exists(&checkpoint_path);
                    self.state.operation = Operation::Downloading;
                    self.state.progress = 0.0;
                    self.save().map_err(Failure::fatal(error_code::ERROR))?;
                }
                Err(e) => return Err(Failure::from_apply(e)),
            }
        }
        unreachable!("the second pass returns")
    }

    /// One transfer attempt: (re)creates the installer if needed and streams from its
    /// checkpoint to the end.
    fn transfer(
        &mut self,
        job: &TransferJob<'_>,
        installer: &mut Option<Installer<PartitionWindow>>,
        resumed_complete: &mut bool,
    ) -> Result<(), Failure> {
        let TransferJob {
            url,
            offered_version,
            trusted,
            policy,
            targets,
            size,
        } = *job;
        let checkpoint_path = self.store.checkpoint_path();
        if installer.is_none() {
            let saved = Checkpoint::load(&checkpoint_path).ok();
            let mut fresh_body = None;
            let resumed = match saved {
                Some(cp) => {
                    let mut head_body = self
                        .http
                        .get_range(url, 0, Some(cp.data_start - 1))
                        .map_err(Failure::transfer)?;
                    let head = PayloadHead::read(&mut head_body)
                        .map_err(|e| Failure::from_apply(e.into()))?
                        .authenticate(trusted)
                        .map_err(|e| Failure::from_apply(e.into()))?;
                    check_offered_version(offered_version, &head)?;
                    match Installer::resume(head, policy, targets()?, cp) {
                        Ok(i) => Some(i),
                        Err(e) => {
                            tracing::warn!("cannot resume, starting over: {e}");
                            remove_if_exists(&checkpoint_path);
                            None
                        }
                    }
                }
                None => None,
            };
            let fresh = match resumed {
                Some(i) => i,
                None => {
                    let mut body = self
                        .http
                        .get_range(url, 0, None)
                        .map_err(Failure::transfer)?;
                    let head = PayloadHead::read(&mut body)
                        .map_err(|e| Failure::from_apply(e.into()))?
                        .authenticate(trusted)
                        .map_err(|e| Failure::from_apply(e.into()))?;
                    check_offered_version(offered_version, &head)?;
                    let i =
                        Installer::new(head, policy, targets()?).map_err(Failure::from_apply)?;
                    i.checkpoint()
                        .save(&checkpoint_path)
                        .map_err(Failure::from_apply)?;
                    fresh_body = Some(body);
                    i
                }
            };
            *installer = Some(fresh);
            if let Some(mut body) = fresh_body {
                return self.stream(installer.as_mut().expect("just set"), &mut body, size);
            }
        }
        let inst = installer.as_mut().expect("installer exists");
        if inst.is_complete() {
            // Only reached right after resuming a complete checkpoint.
            *resumed_complete = true;
            return Ok(());
        }
        let mut body = self
            .http
            .get_range(url, inst.checkpoint().payload_offset, None)
            .map_err(Failure::transfer)?;
        self.stream(inst, &mut body, size)
    }

    fn stream(
        &mut self,
        installer: &mut Installer<PartitionWindow>,
        body: &mut dyn std::io::Read,
        size: u64,
    ) -> Result<(), Failure> {
        let checkpoint_path = self.store.checkpoint_path();
        let store = self.store.clone();
        let fraction = |offset: u64| {
            if size > 0 {
                (offset as f64 / size as f64).min(1.0)
            } else {
                0.0
            }
        };
        // Shared by the progress reader (display, every 1 %) and the checkpoint callback
        // (durable resume point); both save the state.
        let state = std::cell::RefCell::new(std::mem::take(&mut self.state));
        let save_error = std::cell::RefCell::new(None::<String>);
        let save = |state: &AgentState| {
            if let Err(e) = store.save(state) {
                save_error.borrow_mut().get_or_insert_with(|| e.to_string());
            }
        };
        let mut reader = ProgressReader {
            inner: body,
            offset: installer.checkpoint().payload_offset,
            last_percent: u64::MAX,
            on_percent: &mut |offset| {
                let mut s = state.borrow_mut();
                s.progress = fraction(offset);
                save(&s);
            },
            size,
        };
        let result = installer.write_from_with_progress(&mut reader, &mut |cp| {
            if let Err(e) = cp.save(&checkpoint_path) {
                save_error.borrow_mut().get_or_insert_with(|| e.to_string());
                return;
            }
            let mut s = state.borrow_mut();
            s.progress = fraction(cp.payload_offset);
            save(&s);
        });
        self.state = state.into_inner();
        if let Some(reason) = save_error.into_inner() {
            return Err(Failure {
                code: error_code::ERROR,
                reason,
                retryable: false,
                error: None,
            });
        }
        result.map_err(Failure::from_apply)
    }

    /// Whether the reboot strategy allows rebooting at `now`: `Ok(Duration::ZERO)` = now,
    /// `Ok(d)` = wait `d`, `None` = never (no staged update, install in progress, `off`).
    pub fn reboot_wait(&self, config: &Config, now: &jiff::Zoned) -> Option<Duration> {
        if self.state.operation != Operation::UpdatedNeedReboot {
            return None;
        }
        match config.reboot_strategy {
            crate::config::RebootStrategy::Reboot => {}
            other => {
                tracing::debug!("reboot strategy {other:?}: not rebooting");
                return None;
            }
        }
        Some(
            config
                .reboot_window
                .map(|w| w.wait_from(now))
                .unwrap_or(Duration::ZERO),
        )
    }

    /// Warns logged-in users (if any) and waits `warning`, then runs the reboot command.
    /// Refuses while an install is in progress.
    pub fn reboot(&self, warning: Duration) -> Result<(), AgentError> {
        if self.state.operation != Operation::UpdatedNeedReboot {
            return Err(AgentError::Install {
                version: self.state.new_version.clone(),
                code: error_code::ERROR,
                reason: format!(
                    "refusing to reboot in state {}",
                    self.state.operation.short_name()
                ),
            });
        }
        let users = run_capture(&self.paths.who_command).unwrap_or_default();
        if !users.trim().is_empty() {
            let minutes = warning.as_secs().div_ceil(60);
            let message = format!(
                "Wellcar {} is installed. System reboot in {minutes} minute(s)!",
                self.state.new_version
            );
            let mut wall = self.paths.wall_command.clone();
            wall.push(message);
            if let Err(e) = run_capture(&wall) {
                tracing::warn!("warning users failed: {e}");
            }
            std::thread::sleep(warning);
        }
        tracing::info!(command = ?self.paths.reboot_command, "rebooting into the new version");
        run_capture(&self.paths.reboot_command).map_err(|reason| AgentError::Install {
            version: self.state.new_version.clone(),
            code: error_code::ERROR,
            reason,
        })?;
        Ok(())
    }

    /// The state directory's check request path.
    pub fn request_path(&self) -> PathBuf {
        self.store.request_path()
    }
}

fn run_capture(command: &[String]) -> Result<String, String> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| "empty command".to_owned())?;
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn remove_if_exists(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("removing {}: {e}", path.display()),
    }
}

/// The payload must be the version the server offered: that text is what the boot state
/// records for the slot, what the agent reports, and what the server completes the update with
/// once the machine reports it. Compared as written, build metadata included (`1.2.3` is not
/// `1.2.3+b` here, though [`wellcar_contract::OsVersion`] orders them as equal). Called on the
/// authenticated head, before the installer exists and anything is written.
fn check_offered_version(offered: &str, head: &VerifiedHead) -> Result<(), Failure> {
    let manifest = &head.manifest().version;
    if manifest == offered {
        return Ok(());
    }
    let error = AgentError::OfferVersionMismatch {
        offered: offered.to_owned(),
        manifest: manifest.clone(),
    };
    Err(Failure {
        code: error_code::PAYLOAD_VERIFICATION,
        reason: error.to_string(),
        retryable: false,
        error: Some(Box::new(error)),
    })
}

/// What one transfer attempt downloads and where it goes.
struct TransferJob<'a> {
    url: &'a str,
    /// The version the server offered (the pending update's).
    offered_version: &'a str,
    trusted: &'a TrustedKeys,
    policy: &'a ApplyPolicy,
    targets: &'a dyn Fn() -> Result<InstallTargets<PartitionWindow>, Failure>,
    size: u64,
}

/// Counts payload bytes as they arrive and reports each new whole percent.
struct ProgressReader<'a> {
    inner: &'a mut dyn std::io::Read,
    offset: u64,
    size: u64,
    last_percent: u64,
    on_percent: &'a mut dyn FnMut(u64),
}

impl std::io::Read for ProgressReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.offset += n as u64;
        if let Some(percent) = self.offset.saturating_mul(100).checked_div(self.size) {
            if percent != self.last_percent {
                self.last_percent = percent;
                (self.on_percent)(self.offset);
            }
        }
        Ok(n)
    }
}

/// An install failure with its update_engine code.
#[derive(Debug)]
struct Failure {
    code: u32,
    reason: String,
    /// A transfer problem: keep the checkpoint and try again.
    retryable: bool,
    /// The error to return once the failure is reported, when one more telling than
    /// [`AgentError::Install`] exists (boxed: `AgentError` is large, `Failure` is returned often).
    error: Option<Box<AgentError>>,
}

impl Failure {
    fn fatal<E: std::fmt::Display>(code: u32) -> impl Fn(E) -> Failure {
        move |e| Failure {
            code,
            reason: e.to_string(),
            retryable: false,
            error: None,
        }
    }

    fn transfer(e: HttpError) -> Failure {
        Failure {
            code: error_code::DOWNLOAD_TRANSFER,
            reason: e.to_string(),
            retryable: true,
            error: None,
        }
    }

    fn from_apply(e: ApplyError) -> Failure {
        use wellcar_payload::FormatError;
        let (code, retryable) = match &e {
            ApplyError::Read { .. } | ApplyError::Truncated { .. } => {
                (error_code::DOWNLOAD_TRANSFER, true)
            }
            ApplyError::Format(FormatError::Truncated { .. } | FormatError::Read { .. }) => {
                (error_code::DOWNLOAD_TRANSFER, true)
            }
            ApplyError::Format(_) => (error_code::PAYLOAD_VERIFICATION, false),
            ApplyError::BlobHashMismatch { .. } => (error_code::PAYLOAD_HASH_MISMATCH, false),
            ApplyError::Decompress { .. } | ApplyError::TrailingData { .. } => {
                (error_code::MANIFEST_PARSE, false)
            }
            ApplyError::ImageMismatch { .. } | ApplyError::VerityMismatch { .. } => {
                (error_code::NEW_ROOTFS_VERIFICATION, false)
            }
            ApplyError::WrongBoard { .. }
            | ApplyError::NotNewer { .. }
            | ApplyError::SourceTooOld { .. }
            | ApplyError::InvalidCurrentVersion { .. } => (error_code::RESPONSE_HANDLER, false),
            ApplyError::Target { .. } | ApplyError::TargetTooSmall { .. } => {
                (error_code::DOWNLOAD_WRITE, false)
            }
            _ => (error_code::ERROR, false),
        };
        Failure {
            code,
            reason: format!("{e:#}"),
            retryable,
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RebootStrategy;
    use crate::window::RebootWindow;

    #[test]
    fn progress_reader_reports_each_percent_once() {
        let data = vec![7u8; 1000];
        let mut cursor = std::io::Cursor::new(data);
        let mut seen = Vec::new();
        let mut reader = ProgressReader {
            inner: &mut cursor,
            offset: 0,
            size: 1000,
            last_percent: u64::MAX,
            on_percent: &mut |offset| seen.push(offset * 100 / 1000),
        };
        let mut buf = [0u8; 3];
        while std::io::Read::read(&mut reader, &mut buf).unwrap() > 0 {}
        assert_eq!(seen, (0..=100).collect::<Vec<_>>());
    }

    fn agent_in(dir: &std::path::Path) -> Agent<EspSlots> {
        Agent::open(HostPaths::under_root(dir)).unwrap()
    }

    #[test]
    fn request_has_update_engine_shape_and_boot_report() {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = agent_in(dir.path());
        let facts = HostFacts {
            version: "1.1.0".into(),
            board: "amd64-usr".into(),
            machine_id: "0f6a2d3b9c8e4f1aa7b6c5d4e3f2a1b0".into(),
            boot_id: "5e6b2a4e-0c8d-4d7a-9a62-1f7c1c1f0b3e".into(),
            oem: "qemu".into(),
            oem_version: "1".into(),
            booted_slot: Slot::B,
        };
        agent.state.aleph_version = Some("1.0.0".into());
        agent.state.previous_version = Some("1.0.0".into());
        agent.reconcile(&facts).unwrap();
        let config = Config {
            group: "beta".into(),
            machine_alias: "web<1>".into(),
            ..Config::default()
        };
        let mut app = agent.app(&facts, &config);
        app.ping = true;
        app.update_check = Some(Default::default());
        app.events = agent.state.outbox.iter().map(|e| e.to_omaha()).collect();
        let xml = agent.request(&facts, InstallSource::OnDemand, app).to_xml();
        for wanted in [
            "installsource=\"ondemandupdate\"",
            "platform=\"CoreOS\"",
            "sp=\"1.1.0_x86_64\"",
            &format!("appid=\"{{{}}}\"", wellcar_omaha::WELLCAR_APP_ID),
            "version=\"1.1.0\" track=\"beta\"",
            "bootid=\"{5e6b2a4e-0c8d-4d7a-9a62-1f7c1c1f0b3e}\"",
            "oem=\"qemu\"",
            "alephversion=\"1.0.0\"",
            "machineid=\"0f6a2d3b9c8e4f1aa7b6c5d4e3f2a1b0\"",
            "machinealias=\"web&lt;1&gt;\"",
            "<ping active=\"1\"></ping>",
            "<updatecheck></updatecheck>",
            "<event eventtype=\"3\" eventresult=\"2\" previousversion=\"1.0.0\"></event>",
        ] {
            assert!(xml.contains(wanted), "{wanted} missing from {xml}");
        }
        let parsed = wellcar_omaha::Request::parse(xml.as_bytes()).unwrap();
        assert_eq!(parsed.apps[0].events.len(), 1);
        assert!(agent.state.previous_version.is_none(), "reported once");
    }

    #[test]
    fn reboot_waits_for_strategy_and_window() {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = agent_in(dir.path());
        // 2026-11-25 is a Wednesday.
        let now: jiff::civil::DateTime = "2026-11-25T04:00:00".parse().unwrap();
        let now = now.to_zoned(jiff::tz::TimeZone::UTC).unwrap();
        let mut config = Config::default();
        assert_eq!(agent.reboot_wait(&config, &now), None, "nothing staged");
        agent.state.operation = Operation::UpdatedNeedReboot;
        assert_eq!(agent.reboot_wait(&config, &now), Some(Duration::ZERO));
        config.reboot_window =
            Some(RebootWindow::parse("Thu 04:00", Duration::from_secs(3600)).unwrap());
        assert_eq!(
            agent.reboot_wait(&config, &now),
            Some(Duration::from_secs(24 * 3600))
        );
        config.reboot_strategy = RebootStrategy::Off;
        assert_eq!(agent.reboot_wait(&config, &now), None);
        agent.state.operation = Operation::Downloading;
        config.reboot_strategy = RebootStrategy::Reboot;
        config.reboot_window = None;
        assert_eq!(agent.reboot_wait(&config, &now), None, "never mid-install");
    }

    #[test]
    fn reboot_warns_logged_in_users_and_refuses_mid_install() {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = agent_in(dir.path());
        let marker = dir.path().join("rebooted");
        let wall = dir.path().join("wall.txt");
        agent.paths.reboot_command = vec!["touch".into(), marker.display().to_string()];
        agent.paths.who_command = vec!["echo".into(), "core pts/0".into()];
        agent.paths.wall_command = vec![
            "sh".into(),
            "-c".into(),
            format!("printf %s \"$1\" > {}", wall.display()),
            "sh".into(),
        ];
        agent.state.new_version = "1.1.0".into();
        agent.state.operation = Operation::Verifying;
        let err = agent.reboot(Duration::ZERO).unwrap_err().to_string();
        assert!(err.contains("VERIFYING"), "{err}");
        assert!(!marker.exists() && !wall.exists());
        agent.state.operation = Operation::UpdatedNeedReboot;
        agent.reboot(Duration::from_millis(10)).unwrap();
        assert!(marker.exists());
        let message = std::fs::read_to_string(&wall).unwrap();
        assert!(
            message.contains("1.1.0") && message.contains("reboot"),
            "{message}"
        );
        // Nobody logged in: no broadcast.
        std::fs::remove_file(&wall).unwrap();
        agent.paths.who_command = vec!["true".into()];
        agent.reboot(Duration::from_secs(3600)).unwrap();
        assert!(!wall.exists());
    }
}
