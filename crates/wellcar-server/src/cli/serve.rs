//! `wellcar server serve`: run the update server in the foreground.
//!
//! Contract:
//! - Every flag maps onto one field of [`crate::Settings`]; the flush interval is at least
//!   10 ms and the sweep interval at least 1 s. Retention flags are in days.
//! - Once the server accepts connections, its URL is reported ([`Note::Listening`]: "wellcar
//!   server listening on http://…" on stderr).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Base URL clients reach this server at (default: taken from each request's Host header).
    #[arg(long)]
    pub public_url: Option<String>,
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
    /// Serve /metrics only on this separate address, without a token (default: on --listen,
    /// with a read-scoped token).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
}

/// Runs `wellcar server serve` until the server stops; reports [`Note::Listening`] once it
/// accepts connections.
pub(super) async fn serve(o: ServeOpts, on_note: &mut dyn FnMut(Note)) -> anyhow::Result<()> {
    let mut s = crate::Settings::new(&o.database, o.listen);
    s.payload_dir = o.payload_dir;
    s.public_url = o.public_url;
    s.poll_interval_secs = o.poll_interval;
    s.last_seen_resolution = Duration::from_secs(o.last_seen_resolution);
    s.flush_interval = Duration::from_millis(o.flush_interval_ms.max(10));
    s.event_retention = Duration::from_secs(o.event_retention_days * 86_400);
    s.instance_retention = Duration::from_secs(o.instance_retention_days * 86_400);
    s.activity_retention = Duration::from_secs(o.activity_retention_days * 86_400);
    s.sweep_interval = Duration::from_secs(o.sweep_interval.max(1));
    s.metrics_listen = o.metrics_listen;
    let server = crate::spawn(s).await?;
    on_note(Note::Listening { url: server.url() });
    server.run_until_signal().await
}
