//! Fetching Ignition resources, as Ignition's `internal/resource` does, streaming.
//!
//! # Contract
//! A [`Fetcher`] is built from [`FetchOptions`]: extra CA certificates (PEM, from
//! `ignition.security.tls.certificateAuthorities`), a proxy ([`ProxySettings`]: `httpProxy`,
//! `httpsProxy`, `noProxy`), [`Timeouts`] (`httpResponseHeaders`, `httpTotal`), a
//! [`RetryPolicy`] and a redirect limit. [`Fetcher::with_config`] derives the fetcher a config
//! asks for (its `ignition` section over these options; its CAs are fetched, verified and
//! parsed first). Then:
//! - [`Fetcher::fetch_to`] streams one [`Resource`] into a writer: the source bytes go through
//!   the gzip decoder when `compression` is `gzip`, are counted against a byte `limit` (the
//!   *decompressed* size: a gzip bomb stops at the limit with [`FetchError::TooLarge`]), hashed
//!   when `verification.hash` is set (sha256/sha512 of the decompressed bytes) and written. The
//!   hash is compared at the end: the caller must discard what was written on any error (the
//!   applier streams into a staging file and renames it only after success).
//! - [`Fetcher::fetch_bytes`] is the same into memory, for small things (configs:
//!   [`MAX_CONFIG_BYTES`], CAs: [`MAX_CA_BYTES`]).
//! - [`Fetcher::get_to`] / [`Fetcher::request_bytes`] fetch a plain URL with headers (and
//!   `PUT` for AWS IMDSv2 tokens), for platform metadata services.
//!
//! Every error names the URL (data: URLs shortened) and the reason.
//!
//! # Schemes
//! - `data:` (RFC 2397; the bytes are in the config already).
//! - `http`, `https`: the workspace's `wellcar-http` (ureq over rustls, ring), trusting the
//!   system store plus the configured CAs. `httpHeaders` are sent (they replace a header of the
//!   same name, `User-Agent` included). Redirects are followed up to
//!   [`FetchOptions::max_redirects`] (10, as Go's client); more is [`FetchError::Redirects`].
//!   The proxy is chosen per URL as Go's `httpproxy` does (scheme, then `noProxy`: exact hosts,
//!   `.suffix`/`suffix` domain matches, IP addresses, CIDR ranges, `*`); ureq tunnels through
//!   the proxy with `CONNECT` for both schemes (Go sends plain-http requests in absolute form).
//! - `tftp`: a small RFC 1350 client ([`tftp`] module; octet mode, 512-byte blocks) because no
//!   maintained blocking TFTP *client* crate exists on crates.io (the crates there are servers
//!   or async).
//! - `s3`, `arn`, `gs`: recognised and refused with [`FetchError::CloudStorage`]: they need
//!   platform credentials (AWS instance role signing, GCP service-account tokens) that no
//!   Wellcar platform provides yet.
//!
//! # Retries (Ignition's `getReaderWithHeader`)
//! An http(s) request is retried while it fails before a response head arrives or gets a 5xx,
//! waiting 200 ms, 400 ms, … doubling up to 5 s between attempts. `httpResponseHeaders`
//! (default 10 s; 0 = none) bounds each attempt's wait for the head; `httpTotal` (default 0 =
//! none) bounds the whole fetch, retries and body included. Ignition retries forever when
//! `httpTotal` is 0; Wellcar gives up after [`RetryPolicy::give_up_after`] (5 min) so a first
//! boot ends in a reported failure. Not retried: 4xx (404 is [`FetchError::NotFound`]), TLS
//! certificate errors, redirect loops, bad URLs, errors after the body started (the writer
//! cannot be rewound).

mod data;
mod http;
mod stream;
pub mod tftp;

#[cfg(test)]
pub(crate) mod tests;

use std::io::Write;
use std::time::Duration;

pub use data::decode_data_url;
use stream::{feed, ExpectedHash, Sink};

