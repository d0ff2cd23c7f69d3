//! Schema, migrations, seed data and every database operation of the server.
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

use crate::db::{query_one, Backend, Conn, Row};
use crate::model::{
    status, Activity, App, Channel, Floor, Group, GroupPatch, Instance, Package, Policy,
};
use crate::params;
use crate::StoreError;
use wellcar_contract::OsVersion;

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
];

/// A role an API token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// May read and change everything.
    Admin,
    /// May only read.
    ReadOnly,
}

impl Role {
    /// `admin` or `read-only`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }

    /// Parses `admin` / `read-only`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "read-only" | "readonly" | "viewer" => Some(Role::ReadOnly),
            _ => None,
        }
    }
}

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

fn seed(conn: &mut dyn Conn, now: i64) -> Result<(), StoreError> {
    let app = App {
        id: wellcar_omaha::WELLCAR_APP_ID.to_owned(),
        name: "Wellcar Container Linux".into(),
        description: "The Wellcar operating system".into(),
    };
    create_app(conn, &app, now)?;
    for name in ["stable", "beta", "alpha"] {
        for arch in ["amd64", "arm64"] {
            create_channel(conn, &app.id, name, arch, now)?;
        }
        create_group(conn, &app.id, name, name, name, "", &Policy::default(), now)?;
    }
    log_activity(
        conn,
        now,
        "system",
        "seeded",
        Some(&app.id),
        None,
        "info",
        "created the Wellcar application with channels and groups stable, beta and alpha",
    )?;
    Ok(())
}

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

/// Appends to the activity log.
#[allow(clippy::too_many_arguments)]
pub fn log_activity(
    conn: &mut dyn Conn,
    now: i64,
    actor: &str,
    kind: &str,
    app_id: Option<&str>,
    group_id: Option<&str>,
    severity: &str,
    message: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO activity (id, created_at, actor, kind, app_id, group_id, severity, message)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &params![
            uuid::Uuid::new_v4().to_string(),
            now,
            actor,
            kind,
            app_id,
            group_id,
            severity,
            message
        ],
    )?;
    tracing::info!(actor, kind, severity, "{message}");
    Ok(())
}

/// Creates an application; the id is normalized (lowercase, no braces).
pub fn create_app(conn: &mut dyn Conn, app: &App, now: i64) -> Result<App, StoreError> {
    let id = wellcar_omaha::normalize_app_id(&app.id);
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(StoreError::Invalid(format!(
            "app id {:?} is not a guid",
            app.id
        )));
    }
    if find_app(conn, &id)?.is_some() {
        return Err(StoreError::Conflict(format!("app {id} already exists")));
    }
    conn.execute(
        "INSERT INTO apps (id, name, description, created_at) VALUES ($1, $2, $3, $4)",
        &params![&id, &app.name, &app.description, now],
    )?;
    bump_generation(conn)?;
    Ok(App { id, ..app.clone() })
}

/// Looks an app up by normalized id.
pub fn find_app(conn: &mut dyn Conn, id: &str) -> Result<Option<App>, StoreError> {
    let row = query_one(
        conn,
        "SELECT id, name, description FROM apps WHERE id = $1",
        &params![wellcar_omaha::normalize_app_id(id)],
    )?;
    row.map(|r| -> Result<App, StoreError> {
        Ok(App {
            id: r.text(0)?,
            name: r.text(1)?,
            description: r.text(2)?,
        })
    })
    .transpose()
}

/// Like [`find_app`] but an absent app is [`StoreError::NotFound`].
pub fn require_app(conn: &mut dyn Conn, id: &str) -> Result<App, StoreError> {
    find_app(conn, id)?.ok_or_else(|| StoreError::NotFound(format!("app {id}")))
}

/// All apps.
pub fn list_apps(conn: &mut dyn Conn) -> Result<Vec<App>, StoreError> {
    conn.query(
        "SELECT id, name, description FROM apps ORDER BY created_at, id",
        &[],
    )?
    .into_iter()
    .map(|r| {
        Ok(App {
            id: r.text(0)?,
            name: r.text(1)?,
            description: r.text(2)?,
        })
    })
    .collect()
}

fn check_arch(arch: &str) -> Result<(), StoreError> {
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

/// Creates a channel for one architecture.
pub fn create_channel(
    conn: &mut dyn Conn,
    app_id: &str,
    name: &str,
    arch: &str,
    now: i64,
) -> Result<Channel, StoreError> {
    let app = require_app(conn, app_id)?;
    check_name("channel", name)?;
    check_arch(arch)?;
    let id = stable_id(&["channel", &app.id, name, arch]);
    let n = conn.execute(
        "INSERT INTO channels (id, app_id, name, arch, package_id, created_at)
         VALUES ($1, $2, $3, $4, NULL, $5) ON CONFLICT DO NOTHING",
        &params![&id, &app.id, name, arch, now],
    )?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "channel {name}/{arch} already exists in app {}",
            app.id
        )));
    }
    bump_generation(conn)?;
    Ok(Channel {
        id,
        app_id: app.id,
        name: name.to_owned(),
        arch: arch.to_owned(),
        package: None,
        floors: Vec::new(),
    })
}

