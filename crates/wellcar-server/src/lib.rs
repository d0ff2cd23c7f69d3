//! The Wellcar update server: Omaha in Nebraska's dialect, channels, groups with rollout policies
//! that really halt, an admin JSON API with bearer tokens, Prometheus metrics, data retention.
//!
//! Storage is embedded SQLite (default) or PostgreSQL, behind one SQL layer ([`db`]) and one
//! schema ([`store`]). The update-check path answers from an in-memory configuration snapshot and
//! queues instance sightings for a batched write, so a check that changes nothing writes nothing
//! synchronously (see [`server`]). Events are written before they are acknowledged.

pub mod admin;
pub mod admin_tokens;
pub mod admission;
pub mod api_docs;
pub mod auth;
pub mod cli;
pub mod client;
pub mod db;
pub mod deltas;
pub mod event_trust;
pub mod fd_limit;
pub mod fleetlock;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod omaha;
pub mod openapi;
pub mod payload_files;
pub mod peer;
pub mod pinning;
pub mod policy;
pub mod rate_limit;
pub mod response_signing;
pub mod server;
pub mod store;
pub mod tls;
pub mod ui;

#[cfg(test)]
mod admin_security_tests;
#[cfg(test)]
mod event_trust_tests;
#[cfg(test)]
mod http_tests;
#[cfg(test)]
mod omaha_limits_tests;
#[cfg(test)]
mod openapi_tests;
#[cfg(test)]
mod pinning_tests;
#[cfg(test)]
mod test_server;
#[cfg(test)]
mod transport_tests;

pub use server::{serve, spawn, RunningServer, Settings};

/// A storage-level failure, with the object or value that caused it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Database failure.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// The named object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The object already exists.
    #[error("{0}")]
    Conflict(String),
    /// A value was rejected.
    #[error("{0}")]
    Invalid(String),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