use crate::model::{Ignition, Resource};

/// Size cap for a referenced config (`ignition.config.merge` / `replace`).
pub const MAX_CONFIG_BYTES: u64 = 32 << 20;
/// Size cap for a CA bundle from `ignition.security.tls.certificateAuthorities`.
pub const MAX_CA_BYTES: u64 = 1 << 20;

/// Why a resource could not be fetched. Every variant names the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A network scheme while the fetcher is offline ([`FetchOptions::offline`]).
    #[error("cannot fetch {url}: remote fetches are not available at this stage (no network)")]
    RemoteUnavailable {
        /// The URL (shortened when long).
        url: String,
    },
    /// `s3`, `arn` or `gs`: cloud storage needs platform credentials.
    #[error("cannot fetch {url}: {scheme} sources need platform credentials, which no Wellcar platform provides yet; use https")]
    CloudStorage {
        /// The URL.
        url: String,
        /// The scheme.
        scheme: String,
    },
    /// A scheme Ignition does not know.
    #[error("cannot fetch {url}: unsupported source scheme")]
    UnsupportedScheme {
        /// The URL (shortened when long).
        url: String,
    },
    /// A URL that cannot be parsed or requested.
    #[error("cannot fetch {url}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// A malformed `data:` URL.
    #[error("invalid data url {url}: {reason}")]
    DataUrl {
        /// The URL (shortened).
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// Compression other than gzip, or corrupt gzip data.
    #[error("cannot decompress {url} ({compression})")]
    Decompress {
        /// The URL (shortened).
        url: String,
        /// The configured compression.
        compression: String,
        /// The decoder error.
        #[source]
        source: std::io::Error,
    },
    /// The configured hash is malformed or names an unknown function.
    #[error("bad verification hash {hash:?} for {url}")]
    BadHash {
        /// The URL (shortened).
        url: String,
        /// The configured hash.
        hash: String,
    },
    /// The decompressed bytes do not match the configured hash.
    #[error("hash mismatch for {url}: calculated {algorithm}-{calculated}, expected {algorithm}-{expected}")]
    HashMismatch {
        /// The URL (shortened).
        url: String,
        /// `sha256` or `sha512`.
        algorithm: String,
        /// Hex digest from the config.
        expected: String,
        /// Hex digest of the data.
        calculated: String,
    },
    /// The (decompressed) data is larger than the limit.
    #[error("fetching {url}: the data is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// HTTP 404 (not retried, as Ignition).
    #[error("fetching {url}: HTTP 404 Not Found")]
    NotFound {
        /// The URL.
        url: String,
    },
    /// Another non-success status that is not retried (4xx, 1xx/3xx left over).
    #[error("fetching {url}: HTTP {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// More redirects than [`FetchOptions::max_redirects`].
    #[error("fetching {url}: more than {limit} redirects")]
    Redirects {
        /// The URL.
        url: String,
        /// The limit.
        limit: u32,
    },
    /// A failure that retrying cannot fix (TLS certificate, bad proxy, ...).
    #[error("fetching {url}: {reason}")]
    Request {
        /// The URL.
        url: String,
        /// The client's error.
        reason: String,
    },
    /// Retries ran out of time (`httpTotal`, or [`RetryPolicy::give_up_after`]).
    #[error(
        "fetching {url}: gave up after {attempts} attempts in {seconds} s; last error: {last}"
    )]
    GaveUp {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The time bound, in seconds.
        seconds: u64,
        /// The last attempt's error (`timeout: ...`, `host not found`, `HTTP 503`).
        last: String,
    },
    /// The body broke off (truncated, reset, timed out) after `after` bytes.
    #[error("fetching {url}: the body broke off after {after} bytes")]
    Body {
        /// The URL.
        url: String,
        /// Decompressed bytes received before the failure.
        after: u64,
        /// The transport error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the destination failed (disk full, I/O error).
    #[error("fetching {url}: writing the data failed")]
    Write {
        /// The URL.
        url: String,
        /// The write error.
        #[source]
        source: std::io::Error,
    },
    /// A TFTP transfer failed.
    #[error("fetching {url}: TFTP: {reason}")]
    Tftp {
        /// The URL.
        url: String,
        /// The server's error packet, or the timeout.
        reason: String,
    },
    /// A configured CA certificate is not a PEM certificate.
    #[error("CA certificate from {url}: {reason}")]
    CaCertificate {
        /// The CA's source URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// A setting of a config's `ignition` section that could not be turned into a fetcher.
#[derive(Debug, thiserror::Error)]
#[error("{field}: cannot use {url}")]
pub struct SettingsError {
    /// JSON path, e.g. `ignition.security.tls.certificateAuthorities.0`.
    pub field: String,
    /// The source URL of the setting ("" for non-resources).
    pub url: String,
    /// What went wrong.
    pub source: Box<FetchError>,
}

/// `ignition.proxy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// Proxy URL for `http` resources.
    pub http_proxy: Option<String>,
    /// Proxy URL for `https` resources.
    pub https_proxy: Option<String>,
    /// Hosts, domains (`.example.com`, `example.com`), IPs and CIDRs that bypass the proxy.
    pub no_proxy: Vec<String>,
}

/// `ignition.timeouts` plus the connect bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Wait for a response head per attempt (`httpResponseHeaders`, default 10 s); `None`
    /// waits without bound.
    pub response_headers: Option<Duration>,
    /// The whole fetch, retries and body included (`httpTotal`, default none).
    pub total: Option<Duration>,
    /// TCP + TLS connect per attempt (Ignition's dialer: 30 s).
    pub connect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            response_headers: Some(Duration::from_secs(10)),
            total: None,
            connect: Duration::from_secs(30),
        }
    }
}

