//! Reboot coordination: a FleetLock server (Zincati's protocol) inside `wellcar server`, with
//! leases, backed by the server's database.
//!
//! Contract:
//! - Protocol ([`protocol`]): `POST /fleetlock/v1/pre-reboot` (RecursiveLock) and
//!   `POST /fleetlock/v1/steady-state` (UnlockIfHeld) at base URL `<server>/fleetlock`.
//! - Lock groups: `default` and every Omaha group's track (so an agent whose `FLEETLOCK_GROUP`
//!   defaults to its update `GROUP` finds its group) exist with
//!   [`FleetLockSettings::default_slots`] slots until an admin sets their max; any other group
//!   exists once an admin ran `set-max` on it. Storage and its locking: [`crate::store`]'s
//!   `fleetlock_*` functions.
//! - Leases: a grant or re-entrant renewal holds for [`FleetLockSettings::lease_ttl`]; a holder
//!   that reaches neither steady-state nor a renewal by then is released by the sweep (every
//!   [`FleetLockSettings::expiry_interval`], [`expire_leases`]) or the group's next
//!   pre-reboot, and the expiry is logged in the activity log. A dead holder therefore blocks
//!   its slot for at most `lease_ttl + expiry_interval`.
//! - Admin API ([`admin`]): list (read scope), force-release and set-max (admin scope).
//! - Metrics ([`render_metrics`]): holders and max per lock group (labels: group names that
//!   exist as above, so bounded by configuration), lease expiries of this process.

pub mod admin;
pub mod protocol;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod two_servers_tests;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;

use crate::server::ServerState;
use crate::store;
use crate::StoreError;

/// The lock group every client may use, whatever the configuration.
pub const DEFAULT_GROUP: &str = "default";

/// FleetLock settings of one server process ([`crate::Settings::fleetlock`]). Every process
/// sharing a database should use the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetLockSettings {
    /// How long a grant holds without steady-state or renewal.
    pub lease_ttl: Duration,
    /// Slots of a lock group whose max no admin set.
    pub default_slots: u32,
    /// How often overdue leases are looked for.
    pub expiry_interval: Duration,
}

impl Default for FleetLockSettings {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(3600),
            default_slots: 1,
            expiry_interval: Duration::from_secs(5),
        }
    }
}

impl FleetLockSettings {
    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_millis()).unwrap_or(i64::MAX)
    }

    fn default_max(&self) -> i64 {
        i64::from(self.default_slots)
    }
}

/// `wellcar server serve` flags for FleetLock.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetLockArgs {
    /// Seconds a FleetLock reboot slot is held without steady-state before the server
    /// releases it.
    #[arg(long, default_value_t = 3600)]
    pub fleetlock_lease_ttl: u64,
    /// Slots of a FleetLock group whose max no admin set (`default` and the Omaha tracks).
    #[arg(long, default_value_t = 1)]
    pub fleetlock_default_slots: u32,
    /// How often overdue FleetLock leases are released (seconds).
    #[arg(long, default_value_t = 5)]
    pub fleetlock_expiry_interval: u64,
}

impl FleetLockArgs {
    /// The settings these flags give; a zero lease is an error.
    pub fn settings(&self) -> anyhow::Result<FleetLockSettings> {
        if self.fleetlock_lease_ttl == 0 {
            anyhow::bail!("--fleetlock-lease-ttl must be at least 1 second");
        }
        Ok(FleetLockSettings {
            lease_ttl: Duration::from_secs(self.fleetlock_lease_ttl),
            default_slots: self.fleetlock_default_slots,
            expiry_interval: Duration::from_secs(self.fleetlock_expiry_interval.max(1)),
        })
    }
}

/// The FleetLock protocol routes (unauthenticated; see [`protocol`] for admission).
pub fn protocol_routes() -> Router<Arc<ServerState>> {
    protocol::routes()
}

/// The FleetLock admin API routes with their documentation (bearer tokens; part of
/// [`crate::admin::routes`], under the admin rate limit).
pub fn admin_routes() -> crate::openapi::DocumentedRoutes {
    admin::routes()
}

