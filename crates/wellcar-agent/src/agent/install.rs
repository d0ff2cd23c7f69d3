//! The driver's install I/O: one transfer attempt, the read-back verification, and how their
//! failures map to update_engine error codes.
//!
//! Contract: [`Agent::download`] and [`Agent::verify`] carry out [`Effect::Download`] and
//! [`Effect::Verify`](crate::machine::Effect::Verify) and answer with the machine's next
//! [`Input`]. The installer lives in the run between the two; a run that starts at
//! verification (after a restart) resumes it from the phase's checkpoint. Progress and
//! checkpoints reach the machine while the payload streams, and are persisted at once.
//!
//! [`Effect::Download`]: crate::machine::Effect::Download

use std::cell::RefCell;

use std::io::Read as _;

use wellcar_payload::format::{Header, HEADER_LEN};
use wellcar_payload::{
    ApplyError, ApplyPolicy, Checkpoint, InstallTargets, Installer, PayloadHead, SourceReader,
    SourceSlot, TrustedKeys, VerifiedHead,
};

use super::{Agent, AgentError, Run};
use crate::host::HostFacts;
use crate::http::HttpError;
use crate::machine::{error_code, Effect, Input, InstallFailure, Machine};
use crate::slots::{source_slot, PartitionWindow, SlotControl, SlotError};
use crate::state::{Offer, StateStore};

/// Where the payload goes and what it is checked against, prepared once per run.
pub(super) struct Env {
    disk: std::path::PathBuf,
    trusted: TrustedKeys,
    policy: ApplyPolicy,
    kernel: std::path::PathBuf,
    initramfs: std::path::PathBuf,
}

impl Env {
    fn targets(
        &self,
        slot: wellcar_bootstate::Slot,
    ) -> Result<InstallTargets<PartitionWindow>, Failure> {
        Ok(InstallTargets {
            usr: PartitionWindow::open(&self.disk, slot)
                .map_err(Failure::fatal(error_code::INSTALL_DEVICE_OPEN))?,
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
        })
    }
}

impl<S: SlotControl> Agent<S> {
    fn env<'r>(&self, run: &'r mut Run<'_>, offer: &Offer) -> Result<&'r Env, Failure> {
        if run.env.is_none() {
            let disk = self
                .paths
                .resolve_disk()
                .map_err(Failure::fatal(error_code::INSTALL_DEVICE_OPEN))?;
            let trusted = TrustedKeys::from_dir(&self.paths.trusted_keys)
                .map_err(Failure::fatal(error_code::PAYLOAD_VERIFICATION))?;
            let policy = ApplyPolicy {
                sync_interval: self.sync_interval,
                ..ApplyPolicy::new(run.facts.board.clone(), Some(run.facts.version.clone()))
            };
            let (kernel, initramfs) = self.paths.boot_files(offer.target);
            if let Some(dir) = kernel.parent() {
                std::fs::create_dir_all(dir).map_err(Failure::fatal(error_code::DOWNLOAD_WRITE))?;
            }
            run.env = Some(Env {
                disk,
                trusted,
                policy,
                kernel,
                initramfs,
            });
        }
        Ok(run.env.as_ref().expect("just prepared"))
    }

    fn offer(&self) -> Result<Offer, Failure> {
        self.state().phase.offer().cloned().ok_or_else(|| Failure {
            failure: InstallFailure {
                code: error_code::ERROR,
                reason: "no install in progress".into(),
                retryable: false,
            },
            error: None,
        })
    }

    fn pause_before(&self, attempt: u32, what: &str) {
        if attempt > 0 {
            tracing::warn!(attempt, "{what} interrupted, resuming");
            std::thread::sleep(self.transfer_retry_delay * attempt);
        }
    }

    /// Carries out [`Effect::Authenticate`](crate::machine::Effect::Authenticate): reads and
    /// authenticates the payload head and prepares the installer (policy and target size
    /// checked), keeping the rest of the stream for the first transfer. Writes nothing.
    pub(super) fn authenticate(&mut self, run: &mut Run<'_>, attempt: u32) -> Input {
        self.pause_before(attempt, "payload authentication");
        run.installer = None;
        run.authenticated = None;
        let result = (|| {
            let offer = self.offer()?;
            let url = pick_url(&offer, attempt);
            if offer.is_delta {
                // Verifying the source reads the whole booted slot: read the head alone, so
                // no payload stream sits idle meanwhile (or is dropped half-read).
                let head = self.head_alone(url, &offer, run)?;
                let installer = self.installer(run, &offer, head, None)?;
                return Ok((installer, Authenticated::HeadOnly));
            }
            let (head, body) = self.head_and_body(url, None, &offer, run)?;
            let installer = self.installer(run, &offer, head, None)?;
            Ok((installer, Authenticated::Stream(body)))
        })();
        match result {
            Ok((installer, authenticated)) => {
                run.installer = Some(installer);
                run.authenticated = Some(authenticated);
                Input::Authenticated
            }
            Err(f) => run.failed(f),
        }
    }

