//! What can go wrong talking to the semaphore. Each variant names the key, URL, file or holder
//! concerned.

use std::path::PathBuf;

use crate::SemaphoreError;

/// One endpoint that could not be reached, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointFailure {
    /// The request URL.
    pub url: String,
    /// The transport error (connection refused, TLS, timeout …).
    pub reason: String,
}

/// An error of the etcd lock.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An endpoint is not an `http://` or `https://` URL with a host.
    #[error("etcd endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration is incomplete or contradictory.
    #[error("etcd configuration: {0}")]
    InvalidConfig(String),
    /// A group name locksmith's key scheme cannot hold.
    #[error("lock group {group:?}: {reason}")]
    InvalidGroup {
        /// The group.
        group: String,
        /// Why.
        reason: String,
    },
    /// The TLS files (CA, client certificate or key) could not be used.
    #[error("etcd TLS setup")]
    Tls(#[from] wellcar_http::SetupError),
    /// No endpoint could be reached.
    #[error("no etcd endpoint reachable: {}", failures(.attempts))]
    Unreachable {
        /// Every endpoint tried, in order, with its error.
        attempts: Vec<EndpointFailure>,
    },
    /// etcd answered with an error other than the ones below.
    #[error("etcd error {code} at {url}: {message} ({cause})")]
    Etcd {
        /// The request URL.
        url: String,
        /// etcd's `errorCode`.
        code: u32,
        /// etcd's `message`.
        message: String,
        /// etcd's `cause` (usually the key).
        cause: String,
    },
    /// The key does not exist (etcd error 100), e.g. it was deleted after init.
    #[error("the semaphore key is missing at {url} (etcd error 100, key not found)")]
    KeyNotFound {
        /// The request URL.
        url: String,
    },
    /// Something other than an etcd v2 keys answer (a v3-only etcd answers 404 with a plain
    /// body: start it with `--enable-v2=true`).
    #[error("unexpected answer from {url}: HTTP {status}: {body:?} (is etcd's v2 API enabled, --enable-v2=true?)")]
    UnexpectedResponse {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The value at the key is not the semaphore's JSON.
    #[error("the value at {key} is not a locksmith semaphore: {value:?}")]
    BadSemaphoreJson {
        /// The key.
        key: String,
        /// The value found.
        value: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The semaphore refused the change (full, already held, not held).
    #[error("{key}: {source}")]
    Semaphore {
        /// The key.
        key: String,
        /// What was refused.
        #[source]
        source: SemaphoreError,
    },
    /// Every compare-and-swap lost a race with another writer.
    #[error(
        "{key}: gave up after {attempts} compare-and-swap attempts lost to concurrent writers"
    )]
    CasConflictsExhausted {
        /// The key.
        key: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The machine-id (the default holder id) could not be read.
    #[error("Cannot read machine-id {path}: {reason}")]
    MachineId {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn failures(attempts: &[EndpointFailure]) -> String {
    attempts
        .iter()
        .map(|a| format!("{}: {}", a.url, a.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// The semaphore's refusal, if that is what this is.
    pub fn semaphore_error(&self) -> Option<&SemaphoreError> {
        match self {
            Error::Semaphore { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether this is "holder exists" (locksmith's `ErrExist`), which `locksmithd` treats as
    /// having the lock.
    pub fn is_already_held(&self) -> bool {
        matches!(
            self.semaphore_error(),
            Some(SemaphoreError::AlreadyHeld { .. })
        )
    }

    /// Whether this is "holder does not exist" (locksmith's `ErrNotExist`).
    pub fn is_not_held(&self) -> bool {
        matches!(self.semaphore_error(), Some(SemaphoreError::NotHeld { .. }))
    }

    /// Whether this is "semaphore is at N" (no free slot).
    pub fn is_full(&self) -> bool {
        matches!(self.semaphore_error(), Some(SemaphoreError::Full { .. }))
    }
}
