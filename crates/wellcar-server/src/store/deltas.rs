//! Delta packages (`package_deltas`) and the per-instance delta state (`instances.
//! delta_served_version`, `instances.delta_failed_version`).
//!
//! Contract:
//! - A delta belongs to one package (the version it updates to) and applies to one source
//!   version (an [`OsVersion`]); (package, source version) and (package, file name) are unique
//!   ([`StoreError::Conflict`]). Its file name is a plain name other than the package's; size,
//!   hex SHA-256 and base64 SHA-1 are checked like a package's ([`check_delta_fields`]).
//! - A delta is hosted in the package's directory and served by the package file route
//!   ([`find_hosted_delta`]) only when its package is hosted.
//! - `delta_served_version` is the version whose delta this instance was last offered (cleared
//!   when it is offered that version's full payload); `delta_failed_version` is the version
//!   whose delta failed on it ([`note_delta_failure`]): it gets that version's full payload.
//!   Both are written only for packages that have deltas.

use super::packages::check_payload_filename;
use crate::db::{query_one, Conn};
use crate::model::{Package, PackageDelta};
use crate::params;
use crate::StoreError;
use wellcar_contract::OsVersion;

const DELTA_COLUMNS: &str =
    "d.package_id, d.source_version, d.filename, d.size, d.sha256_hex, d.sha1_base64, d.sha256_base64";

fn delta_from(r: &crate::db::Row) -> Result<PackageDelta, StoreError> {
    Ok(PackageDelta {
        package_id: r.text(0)?,
        source_version: r.text(1)?,
        filename: r.text(2)?,
        size: r.int(3)?,
        sha256_hex: r.text(4)?,
        sha1_base64: r.text(5)?,
        sha256_base64: r.text(6)?,
    })
}

/// A new delta of a package (the server fills the package and base64 SHA-256).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewPackageDelta {
    /// The OS version the delta applies to.
    pub source_version: String,
    /// File name, next to the package's file.
    pub filename: String,
    /// Size in bytes.
    pub size: i64,
    /// Hex SHA-256.
    pub sha256_hex: String,
    /// Base64 SHA-1.
    pub sha1_base64: String,
}

/// Checks a new delta of `package` without the database; returns the decoded SHA-256.
pub fn check_delta_fields(package: &Package, new: &NewPackageDelta) -> Result<Vec<u8>, StoreError> {
    OsVersion::parse(&new.source_version)
        .map_err(|e| StoreError::Invalid(format!("delta source version: {e}")))?;
    check_payload_filename(&new.filename)?;
    if new.filename == package.filename {
        return Err(StoreError::Invalid(format!(
            "delta file name {:?} is the full package's",
            new.filename
        )));
    }
    // The package checks cover size and hashes.
    super::check_package_fields(&super::NewPackage {
        version: package.version.clone(),
        arch: package.arch.clone(),
        filename: new.filename.clone(),
        url: String::new(),
        size: new.size,
        sha256_hex: new.sha256_hex.clone(),
        sha1_base64: new.sha1_base64.clone(),
    })
}

/// Stores a delta of `package` after [`check_delta_fields`] and logs it.
pub fn create_package_delta(
    conn: &mut dyn Conn,
    package: &Package,
    new: &NewPackageDelta,
    actor: &str,
    now: i64,
) -> Result<PackageDelta, StoreError> {
    use base64::Engine as _;
    let sha256 = check_delta_fields(package, new)?;
    let delta = PackageDelta {
        package_id: package.id.clone(),
        source_version: new.source_version.clone(),
        filename: new.filename.clone(),
        size: new.size,
        sha256_hex: new.sha256_hex.to_ascii_lowercase(),
        sha1_base64: new.sha1_base64.clone(),
        sha256_base64: base64::engine::general_purpose::STANDARD.encode(sha256),
    };
    let n = conn.execute(
        "INSERT INTO package_deltas (package_id, source_version, filename, size, sha256_hex,
            sha1_base64, sha256_base64, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        &params![
            &delta.package_id,
            &delta.source_version,
            &delta.filename,
            delta.size,
            &delta.sha256_hex,
            &delta.sha1_base64,
            &delta.sha256_base64,
            now
        ],
    )?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "package {} ({}) already has a delta from {} or a file {}",
            package.version, package.arch, delta.source_version, delta.filename
        )));
    }
    super::log_activity(
        conn,
        now,
        &super::NewActivity::app_info(
            actor,
            "package-delta-created",
            &package.app_id,
            &format!(
                "delta of package {} ({}) from {} created ({} bytes)",
                package.version, package.arch, delta.source_version, delta.size
            ),
        ),
    )?;
    Ok(delta)
}