/// The lock groups that exist without an admin creating them: `default` and every Omaha
/// group's track, sorted.
pub fn implicit_groups(state: &ServerState) -> Vec<String> {
    let config = state.config();
    let mut names: Vec<String> = std::iter::once(DEFAULT_GROUP.to_owned())
        .chain(config.groups.keys().map(|(_, track)| track.clone()))
        .filter(|g| wellcar_contract::fleetlock::check_group(g).is_ok())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether `group` exists without an admin creating it.
pub fn is_implicit_group(state: &ServerState, group: &str) -> bool {
    group == DEFAULT_GROUP
        || state
            .config()
            .groups
            .keys()
            .any(|(_, track)| track == group)
}

/// Releases every overdue lease (the periodic sweep); returns how many.
pub async fn expire_leases(state: &ServerState) -> Result<usize, StoreError> {
    let now = state.now();
    let expired = state
        .db
        .write(move |conn| store::fleetlock_expire_leases(conn, now))
        .await?;
    for (group, id) in &expired {
        tracing::warn!(group, id, "reboot lock lease expired; slot released");
    }
    state.metrics.fleetlock_leases_expired(expired.len() as u64);
    Ok(expired.len())
}

/// Every lock group with its holders (the admin listing, the metrics, the dashboard).
pub async fn list_groups(state: &ServerState) -> Result<Vec<store::RebootLockGroup>, StoreError> {
    let implicit = implicit_groups(state);
    let default_max = state.settings.fleetlock.default_max();
    state
        .db
        .read(move |conn| store::fleetlock_list(conn, &implicit, default_max))
        .await
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Appends the FleetLock metrics to a Prometheus text body.
pub async fn render_metrics(state: &ServerState, out: &mut String) -> Result<(), StoreError> {
    let groups = list_groups(state).await?;
    let gauges = [
        (
            "wellcar_server_fleetlock_holders",
            "Current holders of each FleetLock reboot group.",
            groups
                .iter()
                .map(|g| (g.name.as_str(), g.holders.len() as i64))
                .collect::<Vec<_>>(),
        ),
        (
            "wellcar_server_fleetlock_max_holders",
            "Slots (max_holders) of each FleetLock reboot group.",
            groups
                .iter()
                .map(|g| (g.name.as_str(), g.max_holders))
                .collect(),
        ),
    ];
    for (name, help, values) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (group, v) in values {
            let _ = writeln!(out, "{name}{{group=\"{}\"}} {v}", escape_label(group));
        }
    }
    let name = "wellcar_server_fleetlock_lease_expiries_total";
    let _ = writeln!(
        out,
        "# HELP {name} FleetLock leases this process released because their holder never reached steady-state.\n# TYPE {name} counter\n{name} {}",
        state.metrics.fleetlock_expiries()
    );
    Ok(())
}

#[cfg(test)]
mod flag_tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Args {
        #[command(flatten)]
        fleetlock: FleetLockArgs,
    }

    fn parse(argv: &[&str]) -> anyhow::Result<FleetLockSettings> {
        let mut all = vec!["serve"];
        all.extend_from_slice(argv);
        Args::try_parse_from(all)?.fleetlock.settings()
    }

    #[test]
    fn flags_map_onto_settings_and_a_zero_lease_is_refused() {
        assert_eq!(parse(&[]).unwrap(), FleetLockSettings::default());
        let s = parse(&[
            "--fleetlock-lease-ttl",
            "90",
            "--fleetlock-default-slots",
            "3",
            "--fleetlock-expiry-interval",
            "0",
        ])
        .unwrap();
        assert_eq!(s.lease_ttl, Duration::from_secs(90));
        assert_eq!(s.default_slots, 3);
        assert_eq!(s.expiry_interval, Duration::from_secs(1), "at least 1 s");
        let e = parse(&["--fleetlock-lease-ttl", "0"]).unwrap_err();
        assert!(e.to_string().contains("--fleetlock-lease-ttl"), "{e}");
        let e = parse(&["--fleetlock-default-slots", "-1"]).unwrap_err();
        assert!(e.to_string().contains("-1"), "{e}");
    }
}
