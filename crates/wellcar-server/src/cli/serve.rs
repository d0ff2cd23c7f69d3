//! `wellcar server serve`: run the update server in the foreground.
//!
//! Contract:
//! - Every flag maps onto one field of [`crate::Settings`]; the flush interval is at least
//!   10 ms and the sweep interval at least 1 s. Retention flags are in days.
//! - The fleet token comes from `--fleet-token-file PATH` (the file's text, trimmed) or the
//!   environment variable `WELLCAR_FLEET_TOKEN`; both at once, or an empty token, is an error.
//! - Rate limits: `--omaha-ip-burst`/`--omaha-ip-per-minute`, `--omaha-instance-burst`/
//!   `--omaha-instance-per-minute`, `--admin-burst`/`--admin-per-minute`, `--rate-limit-keys`
//!   (defaults in [`RateLimits::default`]; a burst of 0 switches that limit off).
//! - `--tls-cert`/`--tls-key` come together (HTTPS, reloaded on SIGHUP: see [`crate::tls`]).
//! - `--trusted-proxy` is repeatable; see [`crate::peer`]. Connection flags: see
//!   [`crate::listener`]; `--max-connections` above the open-file budget is refused.
//! - Once the server accepts connections, its URL is reported ([`Note::Listening`]: "wellcar
//!   server listening on http(s)://…" on stderr).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::admission::FleetToken;
use crate::rate_limit::{Limit, RateLimits};

use super::{Note, DEFAULT_DATABASE};

/// `wellcar server serve`.
#[derive(Debug, clap::Args)]
pub struct ServeOpts {
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long)]
    pub listen: SocketAddr,
    /// `sqlite:PATH` or `postgres://user@host/db`.
    #[arg(long, default_value = DEFAULT_DATABASE)]
    pub database: String,
    /// Directory for hosted payloads (served at /packages/).
    #[arg(long, default_value = "wellcar-payloads")]
    pub payload_dir: PathBuf,
    /// Base URL clients reach this server at (default: the listener's own address; never the
    /// request's Host header).
    #[arg(long)]
    pub public_url: Option<String>,
    /// PEM certificate chain to serve HTTPS with (leaf first); needs --tls-key. Reloaded on SIGHUP.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching --tls-cert. Reloaded on SIGHUP.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A proxy network (CIDR or address) whose X-Forwarded-For is believed; repeatable. From
    /// any other peer the TCP address is the client's.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxies: Vec<crate::peer::TrustedProxy>,
    /// Most simultaneous client connections (default: what the open-file limit, raised to its
    /// hard limit at start, leaves room for; at most 16384).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Time a client has to send a complete request head once it started (milliseconds).
    #[arg(long, default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// Time a connection may stay open with no request in progress (milliseconds).
    #[arg(long, default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// Time a request body may send nothing while the server waits for it (milliseconds).
    #[arg(long, default_value_t = 30_000)]
    pub body_timeout_ms: u64,
    /// PollInterval (seconds) sent with every update check.
    #[arg(long, default_value_t = 2700)]
    pub poll_interval: u32,
    /// Persist an unchanged instance's last check at most this often (seconds).
    #[arg(long, default_value_t = 900)]
    pub last_seen_resolution: u64,
    /// Write queued instance sightings this often (milliseconds).
    #[arg(long, default_value_t = 1000)]
    pub flush_interval_ms: u64,
    /// Delete events older than this many days.
    #[arg(long, default_value_t = 90)]
    pub event_retention_days: u64,
    /// Delete instances not seen for this many days.
    #[arg(long, default_value_t = 30)]
    pub instance_retention_days: u64,
    /// Delete activity older than this many days.
    #[arg(long, default_value_t = 365)]
    pub activity_retention_days: u64,
    /// Look for timed-out updates this often (seconds).
    #[arg(long, default_value_t = 10)]
    pub sweep_interval: u64,
    /// File holding the fleet token: Omaha requests without it (header X-Wellcar-Fleet-Token)
    /// get HTTP 401. Alternatively set WELLCAR_FLEET_TOKEN to the token itself.
    #[arg(long)]
    pub fleet_token_file: Option<PathBuf>,
    /// Omaha requests allowed at once per client IP (IPv6: per /64); 0 = unlimited.
    #[arg(long, default_value_t = RateLimits::default().omaha_per_ip.burst)]
    pub omaha_ip_burst: u32,
    /// Omaha requests per minute per client IP, sustained.
    #[arg(long, default_value_t = RateLimits::default().omaha_per_ip.per_minute)]
    pub omaha_ip_per_minute: u32,
    /// Omaha requests allowed at once per machine id; 0 = unlimited.
    #[arg(long, default_value_t = RateLimits::default().omaha_per_instance.burst)]
    pub omaha_instance_burst: u32,
    /// Omaha requests per minute per machine id, sustained.
    #[arg(long, default_value_t = RateLimits::default().omaha_per_instance.per_minute)]
    pub omaha_instance_per_minute: u32,
    /// Admin API requests allowed at once per client IP; 0 = unlimited.
    #[arg(long, default_value_t = RateLimits::default().admin_per_ip.burst)]
    pub admin_burst: u32,
    /// Admin API requests per minute per client IP, sustained.
    #[arg(long, default_value_t = RateLimits::default().admin_per_ip.per_minute)]
    pub admin_per_minute: u32,
    /// Keys (IPs, machine ids) each rate limiter tracks at most; the least recently seen are
    /// forgotten first.
    #[arg(long, default_value_t = RateLimits::default().max_keys)]
    pub rate_limit_keys: usize,
    /// Sign every Omaha answer with this PEM ed25519 private key (`wellcar key generate`);
    /// agents whose update.conf names its public key in SERVER_PUBLIC_KEY require it.
    #[arg(long)]
    pub response_key: Option<PathBuf>,
    /// Serve /metrics only on this separate address, without a token (default: on --listen,
    /// with a read-scoped token).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// FleetLock reboot coordination.
    #[command(flatten)]
    pub fleetlock: crate::fleetlock::FleetLockArgs,
}

