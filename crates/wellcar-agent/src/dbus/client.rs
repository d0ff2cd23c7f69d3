//! The caller's side of [`super::INTERFACE`] (used by `update_engine_client`): plain method
//! calls and a signal subscription, no introspection and no properties, so the calls pass the
//! bus policy that lets `core` use only `GetStatus`, `AttemptUpdate` and `ResetStatus`.

use zbus::blocking::{Connection, Proxy};

use super::{Status, BUS_NAME, INTERFACE, OBJECT_PATH, STATUS_UPDATE};

/// Failure talking to the update service.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The bus could not be reached.
    #[error("connecting to {bus}: {source}")]
    Connect {
        /// The bus address, or `the system bus`.
        bus: String,
        /// The D-Bus error.
        #[source]
        source: Box<zbus::Error>,
    },
    /// A call failed (no service, denied, or the service refused).
    #[error("{BUS_NAME} {method}: {source}")]
    Call {
        /// The method or signal.
        method: &'static str,
        /// The D-Bus error.
        #[source]
        source: Box<zbus::Error>,
    },
}

/// A connection to the update service.
pub struct UpdateClient {
    proxy: Proxy<'static>,
}

impl UpdateClient {
    /// Connects to `address`, or to the system bus (honouring `DBUS_SYSTEM_BUS_ADDRESS`).
    pub fn connect(address: Option<&str>) -> Result<Self, ClientError> {
        let connect = |source| ClientError::Connect {
            bus: address.unwrap_or("the system bus").to_owned(),
            source: Box::new(source),
        };
        let connection = match address {
            Some(a) => zbus::blocking::connection::Builder::address(a)
                .and_then(|b| b.build())
                .map_err(connect)?,
            None => Connection::system().map_err(connect)?,
        };
        let proxy = zbus::blocking::proxy::Builder::new(&connection)
            .destination(BUS_NAME)
            .and_then(|b| b.path(OBJECT_PATH))
            .and_then(|b| b.interface(INTERFACE))
            .map(|b| b.cache_properties(zbus::proxy::CacheProperties::No))
            .and_then(|b| b.build())
            .map_err(|source| ClientError::Call {
                method: "proxy",
                source: Box::new(source),
            })?;
        Ok(Self { proxy })
    }

    /// `GetStatus`.
    pub fn status(&self) -> Result<Status, ClientError> {
        let (last_checked_time, progress, current_operation, new_version, new_size): (
            i64,
            f64,
            String,
            String,
            i64,
        ) = self
            .proxy
            .call("GetStatus", &())
            .map_err(|source| ClientError::Call {
                method: "GetStatus",
                source: Box::new(source),
            })?;
        Ok(Status {
            last_checked_time,
            progress,
            current_operation,
            new_version,
            new_size,
        })
    }

    /// `AttemptUpdate`.
    pub fn attempt_update(&self) -> Result<(), ClientError> {
        self.proxy
            .call::<_, _, ()>("AttemptUpdate", &())
            .map_err(|source| ClientError::Call {
                method: "AttemptUpdate",
                source: Box::new(source),
            })
    }

    /// `ResetStatus`.
    pub fn reset_status(&self) -> Result<(), ClientError> {
        self.proxy
            .call::<_, _, ()>("ResetStatus", &())
            .map_err(|source| ClientError::Call {
                method: "ResetStatus",
                source: Box::new(source),
            })
    }

    /// Calls `on_status` with every `StatusUpdate` until it returns `false` (or the bus goes
    /// away).
    pub fn watch(&self, on_status: &mut dyn FnMut(Status) -> bool) -> Result<(), ClientError> {
        let signals =
            self.proxy
                .receive_signal(STATUS_UPDATE)
                .map_err(|source| ClientError::Call {
                    method: STATUS_UPDATE,
                    source: Box::new(source),
                })?;
        for message in signals {
            let body = message.body();
            let (last_checked_time, progress, current_operation, new_version, new_size) = body
                .deserialize::<(i64, f64, String, String, i64)>()
                .map_err(|source| ClientError::Call {
                    method: STATUS_UPDATE,
                    source: Box::new(source),
                })?;
            let status = Status {
                last_checked_time,
                progress,
                current_operation,
                new_version,
                new_size,
            };
            if !on_status(status) {
                break;
            }
        }
        Ok(())
    }
}
