//! `wellcar server package …`: upload or register payloads, publish them to channels, add
//! floors.
//!
//! Contract:
//! - `package publish` takes the version, arch and payload from a `wellcar build` output
//!   (`--build DIR`, its `manifest.json`) or from `--file` and `--version`.
//! - Without `--url` the payload is uploaded to the server; with `--url` only its record is
//!   created, with size and hashes computed locally. `--allow-existing` turns an upload conflict
//!   into reuse of the stored package.
//! - With `--build`, the build's delta payloads (`manifest.json` `deltas`) are uploaded after the
//!   package and before the channel moves; each must still have the size and sha256 the
//!   manifest lists. With `--url` they are not uploaded (deltas are hosted only) and the output
//!   says so (`deltas_not_uploaded`).
//! - A channel is only moved (`--channel`) after the package exists.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use hyper::Method;
use serde_json::json;
use sha2::Digest as _;
use wellcar_contract::{BuildManifest, BUILD_MANIFEST_FILE};

use super::{print, ServerArgs};
use crate::client::{OnUpload, PackageRef};

/// `wellcar server package …`.
#[derive(Debug, clap::Subcommand)]
pub enum PackageCommand {
    /// Upload (or register, with --url) a payload and point a channel at it.
    Publish(PublishOpts),
    /// List packages.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Make an uploaded version a mandatory intermediate step (floor) of a channel.
    Floor {
        #[command(flatten)]
        server: ServerArgs,
        /// Channel.
        #[arg(long)]
        channel: String,
        /// Version (must be uploaded already).
        #[arg(long)]
        version: String,
        /// Architecture.
        #[arg(long, default_value = "amd64")]
        arch: String,
        /// Why machines must pass through this version.
        #[arg(long)]
        reason: String,
    },
}

/// `wellcar server package publish`.
#[derive(Debug, clap::Args)]
pub struct PublishOpts {
    #[command(flatten)]
    server: ServerArgs,
    /// A `wellcar build` output directory: version, board and payload file are read from its
    /// `manifest.json` (`version`, `board`, `payload`).
    #[arg(long, conflicts_with_all = ["file", "version"])]
    build: Option<PathBuf>,
    /// The payload file (a `wellcar payload create` output).
    #[arg(long, required_unless_present = "build")]
    file: Option<PathBuf>,
    /// Version of the payload (an OS version: MAJOR.MINOR.PATCH[+build]).
    #[arg(long, required_unless_present = "build")]
    version: Option<String>,
    /// Channel to publish to; omit to only upload.
    #[arg(long)]
    channel: Option<String>,
    /// Architecture (default amd64, or from the build's board).
    #[arg(long)]
    arch: Option<String>,
    /// Host the payload elsewhere: the base URL clients download `<url>/<file name>` from.
    #[arg(long)]
    url: Option<String>,
    /// Reuse the package if this version is already uploaded.
    #[arg(long)]
    allow_existing: bool,
}

/// Runs `wellcar server package …`; `publish` reports its upload to `upload`.
pub(super) async fn package(cmd: PackageCommand, upload: OnUpload) -> anyhow::Result<()> {
    match cmd {
        PackageCommand::List { server } => print(
            &server
                .client()?
                .get(&format!("{}/packages", server.app_path()))
                .await?,
        ),
        PackageCommand::Publish(o) => publish(o, upload).await,
        PackageCommand::Floor {
            server,
            channel,
            version,
            arch,
            reason,
        } => print(
            &server
                .client()?
                .call(
                    Method::POST,
                    &format!("{}/channels/{channel}/floors", server.app_path()),
                    &json!({"version": version, "arch": arch, "reason": reason}),
                )
                .await?,
        ),
    }
}

/// What to publish: payload file, version, arch.
#[derive(Debug, PartialEq, Eq)]
struct PublishTarget {
    file: PathBuf,
    version: String,
    arch: String,
    /// The build's deltas: source version, file, manifest entry.
    deltas: Vec<(PathBuf, wellcar_contract::DeltaArtifact)>,
}

/// Reads version, board and payload name from a `wellcar build` output's `manifest.json`.
fn target_from_build(dir: &std::path::Path, arch: Option<String>) -> anyhow::Result<PublishTarget> {
    let manifest = BuildManifest::read(dir)?;
    let path = dir.join(BUILD_MANIFEST_FILE);
    let payload = manifest.payload.with_context(|| {
        format!(
            "{} names no \"payload\" (build with a signing key, or use --file)",
            path.display()
        )
    })?;
    let arch = match arch {
        Some(a) => a,
        None => match manifest.board.as_str() {
            "arm64-usr" => "arm64".into(),
            "amd64-usr" => "amd64".into(),
            other => bail!("{}: unknown board {other:?}", path.display()),
        },
    };
    Ok(PublishTarget {
        file: dir.join(payload),
        version: manifest.version,
        arch,
        deltas: manifest
            .deltas
            .into_iter()
            .map(|d| (dir.join(&d.file), d))
            .collect(),
    })
}