    /// Carries out [`Effect::Download`]: one transfer attempt.
    pub(super) fn download(&mut self, run: &mut Run<'_>, attempt: u32) -> Input {
        self.pause_before(attempt, "download");
        match self.transfer(run, attempt) {
            Ok(resumed_complete) => Input::Downloaded { resumed_complete },
            Err(f) => run.failed(f),
        }
    }

    /// Carries out [`Effect::Verify`](crate::machine::Effect::Verify): reads the slot back.
    pub(super) fn verify(&mut self, run: &mut Run<'_>, attempt: u32) -> Input {
        self.pause_before(attempt, "verification");
        let result = (|| {
            let installer = match run.installer.take() {
                Some(installer) => installer,
                None => {
                    let offer = self.offer()?;
                    let checkpoint = self.state().phase.checkpoint().cloned().ok_or_else(|| {
                        Failure::fatal(error_code::ERROR)("the download has no checkpoint")
                    })?;
                    let url = pick_url(&offer, attempt);
                    let head = self.head(url, Some(checkpoint.data_start - 1), &offer, run)?;
                    self.installer(run, &offer, head, Some(checkpoint))?
                }
            };
            // Reading back is no transfer: whatever fails here is final for this download.
            installer
                .finish()
                .map(|report| report.verity_root_hash)
                .map_err(|e| {
                    let mut f = Failure::from_apply(e);
                    f.failure.retryable = false;
                    f
                })
        })();
        match result {
            Ok(root_hash) => Input::Verified { root_hash },
            Err(f) => run.failed(f),
        }
    }