/// The package `app_id`/`arch`/`version` (for a delta upload).
pub fn find_package_for_delta(
    conn: &mut dyn Conn,
    app_id: &str,
    version: &str,
    arch: &str,
) -> Result<Package, StoreError> {
    super::packages::find_package(conn, app_id, version, arch)
}

/// The deltas of one package, by source version.
pub fn package_deltas(
    conn: &mut dyn Conn,
    package_id: &str,
) -> Result<Vec<PackageDelta>, StoreError> {
    let sql = format!(
        "SELECT {DELTA_COLUMNS} FROM package_deltas d WHERE d.package_id = $1
         ORDER BY d.source_version"
    );
    conn.query(&sql, &params![package_id])?
        .iter()
        .map(delta_from)
        .collect()
}

/// The delta served as `/packages/{app}/{arch}/{version}/{filename}`: one of a hosted package.
pub fn find_hosted_delta(
    conn: &mut dyn Conn,
    app_id: &str,
    arch: &str,
    version: &str,
    filename: &str,
) -> Result<Option<PackageDelta>, StoreError> {
    let sql = format!(
        "SELECT {DELTA_COLUMNS} FROM package_deltas d JOIN packages p ON p.id = d.package_id
         WHERE p.app_id = $1 AND p.arch = $2 AND p.version = $3 AND d.filename = $4
           AND p.url = ''"
    );
    query_one(conn, &sql, &params![app_id, arch, version, filename])?
        .map(|r| delta_from(&r))
        .transpose()
}

/// An instance's delta state: (`delta_served_version`, `delta_failed_version`).
pub fn instance_delta_state(
    conn: &mut dyn Conn,
    app_id: &str,
    machine_id: &str,
) -> Result<(Option<String>, Option<String>), StoreError> {
    Ok(query_one(
        conn,
        "SELECT delta_served_version, delta_failed_version FROM instances
         WHERE app_id = $1 AND machine_id = $2",
        &params![app_id, machine_id],
    )?
    .map(|r| Ok::<_, StoreError>((r.opt_text(0)?, r.opt_text(1)?)))
    .transpose()?
    .unwrap_or_default())
}

/// Sets `delta_served_version` (`None`: the full payload was offered).
pub fn set_delta_served(
    conn: &mut dyn Conn,
    app_id: &str,
    machine_id: &str,
    version: Option<&str>,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE instances SET delta_served_version = $3 WHERE app_id = $1 AND machine_id = $2",
        &params![app_id, machine_id, version],
    )?;
    Ok(())
}

/// Records that the delta of `version` failed on the instance if it was served one for that
/// version. Returns whether it was.
pub fn note_delta_failure(
    conn: &mut dyn Conn,
    app_id: &str,
    machine_id: &str,
    version: &str,
) -> Result<bool, StoreError> {
    let n = conn.execute(
        "UPDATE instances SET delta_failed_version = $3
         WHERE app_id = $1 AND machine_id = $2 AND delta_served_version = $3",
        &params![app_id, machine_id, version],
    )?;
    Ok(n > 0)
}

/// Deletes one delta record (an upload whose file could not be put in place takes it back).
pub fn delete_package_delta(
    conn: &mut dyn Conn,
    package_id: &str,
    source_version: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM package_deltas WHERE package_id = $1 AND source_version = $2",
        &params![package_id, source_version],
    )?;
    Ok(())
}

/// The hosted package (no external URL) with row id `id`.
pub fn find_hosted_package_by_id(
    conn: &mut dyn Conn,
    id: &str,
) -> Result<Option<Package>, StoreError> {
    let sql = format!(
        "SELECT {} FROM packages p WHERE p.id = $1 AND p.url = ''",
        super::packages::PACKAGE_COLUMNS
    );
    query_one(conn, &sql, &params![id])?
        .map(|r| super::packages::package_from(&r, 0))
        .transpose()
}
