//! Hosted payload files: storing uploads and serving published packages under `/packages/`.
//!
//! Contract:
//! - Layout: a hosted package's file is `PAYLOAD_DIR/{app id}/{arch}/{version}/{filename}`
//!   (the app id normalized), nothing else is ever served from the payload directory.
//! - `PUT /api/v1/apps/{app}/packages/{arch}/{version}/{filename}` (scope `publish`): arch,
//!   version, file name and app are checked, and an existing package refused (409), before the
//!   body is read. While one upload of an (app, version, arch) is in flight, another one in the
//!   same process gets 409 at once. The body goes to a temporary file in the version's
//!   directory (`.{filename}.{uuid}.part`: hidden, so never served), hashed as it arrives and
//!   cut off with 413 past `max_upload_bytes`; then the whole record is checked (empty body:
//!   400) and fsynced. The package record is inserted next: the database's unique key decides
//!   between concurrent uploads, also across server processes, and the loser gets 409 without
//!   having touched the hosted file. Only then is the temporary file renamed over the final
//!   name and the directory fsynced; if that fails, the record is taken back (500). Every
//!   failure removes the temporary file.
//! - `GET`/`HEAD /packages/{app}/{arch}/{version}/{filename}` (no token: payloads are signed)
//!   serves a file only if a hosted package of that app, arch, version and file name exists,
//!   the file and every directory below the payload directory are real (not symlinks), the
//!   file is regular and its size is the package's. Everything else is 404.
//! - Ranges: one `Range: bytes=a-b`, `bytes=a-` or `bytes=-n` answers 206 with
//!   `Content-Range`; an unsatisfiable one 416; several ranges or another unit get the whole
//!   file (200). `Accept-Ranges: bytes` is always sent.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::admin::ApiError;
use crate::auth::{Authorized, NeedsPublish};
use crate::model::Package;
use crate::server::ServerState;
use crate::store::{self, NewPackage};

/// Uploads in flight in this process, by (app id, version, arch).
#[derive(Debug, Default)]
pub struct UploadsInFlight(Mutex<HashSet<(String, String, String)>>);

/// Holds an (app id, version, arch) in [`UploadsInFlight`] until dropped.
#[derive(Debug)]
pub(crate) struct UploadSlot<'a> {
    uploads: &'a UploadsInFlight,
    key: (String, String, String),
}

impl UploadsInFlight {
    /// Takes the slot of `key`, or `None` if an upload of it is in flight.
    pub(crate) fn reserve(&self, key: (String, String, String)) -> Option<UploadSlot<'_>> {
        let inserted = {
            let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
            set.insert(key.clone())
        };
        // Built only when taken: dropping a slot frees its key.
        inserted.then(|| UploadSlot { uploads: self, key })
    }
}

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        let mut set = self.uploads.0.lock().unwrap_or_else(|p| p.into_inner());
        set.remove(&self.key);
    }
}

pub(crate) fn internal(what: String, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"))
}

/// What streaming an upload produced.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) size: i64,
    pub(crate) sha256: [u8; 32],
    pub(crate) sha1: [u8; 20],
}

/// Streams `body` into `tmp` (created new), hashing it and refusing more than `limit` bytes
/// (413); fsyncs the file.
pub(crate) async fn receive(tmp: &FsPath, body: Body, limit: u64) -> Result<Received, ApiError> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .await
        .map_err(|e| internal(format!("creating {}", tmp.display()), e))?;
    let mut sha256 = sha2::Sha256::new();
    let mut sha1 = sha1::Sha1::new();
    let mut size: u64 = 0;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("reading the upload: {e}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("upload is larger than the server's limit of {limit} bytes"),
            ));
        }
        sha256.update(&data);
        sha1.update(&data);
        file.write_all(&data)
            .await
            .map_err(|e| internal(format!("writing {}", tmp.display()), e))?;
    }
    file.sync_all()
        .await
        .map_err(|e| internal(format!("syncing {}", tmp.display()), e))?;
    Ok(Received {
        size: i64::try_from(size).unwrap_or(i64::MAX),
        sha256: sha256.finalize().into(),
        sha1: sha1.finalize().into(),
    })
}