    /// The installer for `head`: new, or resumed from `checkpoint`. A delta reads the booted
    /// slot, which must be the one it was made from: the root hash the system booted with is
    /// compared first (no read), then the installer recomputes the slot's root before it
    /// writes anything (on every start and resume).
    fn installer(
        &self,
        run: &mut Run<'_>,
        offer: &Offer,
        head: VerifiedHead,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Installer<PartitionWindow>, Failure> {
        let facts = run.facts;
        let env = self.env(run, offer)?;
        let source = match &head.manifest().source {
            Some(wanted) => {
                let (kernel, initramfs) = self.paths.boot_files(facts.booted_slot);
                let source = delta_source(&env.disk, facts, wanted)?;
                Some(source.with_boot_files(kernel, initramfs))
            }
            None => None,
        };
        let targets = env.targets(offer.target)?;
        match checkpoint {
            Some(cp) => Installer::resume_with_source(head, &env.policy, targets, cp, source),
            None => Installer::new_with_source(head, &env.policy, targets, source),
        }
        .map_err(Failure::from_apply)
    }

    /// Reads and authenticates the payload head from `url` (up to byte `end`), refusing a
    /// manifest for another version than the offer.
    fn head(
        &self,
        url: &str,
        end: Option<u64>,
        offer: &Offer,
        run: &mut Run<'_>,
    ) -> Result<VerifiedHead, Failure> {
        let (head, _) = self.head_and_body(url, end, offer, run)?;
        Ok(head)
    }

    /// Reads and authenticates the payload head from `url` with two bounded requests: the
    /// fixed header (which gives the head's length), then the whole head.
    fn head_alone(
        &self,
        url: &str,
        offer: &Offer,
        run: &mut Run<'_>,
    ) -> Result<VerifiedHead, Failure> {
        let mut bytes = [0u8; HEADER_LEN];
        self.http
            .get_range(url, 0, Some(HEADER_LEN as u64 - 1))
            .and_then(|mut r| {
                r.read_exact(&mut bytes).map_err(|e| HttpError::Transport {
                    method: "GET",
                    url: url.to_owned(),
                    reason: format!("reading the payload header: {e}"),
                })
            })
            .map_err(Failure::transfer)?;
        let header = Header::parse(&bytes).map_err(|e| Failure::from_apply(e.into()))?;
        self.head(url, Some(header.data_start() - 1), offer, run)
    }

    fn head_and_body(
        &self,
        url: &str,
        end: Option<u64>,
        offer: &Offer,
        run: &mut Run<'_>,
    ) -> Result<(VerifiedHead, Box<dyn std::io::Read + Send>), Failure> {
        let mut body = self
            .http
            .get_range(url, 0, end)
            .map_err(Failure::transfer)?;
        let trusted = &self.env(run, offer)?.trusted;
        let head = PayloadHead::read(&mut body)
            .map_err(|e| Failure::from_apply(e.into()))?
            .authenticate(trusted)
            .map_err(|e| Failure::from_apply(e.into()))?;
        check_offered_version(&offer.version, &head)?;
        Ok((head, body))
    }

    /// One transfer attempt: (re)creates the installer if needed and streams from its
    /// checkpoint to the end. `Ok(true)`: the resumed checkpoint was already complete.
    fn transfer(&mut self, run: &mut Run<'_>, attempt: u32) -> Result<bool, Failure> {
        let offer = self.offer()?;
        let url = pick_url(&offer, attempt);
        if let (Some(authenticated), Some(installer)) =
            (run.authenticated.take(), run.installer.as_mut())
        {
            // The head was authenticated before the slot was invalidated: write from here.
            let checkpoint = Input::Checkpointed(installer.checkpoint().clone());
            persist_step(&mut self.machine, &self.store, checkpoint)
                .map_err(Failure::fatal(error_code::ERROR))?;
            let mut body = match authenticated {
                Authenticated::Stream(body) => body,
                Authenticated::HeadOnly => self.data_after_checkpoint(url, installer)?,
            };
            return self
                .stream(installer, &mut body, offer.size)
                .map(|()| false);
        }
        if run.installer.is_none() {
            let saved = self.state().phase.checkpoint().cloned();
            let resumed = match saved {
                Some(cp) => {
                    let head = self.head(url, Some(cp.data_start - 1), &offer, run)?;
                    match self.installer(run, &offer, head, Some(cp)) {
                        Ok(i) => Some(i),
                        // Starting over would read the same source again.
                        Err(f) if f.failure.code == error_code::DOWNLOAD_STATE_INITIALIZATION => {
                            return Err(f)
                        }
                        Err(f) => {
                            tracing::warn!("cannot resume, starting over: {}", f.failure.reason);
                            None
                        }
                    }
                }
                None => None,
            };
            match resumed {
                Some(i) => run.installer = Some(i),
                None => {
                    let (head, mut body) = self.head_and_body(url, None, &offer, run)?;
                    let i = self.installer(run, &offer, head, None)?;
                    let checkpoint = Input::Checkpointed(i.checkpoint().clone());
                    persist_step(&mut self.machine, &self.store, checkpoint)
                        .map_err(Failure::fatal(error_code::ERROR))?;
                    let installer = run.installer.insert(i);
                    return self
                        .stream(installer, &mut body, offer.size)
                        .map(|()| false);
                }
            }
        }
        let installer = run.installer.as_mut().expect("installer exists");
        if installer.is_complete() {
            // Only reached right after resuming a complete checkpoint.
            return Ok(true);
        }
        let mut body = self.data_after_checkpoint(url, installer)?;
        self.stream(installer, &mut body, offer.size)
            .map(|()| false)
    }

    /// The payload's data from the installer's checkpoint to its end. None is requested when
    /// the data section ends there (a delta may carry no data at all: every block copied or
    /// rebuilt), since a Range starting at the file's end is answered 416.
    fn data_after_checkpoint(
        &self,
        url: &str,
        installer: &Installer<PartitionWindow>,
    ) -> Result<Box<dyn std::io::Read + Send>, Failure> {
        let head = installer.head();
        let data_end = head.data_start() + head.manifest().data_len;
        let offset = installer.checkpoint().payload_offset;
        if offset >= data_end {
            return Ok(Box::new(std::io::empty()));
        }
        self.http
            .get_range(url, offset, None)
            .map_err(Failure::transfer)
    }

    fn stream(
        &mut self,
        installer: &mut Installer<PartitionWindow>,
        body: &mut dyn std::io::Read,
        size: u64,
    ) -> Result<(), Failure> {
        // Shared by the progress reader (display, every 1 %) and the checkpoint callback
        // (durable resume point); both persist the state.
        let machine = RefCell::new(&mut self.machine);
        let store = &self.store;
        let save_error = RefCell::new(None::<String>);
        let apply = |input: Input| {
            if let Err(e) = persist_step(&mut machine.borrow_mut(), store, input) {
                save_error.borrow_mut().get_or_insert_with(|| e.to_string());
            }
        };
        let mut reader = ProgressReader {
            inner: body,
            offset: installer.checkpoint().payload_offset,
            last_percent: u64::MAX,
            on_percent: &mut |bytes| apply(Input::Received { bytes }),
            size,
        };
        let result = installer.write_from_with_progress(&mut reader, &mut |cp| {
            apply(Input::Checkpointed(cp.clone()))
        });
        if let Some(reason) = save_error.into_inner() {
            return Err(Failure {
                failure: InstallFailure {
                    code: error_code::ERROR,
                    reason,
                    retryable: false,
                },
                error: None,
            });
        }
        result.map_err(Failure::from_apply)
    }
}

/// Steps `machine` with a progress input and persists the state if it says so.
fn persist_step(
    machine: &mut Machine,
    store: &StateStore,
    input: Input,
) -> Result<(), crate::state::StateError> {
    for effect in machine.step(input) {
        if effect == Effect::Persist {
            store.save(machine.state())?;
        }
    }
    Ok(())
}

/// Opens the booted slot on `disk` as the source of a delta made from `wanted`, refusing it at
/// once when the system booted with another root hash than the delta names.
fn delta_source(
    disk: &std::path::Path,
    facts: &HostFacts,
    wanted: &SourceSlot,
) -> Result<SourceReader, Failure> {
    let source = source_slot(disk, facts.booted_slot)
        .map_err(|e| Failure::slot(error_code::DOWNLOAD_STATE_INITIALIZATION, e))?;
    match facts.booted_root_hash {
        Some(booted) if booted != wanted.verity.root_hash => {
            Err(Failure::from_apply(ApplyError::SourceRootMismatch {
                source_slot: source.describe(),
                expected: wanted.verity.root_hash,
                actual: format!("{booted} (verity.usrhash= of this boot)"),
            }))
        }
        _ => Ok(source),
    }
}

fn pick_url(offer: &Offer, attempt: u32) -> &str {
    offer
        .urls
        .get(attempt as usize % offer.urls.len().max(1))
        .map_or("", String::as_str)
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
        failure: InstallFailure {
            code: error_code::PAYLOAD_VERIFICATION,
            reason: error.to_string(),
            retryable: false,
        },
        error: Some(Box::new(error)),
    })
}

