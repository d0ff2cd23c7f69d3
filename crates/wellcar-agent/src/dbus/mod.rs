//! update_engine's D-Bus API, served by the agent daemon so that tools written against
//! Flatcar (locksmith, FLUO, kured-style scripts, `update_engine_client`) work unchanged.
//!
//! Contract (update_engine's `update_engine.xml`): bus name [`BUS_NAME`] on the system bus,
//! object [`OBJECT_PATH`], interface [`INTERFACE`] with
//! - `GetStatus() -> (x last_checked_time, d progress, s current_operation, s new_version,
//!   x new_size)`: the agent's `status.json` as [`Status`];
//! - `AttemptUpdate()`: an on-demand check (and install), the same request
//!   `wellcar-update check` makes ([`crate::client::request_check`]); returns at once;
//! - `ResetStatus()`: idle stays idle, a staged update is forgotten (no reboot is asked for,
//!   the boot state is left as it is, as update_engine leaves the partition table), any other
//!   status fails with `org.freedesktop.DBus.Error.Failed`;
//! - signal `StatusUpdate(x, d, s, s, x)` (the `GetStatus` values) whenever they change: the
//!   service watches `status.json` every [`WATCH_INTERVAL`].
//!
//! Access is the bus policy's job ([`POLICY`], installed as
//! `/usr/share/dbus-1/system.d/com.coreos.update1.conf`).

pub mod client;
pub mod client_flags;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use zbus::fdo;

use crate::daemon::Request;
use crate::state::{AgentState, StateStore};

/// update_engine's well-known bus name.
pub const BUS_NAME: &str = "com.coreos.update1";
/// The object serving [`INTERFACE`].
pub const OBJECT_PATH: &str = "/com/coreos/update1";
/// The interface.
pub const INTERFACE: &str = "com.coreos.update1.Manager";
/// The signal sent on every status change.
pub const STATUS_UPDATE: &str = "StatusUpdate";
/// The bus policy file (for `/usr/share/dbus-1/system.d/com.coreos.update1.conf`).
pub const POLICY: &str =
    include_str!("../../../../os/files/usr/share/dbus-1/system.d/com.coreos.update1.conf");
/// How often the service looks at `status.json` for a change to signal.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// How long `ResetStatus` waits for the daemon loop to take it.
pub const RESET_TIMEOUT: Duration = Duration::from_secs(30);

/// update_engine's status tuple, as `GetStatus` returns and `StatusUpdate` carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Unix time of the last check that reached the server (0: never).
    pub last_checked_time: i64,
    /// Download progress, 0.0 to 1.0.
    pub progress: f64,
    /// `UPDATE_STATUS_IDLE`, `UPDATE_STATUS_DOWNLOADING`, …
    pub current_operation: String,
    /// The version offered, installing or staged; `0.0.0` when none.
    pub new_version: String,
    /// Its payload size in bytes (0 when none).
    pub new_size: i64,
}

impl Status {
    /// The status of an agent state.
    pub fn of(state: &AgentState) -> Self {
        Self {
            last_checked_time: state.last_checked_time,
            progress: state.progress(),
            current_operation: state.operation().flatcar_name().to_owned(),
            new_version: state.new_version().unwrap_or("0.0.0").to_owned(),
            new_size: i64::try_from(state.new_size()).unwrap_or(i64::MAX),
        }
    }

    /// `update_engine_client -status`'s lines (`LAST_CHECKED_TIME=…` … `NEW_SIZE=…`).
    pub fn flatcar_lines(&self) -> String {
        format!(
            "LAST_CHECKED_TIME={}\nPROGRESS={:.6}\nCURRENT_OP={}\nNEW_VERSION={}\nNEW_SIZE={}\n",
            self.last_checked_time,
            self.progress,
            self.current_operation,
            self.new_version,
            self.new_size
        )
    }
}

/// Failure starting the service.
#[derive(Debug, thiserror::Error)]
pub enum DbusError {
    /// The bus could not be reached or the name not taken.
    #[error("serving {BUS_NAME} on {bus}: {source}")]
    Serve {
        /// The bus address, or `the system bus`.
        bus: String,
        /// The D-Bus error.
        #[source]
        source: Box<zbus::Error>,
    },
    /// The watcher thread could not be started.
    #[error("starting the {BUS_NAME} status watcher: {0}")]
    Thread(#[source] std::io::Error),
}

/// The interface (zbus generates undocumented items for it).
mod manager {
    #![allow(missing_docs)]
    use super::*;

    /// The `com.coreos.update1.Manager` object.
    pub(super) struct Manager {
        pub(super) store: StateStore,
        pub(super) requests: Mutex<Sender<Request>>,
    }

    fn failed(e: impl std::fmt::Display) -> fdo::Error {
        fdo::Error::Failed(e.to_string())
    }

