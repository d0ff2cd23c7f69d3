//! Where a first boot finds its Ignition config, and what else the platform tells the machine.
//!
//! Contract:
//! - [`Platform::select`] picks the platform from the kernel command line
//!   (`ignition.platform.id=`, else `wellcar.oem.id=` / `flatcar.oem.id=` / `coreos.oem.id=`,
//!   the last occurrence of a name winning) or, when the command line names none, from the OEM
//!   partition's `grub.cfg` (`set oem_id="…"`); `metal` when nothing names one. An unknown id is
//!   [`PlatformError::UnknownPlatform`], whose message lists the known ids.
//! - [`Platform::config_sources`] is the ordered list of places a config may come from
//!   ([`ConfigSource`]); the first that has a config wins. [`ConfigSource::needs_network`] and
//!   [`neednet::config_needs_network`] are Ignition's `fetch-offline` → `neednet` decision.
//! - [`metadata::MetadataClient`] reads cloud metadata services (AWS IMDSv2, GCP, DigitalOcean,
//!   OpenStack) at a base URL (`http://169.254.169.254` unless overridden, for tests).
//!   A 404 on user data is "no config" (`Ok(None)`), as in Ignition; any other non-2xx status is
//!   [`PlatformError::Status`] naming the URL and status.
//! - [`configdrive`] reads an OpenStack config drive (label `config-2`) already mounted.
//! - [`attributes::Attributes`] (hostname, ssh keys from the metadata) become an Ignition config
//!   ([`attributes::Attributes::to_config`]) that the user's config is merged over, so they are
//!   applied like afterburn's `--hostname` / `--ssh-keys=core`, through the same apply code.
//!
//! Nothing here prints; errors name the URL, file or value that failed.

pub mod attributes;
pub mod configdrive;
pub mod id;
pub mod metadata;
pub mod neednet;

pub use attributes::Attributes;
pub use id::{ConfigSource, Platform};
pub use metadata::MetadataClient;

/// Why the platform layer could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The platform id is not one Wellcar knows.
    #[error("unknown platform id {id:?} (from {from}); known platforms: {known}")]
    UnknownPlatform {
        /// The id as given.
        id: String,
        /// Where it was given (`ignition.platform.id=`, the OEM grub.cfg, …).
        from: String,
        /// The known ids, comma separated.
        known: String,
    },
    /// An HTTP request could not be made or its answer not read (connection refused, timeout,
    /// DNS failure, truncated body).
    #[error("{method} {url}: {source}")]
    Http {
        /// `GET` or `PUT`.
        method: &'static str,
        /// The URL.
        url: String,
        /// Cause.
        #[source]
        source: ureq::Error,
    },
    /// The service answered with a status that is neither success nor "no data".
    #[error("{method} {url}: HTTP status {status}")]
    Status {
        /// `GET` or `PUT`.
        method: &'static str,
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// An answer larger than the platform's documented bound.
    #[error("{url}: answer larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The bound.
        limit: u64,
    },
    /// A metadata document is not what the platform documents.
    #[error("{what}: {reason}")]
    BadMetadata {
        /// The URL or file.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// Reading a file of a config drive failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}