const PACKAGE_COLUMNS: &str =
    "p.id, p.app_id, p.version, p.arch, p.filename, p.url, p.size, p.sha256_hex, p.sha1_base64, p.sha256_base64";

fn package_from(r: &Row, at: usize) -> Result<Package, StoreError> {
    Ok(Package {
        id: r.text(at)?,
        app_id: r.text(at + 1)?,
        version: r.text(at + 2)?,
        arch: r.text(at + 3)?,
        filename: r.text(at + 4)?,
        url: r.text(at + 5)?,
        size: r.int(at + 6)?,
        sha256_hex: r.text(at + 7)?,
        sha1_base64: r.text(at + 8)?,
        sha256_base64: r.text(at + 9)?,
    })
}

/// All channels of an app, with their packages and floors.
pub fn list_channels(conn: &mut dyn Conn, app_id: &str) -> Result<Vec<Channel>, StoreError> {
    let app = require_app(conn, app_id)?;
    let sql = format!(
        "SELECT c.id, c.app_id, c.name, c.arch, {PACKAGE_COLUMNS}, c.package_id
         FROM channels c LEFT JOIN packages p ON p.id = c.package_id
         WHERE c.app_id = $1 ORDER BY c.name, c.arch"
    );
    let mut channels = conn
        .query(&sql, &params![&app.id])?
        .into_iter()
        .map(|r| {
            let package = match r.opt_text(14)? {
                Some(_) => Some(package_from(&r, 4)?),
                None => None,
            };
            Ok(Channel {
                id: r.text(0)?,
                app_id: r.text(1)?,
                name: r.text(2)?,
                arch: r.text(3)?,
                package,
                floors: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let sql = format!(
        "SELECT f.channel_id, f.reason, {PACKAGE_COLUMNS}
         FROM channel_floors f JOIN packages p ON p.id = f.package_id
         WHERE p.app_id = $1"
    );
    for r in conn.query(&sql, &params![&app.id])? {
        let channel_id = r.text(0)?;
        let floor = Floor {
            reason: r.text(1)?,
            package: package_from(&r, 2)?,
        };
        if let Some(c) = channels.iter_mut().find(|c| c.id == channel_id) {
            c.floors.push(floor);
        }
    }
    for c in &mut channels {
        c.floors
            .sort_by_key(|f| OsVersion::parse(&f.package.version).ok());
    }
    Ok(channels)
}

fn find_package(
    conn: &mut dyn Conn,
    app_id: &str,
    version: &str,
    arch: &str,
) -> Result<Package, StoreError> {
    let sql = format!(
        "SELECT {PACKAGE_COLUMNS} FROM packages p WHERE p.app_id = $1 AND p.version = $2 AND p.arch = $3"
    );
    query_one(conn, &sql, &params![app_id, version, arch])?
        .map(|r| package_from(&r, 0))
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("package {version} ({arch}) in app {app_id}")))
}

/// Makes a package a mandatory intermediate version (floor) of a channel.
#[allow(clippy::too_many_arguments)]
pub fn add_floor(
    conn: &mut dyn Conn,
    app_id: &str,
    channel: &str,
    version: &str,
    arch: &str,
    reason: &str,
    actor: &str,
    now: i64,
) -> Result<(), StoreError> {
    let app = require_app(conn, app_id)?;
    let package = find_package(conn, &app.id, version, arch)?;
    let channel_id = stable_id(&["channel", &app.id, channel, arch]);
    if query_one(
        conn,
        "SELECT 1 FROM channels WHERE id = $1",
        &params![&channel_id],
    )?
    .is_none()
    {
        return Err(StoreError::NotFound(format!(
            "channel {channel}/{arch} in app {}",
            app.id
        )));
    }
    let n = conn.execute(
        "INSERT INTO channel_floors (channel_id, package_id, reason, created_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        &params![&channel_id, &package.id, reason, now],
    )?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "{version} is already a floor of channel {channel} ({arch})"
        )));
    }
    log_activity(
        conn,
        now,
        actor,
        "floor-added",
        Some(&app.id),
        None,
        "info",
        &format!("{version} is now a mandatory step on channel {channel} ({arch}): {reason}"),
    )?;
    bump_generation(conn)
}

/// Removes a floor.
pub fn remove_floor(
    conn: &mut dyn Conn,
    app_id: &str,
    channel: &str,
    version: &str,
    arch: &str,
    actor: &str,
    now: i64,
) -> Result<(), StoreError> {
    let app = require_app(conn, app_id)?;
    let package = find_package(conn, &app.id, version, arch)?;
    let channel_id = stable_id(&["channel", &app.id, channel, arch]);
    let n = conn.execute(
        "DELETE FROM channel_floors WHERE channel_id = $1 AND package_id = $2",
        &params![&channel_id, &package.id],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!(
            "floor {version} on channel {channel} ({arch})"
        )));
    }
    log_activity(
        conn,
        now,
        actor,
        "floor-removed",
        Some(&app.id),
        None,
        "info",
        &format!("{version} is no longer a mandatory step on channel {channel} ({arch})"),
    )?;
    bump_generation(conn)
}

