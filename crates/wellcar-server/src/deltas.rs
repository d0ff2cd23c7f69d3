//! Delta payloads on the update server: which payload a granted instance is offered, the
//! fallback after a failed delta, and the delta upload.
//!
//! Contract:
//! - [`choose_payload`] is the whole decision, pure: the granted package's delta whose
//!   `source_version` is the instance's reported version (text equality), unless the package is
//!   not hosted or this instance's delta for this target version failed
//!   (`delta_failed_version`); otherwise the full package. A package without deltas is always
//!   offered in full, and nothing about it is read or written beyond one lookup of its deltas:
//!   its answers are the ones of a server without deltas.
//! - [`choose_in_grant`] runs it inside the grant transaction and records the offer: the
//!   first offer of a delta to an instance for a version logs `delta-served` in the activity
//!   log (`GET /api/v1/activity`, the dashboard) and sets `delta_served_version`; a later full
//!   offer of that version clears it and logs `delta-fallback`.
//! - [`note_failure`]: a verified `3/0` event (any error code) from an instance served a delta
//!   for its granted version sets `delta_failed_version` and logs `delta-failed`; its next
//!   check for that version gets the full payload. Such a failure is not an update failure:
//!   the instance stays `granted` (the event's error code is kept), it does not count towards
//!   the group's safe mode, and the grant is re-served. A failure after the full payload was
//!   served is an update failure as before.
//! - The delta's Omaha answer ([`delta_manifest`]) is the full one's with the delta's file
//!   name, size, SHA-1 and SHA-256, and `IsDeltaPayload="true"` on the postinstall action
//!   (update_engine's attribute). Its URL is the package's codebase: the file is hosted next to
//!   the package's and served by the same route, with ranges.
//! - `PUT /api/v1/apps/{app}/packages/{arch}/{version}/deltas/{source_version}/{filename}`
//!   (scope `publish`): the hosted package must exist; everything in the path is checked
//!   before the body is read; the body is stored the way a package upload is
//!   ([`crate::payload_files`]), the record decides conflicts (409), and a failed rename takes
//!   the record back.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use wellcar_omaha::Manifest;

use crate::admin::ApiError;
use crate::auth::{Authorized, NeedsPublish};
use crate::db::Conn;
use crate::model::{Instance, Package, PackageDelta};
use crate::server::ServerState;
use crate::store::{self, Sighting};
use crate::StoreError;

/// What a granted instance is offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadChoice {
    /// The package itself.
    Full,
    /// This delta of it.
    Delta(PackageDelta),
}

/// The facts about an instance the choice depends on.
#[derive(Debug, Clone, Copy)]
pub struct InstanceDeltaFacts<'a> {
    /// The version it reported in this check.
    pub reported_version: &'a str,
    /// The target version whose delta failed on it, if any.
    pub delta_failed_version: Option<&'a str>,
}

/// The pure decision (module contract).
pub fn choose_payload(
    instance: InstanceDeltaFacts<'_>,
    package: &Package,
    deltas: &[PackageDelta],
) -> PayloadChoice {
    if !package.url.is_empty() || instance.delta_failed_version == Some(package.version.as_str()) {
        return PayloadChoice::Full;
    }
    deltas
        .iter()
        .find(|d| d.package_id == package.id && d.source_version == instance.reported_version)
        .map_or(PayloadChoice::Full, |d| PayloadChoice::Delta(d.clone()))
}