async fn publish(o: PublishOpts, upload: OnUpload) -> anyhow::Result<()> {
    let api = o.server.client()?;
    let target = match &o.build {
        Some(dir) => target_from_build(dir, o.arch.clone())?,
        None => PublishTarget {
            file: o
                .file
                .clone()
                .context("--file is required without --build")?,
            version: o
                .version
                .clone()
                .context("--version is required without --build")?,
            arch: o.arch.clone().unwrap_or_else(|| "amd64".into()),
            deltas: Vec::new(),
        },
    };
    let PublishTarget {
        file,
        version,
        arch,
        deltas,
    } = target;
    let filename = file
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no file name", file.display()))?
        .to_owned();
    let package_ref = PackageRef {
        app: &o.server.app,
        version: &version,
        arch: &arch,
    };
    let created: Result<serde_json::Value, crate::client::ClientError> = match &o.url {
        Some(url) => {
            let file = file.clone();
            let (size, sha256, sha1) =
                tokio::task::spawn_blocking(move || hash_file(&file)).await??;
            api.call(
                Method::POST,
                &format!("{}/packages", o.server.app_path()),
                &json!({"version": version, "arch": arch, "filename": filename, "url": url,
                        "size": size, "sha256_hex": hex::encode(sha256),
                        "sha1_base64": base64::engine::general_purpose::STANDARD.encode(sha1)}),
            )
            .await
        }
        None => {
            api.upload_package(&package_ref, &filename, &file, upload.clone())
                .await
        }
    };
    let package = match created {
        Ok(p) => p,
        Err(crate::client::ClientError::Status { status, .. })
            if status == hyper::StatusCode::CONFLICT && o.allow_existing =>
        {
            json!({"version": version, "arch": arch, "existing": true})
        }
        Err(e) => return Err(e).context("uploading the package"),
    };
    let mut out = json!({ "package": package });
    if o.url.is_some() {
        if !deltas.is_empty() {
            let sources: Vec<_> = deltas.iter().map(|(_, d)| &d.source_version).collect();
            out["deltas_not_uploaded"] = json!(sources);
        }
    } else if !deltas.is_empty() {
        out["deltas"] =
            upload_deltas(&api, &package_ref, &deltas, o.allow_existing, upload).await?;
    }
    if let Some(channel) = &o.channel {
        let ch: serde_json::Value = api
            .publish(&package_ref, channel)
            .await
            .with_context(|| format!("publishing {} to channel {channel}", version))?;
        out["channel"] = ch;
    }
    print(&out)
}

/// Uploads each of a build's deltas next to its package; a 409 is reuse with
/// `--allow-existing`. The stored sha256 must be the manifest's.
async fn upload_deltas(
    api: &crate::client::ApiClient,
    package: &PackageRef<'_>,
    deltas: &[(PathBuf, wellcar_contract::DeltaArtifact)],
    allow_existing: bool,
    upload: OnUpload,
) -> anyhow::Result<serde_json::Value> {
    let mut stored = Vec::new();
    for (path, d) in deltas {
        let filename = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no file name", path.display()))?;
        let created: Result<serde_json::Value, _> = api
            .upload_delta(package, &d.source_version, filename, path, upload.clone())
            .await;
        let delta = match created {
            Ok(delta) => delta,
            Err(crate::client::ClientError::Status { status, .. })
                if status == hyper::StatusCode::CONFLICT && allow_existing =>
            {
                json!({"source_version": d.source_version, "existing": true})
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "uploading the delta from {} ({})",
                        d.source_version,
                        path.display()
                    )
                })
            }
        };
        if let Some(sha) = delta.get("sha256_hex").and_then(|s| s.as_str()) {
            if !sha.eq_ignore_ascii_case(&d.sha256) {
                bail!(
                    "{}: uploaded sha256 {sha}, but the build manifest says {}",
                    path.display(),
                    d.sha256
                );
            }
        }
        stored.push(delta);
    }
    Ok(json!(stored))
}