/// New package fields (the server fills `id`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewPackage {
    /// OS version ([`validate_package_version`]).
    pub version: String,
    /// Architecture.
    pub arch: String,
    /// Payload file name.
    pub filename: String,
    /// External base URL, or empty for a hosted payload.
    #[serde(default)]
    pub url: String,
    /// Size in bytes.
    pub size: i64,
    /// Hex SHA-256.
    pub sha256_hex: String,
    /// Base64 SHA-1.
    pub sha1_base64: String,
}

/// A published package's version must be an [`OsVersion`], the version `wellcar build` stamps
/// (`3815.2.0`, `4799.0.0+nightly-…`): the server orders packages by it and offers updates by
/// comparing it with the version a machine reports.
pub fn validate_package_version(version: &str) -> Result<OsVersion, StoreError> {
    OsVersion::parse(version).map_err(|e| StoreError::Invalid(format!("package version: {e}")))
}

/// Stores a package record. The version must be an OS version
/// ([`validate_package_version`]); hashes must decode.
pub fn create_package(
    conn: &mut dyn Conn,
    app_id: &str,
    new: &NewPackage,
    actor: &str,
    now: i64,
) -> Result<Package, StoreError> {
    use base64::Engine as _;
    let app = require_app(conn, app_id)?;
    check_arch(&new.arch)?;
    validate_package_version(&new.version)?;
    if new.filename.is_empty() || new.filename.contains('/') || new.filename.starts_with('.') {
        return Err(StoreError::Invalid(format!(
            "package filename {:?} must be a plain file name",
            new.filename
        )));
    }
    if new.size <= 0 {
        return Err(StoreError::Invalid(format!(
            "package size {} must be positive",
            new.size
        )));
    }
    let sha256 = hex::decode(&new.sha256_hex)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| {
            StoreError::Invalid(format!(
                "sha256_hex {:?} is not 64 hex digits",
                new.sha256_hex
            ))
        })?;
    let b64 = base64::engine::general_purpose::STANDARD;
    if b64.decode(&new.sha1_base64).map(|b| b.len()).ok() != Some(20) {
        return Err(StoreError::Invalid(format!(
            "sha1_base64 {:?} is not base64 of 20 bytes",
            new.sha1_base64
        )));
    }
    let http = new.url.starts_with("http://") || new.url.starts_with("https://");
    if !new.url.is_empty() && !http {
        return Err(StoreError::Invalid(format!(
            "package url {:?} is not http(s)",
            new.url
        )));
    }
    let package = Package {
        id: uuid::Uuid::new_v4().to_string(),
        app_id: app.id.clone(),
        version: new.version.clone(),
        arch: new.arch.clone(),
        filename: new.filename.clone(),
        url: new.url.clone(),
        size: new.size,
        sha256_hex: new.sha256_hex.to_ascii_lowercase(),
        sha1_base64: new.sha1_base64.clone(),
        sha256_base64: b64.encode(sha256),
    };
    let n = conn.execute(
        "INSERT INTO packages (id, app_id, version, arch, filename, url, size, sha256_hex,
            sha1_base64, sha256_base64, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
        &params![
            &package.id,
            &package.app_id,
            &package.version,
            &package.arch,
            &package.filename,
            &package.url,
            package.size,
            &package.sha256_hex,
            &package.sha1_base64,
            &package.sha256_base64,
            now
        ],
    )?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "package {} ({}) already exists in app {}",
            new.version, new.arch, app.id
        )));
    }
    log_activity(
        conn,
        now,
        actor,
        "package-created",
        Some(&app.id),
        None,
        "info",
        &format!("package {} ({}) created", package.version, package.arch),
    )?;
    Ok(package)
}

/// Packages of an app, newest first.
pub fn list_packages(conn: &mut dyn Conn, app_id: &str) -> Result<Vec<Package>, StoreError> {
    let app = require_app(conn, app_id)?;
    let sql = format!(
        "SELECT {PACKAGE_COLUMNS} FROM packages p WHERE p.app_id = $1 ORDER BY p.created_at DESC"
    );
    conn.query(&sql, &params![&app.id])?
        .iter()
        .map(|r| package_from(r, 0))
        .collect()
}

/// Points a channel (for the package's arch) at a package: the publish operation.
pub fn publish(
    conn: &mut dyn Conn,
    app_id: &str,
    channel: &str,
    version: &str,
    arch: &str,
    actor: &str,
    now: i64,
) -> Result<Channel, StoreError> {
    let app = require_app(conn, app_id)?;
    let package = find_package(conn, &app.id, version, arch)?;
    let n = conn.execute(
        "UPDATE channels SET package_id = $1 WHERE app_id = $2 AND name = $3 AND arch = $4",
        &params![&package.id, &app.id, channel, arch],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!(
            "channel {channel}/{arch} in app {}",
            app.id
        )));
    }
    log_activity(
        conn,
        now,
        actor,
        "channel-published",
        Some(&app.id),
        None,
        "info",
        &format!("channel {channel} ({arch}) now points at {version}"),
    )?;
    bump_generation(conn)?;
    Ok(Channel {
        id: stable_id(&["channel", &app.id, channel, arch]),
        app_id: app.id,
        name: channel.to_owned(),
        arch: arch.to_owned(),
        package: Some(package),
        floors: Vec::new(),
    })
}

