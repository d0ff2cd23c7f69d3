//! The update agent's driver: all the I/O around the pure [`Machine`] — Omaha over HTTP, the
//! payload installer, slot control, the state store, the clock. Rebooting is not the agent's:
//! [`crate::locksmithd`] reboots into what it staged.
//!
//! Contract: the driver decides nothing about the update itself. Each check reads the
//! configuration and the host facts, feeds what it observes to [`Machine::step`] and carries out
//! the returned [`Effect`]s in order, feeding each one's result back (see [`crate::machine`] for
//! the decisions and their order). The order of an update, each step persisted before the next
//! so a `kill -9` anywhere resumes:
//! 1. update check (ping + updatecheck + the boot report: 3/2 with `previousversion` after
//!    booting a new version, or 3/0 errorcode 44 once after a rollback);
//! 2. the offer is recorded (UPDATE_AVAILABLE) with event 13/1; the payload's head is fetched
//!    and authenticated, its signed manifest's version must be the offered version
//!    ([`AgentError::OfferVersionMismatch`] otherwise) and board, version and slot size must
//!    fit; only then is the target slot made unbootable (an offer that fails here leaves the
//!    slot's boot state, and so a rollback to it, untouched);
//! 3. DOWNLOADING: the payload streams through [`wellcar_payload::Installer`] into the
//!    inactive slot (never the booted one), verified blob by blob; its checkpoints are saved in
//!    the phase and an interrupted transfer resumes with an HTTP Range request, also after a
//!    restart or reboot; event 14/1;
//! 4. VERIFYING: the slot is read back and checked (sha256 and dm-verity root);
//! 5. FINALIZING: only now is the slot staged through [`SlotControl`];
//! 6. UPDATED_NEED_REBOOT, `/run/reboot-required`, event 3/1.
//!
//! Events go to an outbox persisted with the state and are removed when the server
//! acknowledges them, so none is lost to a crash (one may be sent twice).

use std::path::PathBuf;
use std::time::Duration;

use wellcar_contract::{CommandError, OsVersion};
use wellcar_omaha::{AppRequest, OsInfo, Request, Response, UpdateDecision};
use wellcar_payload::Installer;

use crate::config::{Config, ConfigError};
use crate::host::{HostError, HostFacts, HostPaths};
use crate::http::{Http, HttpError};
use crate::machine::{Booted, Effect, End, Input, Machine};
use crate::pin::{InstallPin, PinError};
use crate::slots::{EspSlots, PartitionWindow, SlotControl, SlotError};
use crate::state::{AgentState, Offer, StateError, StateStore};

mod check;
mod install;
#[cfg(test)]
mod tests;

use install::Failure;

/// `updaterversion` sent to the server.
pub const UPDATER_VERSION: &str = concat!("wellcar-update-agent-", env!("CARGO_PKG_VERSION"));

pub use crate::machine::error_code;

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
    /// The reboot command failed; the update stays staged.
    #[error("rebooting into {version}")]
    Reboot {
        /// The staged version.
        version: String,
        /// The command's failure.
        #[source]
        source: CommandError,
    },
    /// update.conf names `SERVER_PUBLIC_KEY` and the server's answer is not signed with it:
    /// nothing in the answer was acted on (no offer, no event acknowledgement).
    #[error("rejected the Omaha answer from {url}: {reason} (SERVER_PUBLIC_KEY={})", key.display())]
    UnauthenticatedResponse {
        /// The server.
        url: String,
        /// The key file it was checked against.
        key: PathBuf,
        /// What was wrong with the signature.
        reason: wellcar_omaha::signature::SignatureError,
    },
    /// A pinned install ([`crate::pin`]) could not go ahead.
    #[error(transparent)]
    Pin(#[from] PinError),
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

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The agent: the state machine and the host it drives.
pub struct Agent<S: SlotControl = EspSlots> {
    paths: HostPaths,
    slots: S,
    store: StateStore,
    machine: Machine,
    http: Http,
    sync_interval: u64,
    transfer_retry_delay: Duration,
    /// The "answers are unauthenticated" warning was logged (once per process; the daemon
    /// keeps one agent for its life, so once per boot unless it is restarted).
    warned_unauthenticated: bool,
}

/// One install run: what it was started with and what it holds between effects.
struct Run<'a> {
    facts: &'a HostFacts,
    config: &'a Config,
    /// The installer, from the authentication or transfer to the verification.
    installer: Option<Installer<PartitionWindow>>,
    /// What [`Effect::Authenticate`] leaves the first transfer: the rest of the payload
    /// stream whose head it read, or (a delta's head read alone) nothing to continue.
    authenticated: Option<install::Authenticated>,
    /// Where the payload goes, prepared once per run.
    env: Option<install::Env>,
    /// A more telling error than [`AgentError::Install`] for the failure being reported.
    error: Option<AgentError>,
}

