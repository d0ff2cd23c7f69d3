//! Packages (`packages`): one payload of one OS version for one architecture.
//!
//! Contract:
//! - A package's version is an OS version ([`validate_package_version`]); its file name is a
//!   plain name, its size positive, its hashes decode (hex SHA-256, base64 SHA-1) and its URL,
//!   if any, is http(s). Rejections are [`StoreError::Invalid`].
//!   [`check_package_fields`] checks all of this without the database, so an upload can be
//!   refused before anything is stored.
//! - (app, version, arch) is unique; a duplicate is [`StoreError::Conflict`].
//! - A hosted package (empty URL) is the only thing `/packages/{app}/{arch}/{version}/{filename}`
//!   serves ([`find_hosted_package`]). `/metrics` names only versions that have a package
//!   ([`published_versions`]).
//! - The column list and row decoding are shared with `channels`, which joins packages.

use super::{check_arch, log_activity, require_app, NewActivity};
use crate::db::{query_one, Conn, Row};
use crate::model::Package;
use crate::params;
use crate::StoreError;
use wellcar_contract::OsVersion;

pub(super) const PACKAGE_COLUMNS: &str =
    "p.id, p.app_id, p.version, p.arch, p.filename, p.url, p.size, p.sha256_hex, p.sha1_base64, p.sha256_base64";

pub(super) fn package_from(r: &Row, at: usize) -> Result<Package, StoreError> {
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

pub(super) fn find_package(
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

/// New package fields (the server fills `id`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
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

/// Checks every field of a new package without touching the database: arch, version
/// ([`validate_package_version`]), file name (a plain name: no `/`, `\\`, NUL or leading dot,
/// at most 255 bytes), positive size, hashes that decode, http(s) URL if any. Uploads call this
/// before anything is stored. Returns the decoded SHA-256.
pub fn check_package_fields(new: &NewPackage) -> Result<Vec<u8>, StoreError> {
    use base64::Engine as _;
    check_arch(&new.arch)?;
    validate_package_version(&new.version)?;
    check_payload_filename(&new.filename)?;
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
    Ok(sha256)
}

/// A payload file name must be one plain path segment that is not hidden.
pub(crate) fn check_payload_filename(filename: &str) -> Result<(), StoreError> {
    let plain = !filename.is_empty()
        && filename.len() <= 255
        && !filename.starts_with('.')
        && !filename.contains(['/', '\\', '\0']);
    if plain {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "package filename {filename:?} must be a plain file name (no '/', no leading '.')"
        )))
    }
}

/// Stores a package record after [`check_package_fields`].
pub fn create_package(
    conn: &mut dyn Conn,
    app_id: &str,
    new: &NewPackage,
    actor: &str,
    now: i64,
) -> Result<Package, StoreError> {
    use base64::Engine as _;
    let app = require_app(conn, app_id)?;
    let sha256 = check_package_fields(new)?;
    let b64 = base64::engine::general_purpose::STANDARD;
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
        &NewActivity::app_info(
            actor,
            "package-created",
            &app.id,
            &format!("package {} ({}) created", package.version, package.arch),
        ),
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

/// The hosted package (no external URL) of `app_id` served as `arch/version/filename`, if any.
pub fn find_hosted_package(
    conn: &mut dyn Conn,
    app_id: &str,
    arch: &str,
    version: &str,
    filename: &str,
) -> Result<Option<Package>, StoreError> {
    let sql = format!(
        "SELECT {PACKAGE_COLUMNS} FROM packages p
         WHERE p.app_id = $1 AND p.arch = $2 AND p.version = $3 AND p.filename = $4 AND p.url = ''"
    );
    query_one(conn, &sql, &params![app_id, arch, version, filename])?
        .map(|r| package_from(&r, 0))
        .transpose()
}

/// Deletes package `id` if no channel or floor points at it (an upload whose file could not be
/// put in place takes its record back).
pub(crate) fn delete_unused_package(conn: &mut dyn Conn, id: &str) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM packages WHERE id = $1
         AND NOT EXISTS (SELECT 1 FROM channels WHERE package_id = $1)
         AND NOT EXISTS (SELECT 1 FROM channel_floors WHERE package_id = $1)",
        &params![id],
    )?;
    Ok(())
}

/// Every (app id, version) that has a package: the versions `/metrics` may name.
pub fn published_versions(conn: &mut dyn Conn) -> Result<Vec<(String, String)>, StoreError> {
    conn.query("SELECT DISTINCT app_id, version FROM packages", &[])?
        .iter()
        .map(|r| Ok((r.text(0)?, r.text(1)?)))
        .collect()
}
