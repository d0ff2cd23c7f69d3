//! The running service: shared state, in-memory configuration, background tasks, HTTP routes.
//!
//! Write discipline (the point of this module):
//! - Configuration (apps, groups, channels, packages) lives in an in-memory snapshot, reloaded
//!   when `meta.generation` changes (polled every `config_refresh`, and at once after local
//!   changes). Several processes on one PostgreSQL therefore converge within `config_refresh`;
//!   grants and halts are decided inside database transactions, so a stale snapshot can never
//!   grant past a halt.
//! - An update check that changes nothing writes nothing. New instances and changed facts are
//!   queued in memory and written in one transaction every `flush_interval`; an unchanged
//!   instance's `last_check` is persisted at most every `last_seen_resolution`. `kill -9` loses
//!   at most one flush interval of sightings, which the next check re-creates.
//! - Events are written (and committed with `synchronous=FULL` on SQLite) before the HTTP 200
//!   that acknowledges them.
//!
//! Listening ([`spawn`]): the connection cap and timeouts are [`crate::listener`]'s, HTTPS and
//! its SIGHUP reload [`crate::tls`]'s; the soft open-file limit is raised first
//! ([`crate::fd_limit`]), and a `--max-connections` it cannot hold is refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;

use crate::db::Db;
use crate::metrics::Metrics;
use crate::model::{App, Channel, Group};
use crate::store::{self, RetentionCutoffs, Sighting};
use crate::StoreError;

/// Sightings written per transaction by [`ServerState::flush_sightings`].
pub const FLUSH_CHUNK: usize = 500;

/// How long a "limits reached" verdict is trusted without asking the database again.
pub const SATURATION_HOLD_MS: i64 = 1000;

/// A source of "now" in unix milliseconds (tests move it forward).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Everything `serve` needs.
#[derive(Clone)]
pub struct Settings {
    /// `sqlite:PATH` or `postgres://…`.
    pub database_url: String,
    /// Address to listen on; [`spawn`] replaces it with the address actually bound.
    pub listen: SocketAddr,
    /// Where hosted payloads are stored (served at `/packages/`).
    pub payload_dir: PathBuf,
    /// Base URL clients use to reach this server; default: the listener's own address
    /// ([`crate::peer::public_base`]), never a request header.
    pub public_url: Option<String>,
    /// Certificate and key to serve HTTPS with; `None`: plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<crate::peer::TrustedProxy>,
    /// Client connection cap and timeouts.
    pub connection_limits: crate::listener::ConnectionLimits,
    /// `PollInterval` sent on every update check.
    pub poll_interval_secs: u32,
    /// How often queued sightings are written.
    pub flush_interval: Duration,
    /// An unchanged instance's `last_check` is persisted at most this often.
    pub last_seen_resolution: Duration,
    /// How often the configuration generation is polled.
    pub config_refresh: Duration,
    /// How often timed-out updates are looked for.
    pub sweep_interval: Duration,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// Events older than this are deleted.
    pub event_retention: Duration,
    /// Activity older than this is deleted.
    pub activity_retention: Duration,
    /// Instances not seen for this long are deleted.
    pub instance_retention: Duration,
    /// Largest payload upload accepted.
    pub max_upload_bytes: u64,
    /// A separate address serving only `/metrics`, without a token; when set, the main
    /// listener does not serve `/metrics`. Unset: `/metrics` on the main listener, with a
    /// `read` token.
    pub metrics_listen: Option<SocketAddr>,
    /// Database connections.
    pub max_connections: usize,
    /// The clock.
    pub clock: Clock,
    /// When set, Omaha requests must carry this fleet token ([`crate::admission`]).
    pub fleet_token: Option<crate::admission::FleetToken>,
    /// Rate limits on Omaha and admin requests ([`crate::rate_limit`]).
    pub rate_limits: crate::rate_limit::RateLimits,
    /// Signs every Omaha answer when set (`--response-key`); see [`crate::response_signing`].
    pub response_signer: Option<crate::response_signing::ResponseSigner>,
    /// FleetLock reboot coordination ([`crate::fleetlock`]).
    pub fleetlock: crate::fleetlock::FleetLockSettings,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &crate::db::redact(&self.database_url))
            .field("listen", &self.listen)
            .field("payload_dir", &self.payload_dir)
            .finish_non_exhaustive()
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Settings {
    /// Defaults for a database URL and listen address.
    pub fn new(database_url: &str, listen: SocketAddr) -> Self {
        Self {
            database_url: database_url.to_owned(),
            listen,
            payload_dir: PathBuf::from("wellcar-payloads"),
            public_url: None,
            tls: None,
            trusted_proxies: Vec::new(),
            connection_limits: crate::listener::ConnectionLimits::default(),
            poll_interval_secs: 2700,
            flush_interval: Duration::from_secs(1),
            last_seen_resolution: Duration::from_secs(15 * 60),
            config_refresh: Duration::from_secs(2),
            sweep_interval: Duration::from_secs(10),
            retention_interval: Duration::from_secs(3600),
            event_retention: 90 * DAY,
            activity_retention: 365 * DAY,
            instance_retention: 30 * DAY,
            max_upload_bytes: 8 << 30,
            metrics_listen: None,
            max_connections: 8,
            clock: Arc::new(crate::now_ms),
            fleet_token: None,
            rate_limits: crate::rate_limit::RateLimits::default(),
            response_signer: None,
            fleetlock: crate::fleetlock::FleetLockSettings::default(),
        }
    }
}