fn hash_file(path: &std::path::Path) -> anyhow::Result<(u64, [u8; 32], [u8; 20])> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut sha256 = sha2::Sha256::new();
    let mut sha1 = sha1::Sha1::new();
    let mut size = 0_u64;
    let mut buf = vec![0_u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        sha256.update(&buf[..n]);
        sha1.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, sha256.finalize().into(), sha1.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_manifest_names_version_board_and_payload() {
        let dir = tempfile::tempdir().unwrap();
        // The keys every build manifest has, as the oldest builds wrote them.
        let mut manifest = json!({
            "version": "4.5.6", "board": "arm64-usr", "payload": "wellcar_update.bin",
            "verity_root_hash": "ab".repeat(32), "verity_salt": "00",
            "verity_hash_offset": 4096, "verity_data_blocks": 1,
            "usr_image": "usr.img", "usr_image_size": 8192, "usr_image_sha256": "cd".repeat(32),
            "kernel": "vmlinuz", "kernel_sha256": "ef".repeat(32),
            "initramfs": "initramfs.img", "initramfs_sha256": "01".repeat(32)
        });
        std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
        let t = target_from_build(dir.path(), None).unwrap();
        assert_eq!(
            t,
            PublishTarget {
                file: dir.path().join("wellcar_update.bin"),
                version: "4.5.6".into(),
                arch: "arm64".into(),
                deltas: Vec::new(),
            }
        );
        manifest.as_object_mut().unwrap().remove("payload");
        std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
        let err = target_from_build(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("names no \"payload\""), "{err}");
        manifest["board"] = json!("riscv-usr");
        manifest["payload"] = json!("wellcar_update.bin");
        std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
        let err = target_from_build(dir.path(), None).unwrap_err();
        assert!(
            err.to_string().contains("unknown board \"riscv-usr\""),
            "{err}"
        );
        // Not a build manifest: the error names the file.
        std::fs::write(dir.path().join("manifest.json"), r#"{"version": "1.0.0"}"#).unwrap();
        let err = format!("{:#}", target_from_build(dir.path(), None).unwrap_err());
        assert!(
            err.contains("manifest.json is not a valid build manifest"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publish_build_uploads_the_deltas_the_manifest_lists() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Args {
            #[command(subcommand)]
            cmd: PackageCommand,
        }
        let dir = tempfile::tempdir().unwrap();
        let (server, token) = crate::test_server::sqlite_with_admin(dir.path()).await;
        let build = dir.path().join("build");
        std::fs::create_dir(&build).unwrap();
        let delta_bytes = b"a delta payload".to_vec();
        std::fs::write(build.join("wellcar_update.bin"), b"a full payload").unwrap();
        std::fs::write(build.join("wellcar_delta_from_1.0.0.bin"), &delta_bytes).unwrap();
        let manifest = json!({
            "version": "1.1.0", "board": "amd64-usr", "payload": "wellcar_update.bin",
            "verity_root_hash": "ab".repeat(32), "verity_salt": "00",
            "verity_hash_offset": 4096, "verity_data_blocks": 1,
            "usr_image": "usr.img", "usr_image_size": 8192, "usr_image_sha256": "cd".repeat(32),
            "kernel": "vmlinuz", "kernel_sha256": "ef".repeat(32),
            "initramfs": "initramfs.img", "initramfs_sha256": "01".repeat(32),
            "deltas": [{"source_version": "1.0.0", "file": "wellcar_delta_from_1.0.0.bin",
                        "size": delta_bytes.len(),
                        "sha256": hex::encode(sha2::Sha256::digest(&delta_bytes))}]
        });
        std::fs::write(build.join("manifest.json"), manifest.to_string()).unwrap();
        let url = server.url();
        let build_arg = build.display().to_string();
        let cmd = || {
            let argv = [
                "package",
                "publish",
                "--build",
                &build_arg,
                "--channel",
                "stable",
                "--server",
                &url,
                "--token",
                &token,
                "--allow-existing",
            ];
            Args::try_parse_from(argv).unwrap().cmd
        };
        let quiet: OnUpload = std::sync::Arc::new(|_| {});
        package(cmd(), quiet.clone()).await.unwrap();
        // Again: the package and its delta exist, reused with --allow-existing.
        package(cmd(), quiet).await.unwrap();
        let deltas = server
            .state
            .db
            .read(|c| {
                let p = crate::store::find_package_for_delta(
                    c,
                    wellcar_omaha::WELLCAR_APP_ID,
                    "1.1.0",
                    "amd64",
                )?;
                crate::store::package_deltas(c, &p.id)
            })
            .await
            .unwrap();
        assert_eq!(deltas.len(), 1, "{deltas:?}");
        assert_eq!(
            (deltas[0].source_version.as_str(), deltas[0].size),
            ("1.0.0", delta_bytes.len() as i64)
        );
        server.shutdown().await.unwrap();
    }
}