/// What authentication leaves the first transfer (see `Run::authenticated`).
pub(super) enum Authenticated {
    /// The payload stream, positioned at the first data byte.
    Stream(Box<dyn std::io::Read + Send>),
    /// Only the head was read: the transfer requests the data from its start.
    HeadOnly,
}

/// Counts payload bytes as they arrive and reports each new whole percent.
pub(super) struct ProgressReader<'a> {
    pub(super) inner: &'a mut dyn std::io::Read,
    pub(super) offset: u64,
    pub(super) size: u64,
    pub(super) last_percent: u64,
    pub(super) on_percent: &'a mut dyn FnMut(u64),
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

/// An install failure for the machine, and the error to return once it is reported when one
/// more telling than [`AgentError::Install`] exists.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) failure: InstallFailure,
    pub(super) error: Option<Box<AgentError>>,
}

impl Failure {
    fn fatal<E: std::fmt::Display>(code: u32) -> impl Fn(E) -> Failure {
        move |e| Failure {
            failure: InstallFailure {
                code,
                reason: e.to_string(),
                retryable: false,
            },
            error: None,
        }
    }

    pub(super) fn slot(code: u32, e: SlotError) -> Failure {
        Failure::fatal(code)(format!("{:#}", anyhow::Error::from(e)))
    }

    fn transfer(e: HttpError) -> Failure {
        Failure {
            failure: InstallFailure {
                code: error_code::DOWNLOAD_TRANSFER,
                reason: e.to_string(),
                retryable: true,
            },
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
            // A delta whose source is not the booted slot it was made from: the server offers
            // the full payload after this report.
            ApplyError::DeltaNeedsSource { .. }
            | ApplyError::DeltaNeedsSourceFile { .. }
            | ApplyError::SourceFileMismatch { .. }
            | ApplyError::DeltaSourceVersion { .. }
            | ApplyError::SourceTooSmall { .. }
            | ApplyError::SourceRootMismatch { .. }
            | ApplyError::SourceRead { .. }
            | ApplyError::SourceHashMismatch { .. } => {
                (error_code::DOWNLOAD_STATE_INITIALIZATION, false)
            }
            ApplyError::Patch { .. } => (error_code::DOWNLOAD_OPERATION_EXECUTION, false),
            ApplyError::PatchOutputMismatch { .. } | ApplyError::VerityTree { .. } => {
                (error_code::DOWNLOAD_OPERATION_HASH_MISMATCH, false)
            }
            _ => (error_code::ERROR, false),
        };
        Failure {
            failure: InstallFailure {
                code,
                reason: format!("{e:#}"),
                retryable,
            },
            error: None,
        }
    }
}