/// Chooses the payload for a granted instance inside the grant transaction and records a delta
/// offer (module contract).
pub fn choose_in_grant(
    conn: &mut dyn Conn,
    s: &Sighting,
    package: &Package,
    now: i64,
) -> Result<PayloadChoice, StoreError> {
    let deltas = store::package_deltas(conn, &package.id)?;
    if deltas.is_empty() {
        return Ok(PayloadChoice::Full);
    }
    let (app, machine) = (&s.facts.app_id, &s.facts.machine_id);
    let (served, failed) = store::instance_delta_state(conn, app, machine)?;
    let facts = InstanceDeltaFacts {
        reported_version: &s.facts.version,
        delta_failed_version: failed.as_deref(),
    };
    let choice = choose_payload(facts, package, &deltas);
    let version = package.version.as_str();
    let served_this = served.as_deref() == Some(version);
    let logged = match &choice {
        PayloadChoice::Delta(d) if !served_this => {
            store::set_delta_served(conn, app, machine, Some(version))?;
            Some((
                "delta-served",
                format!(
                    "instance {machine} was served the delta of {version} from {} ({}, {} bytes)",
                    d.source_version, d.filename, d.size
                ),
            ))
        }
        PayloadChoice::Full if served_this => {
            store::set_delta_served(conn, app, machine, None)?;
            Some((
                "delta-fallback",
                format!(
                    "instance {machine} was served the full package of {version} ({} bytes) \
                     after its delta failed",
                    package.size
                ),
            ))
        }
        _ => None,
    };
    if let Some((kind, message)) = logged {
        store::log_activity(
            conn,
            now,
            &store::NewActivity {
                actor: "system",
                kind,
                app_id: Some(app),
                group_id: s.facts.group_id.as_deref(),
                severity: "info",
                message: &message,
            },
        )?;
    }
    Ok(choice)
}

/// Records a verified failure event of `instance` against the delta it was served (module
/// contract). Call for verified events only. Returns whether it was the delta's failure.
pub fn note_failure(
    conn: &mut dyn Conn,
    instance: &Instance,
    ev: &wellcar_omaha::Event,
    now: i64,
) -> Result<bool, StoreError> {
    use wellcar_omaha::{event_result, event_type};
    if (ev.event_type, ev.event_result) != (event_type::UPDATE_COMPLETE, event_result::ERROR) {
        return Ok(false);
    }
    let Some(version) = instance.granted_version.as_deref() else {
        return Ok(false);
    };
    let (app, machine) = (&instance.facts.app_id, &instance.facts.machine_id);
    if !store::note_delta_failure(conn, app, machine, version)? {
        return Ok(false);
    }
    let code = ev
        .error_code
        .map_or_else(|| "none".to_owned(), |c| c.code().to_string());
    store::log_activity(
        conn,
        now,
        &store::NewActivity {
            actor: "system",
            kind: "delta-failed",
            app_id: Some(app),
            group_id: instance.facts.group_id.as_deref(),
            severity: "warning",
            message: &format!(
                "instance {machine} failed installing the delta of {version} (error code \
                 {code}); its next check gets the full package"
            ),
        },
    )?;
    Ok(true)
}

/// The Omaha manifest offering `delta` of `package`: `full` (the package's manifest) with the
/// delta's file, size and hashes and `IsDeltaPayload="true"`.
pub fn delta_manifest(mut full: Manifest, delta: &PackageDelta) -> Manifest {
    for p in &mut full.packages {
        p.name = delta.filename.clone();
        p.sha1_base64 = Some(delta.sha1_base64.clone());
        p.sha256_hex = Some(delta.sha256_hex.clone());
        p.size = delta.size as u64;
    }
    for a in full.actions.iter_mut().filter(|a| a.event == "postinstall") {
        a.sha256_base64 = Some(delta.sha256_base64.clone());
        a.is_delta_payload = true;
    }
    full
}

/// `PUT /api/v1/apps/{app}/packages/{arch}/{version}/deltas/{source_version}/{filename}`: see
/// the module contract.
#[utoipa::path(put,
    path = "/api/v1/apps/{app}/packages/{arch}/{version}/deltas/{source_version}/{filename}",
    tag = "packages",
    summary = "Upload a delta payload of a hosted package",
    description = "Offered instead of the package to instances reporting `source_version`. \
        The file is served next to the package's. The path is checked before a byte is stored.",
    params(("app" = String, Path, description = "Application id (GUID)"),
        ("arch" = String, Path, description = "`amd64` or `arm64`"),
        ("version" = String, Path, description = "The package's OS version"),
        ("source_version" = String, Path, description = "The OS version the delta applies to"),
        ("filename" = String, Path, description = "Delta file name (a plain name)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The delta payload"),
    security(("bearer" = ["publish"])),
    responses((status = 201, description = "The delta", body = PackageDelta),
        (status = 404, description = "No such package", body = crate::admin::ErrorBody),
        (status = 409, description = "The package has a delta from that version or file",
            body = crate::admin::ErrorBody),
        (status = 413, description = "Larger than the upload limit",
            body = crate::admin::ErrorBody)))]