const GROUP_COLUMNS: &str =
    "id, app_id, name, track, channel, description, updates_enabled, safe_mode,
    max_updates_per_period, period_secs, max_concurrent, update_timeout_secs, allow_downgrade,
    timezone, windows, halted, halted_reason";

fn group_from(r: &Row) -> Result<Group, StoreError> {
    let windows_json = r.text(14)?;
    Ok(Group {
        id: r.text(0)?,
        app_id: r.text(1)?,
        name: r.text(2)?,
        track: r.text(3)?,
        channel: r.text(4)?,
        description: r.text(5)?,
        policy: Policy {
            updates_enabled: r.bool(6)?,
            safe_mode: r.bool(7)?,
            max_updates_per_period: r.int(8)?,
            period_secs: r.int(9)?,
            max_concurrent: r.int(10)?,
            update_timeout_secs: r.int(11)?,
            allow_downgrade: r.bool(12)?,
            timezone: r.text(13)?,
            windows: serde_json::from_str(&windows_json).map_err(|e| {
                StoreError::Invalid(format!("stored windows {windows_json:?}: {e}"))
            })?,
        },
        halted: r.bool(15)?,
        halted_reason: r.opt_text(16)?,
    })
}

/// Creates a group following `channel`, selected by `track`.
#[allow(clippy::too_many_arguments)]
pub fn create_group(
    conn: &mut dyn Conn,
    app_id: &str,
    name: &str,
    track: &str,
    channel: &str,
    description: &str,
    policy: &Policy,
    now: i64,
) -> Result<Group, StoreError> {
    let app = require_app(conn, app_id)?;
    check_name("group", name)?;
    check_name("track", track)?;
    check_name("channel", channel)?;
    crate::policy::validate(policy).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let id = stable_id(&["group", &app.id, track]);
    let windows =
        serde_json::to_string(&policy.windows).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let n = conn.execute(
        "INSERT INTO update_groups (id, app_id, name, track, channel, description, updates_enabled,
            safe_mode, max_updates_per_period, period_secs, max_concurrent, update_timeout_secs,
            allow_downgrade, timezone, windows, halted, halted_reason, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 0, NULL, $16)
         ON CONFLICT DO NOTHING",
        &params![
            &id,
            &app.id,
            name,
            track,
            channel,
            description,
            policy.updates_enabled,
            policy.safe_mode,
            policy.max_updates_per_period,
            policy.period_secs,
            policy.max_concurrent,
            policy.update_timeout_secs,
            policy.allow_downgrade,
            &policy.timezone,
            windows,
            now
        ],
    )?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "group with track {track:?} already exists in app {} (use group update)",
            app.id
        )));
    }
    bump_generation(conn)?;
    find_group(conn, &app.id, track)?.ok_or_else(|| StoreError::NotFound(format!("group {track}")))
}

/// Looks a group up by app and track (or group id).
pub fn find_group(
    conn: &mut dyn Conn,
    app_id: &str,
    track_or_id: &str,
) -> Result<Option<Group>, StoreError> {
    let sql = format!(
        "SELECT {GROUP_COLUMNS} FROM update_groups WHERE app_id = $1 AND (track = $2 OR id = $2)"
    );
    query_one(
        conn,
        &sql,
        &params![wellcar_omaha::normalize_app_id(app_id), track_or_id],
    )?
    .map(|r| group_from(&r))
    .transpose()
}

/// Groups of an app.
pub fn list_groups(conn: &mut dyn Conn, app_id: &str) -> Result<Vec<Group>, StoreError> {
    let app = require_app(conn, app_id)?;
    let sql = format!("SELECT {GROUP_COLUMNS} FROM update_groups WHERE app_id = $1 ORDER BY track");
    conn.query(&sql, &params![&app.id])?
        .iter()
        .map(group_from)
        .collect()
}

/// Every group of every app (for the in-memory configuration).
pub fn all_groups(conn: &mut dyn Conn) -> Result<Vec<Group>, StoreError> {
    let sql = format!("SELECT {GROUP_COLUMNS} FROM update_groups");
    conn.query(&sql, &[])?.iter().map(group_from).collect()
}

/// Every channel of every app with its package (for the in-memory configuration).
pub fn all_channels(conn: &mut dyn Conn) -> Result<Vec<Channel>, StoreError> {
    let mut out = Vec::new();
    for app in list_apps(conn)? {
        out.extend(list_channels(conn, &app.id)?);
    }
    Ok(out)
}

