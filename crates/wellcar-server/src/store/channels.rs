//! Channels (`channels`) with their floors (`channel_floors`), and publishing.
//!
//! Contract:
//! - A channel is (app, name, arch) with a fixed id derived from those; it points at no package
//!   or at one package of its arch. [`publish`] moves the pointer.
//! - A floor makes a package a mandatory intermediate version of a channel; floors are listed
//!   in OS-version order.
//! - Every change bumps the configuration generation. Floor changes and publishing are logged in
//!   the activity log here; creating a channel is logged by the caller.

use super::packages::{find_package, package_from, PACKAGE_COLUMNS};
use super::{
    bump_generation, check_arch, check_name, list_apps, log_activity, require_app, stable_id,
    NewActivity,
};
use crate::db::{query_one, Conn};
use crate::model::{Channel, Floor};
use crate::params;
use crate::StoreError;
use wellcar_contract::OsVersion;

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

/// A floor to add ([`add_floor`]): the package of `version` and `arch` becomes a mandatory
/// intermediate version of `channel`.
#[derive(Debug, Clone, Copy)]
pub struct NewFloor<'a> {
    /// Channel name.
    pub channel: &'a str,
    /// Package version (the package must exist).
    pub version: &'a str,
    /// Architecture (of the channel and the package).
    pub arch: &'a str,
    /// Why machines must pass through this version.
    pub reason: &'a str,
}

/// Makes a package a mandatory intermediate version (floor) of a channel.
pub fn add_floor(
    conn: &mut dyn Conn,
    app_id: &str,
    floor: &NewFloor<'_>,
    actor: &str,
    now: i64,
) -> Result<(), StoreError> {
    let NewFloor {
        channel,
        version,
        arch,
        reason,
    } = *floor;
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
    let message =
        format!("{version} is now a mandatory step on channel {channel} ({arch}): {reason}");
    log_activity(
        conn,
        now,
        &NewActivity::app_info(actor, "floor-added", &app.id, &message),
    )?;
    bump_generation(conn)
}

/// A package version on a channel of one arch: what a publish points the channel at, or a
/// floor of the channel.
#[derive(Debug, Clone, Copy)]
pub struct ChannelPackage<'a> {
    /// Channel name.
    pub channel: &'a str,
    /// Package version (the package must exist).
    pub version: &'a str,
    /// Architecture (of the channel and the package).
    pub arch: &'a str,
}

/// Removes a floor.
pub fn remove_floor(
    conn: &mut dyn Conn,
    app_id: &str,
    floor: &ChannelPackage<'_>,
    actor: &str,
    now: i64,
) -> Result<(), StoreError> {
    let ChannelPackage {
        channel,
        version,
        arch,
    } = *floor;
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
    let message = format!("{version} is no longer a mandatory step on channel {channel} ({arch})");
    log_activity(
        conn,
        now,
        &NewActivity::app_info(actor, "floor-removed", &app.id, &message),
    )?;
    bump_generation(conn)
}

/// Points a channel (for the package's arch) at a package: the publish operation.
pub fn publish(
    conn: &mut dyn Conn,
    app_id: &str,
    target: &ChannelPackage<'_>,
    actor: &str,
    now: i64,
) -> Result<Channel, StoreError> {
    let ChannelPackage {
        channel,
        version,
        arch,
    } = *target;
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
    let message = format!("channel {channel} ({arch}) now points at {version}");
    log_activity(
        conn,
        now,
        &NewActivity::app_info(actor, "channel-published", &app.id, &message),
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

/// Every channel of every app with its package (for the in-memory configuration).
pub fn all_channels(conn: &mut dyn Conn) -> Result<Vec<Channel>, StoreError> {
    let mut out = Vec::new();
    for app in list_apps(conn)? {
        out.extend(list_channels(conn, &app.id)?);
    }
    Ok(out)
}
