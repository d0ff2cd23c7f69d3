//! Prometheus metrics: counters kept in atomics, instance gauges read from the database at scrape.
//!
//! Contract:
//! - `GET /metrics` on the main listener needs a `read`-scoped bearer token (401/403 otherwise,
//!   like the admin API). With `--metrics-listen ADDR` ([`crate::Settings::metrics_listen`]) it
//!   is served only there, without a token (bind that address to a private network), and the
//!   main listener answers 404.
//! - Label values are bounded and never raw client strings: `app` is a configured app id,
//!   `version` a version that has a package in that app, `group` a configured track and
//!   `status` one of the server's statuses; anything else is reported as `other` (summed).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use crate::auth::{Authorized, NeedsRead};
use crate::server::{ServerState, Settings};
use crate::store::InstanceCount;

/// The label value standing for every value that may not be a label.
pub const OTHER_LABEL: &str = "other";

const LATENCY_BUCKETS_MS: [f64; 11] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
];

/// Counters of one server process.
#[derive(Debug, Default)]
pub struct Metrics {
    checks: AtomicU64,
    grants: AtomicU64,
    no_updates: AtomicU64,
    events: AtomicU64,
    failures: AtomicU64,
    bad_requests: AtomicU64,
    unverified_events: [AtomicU64; crate::event_trust::Unverified::ALL.len()],
    refused: [AtomicU64; crate::admission::Refusal::ALL.len()],
    fleetlock_expiries: AtomicU64,
    latency_buckets: [AtomicU64; 11],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    /// One update check answered; `granted` if it offered an update.
    pub fn check(&self, granted: bool) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        if granted {
            self.grants.fetch_add(1, Ordering::Relaxed);
        } else {
            self.no_updates.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events stored.
    pub fn add_events(&self, n: u64) {
        self.events.fetch_add(n, Ordering::Relaxed);
    }

    /// Failed updates (error events, timeouts).
    pub fn add_failures(&self, n: u64) {
        self.failures.fetch_add(n, Ordering::Relaxed);
    }

    /// A rejected Omaha request.
    pub fn bad_request(&self) {
        self.bad_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// An event stored unverified, not acted on.
    pub fn unverified_event(&self, why: crate::event_trust::Unverified) {
        self.unverified_events[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused before it was acted on (fleet token, rate limits).
    pub fn refused(&self, why: crate::admission::Refusal) {
        self.refused[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Latency of one Omaha request.
    pub fn observe(&self, elapsed: std::time::Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
            if ms <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// FleetLock leases released because they ran out.
    pub fn fleetlock_leases_expired(&self, n: u64) {
        self.fleetlock_expiries.fetch_add(n, Ordering::Relaxed);
    }

    /// FleetLock leases this process released because they ran out.
    pub fn fleetlock_expiries(&self) -> u64 {
        self.fleetlock_expiries.load(Ordering::Relaxed)
    }

    /// Update checks answered so far.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The main listener's `/metrics` route: with a `read` token, unless a separate metrics
/// listener is configured (then none).
pub fn routes(settings: &Settings) -> Router<Arc<ServerState>> {
    if settings.metrics_listen.is_some() {
        return Router::new();
    }
    Router::new().route("/metrics", get(handle_authorized))
}

/// `GET /metrics` on the main listener: needs a `read` token.
pub async fn handle_authorized(
    state: State<Arc<ServerState>>,
    _auth: Authorized<NeedsRead>,
) -> impl IntoResponse {
    handle(state).await
}

/// Binds [`Settings::metrics_listen`], if set, and serves `/metrics` there without a token
/// until `stop` changes. Returns the bound address and the serving task.
pub async fn spawn_listener(
    state: &Arc<ServerState>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<(SocketAddr, tokio::task::JoinHandle<()>)>> {
    use anyhow::Context as _;
    let Some(listen) = state.settings.metrics_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening for metrics on {listen}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(handle))
        .with_state(state.clone());
    let handle = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.changed().await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!("metrics listener failed: {e}");
        }
    });
    tracing::info!(%addr, "wellcar server metrics listening");
    Ok(Some((addr, handle)))
}

/// Instance counts with every label bounded: app ids not in `apps`, versions without a package
/// in their app (`versions`), tracks not in `tracks` and unknown statuses become
/// [`OTHER_LABEL`], and rows that then share labels are summed.
pub fn bounded_instance_labels(
    rows: Vec<InstanceCount>,
    apps: &HashSet<String>,
    versions: &HashSet<(String, String)>,
    tracks: &HashSet<(String, String)>,
) -> BTreeMap<(String, String, String, String), i64> {
    use crate::model::status;
    const STATUSES: [&str; 8] = [
        status::UNDEFINED,
        status::GRANTED,
        status::DOWNLOADING,
        status::DOWNLOADED,
        status::INSTALLED,
        status::COMPLETE,
        status::ERROR,
        status::TIMEOUT,
    ];
    let mut out = BTreeMap::new();
    for (app, version, group, status, n) in rows {
        let known_app = apps.contains(&app);
        let version = if known_app && versions.contains(&(app.clone(), version.clone())) {
            version
        } else {
            OTHER_LABEL.to_owned()
        };
        let group = if group.is_empty() || tracks.contains(&(app.clone(), group.clone())) {
            group
        } else {
            OTHER_LABEL.to_owned()
        };
        let status = if STATUSES.contains(&status.as_str()) {
            status
        } else {
            OTHER_LABEL.to_owned()
        };
        let app = if known_app {
            app
        } else {
            OTHER_LABEL.to_owned()
        };
        *out.entry((app, version, group, status)).or_insert(0) += n;
    }
    out
}

/// Renders the metrics (no authentication: callers decide who may see them).
pub async fn handle(State(state): State<Arc<ServerState>>) -> impl IntoResponse {
    let m = &state.metrics;
    let mut out = String::new();
    let counters = [
        (
            "wellcar_server_update_checks_total",
            "Update checks answered.",
            &m.checks,
        ),
        (
            "wellcar_server_update_grants_total",
            "Update checks that offered an update.",
            &m.grants,
        ),
        (
            "wellcar_server_update_noupdate_total",
            "Update checks answered noupdate.",
            &m.no_updates,
        ),
        (
            "wellcar_server_events_total",
            "Omaha events stored.",
            &m.events,
        ),
        (
            "wellcar_server_update_failures_total",
            "Failed or timed-out updates.",
            &m.failures,
        ),
        (
            "wellcar_server_bad_requests_total",
            "Omaha requests rejected with HTTP 400.",
            &m.bad_requests,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let name = "wellcar_server_events_unverified_total";
    let _ = writeln!(
        out,
        "# HELP {name} Omaha events stored but not acted on: not from an instance granted that update.\n# TYPE {name} counter"
    );
    for why in crate::event_trust::Unverified::ALL {
        let _ = writeln!(
            out,
            "{name}{{reason=\"{}\"}} {}",
            why.as_str(),
            m.unverified_events[why.index()].load(Ordering::Relaxed)
        );
    }
    let name = "wellcar_server_requests_refused_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests refused before they were acted on (fleet token, rate limits).\n# TYPE {name} counter"
    );
    for why in crate::admission::Refusal::ALL {
        let _ = writeln!(
            out,
            "{name}{{reason=\"{}\"}} {}",
            why.as_str(),
            m.refused[why.index()].load(Ordering::Relaxed)
        );
    }
    let writes = state.db.write_counts();
    let _ = writeln!(
        out,
        "# HELP wellcar_server_db_write_transactions_total Committed database transactions that wrote rows.\n# TYPE wellcar_server_db_write_transactions_total counter\nwellcar_server_db_write_transactions_total {}",
        writes.transactions
    );
    let _ = writeln!(
        out,
        "# HELP wellcar_server_db_rows_written_total Rows inserted, updated or deleted.\n# TYPE wellcar_server_db_rows_written_total counter\nwellcar_server_db_rows_written_total {}",
        writes.rows
    );
    let name = "wellcar_server_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Omaha request latency.\n# TYPE {name} histogram"
    );
    for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {}",
            bound / 1000.0,
            m.latency_buckets[i].load(Ordering::Relaxed)
        );
    }
    let count = m.latency_count.load(Ordering::Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(
        out,
        "{name}_sum {}\n{name}_count {count}",
        m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    let breakdown = state
        .db
        .read(|c| {
            let rows = crate::store::instance_breakdown(c)?;
            let versions = crate::store::published_versions(c)?;
            Ok((rows, versions))
        })
        .await;
    let config = state.config();
    let apps: HashSet<String> = config.apps.keys().cloned().collect();
    let tracks: HashSet<(String, String)> = config.groups.keys().cloned().collect();
    match breakdown {
        Ok((rows, versions)) => {
            let versions: HashSet<(String, String)> = versions.into_iter().collect();
            let rows = bounded_instance_labels(rows, &apps, &versions, &tracks);
            let name = "wellcar_server_instances";
            let _ = writeln!(
                out,
                "# HELP {name} Instances by app, version, group and status.\n# TYPE {name} gauge"
            );
            for ((app, version, group, status), n) in rows {
                let _ = writeln!(
                    out,
                    "{name}{{app=\"{}\",version=\"{}\",group=\"{}\",status=\"{}\"}} {n}",
                    escape_label(&app),
                    escape_label(&version),
                    escape_label(&group),
                    escape_label(&status)
                );
            }
        }
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading instances: {e}\n"),
            )
                .into_response()
        }
    }
    if let Err(e) = crate::fleetlock::render_metrics(&state, &mut out).await {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading reboot locks: {e}\n"),
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Reads one unlabelled sample from a Prometheus text body.
pub fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_cumulative_buckets() {
        let m = Metrics::default();
        m.observe(std::time::Duration::from_micros(700));
        m.observe(std::time::Duration::from_millis(30));
        assert_eq!(m.latency_buckets[0].load(Ordering::Relaxed), 0);
        assert_eq!(m.latency_buckets[1].load(Ordering::Relaxed), 1);
        assert_eq!(m.latency_buckets[6].load(Ordering::Relaxed), 2);
        assert_eq!(sample("a_b 3\na 5\n", "a"), Some(5.0));
    }
}
