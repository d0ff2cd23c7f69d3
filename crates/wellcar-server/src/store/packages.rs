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
//! - [`packages_matching`] lists one app's packages for one arch whose version matches an
//!   Omaha `targetversionprefix` ([`crate::pinning::TargetVersion`]), newest first by
//!   [`OsVersion`]; the same query on SQLite and PostgreSQL (a `LIKE` on the prefix's text,
//!   escaped, then the exact component match in Rust).

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

/// Packages of `app_id` for `arch` whose version matches `target`, newest first by
/// [`OsVersion`] (versions that do not parse, which no store path writes, are left out).
pub fn packages_matching(
    conn: &mut dyn Conn,
    app_id: &str,
    arch: &str,
    target: &crate::pinning::TargetVersion,
) -> Result<Vec<Package>, StoreError> {
    // like_pattern wraps the escaped text in `%…%`; a prefix needs only the trailing one.
    let pattern = super::like_pattern(target.leading_text())[1..].to_owned();
    let sql = format!(
        "SELECT {PACKAGE_COLUMNS} FROM packages p
         WHERE p.app_id = $1 AND p.arch = $2 AND p.version LIKE $3 ESCAPE '\\'"
    );
    let mut found: Vec<(OsVersion, Package)> = Vec::new();
    for row in conn.query(&sql, &params![app_id, arch, &pattern])? {
        let p = package_from(&row, 0)?;
        if !target.matches(&p.version) {
            continue;
        }
        if let Ok(v) = OsVersion::parse(&p.version) {
            found.push((v, p));
        }
    }
    found.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(found.into_iter().map(|(_, p)| p).collect())
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
         AND NOT EXISTS (SELECT 1 FROM channel_floors WHERE package_id = $1)
         AND NOT EXISTS (SELECT 1 FROM package_deltas WHERE package_id = $1)",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pinning::TargetVersion;
    use crate::store;

    const APP: &str = wellcar_omaha::WELLCAR_APP_ID;

    fn new_package(version: &str, arch: &str) -> NewPackage {
        NewPackage {
            version: version.into(),
            arch: arch.into(),
            filename: "wellcar_update.bin".into(),
            url: "https://example.test/p/".into(),
            size: 1,
            sha256_hex: "ab".repeat(32),
            sha1_base64: "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
        }
    }

    /// `packages_matching` on one database: component-boundary matches of one app and arch,
    /// newest first by OS version (not by creation order or text).
    fn packages_match_prefixes_on(url: &str) {
        let db = crate::db::Db::open(url, 2).unwrap();
        let now = 1_000_000;
        db.write_blocking(|c| {
            store::migrate(c, now)?;
            for (v, arch) in [
                ("1.1.10", "amd64"),
                ("1.1.0", "amd64"),
                ("1.1.9", "amd64"),
                ("1.10.0", "amd64"),
                ("1.1.99", "arm64"),
                ("1.1.2+nightly-7", "amd64"),
                ("2.1.0", "amd64"),
            ] {
                create_package(c, APP, &new_package(v, arch), "test", now)?;
            }
            let versions = |c: &mut dyn Conn, arch: &str, prefix: &str| {
                let t = TargetVersion::parse(prefix).unwrap();
                packages_matching(c, APP, arch, &t)
                    .map(|ps| ps.into_iter().map(|p| p.version).collect::<Vec<_>>())
            };
            assert_eq!(
                versions(c, "amd64", "1.1")?,
                ["1.1.10", "1.1.9", "1.1.2+nightly-7", "1.1.0"]
            );
            assert_eq!(versions(c, "amd64", "1.10")?, ["1.10.0"]);
            assert_eq!(versions(c, "arm64", "1.1")?, ["1.1.99"]);
            assert_eq!(versions(c, "amd64", "1.1.2")?, ["1.1.2+nightly-7"]);
            assert_eq!(versions(c, "amd64", "1.1.1$")?, Vec::<String>::new());
            assert_eq!(versions(c, "amd64", "1.1.10$")?, ["1.1.10"]);
            assert_eq!(versions(c, "amd64", "3")?, Vec::<String>::new());
            assert_eq!(
                packages_matching(
                    c,
                    "no-such-app",
                    "amd64",
                    &TargetVersion::parse("1").unwrap()
                )?,
                Vec::new()
            );
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn packages_match_prefixes_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        packages_match_prefixes_on(&format!("sqlite:{}", dir.path().join("d.db").display()));
    }

    #[test]
    fn packages_match_prefixes_on_postgres() {
        let cluster = wellcar_test_support::pg_cluster::shared_cluster()
            .unwrap_or_else(|e| panic!("postgresql tests need a server: {e}"));
        packages_match_prefixes_on(&cluster.create_database().unwrap());
    }
}