/// The configuration snapshot the check path reads.
#[derive(Debug, Default)]
pub struct ConfigSnapshot {
    /// Generation it was loaded at.
    pub generation: i64,
    /// Apps by normalized id.
    pub apps: HashMap<String, App>,
    /// Groups by (app id, track).
    pub groups: HashMap<(String, String), Group>,
    /// Channels (target and floors) by (app id, channel name, arch).
    pub channels: HashMap<(String, String, String), Channel>,
}

fn load_snapshot(conn: &mut dyn crate::db::Conn) -> Result<ConfigSnapshot, StoreError> {
    let generation = store::generation(conn)?;
    let apps = store::list_apps(conn)?
        .into_iter()
        .map(|a| (a.id.clone(), a))
        .collect();
    let groups = store::all_groups(conn)?
        .into_iter()
        .map(|g| ((g.app_id.clone(), g.track.clone()), g))
        .collect();
    let channels = store::all_channels(conn)?
        .into_iter()
        .map(|c| ((c.app_id.clone(), c.name.clone(), c.arch.clone()), c))
        .collect();
    Ok(ConfigSnapshot {
        generation,
        apps,
        groups,
        channels,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SeenEntry {
    sighting: Sighting,
    persisted_at: i64,
}

/// Shared state of one server process.
pub struct ServerState {
    /// The database.
    pub db: Arc<Db>,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Metrics,
    /// Rate limiters ([`crate::admission`]).
    pub limiters: crate::admission::Limiters,
    /// Payload uploads in flight (one per app, version and arch).
    pub uploads: crate::payload_files::UploadsInFlight,
    config: RwLock<Arc<ConfigSnapshot>>,
    seen: Mutex<HashMap<(String, String), SeenEntry>>,
    pending: Mutex<HashMap<(String, String), Sighting>>,
    saturated: Mutex<HashMap<String, i64>>,
    flush_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ServerState {
    /// Now, from the configured clock.
    pub fn now(&self) -> i64 {
        (self.settings.clock)()
    }

    /// The current configuration snapshot.
    pub fn config(&self) -> Arc<ConfigSnapshot> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Reloads the configuration if the database generation moved (or always, if `force`).
    pub async fn refresh_config(&self, force: bool) -> Result<(), StoreError> {
        let known = self.config().generation;
        let snapshot = self
            .db
            .read(move |conn| {
                if !force && store::generation(conn)? == known {
                    return Ok(None);
                }
                load_snapshot(conn).map(Some)
            })
            .await?;
        if let Some(s) = snapshot {
            if let Ok(mut c) = self.config.write() {
                *c = Arc::new(s);
            }
            // Policies or targets may have changed: re-ask the database.
            if let Ok(mut m) = self.saturated.lock() {
                m.clear();
            }
        }
        Ok(())
    }

    /// Queues a sighting unless nothing changed and it was persisted recently enough.
    pub fn note_sighting(&self, s: Sighting) {
        let key = (s.facts.app_id.clone(), s.facts.machine_id.clone());
        let resolution = self.settings.last_seen_resolution.as_millis() as i64;
        {
            let Ok(mut seen) = self.seen.lock() else {
                return;
            };
            if let Some(e) = seen.get(&key) {
                let same = s.facts == e.sighting.facts;
                if same && s.at - e.persisted_at < resolution {
                    return;
                }
            }
            seen.insert(
                key.clone(),
                SeenEntry {
                    sighting: s.clone(),
                    persisted_at: s.at,
                },
            );
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(key, s);
        }
    }

    /// Whether a recent grant transaction found the group's limits reached. While that holds
    /// (at most [`SATURATION_HOLD_MS`], or until an event of the group arrives) outdated
    /// instances get `noupdate` without a database round trip.
    pub fn group_saturated(&self, group_id: &str, now: i64) -> bool {
        self.saturated
            .lock()
            .ok()
            .and_then(|m| m.get(group_id).copied())
            .is_some_and(|until| now < until)
    }

    /// Remembers that the group's limits are reached.
    pub fn mark_saturated(&self, group_id: &str, now: i64) {
        if let Ok(mut m) = self.saturated.lock() {
            m.insert(group_id.to_owned(), now + SATURATION_HOLD_MS);
        }
    }

    /// Forgets a saturation mark (an event may have freed a slot).
    pub fn clear_saturated(&self, group_id: &str) {
        if let Ok(mut m) = self.saturated.lock() {
            m.remove(group_id);
        }
    }

    /// Writes all queued sightings, [`FLUSH_CHUNK`] rows per transaction (so event and grant
    /// transactions are not held up behind one huge write). One flush runs at a time, so an
    /// older sighting is never written after a newer one. On failure the rest stay queued.
    pub async fn flush_sightings(&self) -> Result<usize, StoreError> {
        let _one_at_a_time = self.flush_lock.lock().await;
        let batch: Vec<Sighting> = match self.pending.lock() {
            Ok(mut p) => p.drain().map(|(_, v)| v).collect(),
            Err(_) => return Ok(0),
        };
        let total = batch.len();
        let mut chunks = batch.chunks(FLUSH_CHUNK).map(<[Sighting]>::to_vec);
        while let Some(chunk) = chunks.next() {
            let shared = Arc::new(chunk);
            let for_db = shared.clone();
            let result = self
                .db
                .write_combined(move |conn| store::upsert_sightings(conn, &for_db))
                .await;
            if let Err(e) = result {
                if let Ok(mut p) = self.pending.lock() {
                    for s in shared.iter().cloned().chain(chunks.flatten()) {
                        // A newer sighting queued meanwhile wins.
                        p.entry((s.facts.app_id.clone(), s.facts.machine_id.clone()))
                            .or_insert(s);
                    }
                }
                return Err(e);
            }
        }
        Ok(total)
    }

    /// Marks timed-out updates and halts safe-mode groups whose updates timed out.
    pub async fn sweep_timeouts(&self) -> Result<usize, StoreError> {
        let now = self.now();
        let (count, halted) = self
            .db
            .write(move |conn| {
                let timed_out = store::sweep_timeouts(conn, now)?;
                let mut halted = false;
                for t in &timed_out {
                    store::log_activity(
                        conn,
                        now,
                        &store::NewActivity {
                            actor: "system",
                            kind: "instance-update-timeout",
                            app_id: Some(&t.app_id),
                            group_id: Some(&t.group_id),
                            severity: "warning",
                            message: &format!(
                                "instance {} did not finish updating to {} within the group's timeout",
                                t.machine_id, t.granted_version
                            ),
                        },
                    )?;
                    if t.halts_group {
                        halted |= store::halt_group(
                            conn,
                            &t.group_id,
                            &t.app_id,
                            &format!(
                                "safe mode: instance {} timed out updating to {}",
                                t.machine_id, t.granted_version
                            ),
                            now,
                        )?;
                    }
                }
                Ok((timed_out.len(), halted))
            })
            .await?;
        self.metrics.add_failures(count as u64);
        if halted {
            self.refresh_config(true).await?;
        }
        Ok(count)
    }

    /// Deletes data past its retention.
    pub async fn prune(&self) -> Result<store::Pruned, StoreError> {
        let now = self.now();
        let s = &self.settings;
        let cut = RetentionCutoffs {
            events_before: now - s.event_retention.as_millis() as i64,
            activity_before: now - s.activity_retention.as_millis() as i64,
            instances_before: now - s.instance_retention.as_millis() as i64,
        };
        let pruned = self.db.write(move |conn| store::prune(conn, cut)).await?;
        if pruned.instances > 0 {
            // Forget what we believed was persisted, so returning machines are re-created.
            if let Ok(mut seen) = self.seen.lock() {
                seen.retain(|_, e| e.persisted_at >= cut.instances_before);
            }
        }
        tracing::info!(?pruned, "retention");
        Ok(pruned)
    }
}

/// Opens the database, runs migrations and seeds, and loads the configuration.
pub async fn open_state(settings: Settings) -> anyhow::Result<Arc<ServerState>> {
    use anyhow::Context as _;
    let url = settings.database_url.clone();
    let max = settings.max_connections;
    let open_url = url.clone();
    // Opening connects; the PostgreSQL driver blocks, so not on an async worker.
    let db = tokio::task::spawn_blocking(move || Db::open(&open_url, max))
        .await?
        .with_context(|| format!("opening database {}", crate::db::redact(&url)))?;
    let now = (settings.clock)();
    db.write(move |conn| store::migrate(conn, now))
        .await
        .context("running migrations")?;
    std::fs::create_dir_all(&settings.payload_dir)
        .with_context(|| format!("creating payload dir {}", settings.payload_dir.display()))?;
    let state = Arc::new(ServerState {
        db,
        metrics: Metrics::default(),
        limiters: crate::admission::Limiters::new(&settings.rate_limits),
        uploads: Default::default(),
        config: RwLock::new(Arc::new(ConfigSnapshot::default())),
        seen: Mutex::new(HashMap::new()),
        pending: Mutex::new(HashMap::new()),
        saturated: Mutex::new(HashMap::new()),
        flush_lock: tokio::sync::Mutex::new(()),
        settings,
    });
    state
        .refresh_config(true)
        .await
        .context("loading configuration")?;
    Ok(state)
}

/// The HTTP routes.
pub fn router(state: Arc<ServerState>) -> Router {
    let omaha = post(crate::omaha::handle);
    Router::new()
        .route("/v1/update", omaha.clone())
        .route("/v1/update/", omaha.clone())
        .route("/omaha/v1/update", omaha.clone())
        .route("/omaha/v1/update/", omaha)
        .route("/health", get(|| async { "ok" }))
        .merge(crate::metrics::routes(&state.settings))
        .merge(crate::fleetlock::protocol_routes())
        .route(
            "/packages/{app}/{arch}/{version}/{filename}",
            get(crate::payload_files::serve),
        )
        .merge(
            crate::admin::routes().layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::admission::admin_rate_limit,
            )),
        )
        .with_state(state.clone())
        .merge(crate::ui::routes(state))
}

fn spawn_ticker<F, Fut>(
    state: &Arc<ServerState>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
    f: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Arc<ServerState>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), StoreError>> + Send,
{
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = f(state.clone()).await {
                        tracing::warn!("{what} failed: {e}");
                    }
                }
                _ = stop.changed() => return,
            }
        }
    })
}