/// Applies a patch to a group, logging who changed what. Resuming (`updates_enabled: true`)
/// also releases the safe-mode brake.
pub fn update_group(
    conn: &mut dyn Conn,
    app_id: &str,
    track: &str,
    patch: &GroupPatch,
    actor: &str,
    now: i64,
) -> Result<Group, StoreError> {
    let sql = format!(
        "SELECT {GROUP_COLUMNS} FROM update_groups WHERE app_id = $1 AND (track = $2 OR id = $2){}",
        conn.for_update()
    );
    let old = query_one(
        conn,
        &sql,
        &params![wellcar_omaha::normalize_app_id(app_id), track],
    )?
    .map(|r| group_from(&r))
    .transpose()?
    .ok_or_else(|| StoreError::NotFound(format!("group {track} in app {app_id}")))?;
    let mut g = old.clone();
    let p = &mut g.policy;
    if let Some(v) = &patch.name {
        check_name("group", v)?;
        g.name = v.clone();
    }
    if let Some(v) = &patch.channel {
        check_name("channel", v)?;
        g.channel = v.clone();
    }
    if let Some(v) = &patch.description {
        g.description = v.clone();
    }
    if let Some(v) = patch.updates_enabled {
        p.updates_enabled = v;
    }
    if let Some(v) = patch.safe_mode {
        p.safe_mode = v;
    }
    if let Some(v) = patch.max_updates_per_period {
        p.max_updates_per_period = v;
    }
    if let Some(v) = patch.period_secs {
        p.period_secs = v;
    }
    if let Some(v) = patch.max_concurrent {
        p.max_concurrent = v;
    }
    if let Some(v) = patch.update_timeout_secs {
        p.update_timeout_secs = v;
    }
    if let Some(v) = patch.allow_downgrade {
        p.allow_downgrade = v;
    }
    if let Some(v) = &patch.timezone {
        p.timezone = v.clone();
    }
    if let Some(v) = &patch.windows {
        p.windows = v.clone();
    }
    crate::policy::validate(&g.policy).map_err(|e| StoreError::Invalid(e.to_string()))?;
    if patch.updates_enabled == Some(true) {
        g.halted = false;
        g.halted_reason = None;
    }
    let windows =
        serde_json::to_string(&g.policy.windows).map_err(|e| StoreError::Invalid(e.to_string()))?;
    conn.execute(
        "UPDATE update_groups SET name = $1, channel = $2, description = $3, updates_enabled = $4,
            safe_mode = $5, max_updates_per_period = $6, period_secs = $7, max_concurrent = $8,
            update_timeout_secs = $9, allow_downgrade = $10, timezone = $11, windows = $12,
            halted = $13, halted_reason = $14
         WHERE id = $15",
        &params![
            &g.name,
            &g.channel,
            &g.description,
            g.policy.updates_enabled,
            g.policy.safe_mode,
            g.policy.max_updates_per_period,
            g.policy.period_secs,
            g.policy.max_concurrent,
            g.policy.update_timeout_secs,
            g.policy.allow_downgrade,
            &g.policy.timezone,
            windows,
            g.halted,
            g.halted_reason.clone(),
            &g.id
        ],
    )?;
    let changes = describe_changes(&old, &g);
    let kind = match patch.updates_enabled {
        Some(true) if !old.policy.updates_enabled || old.halted => "group-resumed",
        Some(false) if old.policy.updates_enabled => "group-paused",
        _ => "group-updated",
    };
    log_activity(
        conn,
        now,
        actor,
        kind,
        Some(&g.app_id),
        Some(&g.id),
        "info",
        &format!("group {} changed: {changes}", g.track),
    )?;
    bump_generation(conn)?;
    Ok(g)
}

fn describe_changes(old: &Group, new: &Group) -> String {
    let a = serde_json::to_value(old).unwrap_or_default();
    let b = serde_json::to_value(new).unwrap_or_default();
    let mut out = Vec::new();
    let flatten = |v: &serde_json::Value| -> Vec<(String, serde_json::Value)> {
        let mut items = Vec::new();
        if let Some(map) = v.as_object() {
            for (k, v) in map {
                match v.as_object() {
                    Some(inner) => {
                        for (ik, iv) in inner {
                            items.push((ik.clone(), iv.clone()));
                        }
                    }
                    None => items.push((k.clone(), v.clone())),
                }
            }
        }
        items
    };
    let before = flatten(&a);
    for (k, v) in flatten(&b) {
        if let Some((_, old_v)) = before.iter().find(|(ok, _)| *ok == k) {
            if *old_v != v {
                out.push(format!("{k} {old_v} -> {v}"));
            }
        }
    }
    if out.is_empty() {
        "nothing".into()
    } else {
        out.join(", ")
    }
}

/// Sets the safe-mode brake on a group if it is not set yet. Returns whether this call halted it.
pub fn halt_group(
    conn: &mut dyn Conn,
    group_id: &str,
    app_id: &str,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let n = conn.execute(
        "UPDATE update_groups SET halted = 1, halted_reason = $1 WHERE id = $2 AND halted = 0",
        &params![reason, group_id],
    )?;
    if n == 1 {
        log_activity(
            conn,
            now,
            "system",
            "group-halted",
            Some(app_id),
            Some(group_id),
            "error",
            &format!("group halted: {reason}"),
        )?;
        bump_generation(conn)?;
    }
    Ok(n == 1)
}

const INSTANCE_COLUMNS: &str = "app_id, machine_id, alias, ip, oem, version, track, group_id, arch,
    status, last_check, granted_version, granted_at, last_error_code";