/// The environment variable that may hold the fleet token instead of `--fleet-token-file`.
pub const FLEET_TOKEN_ENV: &str = "WELLCAR_FLEET_TOKEN";

/// The fleet token from `--fleet-token-file` or `env_token` (the value of
/// [`FLEET_TOKEN_ENV`]); both at once, an unreadable file or an empty token is an error naming
/// the source.
pub fn fleet_token(
    file: Option<&Path>,
    env_token: Option<&str>,
) -> anyhow::Result<Option<FleetToken>> {
    let (text, source) = match (file, env_token) {
        (Some(_), Some(_)) => {
            bail!("give the fleet token by --fleet-token-file or {FLEET_TOKEN_ENV}, not both")
        }
        (Some(path), None) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the fleet token file {}", path.display()))?,
            format!("fleet token file {}", path.display()),
        ),
        (None, Some(token)) => (token.to_owned(), FLEET_TOKEN_ENV.to_owned()),
        (None, None) => return Ok(None),
    };
    FleetToken::new(&text)
        .map(Some)
        .ok_or_else(|| anyhow::anyhow!("{source} is empty"))
}

/// Runs `wellcar server serve` until the server stops; reports [`Note::Listening`] once it
/// accepts connections.
pub(super) async fn serve(o: ServeOpts, on_note: &mut dyn FnMut(Note)) -> anyhow::Result<()> {
    let mut s = crate::Settings::new(&o.database, o.listen);
    s.payload_dir = o.payload_dir;
    s.public_url = o.public_url;
    s.tls = match (o.tls_cert, o.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::TlsFiles { cert, key }),
        _ => None,
    };
    s.trusted_proxies = o.trusted_proxies;
    s.connection_limits = crate::listener::ConnectionLimits {
        max_connections: o.max_connections,
        header_timeout: Duration::from_millis(o.header_timeout_ms.max(1)),
        idle_timeout: Duration::from_millis(o.idle_timeout_ms.max(1)),
        body_timeout: Duration::from_millis(o.body_timeout_ms.max(1)),
    };
    s.poll_interval_secs = o.poll_interval;
    s.last_seen_resolution = Duration::from_secs(o.last_seen_resolution);
    s.flush_interval = Duration::from_millis(o.flush_interval_ms.max(10));
    s.event_retention = Duration::from_secs(o.event_retention_days * 86_400);
    s.instance_retention = Duration::from_secs(o.instance_retention_days * 86_400);
    s.activity_retention = Duration::from_secs(o.activity_retention_days * 86_400);
    s.sweep_interval = Duration::from_secs(o.sweep_interval.max(1));
    let env_token = std::env::var(FLEET_TOKEN_ENV).ok();
    s.fleet_token = fleet_token(o.fleet_token_file.as_deref(), env_token.as_deref())?;
    let limit = |burst, per_minute| Limit { burst, per_minute };
    s.rate_limits = RateLimits {
        omaha_per_ip: limit(o.omaha_ip_burst, o.omaha_ip_per_minute),
        omaha_per_instance: limit(o.omaha_instance_burst, o.omaha_instance_per_minute),
        admin_per_ip: limit(o.admin_burst, o.admin_per_minute),
        max_keys: o.rate_limit_keys,
    };
    if let Some(path) = &o.response_key {
        let signer = crate::response_signing::ResponseSigner::load(path)
            .with_context(|| format!("--response-key {}", path.display()))?;
        tracing::info!(public_key = %signer.fingerprint(), "signing Omaha responses");
        s.response_signer = Some(signer);
    }
    s.metrics_listen = o.metrics_listen;
    s.fleetlock = o.fleetlock.settings()?;
    let server = crate::spawn(s).await?;
    on_note(Note::Listening { url: server.url() });
    server.run_until_signal().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};
    use clap::Parser as _;

    #[test]
    fn fleet_token_comes_from_one_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fleet-token");
        std::fs::write(&file, "from-file\n").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            wellcar_omaha::headers::FLEET_TOKEN,
            HeaderValue::from_static("from-file"),
        );
        let token = fleet_token(Some(&file), None).unwrap().unwrap();
        assert!(
            token.admits(&headers),
            "the file's newline is not part of it"
        );
        headers.insert(
            wellcar_omaha::headers::FLEET_TOKEN,
            HeaderValue::from_static("from-env"),
        );
        assert!(fleet_token(None, Some("from-env"))
            .unwrap()
            .unwrap()
            .admits(&headers));
        assert!(fleet_token(None, None).unwrap().is_none());
        let both = fleet_token(Some(&file), Some("x")).unwrap_err().to_string();
        assert!(both.contains("not both"), "{both}");
        std::fs::write(&file, "\n").unwrap();
        let empty = fleet_token(Some(&file), None).unwrap_err().to_string();
        assert!(empty.contains("fleet-token is empty"), "{empty}");
        let missing = dir.path().join("missing");
        let err = format!("{:#}", fleet_token(Some(&missing), None).unwrap_err());
        assert!(err.contains("missing"), "{err}");
    }

    #[derive(Debug, clap::Parser)]
    struct Args {
        #[command(flatten)]
        serve: ServeOpts,
    }

    fn parse(extra: &[&str]) -> Result<ServeOpts, clap::Error> {
        let mut argv = vec!["serve", "--listen", "127.0.0.1:0"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).map(|a| a.serve)
    }

    #[test]
    fn transport_flags_parse_and_bad_values_are_named() {
        let o = parse(&[
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy",
            "192.0.2.1",
            "--max-connections",
            "500",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ])
        .unwrap();
        assert_eq!(o.trusted_proxies.len(), 2);
        assert_eq!(o.max_connections, Some(500));
        assert_eq!(o.header_timeout_ms, 10_000);
        let e = parse(&["--trusted-proxy", "10.0.0.0/33"]).unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/33"), "{e}");
        let e = parse(&["--tls-cert", "c.pem"]).unwrap_err();
        assert!(e.to_string().contains("--tls-key"), "{e}");
    }
}
