//! What the server benchmarks share: the database to run on, simulated machines' Omaha
//! requests, environment knobs and latency percentiles.

use wellcar_omaha::{AppRequest, Event, Request, WELLCAR_APP_ID};

/// The database URL for `backend` (`sqlite`: a file in `dir`; `postgres`: a fresh database in
/// the shared private cluster).
pub async fn database_url(backend: &str, dir: &std::path::Path) -> String {
    match backend {
        "sqlite" => format!("sqlite:{}", dir.join("bench.db").display()),
        "postgres" => tokio::task::spawn_blocking(|| {
            wellcar_test_support::pg_cluster::shared_cluster()
                .expect("postgresql for the benchmark")
                .create_database()
                .expect("creating the benchmark database")
        })
        .await
        .expect("joining"),
        other => panic!("unknown backend {other}"),
    }
}

/// A numeric knob from the environment, or `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The machine id of simulated machine `machine`.
pub fn machine_id(machine: usize) -> String {
    format!("{machine:032x}")
}

/// What `update_engine` on simulated machine `machine`, running `version`, posts: an update check
/// (with ping) when `check`, and `events`.
pub fn request(machine: usize, version: &str, check: bool, events: Vec<Event>) -> String {
    Request {
        updater_version: "update_engine-0.4.10".into(),
        install_source: "scheduler".into(),
        os: None,
        apps: vec![AppRequest {
            app_id: WELLCAR_APP_ID.into(),
            version: version.into(),
            track: "stable".into(),
            board: "amd64-usr".into(),
            machine_id: machine_id(machine),
            oem: "qemu".into(),
            ping: check,
            update_check: check.then(Default::default),
            events,
            ..AppRequest::default()
        }],
    }
    .to_xml()
}

/// An event with type `t` and result `r`.
pub fn event(t: u32, r: u32) -> Event {
    Event {
        event_type: t,
        event_result: r,
        ..Event::default()
    }
}

/// The `p` quantile (0..=1) of sorted latencies in microseconds, in milliseconds.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let idx = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted_us[idx]) / 1000.0
}