/// Retry backoff (Ignition: 100 ms doubled before each wait, at most 5 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Doubled before the first wait.
    pub initial_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// When [`Timeouts::total`] is unset, stop retrying after this long (`None`: retry forever,
    /// as Ignition).
    pub give_up_after: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            give_up_after: Some(Duration::from_secs(300)),
        }
    }
}

/// How a [`Fetcher`] fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// Extra trusted CA certificates (each PEM), on top of the system store.
    pub ca_pems: Vec<Vec<u8>>,
    /// Proxy settings.
    pub proxy: ProxySettings,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Retries.
    pub retry: RetryPolicy,
    /// Redirects followed before [`FetchError::Redirects`].
    pub max_redirects: u32,
    /// Refuse network schemes with [`FetchError::RemoteUnavailable`] (no network yet).
    pub offline: bool,
    /// The `User-Agent` header (an `httpHeaders` entry overrides it).
    pub user_agent: String,
    /// Cap on one file's contents plus its `append` fragments, decompressed (the applier also
    /// bounds it by the target filesystem's free space).
    pub max_file_bytes: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            ca_pems: Vec::new(),
            proxy: ProxySettings::default(),
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            max_redirects: 10,
            offline: false,
            user_agent: format!("Wellcar-Ignition/{}", env!("CARGO_PKG_VERSION")),
            max_file_bytes: 4 << 30,
        }
    }
}

/// Fetches resources; see the module docs. The default fetches online with default options.
#[derive(Debug, Clone, Default)]
pub struct Fetcher {
    options: FetchOptions,
    roots: Vec<wellcar_http::ureq::tls::Certificate<'static>>,
}

impl Fetcher {
    /// A fetcher with `options`; fails when a CA PEM holds no certificate.
    pub fn new(options: FetchOptions) -> Result<Self, FetchError> {
        let mut roots = Vec::new();
        for (i, pem) in options.ca_pems.iter().enumerate() {
            roots.extend(wellcar_http::parse_pem_certificates(pem).map_err(|reason| {
                FetchError::CaCertificate {
                    url: format!("FetchOptions::ca_pems[{i}]"),
                    reason,
                }
            })?);
        }
        Ok(Self { options, roots })
    }