/// A server running in the background (tests, benchmarks, embedding).
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where the separate metrics listener listens (`Settings::metrics_listen`), if any.
    pub metrics_addr: Option<SocketAddr>,
    /// Its state (tests inspect it).
    pub state: Arc<ServerState>,
    /// The client connections being served.
    pub connections: Arc<crate::listener::Connections>,
    tls: Option<Arc<crate::tls::ReloadableCert>>,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
    tickers: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RunningServer {
    /// `http://addr`, or `https://addr` with TLS.
    pub fn url(&self) -> String {
        crate::peer::advertised_base(self.addr, self.tls.is_some())
    }

    /// Re-reads the TLS certificate and key, as SIGHUP does; `None` without TLS.
    pub fn reload_tls(&self) -> Option<Result<(), crate::tls::TlsError>> {
        self.tls.as_ref().map(|t| t.reload())
    }

    /// Serves until Ctrl-C or SIGTERM, then [`RunningServer::shutdown`].
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        self.shutdown().await
    }

    /// Stops accepting, finishes requests, flushes queued sightings.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
        for t in self.tickers {
            let _ = t.await;
        }
        self.state.flush_sightings().await?;
        Ok(())
    }
}

/// Starts the server on `settings.listen` and returns once it accepts connections.
pub async fn spawn(mut settings: Settings) -> anyhow::Result<RunningServer> {
    use anyhow::Context as _;
    let listen = settings.listen;
    let cap = connection_cap(settings.connection_limits.max_connections)?;
    let tls = match &settings.tls {
        Some(files) => Some(crate::tls::ReloadableCert::open(files.clone())?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    settings.listen = addr;
    let state = open_state(settings).await?;
    let (stop, stop_rx) = watch::channel(false);
    let s = &state.settings;
    let mut tickers = vec![
        spawn_ticker(
            &state,
            s.flush_interval,
            stop_rx.clone(),
            "flush",
            |st| async move { st.flush_sightings().await.map(|_| ()) },
        ),
        spawn_ticker(
            &state,
            s.config_refresh,
            stop_rx.clone(),
            "config refresh",
            |st| async move { st.refresh_config(false).await },
        ),
        spawn_ticker(
            &state,
            s.sweep_interval,
            stop_rx.clone(),
            "timeout sweep",
            |st| async move { st.sweep_timeouts().await.map(|_| ()) },
        ),
        spawn_ticker(
            &state,
            s.retention_interval,
            stop_rx.clone(),
            "retention",
            |st| async move { st.prune().await.map(|_| ()) },
        ),
        spawn_ticker(
            &state,
            s.fleetlock.expiry_interval,
            stop_rx.clone(),
            "fleetlock lease expiry",
            |st| async move { crate::fleetlock::expire_leases(&st).await.map(|_| ()) },
        ),
    ];
    let metrics_addr = match crate::metrics::spawn_listener(&state, stop_rx.clone()).await? {
        Some((addr, handle)) => {
            tickers.push(handle);
            Some(addr)
        }
        None => None,
    };
    if let Some(cert) = &tls {
        tickers.push(crate::tls::reload_on_sighup(cert.clone(), stop_rx.clone())?);
    }
    let (connections, handle) = crate::listener::spawn(
        listener,
        router(state.clone()),
        state.settings.connection_limits,
        cap,
        tls.as_ref().map(|t| t.acceptor()),
        stop_rx,
    );
    tracing::info!(%addr, tls = tls.is_some(), max_connections = cap, "wellcar server listening");
    Ok(RunningServer {
        addr,
        metrics_addr,
        state,
        connections,
        tls,
        stop,
        handle,
        tickers,
    })
}

/// The connection cap: `wanted`, or the budget the (raised) open-file limit leaves; an error if
/// `wanted` exceeds that budget.
fn connection_cap(wanted: Option<usize>) -> anyhow::Result<usize> {
    let limit = crate::fd_limit::raise_to_hard_limit();
    let budget = crate::fd_limit::connection_budget(limit);
    match wanted {
        Some(0) => anyhow::bail!("--max-connections must be at least 1"),
        Some(n) if n <= budget => Ok(n),
        Some(n) => anyhow::bail!(
            "--max-connections {n} leaves no headroom under the open-file limit {limit} (at most {budget}); raise the hard limit (ulimit -Hn) or lower --max-connections"
        ),
        None if budget == 0 => anyhow::bail!(
            "the open-file limit {limit} leaves no room for client connections; raise it (ulimit -n)"
        ),
        None => Ok(budget.min(crate::fd_limit::MAX_DEFAULT_CONNECTIONS)),
    }
}

/// Runs the server until Ctrl-C or SIGTERM, then shuts down cleanly. Where it listens is
/// logged (`tracing`, as [`spawn`] does), not printed.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    spawn(settings).await?.run_until_signal().await
}