/// fsyncs directory `dir`, so a rename in it survives a crash.
pub(crate) async fn sync_dir(dir: &FsPath) -> Result<(), ApiError> {
    let owned = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&owned).and_then(|d| d.sync_all()))
        .await
        .map_err(|e| internal(format!("syncing {}", dir.display()), e))?
        .map_err(|e| internal(format!("syncing {}", dir.display()), e))
}

/// The directory of a hosted package's file.
pub fn package_dir(payload_dir: &FsPath, app_id: &str, arch: &str, version: &str) -> PathBuf {
    payload_dir.join(app_id).join(arch).join(version)
}

/// `PUT /api/v1/apps/{app}/packages/{arch}/{version}/{filename}`: see the module contract.
#[utoipa::path(put, path = "/api/v1/apps/{app}/packages/{arch}/{version}/{filename}",
    tag = "packages",
    summary = "Upload a payload; the server hashes it, stores it and creates the package",
    description = "The file is served at `/packages/{app}/{arch}/{version}/{filename}` once a \
        channel publishes the package. The path is checked before a byte is stored.",
    params(("app" = String, Path, description = "Application id (GUID)"),
        ("arch" = String, Path, description = "`amd64` or `arm64`"),
        ("version" = String, Path, description = "OS version"),
        ("filename" = String, Path, description = "Payload file name (a plain name)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The payload"),
    security(("bearer" = ["publish"])),
    responses((status = 201, description = "The package", body = Package),
        (status = 409, description = "The version exists for that arch",
            body = crate::admin::ErrorBody),
        (status = 413, description = "Larger than the upload limit",
            body = crate::admin::ErrorBody)))]
pub async fn upload(
    State(state): State<Arc<ServerState>>,
    auth: Authorized<NeedsPublish>,
    Path((app, arch, version, filename)): Path<(String, String, String, String)>,
    body: Body,
) -> Result<(StatusCode, Json<Package>), ApiError> {
    let actor = auth.actor();
    let app_id = wellcar_omaha::normalize_app_id(&app);
    // Everything the path says is checked before a byte is stored.
    store::check_arch(&arch)?;
    store::validate_package_version(&version)?;
    store::check_payload_filename(&filename)?;
    let key = (app_id.clone(), version.clone(), arch.clone());
    let Some(_slot) = state.uploads.reserve(key) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("package {version} ({arch}) of app {app_id} is being uploaded right now"),
        ));
    };
    let exists = {
        let (a, v, ar) = (app_id.clone(), version.clone(), arch.clone());
        state
            .db
            .read(move |c| {
                store::require_app(c, &a)?;
                Ok(store::list_packages(c, &a)?
                    .into_iter()
                    .any(|p| p.version == v && p.arch == ar))
            })
            .await?
    };
    if exists {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("package {version} ({arch}) already exists in app {app_id}"),
        ));
    }
    let dir = package_dir(&state.settings.payload_dir, &app_id, &arch, &version);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| internal(format!("creating {}", dir.display()), e))?;
    let tmp = dir.join(format!(
        ".{filename}.{}.part",
        uuid::Uuid::new_v4().simple()
    ));
    let result = store_and_record(
        &state,
        &dir,
        &tmp,
        &app_id,
        (arch, version, filename),
        body,
        actor,
    )
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
        // Leaves no empty directories behind a refused upload; fails harmlessly if not empty.
        let _ = tokio::fs::remove_dir(&dir).await;
    }
    result.map(|p| (StatusCode::CREATED, Json(p)))
}