fn instance_from(r: &Row) -> Result<Instance, StoreError> {
    Ok(Instance {
        app_id: r.text(0)?,
        machine_id: r.text(1)?,
        alias: r.text(2)?,
        ip: r.text(3)?,
        oem: r.text(4)?,
        version: r.text(5)?,
        track: r.text(6)?,
        group_id: r.opt_text(7)?,
        arch: r.text(8)?,
        status: r.text(9)?,
        last_check: r.int(10)?,
        granted_version: r.opt_text(11)?,
        granted_at: r.opt_int(12)?,
        last_error_code: r.opt_int(13)?,
    })
}

/// Reads one instance.
pub fn find_instance(
    conn: &mut dyn Conn,
    app_id: &str,
    machine_id: &str,
    lock: bool,
) -> Result<Option<Instance>, StoreError> {
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE app_id = $1 AND machine_id = $2{}",
        if lock { conn.for_update() } else { "" }
    );
    query_one(conn, &sql, &params![app_id, machine_id])?
        .map(|r| instance_from(&r))
        .transpose()
}

/// Filter for listing instances.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct InstanceFilter {
    /// Only this group (track or id).
    pub group: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// At most this many (default 1000).
    pub limit: Option<i64>,
}

/// Lists instances of an app, most recently seen first.
pub fn list_instances(
    conn: &mut dyn Conn,
    app_id: &str,
    filter: &InstanceFilter,
) -> Result<Vec<Instance>, StoreError> {
    let app = require_app(conn, app_id)?;
    let group_id = match &filter.group {
        Some(g) => Some(
            find_group(conn, &app.id, g)?
                .ok_or_else(|| StoreError::NotFound(format!("group {g}")))?
                .id,
        ),
        None => None,
    };
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE app_id = $1
           AND ($2 = '' OR group_id = $2) AND ($3 = '' OR status = $3)
         ORDER BY last_check DESC, machine_id LIMIT $4"
    );
    conn.query(
        &sql,
        &params![
            &app.id,
            group_id.unwrap_or_default(),
            filter.status.clone().unwrap_or_default(),
            filter.limit.unwrap_or(1000).clamp(1, 100_000)
        ],
    )?
    .iter()
    .map(instance_from)
    .collect()
}

/// Instance facts from one check-in, queued for a batched write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// App.
    pub app_id: String,
    /// Machine id.
    pub machine_id: String,
    /// Alias.
    pub alias: String,
    /// Client IP.
    pub ip: String,
    /// OEM.
    pub oem: String,
    /// Version.
    pub version: String,
    /// Track.
    pub track: String,
    /// Group id.
    pub group_id: Option<String>,
    /// Arch.
    pub arch: String,
    /// When (unix ms).
    pub at: i64,
}

/// Writes queued sightings: creates new instances, refreshes facts and `last_check` of known
/// ones, and completes an in-progress update once the instance reports the granted version.
pub fn upsert_sightings(conn: &mut dyn Conn, sightings: &[Sighting]) -> Result<(), StoreError> {
    for s in sightings {
        conn.execute(
            "INSERT INTO instances (app_id, machine_id, alias, ip, oem, version, track, group_id,
                arch, status, first_seen, last_check, status_changed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $11)
             ON CONFLICT (app_id, machine_id) DO UPDATE SET
                alias = excluded.alias, ip = excluded.ip, oem = excluded.oem,
                version = excluded.version, track = excluded.track, group_id = excluded.group_id,
                arch = excluded.arch,
                last_check = CASE WHEN excluded.last_check > instances.last_check
                    THEN excluded.last_check ELSE instances.last_check END,
                status = CASE WHEN instances.status IN ('granted', 'downloading', 'downloaded', 'installed')
                    AND instances.granted_version = excluded.version THEN 'complete' ELSE instances.status END",
            &params![
                &s.app_id,
                &s.machine_id,
                &s.alias,
                &s.ip,
                &s.oem,
                &s.version,
                &s.track,
                s.group_id.clone(),
                &s.arch,
                status::UNDEFINED,
                s.at
            ],
        )?;
    }
    Ok(())
}

/// Counters for the grant decision (see [`crate::policy::RolloutCounters`]).
pub fn rollout_counters(
    conn: &mut dyn Conn,
    group: &Group,
    target_version: &str,
    now: i64,
) -> Result<crate::policy::RolloutCounters, StoreError> {
    let p = &group.policy;
    let mut counters = crate::policy::RolloutCounters::default();
    // Each count is an index range scan over recent grants (instances_group_granted), never a
    // scan of the whole fleet; counts no limit needs are skipped.
    let count =
        |conn: &mut dyn Conn, sql: &str, params: &[crate::db::Value]| -> Result<i64, StoreError> {
            Ok(query_one(conn, sql, params)?
                .map(|r| r.int(0))
                .transpose()?
                .unwrap_or(0))
        };
    if p.max_updates_per_period > 0 {
        counters.granted_in_period = count(
            conn,
            "SELECT COUNT(*) FROM instances WHERE group_id = $1 AND granted_at >= $2",
            &params![&group.id, now - p.period_secs * 1000],
        )?;
    }
    if p.max_concurrent > 0 || p.safe_mode {
        counters.in_progress = count(
            conn,
            "SELECT COUNT(*) FROM instances WHERE group_id = $1 AND granted_at >= $2
               AND status IN ('granted', 'downloading', 'downloaded', 'installed')",
            &params![&group.id, now - p.update_timeout_secs * 1000],
        )?;
    }
    if p.safe_mode {
        // Only "has anyone succeeded yet" matters (instances_group_status_version).
        counters.succeeded_on_target = i64::from(
            query_one(
                conn,
                "SELECT 1 FROM instances WHERE group_id = $1 AND status = 'complete' AND version = $2 LIMIT 1",
                &params![&group.id, target_version],
            )?
            .is_some(),
        );
    }
    Ok(counters)
}

