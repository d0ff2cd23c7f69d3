//! The build manifest's list of delta payloads: a delta written into the build directory (next
//! to `manifest.json`) is recorded in its `deltas`, so `wellcar server package publish --build`
//! finds it. A delta written elsewhere (`--output` outside the build) is not recorded: the
//! manifest names files relative to its own directory.

use std::path::Path;

use wellcar_contract::{BuildManifestError, DeltaArtifact};

use super::{read_build_manifest, CreateError, PayloadSummary};

/// Records the delta `summary` describes in the build manifest at `manifest_json`, if the delta
/// lies in that manifest's directory (see the module docs).
pub(super) fn record_delta_in_build(
    manifest_json: &Path,
    summary: &PayloadSummary,
    source_version: &str,
) -> Result<(), CreateError> {
    let Some(build_dir) = manifest_json.parent() else {
        return Ok(());
    };
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    let in_build = match (
        summary.path.parent().and_then(canonical),
        canonical(build_dir),
    ) {
        (Some(out_dir), Some(build_dir)) => out_dir == build_dir,
        _ => false,
    };
    let Some(file) = summary.path.file_name().filter(|_| in_build) else {
        return Ok(());
    };
    let mut build = read_build_manifest(manifest_json)?;
    build.record_delta(DeltaArtifact {
        source_version: source_version.to_owned(),
        file: file.to_string_lossy().into_owned(),
        size: summary.size,
        sha256: summary.sha256.to_string(),
    });
    build.write(build_dir).map_err(|e| match e {
        BuildManifestError::Read { path, source } | BuildManifestError::Write { path, source } => {
            CreateError::Output { path, source }
        }
        BuildManifestError::Parse { path, source } => CreateError::BuildManifest { path, source },
    })
}