    /// A fetcher for stages without a network: default options with
    /// [`FetchOptions::offline`] set (data: URLs only).
    pub fn offline() -> Self {
        Self {
            options: FetchOptions {
                offline: true,
                ..FetchOptions::default()
            },
            roots: Vec::new(),
        }
    }

    /// The options this fetcher was built from.
    pub fn options(&self) -> &FetchOptions {
        &self.options
    }

    /// The fetcher a config's `ignition` section asks for: its proxy and timeouts replace
    /// these options' (unset timeouts take Ignition's defaults), and its
    /// `certificateAuthorities` are fetched with `self` (each verified and capped at
    /// [`MAX_CA_BYTES`]) and trusted in addition.
    pub fn with_config(&self, ignition: &Ignition) -> Result<Fetcher, SettingsError> {
        let mut options = self.options.clone();
        options.proxy = ProxySettings {
            http_proxy: ignition.proxy.http_proxy.clone().filter(|p| !p.is_empty()),
            https_proxy: ignition.proxy.https_proxy.clone().filter(|p| !p.is_empty()),
            no_proxy: ignition.proxy.no_proxy.clone(),
        };
        let seconds = |s: i64| Duration::from_secs(s.max(0).unsigned_abs());
        options.timeouts.response_headers = match ignition.timeouts.http_response_headers {
            None => Some(Duration::from_secs(10)),
            Some(0) => None,
            Some(s) => Some(seconds(s)),
        };
        options.timeouts.total = match ignition.timeouts.http_total {
            None | Some(0) => None,
            Some(s) => Some(seconds(s)),
        };
        for (i, ca) in ignition
            .security
            .tls
            .certificate_authorities
            .iter()
            .enumerate()
        {
            let field = format!("ignition.security.tls.certificateAuthorities.{i}");
            let url = short_url(ca.source.as_deref().unwrap_or(""));
            let settings_error = |source| SettingsError {
                field: field.clone(),
                url: url.clone(),
                source: Box::new(source),
            };
            let pem = self
                .fetch_bytes(ca, MAX_CA_BYTES)
                .map_err(settings_error)?
                .unwrap_or_default();
            let certs = wellcar_http::parse_pem_certificates(&pem).map_err(|reason| {
                settings_error(FetchError::CaCertificate {
                    url: url.clone(),
                    reason,
                })
            })?;
            tracing::info!("trusting {} CA certificate(s) from {url}", certs.len());
            options.ca_pems.push(pem);
        }
        Fetcher::new(options).map_err(|source| SettingsError {
            field: "ignition.security.tls.certificateAuthorities".into(),
            url: String::new(),
            source: Box::new(source),
        })
    }