pub async fn upload_delta(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsPublish>,
    Path((app, arch, version, source_version, filename)): Path<(
        String,
        String,
        String,
        String,
        String,
    )>,
    body: Body,
) -> Result<(StatusCode, Json<PackageDelta>), ApiError> {
    let actor = auth.actor();
    let app_id = wellcar_omaha::normalize_app_id(&app);
    store::check_arch(&arch)?;
    store::validate_package_version(&version)?;
    store::validate_package_version(&source_version)?;
    store::check_payload_filename(&filename)?;
    let key = (
        app_id.clone(),
        format!("{version} delta from {source_version}"),
        arch.clone(),
    );
    let Some(_slot) = state.uploads.reserve(key) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("a delta of {version} ({arch}) from {source_version} is being uploaded"),
        ));
    };
    let package = {
        let (a, v, ar) = (app_id.clone(), version.clone(), arch.clone());
        state
            .db
            .read(move |c| store::find_package_for_delta(c, &a, &v, &ar))
            .await?
    };
    if !package.url.is_empty() {
        return Err(StoreError::Invalid(format!(
            "package {version} ({arch}) is not hosted here (url {}): its deltas cannot be",
            package.url
        ))
        .into());
    }
    let existing = {
        let id = package.id.clone();
        state
            .db
            .read(move |c| store::package_deltas(c, &id))
            .await?
    };
    if existing
        .iter()
        .any(|d| d.source_version == source_version || d.filename == filename)
        || filename == package.filename
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "package {version} ({arch}) already has a delta from {source_version} or a \
                 file {filename}"
            ),
        ));
    }
    let dir =
        crate::payload_files::package_dir(&state.settings.payload_dir, &app_id, &arch, &version);
    let tmp = dir.join(format!(
        ".{filename}.{}.part",
        uuid::Uuid::new_v4().simple()
    ));
    let received = crate::payload_files::receive(&tmp, body, state.settings.max_upload_bytes).await;
    let result = match received {
        Ok(r) => {
            store_delta(
                &state,
                &dir,
                &tmp,
                package,
                (source_version, filename),
                r,
                actor,
            )
            .await
        }
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result.map(|d| (StatusCode::CREATED, Json(d)))
}

async fn store_delta(
    state: &Arc<ServerState>,
    dir: &std::path::Path,
    tmp: &std::path::Path,
    package: Package,
    (source_version, filename): (String, String),
    received: crate::payload_files::Received,
    actor: String,
) -> Result<PackageDelta, ApiError> {
    use base64::Engine as _;
    let new = store::NewPackageDelta {
        source_version,
        filename,
        size: received.size,
        sha256_hex: hex::encode(received.sha256),
        sha1_base64: base64::engine::general_purpose::STANDARD.encode(received.sha1),
    };
    store::check_delta_fields(&package, &new)?;
    let now = state.now();
    let dest = dir.join(&new.filename);
    let delta = state
        .db
        .write(move |c| store::create_package_delta(c, &package, &new, &actor, now))
        .await?;
    let placed = async {
        tokio::fs::rename(tmp, &dest).await.map_err(|e| {
            crate::payload_files::internal(format!("renaming to {}", dest.display()), e)
        })?;
        crate::payload_files::sync_dir(dir).await
    }
    .await;
    if let Err(e) = placed {
        let (id, source) = (delta.package_id.clone(), delta.source_version.clone());
        if let Err(undo) = state
            .db
            .write(move |c| store::delete_package_delta(c, &id, &source))
            .await
        {
            tracing::error!("taking back a delta after a failed upload: {undo}");
        }
        return Err(e);
    }
    Ok(delta)
}

#[cfg(test)]
#[path = "deltas_tests.rs"]
mod tests;