/// Re-reads a group's rollout state with a row lock (PostgreSQL) inside the grant transaction.
pub fn lock_group(conn: &mut dyn Conn, group_id: &str) -> Result<Option<Group>, StoreError> {
    let sql = format!(
        "SELECT {GROUP_COLUMNS} FROM update_groups WHERE id = $1{}",
        conn.for_update()
    );
    query_one(conn, &sql, &params![group_id])?
        .map(|r| group_from(&r))
        .transpose()
}

/// Records a grant on an instance (creating the row if this is its first check).
pub fn record_grant(
    conn: &mut dyn Conn,
    s: &Sighting,
    version: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO instances (app_id, machine_id, alias, ip, oem, version, track, group_id, arch,
            status, first_seen, last_check, granted_version, granted_at, status_changed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'granted', $10, $10, $11, $10, $10)
         ON CONFLICT (app_id, machine_id) DO UPDATE SET
            alias = excluded.alias, ip = excluded.ip, oem = excluded.oem, version = excluded.version,
            track = excluded.track, group_id = excluded.group_id, arch = excluded.arch,
            status = 'granted', last_check = excluded.last_check,
            granted_version = excluded.granted_version, granted_at = excluded.granted_at,
            status_changed_at = excluded.status_changed_at, last_error_code = NULL",
        &params![
            &s.app_id,
            &s.machine_id,
            &s.alias,
            &s.ip,
            &s.oem,
            &s.version,
            &s.track,
            s.group_id.clone(),
            &s.arch,
            now,
            version
        ],
    )?;
    Ok(())
}

/// Whether any instance of the group was ever granted `version`.
pub fn version_granted_before(
    conn: &mut dyn Conn,
    group_id: &str,
    version: &str,
) -> Result<bool, StoreError> {
    Ok(query_one(
        conn,
        "SELECT 1 FROM instances WHERE group_id = $1 AND granted_version = $2 LIMIT 1",
        &params![group_id, version],
    )?
    .is_some())
}

/// Stores one event row.
#[allow(clippy::too_many_arguments)]
pub fn insert_event(
    conn: &mut dyn Conn,
    app_id: &str,
    machine_id: &str,
    group_id: Option<&str>,
    event: &wellcar_omaha::Event,
    version: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO events (id, app_id, machine_id, group_id, event_type, event_result,
            error_code, previous_version, version, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &params![
            uuid::Uuid::new_v4().to_string(),
            app_id,
            machine_id,
            group_id,
            i64::from(event.event_type),
            i64::from(event.event_result),
            event.error_code.map(|c| i64::from(c.raw)),
            event.previous_version.clone(),
            version,
            now
        ],
    )?;
    Ok(())
}

/// Sets an instance's status (and optionally version and error code).
pub fn set_instance_status(
    conn: &mut dyn Conn,
    app_id: &str,
    machine_id: &str,
    new_status: &str,
    version: Option<&str>,
    error_code: Option<i64>,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE instances SET status = $1, status_changed_at = $2,
            version = CASE WHEN $3 = '' THEN version ELSE $3 END,
            last_error_code = CASE WHEN $4 < 0 THEN last_error_code ELSE $4 END
         WHERE app_id = $5 AND machine_id = $6",
        &params![
            new_status,
            now,
            version.unwrap_or(""),
            error_code.unwrap_or(-1),
            app_id,
            machine_id
        ],
    )?;
    Ok(())
}

/// An update that ran past its group's timeout.
#[derive(Debug, Clone)]
pub struct TimedOut {
    /// App.
    pub app_id: String,
    /// Machine.
    pub machine_id: String,
    /// Group.
    pub group_id: String,
    /// Version granted.
    pub granted_version: String,
    /// Whether the group is in safe mode.
    pub safe_mode: bool,
}

/// Marks updates that exceeded their group's timeout as `timeout`; returns them.
pub fn sweep_timeouts(conn: &mut dyn Conn, now: i64) -> Result<Vec<TimedOut>, StoreError> {
    let rows = conn.query(
        "SELECT i.app_id, i.machine_id, g.id, i.granted_version, g.safe_mode
         FROM instances i JOIN update_groups g ON g.id = i.group_id
         WHERE i.status IN ('granted', 'downloading', 'downloaded', 'installed')
           AND i.granted_at < $1 - g.update_timeout_secs * 1000",
        &params![now],
    )?;
    let mut out = Vec::new();
    for r in rows {
        let t = TimedOut {
            app_id: r.text(0)?,
            machine_id: r.text(1)?,
            group_id: r.text(2)?,
            granted_version: r.opt_text(3)?.unwrap_or_default(),
            safe_mode: r.bool(4)?,
        };
        let n = conn.execute(
            "UPDATE instances SET status = 'timeout', status_changed_at = $1
             WHERE app_id = $2 AND machine_id = $3
               AND status IN ('granted', 'downloading', 'downloaded', 'installed')",
            &params![now, &t.app_id, &t.machine_id],
        )?;
        if n == 1 {
            out.push(t);
        }
    }
    Ok(out)
}