    #[zbus::interface(name = "com.coreos.update1.Manager")]
    impl Manager {
        /// update_engine's status.
        #[zbus(out_args(
            "last_checked_time",
            "progress",
            "current_operation",
            "new_version",
            "new_size"
        ))]
        fn get_status(&self) -> fdo::Result<(i64, f64, String, String, i64)> {
            let s = Status::of(&self.store.load().map_err(failed)?);
            Ok((
                s.last_checked_time,
                s.progress,
                s.current_operation,
                s.new_version,
                s.new_size,
            ))
        }

        /// An interactive update check (and install).
        fn attempt_update(&self) -> fdo::Result<()> {
            tracing::info!("update check requested over D-Bus");
            crate::client::request_check(&self.store).map_err(failed)?;
            Ok(())
        }

        /// Back to idle from a staged update.
        fn reset_status(&self) -> fdo::Result<()> {
            let status = Status::of(&self.store.load().map_err(failed)?);
            match status.current_operation.as_str() {
                "UPDATE_STATUS_IDLE" => return Ok(()),
                "UPDATE_STATUS_UPDATED_NEED_REBOOT" => {}
                other => return Err(failed(format!("Reset not allowed in this state ({other})"))),
            }
            let (reply, answer) = std::sync::mpsc::channel();
            self.requests
                .lock()
                .map_err(failed)?
                .send(Request::ResetStatus(reply))
                .map_err(|_| failed("the update agent loop is not running"))?;
            match answer.recv_timeout(RESET_TIMEOUT) {
                Ok(Ok(true)) => Ok(()),
                Ok(Ok(false)) => Err(failed("Reset not allowed in this state")),
                Ok(Err(e)) => Err(failed(e)),
                Err(_) => Err(failed(format!(
                    "the update agent did not take the reset within {RESET_TIMEOUT:?}"
                ))),
            }
        }

        /// Sent whenever the `GetStatus` values change.
        #[zbus(signal)]
        async fn status_update(
            emitter: &zbus::object_server::SignalEmitter<'_>,
            last_checked_time: i64,
            progress: f64,
            current_operation: &str,
            new_version: &str,
            new_size: i64,
        ) -> zbus::Result<()>;
    }
}

use manager::Manager;

/// The running service: owns [`BUS_NAME`] until dropped.
pub struct Service {
    connection: zbus::blocking::Connection,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl Service {
    /// Serves the interface on `address` (the system bus when `None`, which honours
    /// `DBUS_SYSTEM_BUS_ADDRESS`), answering from `store` and handing resets to the daemon
    /// loop through `requests`.
    pub fn start(
        address: Option<&str>,
        store: StateStore,
        requests: Sender<Request>,
    ) -> Result<Self, DbusError> {
        let bus = address.unwrap_or("the system bus").to_owned();
        let serve = |source| DbusError::Serve {
            bus: bus.clone(),
            source: Box::new(source),
        };
        let builder = match address {
            Some(a) => zbus::blocking::connection::Builder::address(a),
            None => zbus::blocking::connection::Builder::system(),
        }
        .map_err(serve)?;
        let manager = Manager {
            store: store.clone(),
            requests: Mutex::new(requests),
        };
        let connection = builder
            .name(BUS_NAME)
            .map_err(serve)?
            .serve_at(OBJECT_PATH, manager)
            .map_err(serve)?
            .build()
            .map_err(serve)?;
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let connection = connection.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("dbus-status".into())
                .spawn(move || watch(&connection, &store, &stop))
                .map_err(DbusError::Thread)?
        };
        tracing::info!(%bus, "serving {BUS_NAME}");
        Ok(Self {
            connection,
            stop,
            watcher: Some(watcher),
        })
    }

    /// The bus connection (its unique name, for tests).
    pub fn connection(&self) -> &zbus::blocking::Connection {
        &self.connection
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}

/// Sends `StatusUpdate` whenever the status in `store` differs from the last one seen.
fn watch(connection: &zbus::blocking::Connection, store: &StateStore, stop: &AtomicBool) {
    let mut last = store.load().ok().map(|s| Status::of(&s));
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(WATCH_INTERVAL);
        let status = match store.load() {
            Ok(state) => Status::of(&state),
            Err(e) => {
                tracing::debug!("reading the status to signal: {e}");
                continue;
            }
        };
        if last.as_ref() == Some(&status) {
            continue;
        }
        let sent = connection.emit_signal(
            None::<&str>,
            OBJECT_PATH,
            INTERFACE,
            STATUS_UPDATE,
            &(
                status.last_checked_time,
                status.progress,
                status.current_operation.as_str(),
                status.new_version.as_str(),
                status.new_size,
            ),
        );
        if let Err(e) = sent {
            tracing::warn!("sending {STATUS_UPDATE}: {e}");
        }
        last = Some(status);
    }
}

#[cfg(test)]
mod tests;
