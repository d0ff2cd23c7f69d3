//! Schema, migrations, seed data and every database operation of the server, one module per
//! table or domain.
//!
//! Contract:
//! - The same migrations run on SQLite and PostgreSQL (portable SQL: TEXT and BIGINT columns,
//!   times as unix milliseconds, booleans as 0/1, ids as UUID text).
//! - An empty database is seeded with Wellcar's application, channels `stable`, `beta`, `alpha`
//!   (amd64 and arm64) and groups of the same names. Seed rows have fixed ids, so two servers
//!   starting at once on one PostgreSQL seed once.
//! - Every function here takes an open transaction ([`Conn`]); committing is the caller's job.
//! - Admin changes bump `meta.generation`, which tells every server process to reload its
//!   in-memory configuration.
//! - Callers use flat paths (`store::create_app`, `store::Role`, …): the submodules are private
//!   and everything public is re-exported here.
//!
//! Layout: the schema and its migrations (`migrations`) and the seed rows (`seed`); then one
//! module per table or domain: applications (`apps`), packages (`packages`), channels with
//! their floors and the publish operation (`channels`), groups with their rollout policy and
//! halt flag (`groups`), instances and their queued sightings (`instances`), the grant
//! decision's counters, grants and the timeout sweep (`rollout`), FleetLock reboot semaphores
//! (`locks`), events (`events`), the
//! activity log (`activity`), data retention (`retention`) and API tokens (`tokens`). The
//! configuration generation and the id, name and arch checks they share are here.

mod activity;
mod apps;
mod channels;
mod dashboard;
mod deltas;
mod events;
mod groups;
mod instances;
mod locks;
mod migrations;
mod packages;
#[cfg(test)]
mod query_plan_tests;
mod retention;
mod rollout;
mod seed;
mod tokens;

use crate::db::{query_one, Conn};
use crate::StoreError;

pub use activity::{list_activity, log_activity, NewActivity};
pub use apps::{create_app, find_app, list_apps, require_app};
pub use channels::{
    add_floor, all_channels, create_channel, list_channels, publish, remove_floor, ChannelPackage,
    NewFloor,
};
pub use dashboard::{
    completions_per_day, event_counts_since, group_version_status_counts, like_pattern, live_token,
    search_activity, search_instances, ActivitySearch, EventCount, InstanceSearch,
    VersionStatusCount, MATCH_COUNT_CAP,
};
pub use deltas::{
    check_delta_fields, create_package_delta, delete_package_delta, find_hosted_delta,
    find_hosted_package_by_id, find_package_for_delta, instance_delta_state, note_delta_failure,
    package_deltas, set_delta_served, NewPackageDelta,
};
pub use events::{count_events, insert_event, list_instance_events, NewEvent};
pub use groups::{
    all_groups, count_failed_on_version, create_group, find_group, halt_group, list_groups,
    lock_group, update_group, GroupSpec,
};
pub use instances::{
    find_instance, instance_breakdown, list_instances, set_instance_status, upsert_sightings,
    InstanceCount, InstanceFilter, Sighting,
};
pub use locks::{
    fleetlock_acquire, fleetlock_expire_leases, fleetlock_force_release, fleetlock_holders,
    fleetlock_list, fleetlock_release, fleetlock_set_max, LockError, LockOutcome, LockRequest,
    RebootLockGroup, RebootLockHolder,
};
pub use migrations::migrate;
pub use packages::{
    check_package_fields, create_package, find_hosted_package, list_packages, packages_matching,
    published_versions, validate_package_version, NewPackage,
};
pub(crate) use packages::{check_payload_filename, delete_unused_package};
pub use retention::{prune, Pruned, RetentionCutoffs};
pub use rollout::{
    record_grant, rollout_counters, sweep_timeouts, version_granted_before, TimedOut,
};
pub use tokens::{
    check_token, create_scoped_token, create_token, list_tokens, revoke_token, touch_token,
    ApiToken, CreatedToken, NewToken, Role, Scope, LAST_USED_RESOLUTION_MS,
};

/// Deterministic id for seed and natural-key rows.
fn stable_id(parts: &[&str]) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, parts.join("\n").as_bytes()).to_string()
}

/// Tells every server process to reload its configuration.
pub fn bump_generation(conn: &mut dyn Conn) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE meta SET value = value + 1 WHERE key = 'generation'",
        &[],
    )?;
    Ok(())
}

/// The current configuration generation.
pub fn generation(conn: &mut dyn Conn) -> Result<i64, StoreError> {
    Ok(
        query_one(conn, "SELECT value FROM meta WHERE key = 'generation'", &[])?
            .map(|r| r.int(0))
            .transpose()?
            .unwrap_or(0),
    )
}

pub(crate) fn check_arch(arch: &str) -> Result<(), StoreError> {
    if matches!(arch, "amd64" | "arm64") {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "arch {arch:?} is not amd64 or arm64"
        )))
    }
}

fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(StoreError::Invalid(format!(
            "{what} name {name:?} must be 1-64 characters of a-z, 0-9, '-', '_', '.'"
        )));
    }
    Ok(())
}
