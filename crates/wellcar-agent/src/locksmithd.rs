//! locksmithd, the reboot manager (`locksmithd.service`, Flatcar's unit name): it reboots the
//! machine into the update the agent staged, by `REBOOT_STRATEGY`, inside the reboot window,
//! taking and releasing the reboot lock ([`crate::reboot_lock`]).
//!
//! Contract:
//! - It reads `update.conf` as the agent does (same files, same keys), over a lowest layer of
//!   locksmith's variables from its environment (`REBOOT_STRATEGY`, `LOCKSMITHD_*`: a
//!   `locksmithd.service.d/` drop-in's `Environment=` works as on Flatcar, where update.conf,
//!   read through `EnvironmentFile=`, wins over it; [`Config::load_over_environment`]). A
//!   configuration that cannot be read at start refuses the start, naming file (or
//!   `(environment)`), line and key (exit 1).
//! - `REBOOT_STRATEGY=off` at start: it logs and exits successfully, doing nothing, as
//!   locksmith does ("off causes locksmithd to exit"); the unit does not restart it.
//! - Otherwise, every [`TICK`]: the configuration is re-read (a file broken while running keeps
//!   the last good one, never the defaults, whose `reboot` strategy would skip a configured
//!   lock), the agent's `status.json` is re-read, and [`RebootDriver::tick`] decides.
//! - It only reads the agent's state: stopping or masking `locksmithd.service` stops automatic
//!   reboots while the agent goes on checking, downloading and staging, as on Flatcar.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::{Config, ConfigError, RebootStrategy};
use crate::reboot_lock::host::RebootHost;
use crate::reboot_lock::{lock_kind, RebootDriver};
use crate::slots::SlotControl;

/// How often locksmithd looks at the agent's state, the window and the lock.
pub const TICK: Duration = Duration::from_millis(250);

/// What the configuration at start asks of locksmithd.
#[derive(Debug)]
pub enum Start {
    /// Manage reboots, starting from this configuration.
    Run(Box<Config>),
    /// `REBOOT_STRATEGY=off`: nothing to do.
    Off,
}

/// Where locksmithd's configuration comes from: the host's `update.conf` files and the
/// environment it was started with.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    files: Vec<std::path::PathBuf>,
    environment: Vec<(String, String)>,
}

impl ConfigSource {
    /// `host`'s files over `environment` (the process's, `std::env::vars()`).
    pub fn new<S: SlotControl>(
        host: &RebootHost<S>,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        Self {
            files: host.paths().config_files.clone(),
            environment: environment.into_iter().collect(),
        }
    }

    /// Reads the configuration now.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load_over_environment(&self.files, self.environment.iter().cloned())
    }
}

/// Reads the configuration locksmithd starts with.
pub fn start(source: &ConfigSource) -> Result<Start, ConfigError> {
    let config = source.load()?;
    if config.reboot_strategy == RebootStrategy::Off {
        tracing::info!("reboot strategy is \"off\", shutting down");
        return Ok(Start::Off);
    }
    tracing::info!(
        strategy = config.reboot_strategy.name(),
        lock = ?lock_kind(&config),
        "reboot strategy"
    );
    Ok(Start::Run(Box::new(config)))
}

/// Manages reboots until `stop` is set, starting from `config` ([`start`]).
pub fn run<S: SlotControl>(
    host: &mut RebootHost<S>,
    source: &ConfigSource,
    config: Config,
    stop: &AtomicBool,
) {
    let mut last_good = config;
    let mut driver = RebootDriver::new();
    let mut state_unreadable = false;
    while !stop.load(Ordering::SeqCst) {
        let config = Config::reload(source.load(), &mut last_good);
        match host.refresh() {
            Ok(()) => {
                state_unreadable = false;
                driver.tick(host, &config, &jiff::Zoned::now());
            }
            // Said once per spell: the agent rewrites the file whole, so this is a broken
            // state directory, not a torn read.
            Err(e) if !state_unreadable => {
                state_unreadable = true;
                tracing::error!(
                    "reading the update agent's state: {}; no reboot decisions until it reads",
                    wellcar_contract::error_chain(&e)
                );
            }
            Err(_) => {}
        }
        std::thread::sleep(TICK);
    }
}