    /// Streams `resource` (decompressed, verified, at most `limit` bytes) into `out`; returns
    /// the bytes written (0 for a resource without `source`). On error, what was written must
    /// be discarded.
    pub fn fetch_to(
        &self,
        resource: &Resource,
        out: &mut dyn Write,
        limit: u64,
    ) -> Result<u64, FetchError> {
        let Some(url) = resource.source.as_deref() else {
            return Ok(0);
        };
        let expected = resource
            .verification
            .hash
            .as_deref()
            .map(|h| ExpectedHash::parse(url, h))
            .transpose()?;
        let gzip = match resource.compression.as_deref() {
            None | Some("") => false,
            Some("gzip") => true,
            Some(other) => {
                return Err(FetchError::Decompress {
                    url: short_url(url),
                    compression: other.to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "unknown compression",
                    ),
                })
            }
        };
        let headers: Vec<(String, String)> = resource
            .http_headers
            .iter()
            .filter_map(|h| Some((h.name.clone(), h.value.clone()?)))
            .collect();
        let mut sink = Sink::new(out, limit, expected);
        if !url.is_empty() {
            self.stream(url, &headers, gzip, &mut sink)?;
        }
        sink.finish(url)
    }

    /// [`Fetcher::fetch_to`] into memory: `Ok(None)` when the resource has no source.
    pub fn fetch_bytes(
        &self,
        resource: &Resource,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, FetchError> {
        if resource.source.is_none() {
            return Ok(None);
        }
        let mut out = Vec::new();
        self.fetch_to(resource, &mut out, limit)?;
        Ok(Some(out))
    }

    /// GETs a plain URL of any supported scheme with `headers` into `out` (at most `limit`
    /// bytes, no hash, no decompression): for platform metadata services.
    pub fn get_to(
        &self,
        url: &str,
        headers: &[(String, String)],
        out: &mut dyn Write,
        limit: u64,
    ) -> Result<u64, FetchError> {
        let mut sink = Sink::new(out, limit, None);
        self.stream(url, headers, false, &mut sink)?;
        sink.finish(url)
    }

    /// An http(s) request with `method` (`GET`, `PUT`, ...), `headers` and an empty body, its
    /// response body in memory (at most `limit` bytes). Retried as a GET is. For AWS IMDSv2's
    /// `PUT /latest/api/token`.
    pub fn request_bytes(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        limit: u64,
    ) -> Result<Vec<u8>, FetchError> {
        let mut out = Vec::new();
        let mut sink = Sink::new(&mut out, limit, None);
        http::fetch(self, method, url, headers, &mut |body| {
            feed(url, body, false, &mut sink)
        })?;
        sink.finish(url)?;
        Ok(out)
    }

    fn stream(
        &self,
        url: &str,
        headers: &[(String, String)],
        gzip: bool,
        sink: &mut Sink<'_>,
    ) -> Result<(), FetchError> {
        let scheme = crate::validate::url_scheme(url).map(str::to_ascii_lowercase);
        let remote = |_: ()| {
            if self.options.offline {
                Err(FetchError::RemoteUnavailable {
                    url: short_url(url),
                })
            } else {
                Ok(())
            }
        };
        match scheme.as_deref() {
            Some("data") => {
                let raw = decode_data_url(url)?;
                feed(url, raw.as_slice(), gzip, sink)
            }
            Some("http" | "https") => {
                remote(())?;
                http::fetch(self, "GET", url, headers, &mut |body| {
                    feed(url, body, gzip, sink)
                })
            }
            Some("tftp") => {
                remote(())?;
                let reader = tftp::TftpReader::open(url, &self.options.timeouts)?;
                feed(url, reader, gzip, sink)
            }
            Some(scheme @ ("s3" | "arn" | "gs")) => {
                remote(())?;
                Err(FetchError::CloudStorage {
                    url: short_url(url),
                    scheme: scheme.to_string(),
                })
            }
            _ => Err(FetchError::UnsupportedScheme {
                url: short_url(url),
            }),
        }
    }
}

/// Whether fetching `url` needs the network (Ignition's `neednet`): http(s), tftp, s3, gs.
pub fn is_remote(url: &str) -> bool {
    matches!(
        crate::validate::url_scheme(url)
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("http" | "https" | "tftp" | "s3" | "arn" | "gs")
    )
}

/// Shortens long (data:) URLs for messages.
pub(crate) fn short_url(url: &str) -> String {
    const MAX: usize = 80;
    if url.len() <= MAX {
        return url.to_string();
    }
    let mut end = MAX;
    while !url.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &url[..end], url.len())
}

/// Fetches a resource's bytes with a default, offline fetcher (data: URLs only), capped at
/// [`MAX_CONFIG_BYTES`]: `Ok(None)` when it has no source.
pub fn fetch(resource: &Resource) -> Result<Option<Vec<u8>>, FetchError> {
    Fetcher::offline().fetch_bytes(resource, MAX_CONFIG_BYTES)
}