/// Retention cut-offs (unix ms); rows older than these are deleted.
#[derive(Debug, Clone, Copy)]
pub struct RetentionCutoffs {
    /// Events created before this.
    pub events_before: i64,
    /// Activity created before this.
    pub activity_before: i64,
    /// Instances not seen since this (and not updating).
    pub instances_before: i64,
}

/// Rows deleted by [`prune`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pruned {
    /// Events deleted.
    pub events: u64,
    /// Activity entries deleted.
    pub activity: u64,
    /// Instances deleted.
    pub instances: u64,
}

/// Deletes old events, activity and instances that stopped checking in.
pub fn prune(conn: &mut dyn Conn, cut: RetentionCutoffs) -> Result<Pruned, StoreError> {
    Ok(Pruned {
        events: conn.execute(
            "DELETE FROM events WHERE created_at < $1",
            &params![cut.events_before],
        )?,
        activity: conn.execute(
            "DELETE FROM activity WHERE created_at < $1",
            &params![cut.activity_before],
        )?,
        instances: conn.execute(
            "DELETE FROM instances WHERE last_check < $1
               AND status NOT IN ('granted', 'downloading', 'downloaded', 'installed')",
            &params![cut.instances_before],
        )?,
    })
}

/// The activity log, newest first.
pub fn list_activity(
    conn: &mut dyn Conn,
    app_id: Option<&str>,
    limit: i64,
) -> Result<Vec<Activity>, StoreError> {
    conn.query(
        "SELECT created_at, actor, kind, app_id, group_id, severity, message FROM activity
         WHERE ($1 = '' OR app_id = $1) ORDER BY created_at DESC, id LIMIT $2",
        &params![
            app_id
                .map(wellcar_omaha::normalize_app_id)
                .unwrap_or_default(),
            limit.clamp(1, 100_000)
        ],
    )?
    .iter()
    .map(|r| {
        Ok(Activity {
            created_at: r.int(0)?,
            actor: r.text(1)?,
            kind: r.text(2)?,
            app_id: r.opt_text(3)?,
            group_id: r.opt_text(4)?,
            severity: r.text(5)?,
            message: r.text(6)?,
        })
    })
    .collect()
}

/// Number of stored events (for tests and metrics).
pub fn count_events(conn: &mut dyn Conn) -> Result<i64, StoreError> {
    Ok(query_one(conn, "SELECT COUNT(*) FROM events", &[])?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0))
}

/// One `/metrics` sample: app, version, group track, status, instance count.
pub type InstanceCount = (String, String, String, String, i64);

/// Instance counts by app, version, group track and status (for `/metrics`).
pub fn instance_breakdown(conn: &mut dyn Conn) -> Result<Vec<InstanceCount>, StoreError> {
    conn.query(
        "SELECT i.app_id, i.version, COALESCE(g.track, ''), i.status, COUNT(*)
         FROM instances i LEFT JOIN update_groups g ON g.id = i.group_id
         GROUP BY i.app_id, i.version, g.track, i.status",
        &[],
    )?
    .iter()
    .map(|r| Ok((r.text(0)?, r.text(1)?, r.text(2)?, r.text(3)?, r.int(4)?)))
    .collect()
}

fn token_hash(token: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Creates an API token and returns its secret; only its SHA-256 is stored.
pub fn create_token(
    conn: &mut dyn Conn,
    name: &str,
    role: Role,
    now: i64,
) -> Result<String, StoreError> {
    check_name("token", name)?;
    let secret = format!(
        "wct_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let n = conn.execute(
        "INSERT INTO api_tokens (id, name, role, token_sha256, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        &params![
            uuid::Uuid::new_v4().to_string(),
            name,
            role.as_str(),
            token_hash(&secret),
            now
        ],
    )?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "token {name:?} already exists"
        )));
    }
    log_activity(
        conn,
        now,
        "system",
        "token-created",
        None,
        None,
        "info",
        &format!("api token {name:?} ({}) created", role.as_str()),
    )?;
    Ok(secret)
}

/// Resolves a bearer token to its name and role.
pub fn check_token(conn: &mut dyn Conn, token: &str) -> Result<Option<(String, Role)>, StoreError> {
    let row = query_one(
        conn,
        "SELECT name, role FROM api_tokens WHERE token_sha256 = $1",
        &params![token_hash(token)],
    )?;
    match row {
        Some(r) => Ok(Role::parse(&r.text(1)?).map(|role| (r.text(0).unwrap_or_default(), role))),
        None => Ok(None),
    }
}
