//! The schema, as an ordered list of migrations, and [`migrate`].
//!
//! Contract:
//! - Migrations are append-only: migration n is applied once, recorded in `schema_migrations`,
//!   and never edited afterwards; a schema change is a new entry at the end.
//! - The same SQL runs on SQLite and PostgreSQL (TEXT and BIGINT columns only).
//! - [`migrate`] is safe to run from several processes at once: on PostgreSQL it takes a
//!   transaction-scoped advisory lock first. It seeds an empty database (`seed`).

use super::seed::seed;
use crate::db::{query_one, Backend, Conn};
use crate::params;
use crate::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: the whole model.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
     INSERT INTO meta (key, value) VALUES ('generation', 1);
     CREATE TABLE apps (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL,
        created_at BIGINT NOT NULL);
     CREATE TABLE packages (
        id TEXT PRIMARY KEY, app_id TEXT NOT NULL REFERENCES apps(id),
        version TEXT NOT NULL, arch TEXT NOT NULL, filename TEXT NOT NULL, url TEXT NOT NULL,
        size BIGINT NOT NULL, sha256_hex TEXT NOT NULL, sha1_base64 TEXT NOT NULL,
        sha256_base64 TEXT NOT NULL, created_at BIGINT NOT NULL,
        UNIQUE (app_id, version, arch));
     CREATE TABLE channels (
        id TEXT PRIMARY KEY, app_id TEXT NOT NULL REFERENCES apps(id), name TEXT NOT NULL,
        arch TEXT NOT NULL, package_id TEXT REFERENCES packages(id), created_at BIGINT NOT NULL,
        UNIQUE (app_id, name, arch));
     CREATE TABLE update_groups (
        id TEXT PRIMARY KEY, app_id TEXT NOT NULL REFERENCES apps(id), name TEXT NOT NULL,
        track TEXT NOT NULL, channel TEXT NOT NULL, description TEXT NOT NULL,
        updates_enabled BIGINT NOT NULL, safe_mode BIGINT NOT NULL,
        max_updates_per_period BIGINT NOT NULL, period_secs BIGINT NOT NULL,
        max_concurrent BIGINT NOT NULL, update_timeout_secs BIGINT NOT NULL,
        allow_downgrade BIGINT NOT NULL, timezone TEXT NOT NULL, windows TEXT NOT NULL,
        halted BIGINT NOT NULL, halted_reason TEXT, created_at BIGINT NOT NULL,
        UNIQUE (app_id, track));
     CREATE TABLE instances (
        app_id TEXT NOT NULL, machine_id TEXT NOT NULL, alias TEXT NOT NULL, ip TEXT NOT NULL,
        oem TEXT NOT NULL, version TEXT NOT NULL, track TEXT NOT NULL, group_id TEXT,
        arch TEXT NOT NULL, status TEXT NOT NULL, first_seen BIGINT NOT NULL,
        last_check BIGINT NOT NULL, granted_version TEXT, granted_at BIGINT,
        status_changed_at BIGINT NOT NULL, last_error_code BIGINT,
        PRIMARY KEY (app_id, machine_id));
     CREATE INDEX instances_group_granted ON instances (group_id, granted_at);
     CREATE INDEX instances_last_check ON instances (last_check);
     CREATE TABLE events (
        id TEXT PRIMARY KEY, app_id TEXT NOT NULL, machine_id TEXT NOT NULL, group_id TEXT,
        event_type BIGINT NOT NULL, event_result BIGINT NOT NULL, error_code BIGINT,
        previous_version TEXT, version TEXT NOT NULL, created_at BIGINT NOT NULL);
     CREATE INDEX events_created ON events (created_at);
     CREATE INDEX events_machine ON events (app_id, machine_id);
     CREATE TABLE activity (
        id TEXT PRIMARY KEY, created_at BIGINT NOT NULL, actor TEXT NOT NULL, kind TEXT NOT NULL,
        app_id TEXT, group_id TEXT, severity TEXT NOT NULL, message TEXT NOT NULL);
     CREATE INDEX activity_created ON activity (created_at);
     CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
        token_sha256 TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL);",
    // 2: mandatory intermediate versions.
    "CREATE TABLE channel_floors (
        channel_id TEXT NOT NULL REFERENCES channels(id),
        package_id TEXT NOT NULL REFERENCES packages(id), reason TEXT NOT NULL,
        created_at BIGINT NOT NULL, PRIMARY KEY (channel_id, package_id));",
    // 3: keep the grant transaction's lookups off full scans of a large fleet.
    "CREATE INDEX instances_group_status_version ON instances (group_id, status, version);
     CREATE INDEX instances_group_granted_version ON instances (group_id, granted_version);",
    // 4: events are verified against grants; safe mode halts after N distinct failures.
    "ALTER TABLE events ADD COLUMN verified BIGINT NOT NULL DEFAULT 1;
     ALTER TABLE update_groups ADD COLUMN safe_mode_failures BIGINT NOT NULL DEFAULT 1;",
    // 5: token scopes, expiry, revocation and last use. Old admin tokens stay admin, old
    // read-only tokens become read.
    "ALTER TABLE api_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'admin';
     UPDATE api_tokens SET scope = 'read' WHERE role <> 'admin';
     ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
     ALTER TABLE api_tokens ADD COLUMN revoked_at BIGINT;
     ALTER TABLE api_tokens ADD COLUMN last_used_at BIGINT;",
    // FleetLock reboot semaphores: one row per lock group (max_holders NULL = the server's
    // default), one row per leased holder.
    "CREATE TABLE fleetlock_groups (
        name TEXT PRIMARY KEY, max_holders BIGINT, grants BIGINT NOT NULL,
        created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
     CREATE TABLE fleetlock_holders (
        group_name TEXT NOT NULL REFERENCES fleetlock_groups(name), holder_id TEXT NOT NULL,
        acquired_at BIGINT NOT NULL, renewed_at BIGINT NOT NULL, expires_at BIGINT NOT NULL,
        grant_seq BIGINT NOT NULL, holders_at_grant BIGINT NOT NULL,
        PRIMARY KEY (group_name, holder_id));
     CREATE INDEX fleetlock_holders_expires ON fleetlock_holders (expires_at);",
    // The dashboard: instance pages walk an app's instances by last check without sorting; the
    // overview counts an app's events of the last day from an index alone (without it, SQLite
    // walks all of the app's events through `events_machine`). An instance's events are listed
    // newest first from `events_machine_created` (which replaces `events_machine`: with only
    // `(app_id, machine_id)`, SQLite would rather walk `events_app_created` in time order).
    "CREATE INDEX instances_app_last_check ON instances (app_id, last_check, machine_id);
     CREATE INDEX events_app_created
        ON events (app_id, created_at, group_id, event_type, event_result);
     DROP INDEX events_machine;
     CREATE INDEX events_machine_created ON events (app_id, machine_id, created_at);",
    // The dashboard's counts and pages on a large fleet (benches/dashboard.rs): covering
    // indexes for versions per group, status counts per group, filtered instance pages in
    // last-check order, an app's recent activity (the default order uses the index above);
    // version adoption per UTC day, kept by
    // `insert_event` (verified 3/2 completions), backfilled from the stored events.
    "CREATE INDEX instances_app_group_version ON instances (app_id, group_id, version);
     CREATE INDEX instances_app_group_status_check
        ON instances (app_id, group_id, status, last_check DESC, machine_id);
     CREATE INDEX instances_app_version_check
        ON instances (app_id, version, last_check DESC, machine_id);
     CREATE INDEX activity_app_created ON activity (app_id, created_at);
     CREATE TABLE version_adoption_daily (
        app_id TEXT NOT NULL, day BIGINT NOT NULL, version TEXT NOT NULL,
        completions BIGINT NOT NULL, PRIMARY KEY (app_id, day, version));
     INSERT INTO version_adoption_daily (app_id, day, version, completions)
        SELECT app_id, created_at / 86400000, version, COUNT(*) FROM events
        WHERE event_type = 3 AND event_result = 2 AND verified = 1
        GROUP BY app_id, created_at / 86400000, version;",
    // Delta payloads: one per (package, source version), hosted next to the package's file;
    // per instance the version whose delta it was last offered and the one whose delta failed
    // on it (it gets that version's full payload).
    "CREATE TABLE package_deltas (
        package_id TEXT NOT NULL REFERENCES packages(id), source_version TEXT NOT NULL,
        filename TEXT NOT NULL, size BIGINT NOT NULL, sha256_hex TEXT NOT NULL,
        sha1_base64 TEXT NOT NULL, sha256_base64 TEXT NOT NULL, created_at BIGINT NOT NULL,
        PRIMARY KEY (package_id, source_version), UNIQUE (package_id, filename));
     ALTER TABLE instances ADD COLUMN delta_served_version TEXT;
     ALTER TABLE instances ADD COLUMN delta_failed_version TEXT;",
];

/// Runs pending migrations and seeds an empty database. Safe to run from several processes.
pub fn migrate(conn: &mut dyn Conn, now: i64) -> Result<(), StoreError> {
    if conn.backend() == Backend::Postgres {
        // Serializes concurrent server starts; released at commit.
        conn.batch("SELECT pg_advisory_xact_lock(74700007)")?;
    }
    conn.batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )?;
    let applied = query_one(conn, "SELECT COUNT(*) FROM schema_migrations", &[])?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        conn.batch(sql)?;
        conn.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &params![i as i64 + 1, now],
        )?;
    }
    let apps = query_one(conn, "SELECT COUNT(*) FROM apps", &[])?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    if apps == 0 {
        seed(conn, now)?;
    }
    Ok(())
}
