//! One update check and where it leads: the Omaha conversation for a plain or version-pinned
//! check, or straight to the install for a local payload ([`crate::pin`]). The steps
//! themselves are the driver's ([`super`]); this holds the check's control flow.

use super::*;

impl<S: SlotControl> Agent<S> {
    /// [`Agent::check`], or with `pin` a pinned install ([`crate::pin`]): a local payload
    /// goes straight to the install; a version pin asks the server for exactly that version.
    pub fn check_pinned(
        &mut self,
        source: InstallSource,
        pin: Option<&InstallPin>,
    ) -> Result<CheckOutcome, AgentError> {
        let config = Config::load(&self.paths.config_files)?;
        self.use_download_credentials(&config);
        let facts = HostFacts::read(&self.paths)?;
        self.reconcile(&facts)?;
        if pin.is_some() && self.state().phase.staged().is_some() {
            return Err(PinError::AlreadyStaged.into());
        }
        if let Some(path) = pin.and_then(|p| p.payload.as_deref()) {
            let wanted = pin.and_then(|p| p.to_version.as_deref());
            return self.install_local(&facts, &config, path, wanted);
        }
        let wanted = pin.and_then(|p| p.to_version.clone());
        let Some(server) = config.server.clone() else {
            if let Some(wanted) = wanted {
                return Err(PinError::ServerDisabled(wanted).into());
            }
            tracing::info!("updates are disabled (SERVER)");
            return Ok(CheckOutcome::Disabled);
        };
        let mut app = self.app(&facts, &config);
        app.ping = true;
        app.events = self.state().outbox_batch();
        let queued = app.events.len();
        if self.state().phase.staged().is_some() {
            let request = self.request(&facts, source, app);
            self.post(&server, &config, &request, queued)?;
            self.record(Input::Pinged { now: now_unix() })?;
            return Ok(CheckOutcome::AwaitingReboot);
        }
        // `V$`: exactly V (a bare `V` would also match `V.1` on servers that honour prefixes).
        app.update_check = Some(wellcar_omaha::UpdateCheckRequest {
            target_version_prefix: wanted.as_ref().map(|v| format!("{v}$")),
        });
        let request = self.request(&facts, source, app);
        self.record(Input::CheckStarted)?;
        let answer = self
            .post(&server, &config, &request, queued)
            .and_then(|response| {
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
                if let Some(wanted) = &wanted {
                    let offered = match &decision {
                        UpdateDecision::Update(info) => Some(info.version.clone()),
                        UpdateDecision::NoUpdate { .. } => None,
                    };
                    if offered.as_deref() != Some(wanted.as_str()) {
                        return Err(PinError::VersionNotOffered {
                            server: server.clone(),
                            wanted: wanted.clone(),
                            offered,
                        }
                        .into());
                    }
                }
                Ok(decision)
            });
        let answer = answer.and_then(|decision| match &decision {
            UpdateDecision::Update(_) => {
                Ok((decision, self.slots.booted_is_good(facts.booted_slot)?))
            }
            UpdateDecision::NoUpdate { .. } => Ok((decision, true)),
        });
        let (decision, booted_is_good) = match answer {
            Ok(d) => d,
            Err(e) => {
                self.record(Input::CheckFailed {
                    error: e.to_string(),
                })?;
                return Err(e);
            }
        };
        let now = now_unix();
        match decision {
            UpdateDecision::NoUpdate { poll_interval } => {
                self.record(Input::NoUpdate { now })?;
                Ok(CheckOutcome::NoUpdate { poll_interval })
            }
            UpdateDecision::Update(info) => {
                let poll_interval = info.poll_interval;
                if !booted_is_good {
                    tracing::info!(
                        version = %info.version,
                        "update offered, deferred until {} is marked good",
                        facts.booted_slot
                    );
                }
                let offer = Offer {
                    version: info.version,
                    urls: info.urls,
                    size: info.size,
                    sha256: hex::encode(info.sha256),
                    target: facts.booted_slot.other(),
                    is_delta: info.is_delta,
                };
                let mut run = Run::new(&facts, &config);
                let input = Input::Offered {
                    offer,
                    booted_is_good,
                    now,
                };
                match self.install(&mut run, input)? {
                    End::Deferred { version } => Ok(CheckOutcome::Deferred { version }),
                    End::Staged { version } => Ok(CheckOutcome::Staged {
                        version,
                        poll_interval,
                    }),
                    End::Nothing | End::Failed { .. } => {
                        Ok(CheckOutcome::NoUpdate { poll_interval })
                    }
                }
            }
        }
    }

    /// A pinned install of the local payload at `path` ([`crate::pin`]): authenticated and
    /// checked first, then offered to the machine as if a server had offered it.
    fn install_local(
        &mut self,
        facts: &HostFacts,
        config: &Config,
        path: &std::path::Path,
        wanted: Option<&str>,
    ) -> Result<CheckOutcome, AgentError> {
        self.record(Input::CheckStarted)?;
        let checked = (|| {
            let trusted = wellcar_payload::TrustedKeys::from_dir(&self.paths.trusted_keys)?;
            let policy =
                wellcar_payload::ApplyPolicy::new(facts.board.clone(), Some(facts.version.clone()));
            let local = crate::pin::check_local_payload(path, &trusted, &policy, wanted)?;
            Ok::<_, AgentError>((local, self.slots.booted_is_good(facts.booted_slot)?))
        })();
        let (local, booted_is_good) = match checked {
            Ok(c) => c,
            Err(e) => {
                self.record(Input::CheckFailed {
                    error: e.to_string(),
                })?;
                return Err(e);
            }
        };
        tracing::info!(version = %local.version, path = %path.display(), "installing a local payload");
        let offer = Offer {
            version: local.version,
            urls: vec![local.url],
            size: local.size,
            sha256: String::new(),
            target: facts.booted_slot.other(),
            is_delta: false,
        };
        let mut run = Run::new(facts, config);
        let input = Input::Offered {
            offer,
            booted_is_good,
            now: now_unix(),
        };
        match self.install(&mut run, input)? {
            End::Deferred { version } => Ok(CheckOutcome::Deferred { version }),
            End::Staged { version } => Ok(CheckOutcome::Staged {
                version,
                poll_interval: None,
            }),
            End::Nothing | End::Failed { .. } => Ok(CheckOutcome::NoUpdate {
                poll_interval: None,
            }),
        }
    }
}