async fn store_and_record(
    state: &Arc<ServerState>,
    dir: &FsPath,
    tmp: &FsPath,
    app_id: &str,
    (arch, version, filename): (String, String, String),
    body: Body,
    actor: String,
) -> Result<Package, ApiError> {
    let received = receive(tmp, body, state.settings.max_upload_bytes).await?;
    let new = NewPackage {
        version,
        arch,
        filename,
        url: String::new(),
        size: received.size,
        sha256_hex: hex::encode(received.sha256),
        sha1_base64: base64::engine::general_purpose::STANDARD.encode(received.sha1),
    };
    store::check_package_fields(&new)?;
    let now = state.now();
    let dest = dir.join(&new.filename);
    let owned_app = app_id.to_owned();
    let package = state
        .db
        .write(move |c| store::create_package(c, &owned_app, &new, &actor, now))
        .await?;
    let placed = async {
        tokio::fs::rename(tmp, &dest)
            .await
            .map_err(|e| internal(format!("renaming to {}", dest.display()), e))?;
        sync_dir(dir).await
    }
    .await;
    if let Err(e) = placed {
        let id = package.id.clone();
        if let Err(undo) = state
            .db
            .write(move |c| store::delete_unused_package(c, &id))
            .await
        {
            tracing::error!(
                "taking back package {} after a failed upload: {undo}",
                package.id
            );
        }
        return Err(e);
    }
    Ok(package)
}

/// Whether `path` and every directory between `root` and it is a real directory or file, not a
/// symlink. Returns the file's metadata.
fn real_file_below(root: &FsPath, relative: &[&str]) -> Option<std::fs::Metadata> {
    let mut path = root.to_owned();
    let mut meta = None;
    for part in relative {
        path.push(part);
        let m = std::fs::symlink_metadata(&path).ok()?;
        if m.file_type().is_symlink() {
            return None;
        }
        meta = Some(m);
    }
    meta.filter(std::fs::Metadata::is_file)
}

/// A byte range of a file of `len` bytes: first byte and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Number of bytes.
    pub len: u64,
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// The whole file (no header, or one this server does not narrow: other units, several
    /// ranges, unparsable).
    Whole,
    /// One satisfiable range.
    Part(ByteRange),
    /// One range that lies outside the file.
    Unsatisfiable,
}