impl<'a> Run<'a> {
    fn new(facts: &'a HostFacts, config: &'a Config) -> Self {
        Self {
            facts,
            config,
            installer: None,
            authenticated: None,
            env: None,
            error: None,
        }
    }

    /// The input reporting `failure`; keeps its error for the end of the run.
    fn failed(&mut self, failure: Failure) -> Input {
        self.error = failure.error.map(|e| *e);
        Input::Failed(failure.failure)
    }
}

impl Agent<EspSlots> {
    /// An agent for `paths`, staging through the boot state on the ESP.
    pub fn open(paths: HostPaths) -> Result<Self, AgentError> {
        let slots = EspSlots::for_paths(&paths);
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
            machine: Machine::new(state),
            http: Http::new(),
            sync_interval: wellcar_payload::apply::DEFAULT_SYNC_INTERVAL,
            transfer_retry_delay: Duration::from_secs(2),
            warned_unauthenticated: false,
        })
    }

    /// The state (as last persisted, or about to be).
    pub fn state(&self) -> &AgentState {
        self.machine.state()
    }

    /// The paths and commands.
    pub fn paths(&self) -> &HostPaths {
        &self.paths
    }

    /// The state directory.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Sets the bytes written between durable payload checkpoints.
    pub fn set_sync_interval(&mut self, bytes: u64) {
        self.sync_interval = bytes;
    }

    /// Sets the pause between transfer attempts within one install (multiplied by the attempt).
    pub fn set_transfer_retry_delay(&mut self, delay: Duration) {
        self.transfer_retry_delay = delay;
    }

    fn save(&self) -> Result<(), AgentError> {
        Ok(self.store.save(self.machine.state())?)
    }

    /// Steps the machine with an input whose only effect is persisting.
    fn record(&mut self, input: Input) -> Result<(), AgentError> {
        for effect in self.machine.step(input) {
            debug_assert_eq!(effect, Effect::Persist, "a bookkeeping input");
            if effect == Effect::Persist {
                self.save()?;
            }
        }
        Ok(())
    }

    /// Steps the machine with `input` and carries out its effects, depth first; returns how the
    /// run ended once an effect says so.
    fn drive(&mut self, run: &mut Run<'_>, input: Input) -> Result<Option<End>, AgentError> {
        for effect in self.machine.step(input) {
            let next = match effect {
                Effect::Persist => {
                    self.save()?;
                    None
                }
                Effect::Report => {
                    self.flush_events_logged(run.facts, run.config);
                    Some(Input::Reported)
                }
                Effect::Invalidate { slot } => {
                    Some(match self.slots.invalidate(slot, run.facts.booted_slot) {
                        Ok(()) => Input::Invalidated,
                        Err(e) => run.failed(Failure::slot(
                            crate::machine::error_code::INSTALL_DEVICE_OPEN,
                            e,
                        )),
                    })
                }
                Effect::Authenticate { attempt } => Some(self.authenticate(run, attempt)),
                Effect::Download { attempt } => Some(self.download(run, attempt)),
                Effect::Verify { attempt } => Some(self.verify(run, attempt)),
                Effect::Stage {
                    slot,
                    root_hash,
                    version,
                } => Some(
                    match self
                        .slots
                        .stage(slot, run.facts.booted_slot, root_hash, &version)
                    {
                        Ok(()) => {
                            tracing::info!(%version, %slot, "update staged");
                            Input::Staged
                        }
                        Err(e) => run.failed(Failure::slot(crate::machine::error_code::ERROR, e)),
                    },
                ),
                Effect::RebootRequired => {
                    if let Err(e) = crate::state::write_atomic(&self.paths.reboot_required, b"") {
                        tracing::warn!("{e:#}");
                    }
                    None
                }
                Effect::Finish(end) => return Ok(Some(end)),
            };
            if let Some(next) = next {
                if let Some(end) = self.drive(run, next)? {
                    return Ok(Some(end));
                }
            }
        }
        Ok(None)
    }

    /// Runs an install from `input` to its end; a failure (already reported) is the error.
    fn install(&mut self, run: &mut Run<'_>, input: Input) -> Result<End, AgentError> {
        match self.drive(run, input)?.unwrap_or(End::Nothing) {
            End::Failed { version, failure } => {
                tracing::error!(%version, code = failure.code, "install failed: {}", failure.reason);
                Err(run.error.take().unwrap_or(AgentError::Install {
                    version,
                    code: failure.code,
                    reason: failure.reason,
                }))
            }
            end => Ok(end),
        }
    }

    fn app(&self, facts: &HostFacts, config: &Config) -> AppRequest {
        AppRequest {
            app_id: format!("{{{}}}", config.app_id),
            version: facts.version.clone(),
            track: config.group.clone(),
            board: facts.board.clone(),
            machine_id: facts.machine_id.clone(),
            machine_alias: config.machine_alias.clone(),
            boot_id: format!("{{{}}}", facts.boot_id),
            oem: facts.oem.clone(),
            oem_version: facts.oem_version.clone(),
            aleph_version: self.state().aleph_version.clone().unwrap_or_default(),
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

    /// POSTs `request` (with a fresh nonce and the fleet token); checks the answer's signature
    /// when update.conf names `SERVER_PUBLIC_KEY`; on an authenticated (or, without a key,
    /// any) parsed answer, drops the first `acked` outbox events.
    fn post(
        &mut self,
        server: &str,
        config: &Config,
        request: &Request,
        acked: usize,
    ) -> Result<Response, AgentError> {
        let xml = request.to_xml();
        let nonce = request_nonce().map_err(|reason| AgentError::Omaha {
            url: server.to_owned(),
            reason,
        })?;
        let mut headers = vec![(wellcar_omaha::headers::REQUEST_NONCE, nonce.as_str())];
        if let Some(token) = &config.fleet_token {
            headers.push((wellcar_omaha::headers::FLEET_TOKEN, token.expose()));
        }
        let reply = self.http.post_omaha(server, &xml, &headers)?;
        match &config.server_public_key {
            Some(key) => key
                .verify(
                    xml.as_bytes(),
                    nonce.as_bytes(),
                    &reply.body,
                    reply.signature.as_deref(),
                )
                .map_err(|reason| AgentError::UnauthenticatedResponse {
                    url: server.to_owned(),
                    key: key.path.clone(),
                    reason,
                })?,
            None => self.warn_unauthenticated(server),
        }
        let response = Response::parse(&reply.body).map_err(|e| AgentError::Omaha {
            url: server.to_owned(),
            reason: e.to_string(),
        })?;
        self.record(Input::Acked { count: acked })?;
        Ok(response)
    }

    /// Logs, once per process, that answers are taken without authentication.
    fn warn_unauthenticated(&mut self, server: &str) {
        if !std::mem::replace(&mut self.warned_unauthenticated, true) {
            tracing::warn!(
                server,
                "Omaha answers are not authenticated (update.conf sets no SERVER_PUBLIC_KEY): \
                 anyone on the network path can answer \"no update\" or fake event \
                 acknowledgements; payloads are still verified by their signatures"
            );
        }
    }

    /// Sends queued events in an event-only request. Failures leave them queued.
    pub fn flush_events(&mut self, facts: &HostFacts, config: &Config) -> Result<(), AgentError> {
        let Some(server) = config.server.clone() else {
            return Ok(());
        };
        if self.state().outbox.is_empty() {
            return Ok(());
        }
        let mut app = self.app(facts, config);
        app.events = self.state().outbox_batch();
        let n = app.events.len();
        let request = self.request(facts, InstallSource::Scheduler, app);
        self.post(&server, config, &request, n).map(|_| ())
    }

    fn flush_events_logged(&mut self, facts: &HostFacts, config: &Config) {
        if let Err(e) = self.flush_events(facts, config) {
            tracing::warn!("reporting events failed, will retry: {e:#}");
        }
    }

    /// Brings the state in line with the booted system: notes a reboot, prepares the boot
    /// report (3/2 or rollback), drops an install aimed at what is now the booted slot.
    pub fn reconcile(&mut self, facts: &HostFacts) -> Result<(), AgentError> {
        let before = self.state().phase.offer().map(|o| o.target);
        self.record(Input::Booted(Booted {
            version: facts.version.clone(),
            boot_id: facts.boot_id.clone(),
            slot: facts.booted_slot,
        }))?;
        if before == Some(facts.booted_slot) && self.state().phase.offer().is_none() {
            tracing::warn!(
                "dropped the install into {}: it is booted now",
                facts.booted_slot
            );
        }
        Ok(())
    }

    /// One update check, and the install it leads to.
    pub fn check(&mut self, source: InstallSource) -> Result<CheckOutcome, AgentError> {
        self.check_pinned(source, None)
    }

    /// Continues an install recorded in the state (after a restart), without a new check.
    pub fn resume_pending(&mut self) -> Result<Option<String>, AgentError> {
        let facts = HostFacts::read(&self.paths)?;
        self.reconcile(&facts)?;
        if self.state().phase.offer().is_none() {
            return Ok(None);
        }
        let config = Config::load(&self.paths.config_files)?;
        self.use_download_credentials(&config);
        let local = self
            .state()
            .phase
            .offer()
            .is_some_and(|o| o.urls.iter().all(|u| u.starts_with("file://")));
        if config.server.is_none() && !local {
            return Ok(None);
        }
        tracing::info!("resuming the interrupted install");
        let mut run = Run::new(&facts, &config);
        match self.install(&mut run, Input::Resume)? {
            End::Staged { version } => Ok(Some(version)),
            _ => Ok(None),
        }
    }

    /// Records what a check came to and the on-demand request it answered (if any).
    pub fn record_check(
        &mut self,
        result: String,
        request: Option<String>,
    ) -> Result<(), AgentError> {
        self.record(Input::CheckDone { result, request })
    }

    /// update_engine's `ResetStatus`: idle stays idle, a staged update is forgotten (no reboot
    /// is asked for; the boot state is not touched), any other status refuses (`Ok(false)`).
    pub fn reset_status(&mut self) -> Result<bool, AgentError> {
        match self.state().operation() {
            crate::state::Operation::Idle => Ok(true),
            crate::state::Operation::UpdatedNeedReboot => {
                self.record(Input::ResetStatus)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn use_download_credentials(&mut self, config: &Config) {
        self.http.set_download_credentials(
            config
                .download_credentials
                .as_ref()
                .map(|(u, p)| (u.as_str(), p.as_str())),
        );
    }

    /// The state directory's check request path.
    pub fn request_path(&self) -> PathBuf {
        self.store.request_path()
    }
}

/// A fresh [`REQUEST_NONCE`](wellcar_omaha::headers::REQUEST_NONCE): 16 random bytes as
/// 32 lowercase hex characters.
fn request_nonce() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| format!("reading random bytes for the request nonce: {e}"))?;
    Ok(hex::encode(bytes))
}