/// Parses a `Range` header value for a file of `len` bytes.
pub fn parse_range(value: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    let (start, end_inclusive) = match (first.is_empty(), last.is_empty()) {
        (true, true) => return RangeRequest::Whole,
        // `-n`: the last n bytes.
        (true, false) => match parse(last) {
            Some(0) => return RangeRequest::Unsatisfiable,
            Some(n) if len > 0 => (len.saturating_sub(n), len - 1),
            Some(_) => return RangeRequest::Unsatisfiable,
            None => return RangeRequest::Whole,
        },
        (false, true) => match parse(first) {
            Some(a) => (a, len.saturating_sub(1)),
            None => return RangeRequest::Whole,
        },
        (false, false) => match (parse(first), parse(last)) {
            (Some(a), Some(b)) if a <= b => (a, b.min(len.saturating_sub(1))),
            _ => return RangeRequest::Whole,
        },
    };
    if start >= len {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Part(ByteRange {
        start,
        len: end_inclusive - start + 1,
    })
}

/// The hosted delta served as `app/arch/version/filename`, as the package record of its file
/// (the package's, with the delta's file name and size: what [`serve`] checks and sends).
async fn hosted_delta_as_file(
    state: &ServerState,
    app: &str,
    arch: &str,
    version: &str,
    filename: &str,
) -> Result<Option<Package>, crate::StoreError> {
    let (app, arch, version, filename) = (
        app.to_owned(),
        arch.to_owned(),
        version.to_owned(),
        filename.to_owned(),
    );
    state
        .db
        .read(move |c| {
            let Some(delta) = store::find_hosted_delta(c, &app, &arch, &version, &filename)? else {
                return Ok(None);
            };
            let package = store::find_hosted_package_by_id(c, &delta.package_id)?;
            Ok(package.map(|p| Package {
                filename: delta.filename,
                size: delta.size,
                sha256_hex: delta.sha256_hex,
                sha1_base64: delta.sha1_base64,
                sha256_base64: delta.sha256_base64,
                ..p
            }))
        })
        .await
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// `GET`/`HEAD /packages/{app}/{arch}/{version}/{filename}`: see the module contract.
pub async fn serve(
    State(state): State<Arc<ServerState>>,
    Path((app, arch, version, filename)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if store::check_payload_filename(&filename).is_err() || app.starts_with('.') {
        return not_found();
    }
    let lookup = {
        let (app, arch, version, filename) =
            (app.clone(), arch.clone(), version.clone(), filename.clone());
        state
            .db
            .read(move |c| store::find_hosted_package(c, &app, &arch, &version, &filename))
            .await
    };
    let package = match lookup {
        Ok(Some(p)) => p,
        // A delta is served like its package, as the file next to it.
        Ok(None) => match hosted_delta_as_file(&state, &app, &arch, &version, &filename).await {
            Ok(Some(p)) => p,
            Ok(None) => return not_found(),
            Err(e) => return ApiError::from(e).into_response(),
        },
        Err(e) => return ApiError::from(e).into_response(),
    };
    let root = state.settings.payload_dir.clone();
    let parts = [
        package.app_id.clone(),
        package.arch.clone(),
        package.version.clone(),
        package.filename.clone(),
    ];
    let checked = tokio::task::spawn_blocking(move || {
        let relative: Vec<&str> = parts.iter().map(String::as_str).collect();
        real_file_below(&root, &relative).map(|m| (m, root.join(relative.join("/"))))
    })
    .await
    .ok()
    .flatten();
    let Some((meta, path)) = checked else {
        tracing::warn!(
            "package {} ({}) of {} is published but its file is missing or not a regular file",
            package.version,
            package.arch,
            package.app_id
        );
        return not_found();
    };
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return not_found();
    };
    // The file opened must be the one checked (no swap for a symlink in between).
    let same = file
        .metadata()
        .await
        .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino() && m.is_file());
    let len = meta.len();
    if !same || i64::try_from(len).ok() != Some(package.size) {
        tracing::warn!(
            "hosted file {} does not match package {} ({}) of {}",
            path.display(),
            package.version,
            package.arch,
            package.app_id
        );
        return not_found();
    }
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, range) = match parse_range(range_header, len) {
        RangeRequest::Whole => (StatusCode::OK, ByteRange { start: 0, len }),
        RangeRequest::Part(r) => (StatusCode::PARTIAL_CONTENT, r),
        RangeRequest::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response()
        }
    };
    if range.start > 0
        && file
            .seek(std::io::SeekFrom::Start(range.start))
            .await
            .is_err()
    {
        return not_found();
    }
    let stream = futures_util::stream::unfold((file, range.len), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0_u8; (64 << 10).min(left as usize)];
        match file.read(&mut buf).await {
            Ok(0) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "payload file shrank while being served",
                )),
                (file, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(range.len));
    if status == StatusCode::PARTIAL_CONTENT {
        let end = range.start + range.len - 1;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{end}/{len}", range.start)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_narrow_only_when_single_and_satisfiable() {
        let part = |start, len| RangeRequest::Part(ByteRange { start, len });
        assert_eq!(parse_range(None, 10), RangeRequest::Whole);
        assert_eq!(parse_range(Some("bytes=2-4"), 10), part(2, 3));
        assert_eq!(parse_range(Some("bytes=2-"), 10), part(2, 8));
        assert_eq!(parse_range(Some("bytes=-3"), 10), part(7, 3));
        assert_eq!(parse_range(Some("bytes=-30"), 10), part(0, 10));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), part(8, 2));
        assert_eq!(
            parse_range(Some("bytes=10-"), 10),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-0"), 10),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), RangeRequest::Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeRequest::Whole);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), RangeRequest::Whole);
    }
}
