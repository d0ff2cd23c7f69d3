//! Creating a signed payload from a build output directory.
//!
//! Input: the builder's `manifest.json` (see [`BuildManifest`]) and the files it names. The
//! /usr image is read extent by extent (`SEEK_DATA`/`SEEK_HOLE`): holes become `zero`
//! operations without being read; data is cut into [`CHUNK_LEN`] chunks at fixed offsets, an
//! all-zero chunk becomes a `zero` operation, any other a zstd `replace`. While reading, the
//! image's sha256 and dm-verity root are recomputed and must equal what the build manifest
//! claims, so a payload is never signed over an inconsistent build.
//!
//! Output: `wellcar_update.bin` and `wellcar_update.bin.sha256` (sha256sum format), each
//! written temp + fsync + rename. Compressed blobs go to a temp file first because the
//! manifest, which precedes them, needs their hashes. Memory: `threads` x (chunk + compressed
//! chunk), whatever the image size.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};
use wellcar_contract::{BuildManifest, BuildManifestError};

use crate::format::{
    encode_manifest_section, encode_signature_block, key_fingerprint, Destination, FileImage,
    FormatError, Header, Manifest, Sha256Digest, SignatureEntry, SourceSlot, UsrImage,
    VerityParams, SIGNATURE_ENTRY_LEN,
};
use crate::fsutil::create_temp;
use wellcar_contract::atomic_file;
use wellcar_verity::RootHasher;

/// Default payload file name.
pub const PAYLOAD_FILE_NAME: &str = "wellcar_update.bin";

/// File name of a delta payload from `source_version`, next to the full payload.
pub fn delta_file_name(source_version: &str) -> String {
    format!("wellcar_delta_from_{source_version}.bin")
}
/// Uncompressed size of one `replace` operation (the last of an extent may be shorter).
pub const CHUNK_LEN: u64 = 4 * 1024 * 1024;
/// Chunk length of a delta's /usr and of copied boot files: the format's largest. A delta's
/// chunk is mostly one `source_copy` whose sha256 does not compress, so fewer, larger chunks
/// mean a smaller manifest (apply memory stays bounded by the chunk).
pub const DELTA_CHUNK_LEN: u64 = crate::format::MAX_CHUNK_LEN;
/// Default zstd level: the densest standard level; creation is a build step, apply speed does
/// not depend on it.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 19;

/// Knobs of payload creation.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// zstd level (1..=22).
    pub compression_level: i32,
    /// Oldest running version allowed to install the payload.
    pub min_source_version: Option<String>,
    /// Compression threads.
    pub threads: usize,
    /// Make a delta against the build in this directory (its `manifest.json` and /usr image)
    /// instead of a full payload; see [`delta`].
    pub delta_from: Option<PathBuf>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            min_source_version: None,
            threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(8),
            delta_from: None,
        }
    }
}

/// What [`create_payload`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PayloadSummary {
    /// The payload file.
    pub path: PathBuf,
    /// The `.sha256` file next to it.
    pub sha256_path: PathBuf,
    /// Payload size in bytes.
    pub size: u64,
    /// sha256 of the whole payload file.
    pub sha256: Sha256Digest,
    /// OS version inside.
    pub version: String,
    /// Board.
    pub board: String,
    /// Size of the /usr region.
    pub usr_size: u64,
    /// Bytes of /usr that are zero-filled without data.
    pub usr_zero_bytes: u64,
    /// Number of operations.
    pub operations: usize,
    /// Fingerprints of the signing keys.
    pub signers: Vec<String>,
    /// For a delta: the source version it applies to.
    pub source_version: Option<String>,
}

/// What went wrong creating a payload.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Reading an input file failed.
    #[error("reading {path}")]
    Input {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The build manifest is not valid JSON of the expected shape.
    #[error("build manifest {path} is not valid")]
    BuildManifest {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A build manifest field has an unusable value.
    #[error("build manifest {path}: field {field}: {reason}")]
    BuildManifestField {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A build artifact does not match what the build manifest says about it.
    #[error("{path}: {what} is {actual}, but the build manifest says {expected}")]
    ArtifactMismatch {
        /// The artifact.
        path: PathBuf,
        /// "size", "sha256" or "verity root hash".
        what: &'static str,
        /// From the manifest.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// Compressing a chunk failed.
    #[error("compressing {path} at byte {offset}")]
    Compress {
        /// The artifact.
        path: PathBuf,
        /// Chunk offset.
        offset: u64,
        /// zstd error.
        #[source]
        source: io::Error,
    },
    /// The payload manifest built from the inputs is invalid (a bug or absurd inputs).
    #[error("generated payload manifest is invalid")]
    Manifest(#[source] FormatError),
    /// The `min_source_version` option is not an OS version.
    #[error("min_source_version: {0}")]
    MinSourceVersion(wellcar_contract::VersionError),
    /// No signing key was given.
    #[error("at least one signing key is needed")]
    NoSigningKey,
    /// Writing the output failed.
    #[error("writing {path}")]
    Output {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Creates `wellcar_update.bin` (+ `.sha256`) from a build directory, signed with one key.
///
/// `out` is the payload file to write, or a directory to write `wellcar_update.bin` into.
pub fn create_payload(
    build_dir: &Path,
    manifest_json: &Path,
    signing_key: &SigningKey,
    out: &Path,
) -> Result<PayloadSummary, CreateError> {
    create_payload_with(
        build_dir,
        manifest_json,
        &[signing_key],
        out,
        &CreateOptions::default(),
    )
}

/// [`create_payload`] with several signing keys (key rotation) and explicit options.
pub fn create_payload_with(
    build_dir: &Path,
    manifest_json: &Path,
    signing_keys: &[&SigningKey],
    out: &Path,
    options: &CreateOptions,
) -> Result<PayloadSummary, CreateError> {
    if signing_keys.is_empty() {
        return Err(CreateError::NoSigningKey);
    }
    let build = read_build_manifest(manifest_json)?;
    let field_err = |field: &'static str, reason: String| CreateError::BuildManifestField {
        path: manifest_json.to_owned(),
        field,
        reason,
    };
    let parse_digest = |field: &'static str, value: &str| {
        Sha256Digest::from_hex(value)
            .ok_or_else(|| field_err(field, format!("{value:?} is not 64 hex digits")))
    };
    let usr_sha = parse_digest("usr_image_sha256", &build.usr_image_sha256)?;
    let kernel_sha = parse_digest("kernel_sha256", &build.kernel_sha256)?;
    let initramfs_sha = parse_digest("initramfs_sha256", &build.initramfs_sha256)?;
    let root_hash = build.verity_root_hash;
    let salt = hex::decode(&build.verity_salt)
        .map_err(|e| field_err("verity_salt", format!("not hex: {e}")))?;
    // Checked again with the whole manifest at the end; refused here before compressing.
    wellcar_contract::OsVersion::parse(&build.version)
        .map_err(|e| field_err("version", e.to_string()))?;
    if let Some(min) = &options.min_source_version {
        wellcar_contract::OsVersion::parse(min).map_err(CreateError::MinSourceVersion)?;
    }

    let delta = options
        .delta_from
        .as_deref()
        .map(delta::DeltaSource::open)
        .transpose()?;
    let out_path = if out.is_dir() {
        out.join(delta.as_ref().map_or_else(
            || PAYLOAD_FILE_NAME.to_owned(),
            |d| delta_file_name(&d.slot.version),
        ))
    } else {
        out.to_owned()
    };
    let (data_file, data_path) =
        create_temp(&out_path, "data", 0o600).map_err(|source| CreateError::Output {
            path: out_path.clone(),
            source,
        })?;
    let result = (|| {
        let mut writer =
            blob_writer::BlobWriter::new(data_file, &data_path, options, delta.as_ref())?;
        let usr_path = build_dir.join(&build.usr_image);
        let mut verity = RootHasher::new(&salt, build.verity_data_blocks);
        // A delta's hash area is rebuilt on the host (`verity_tree`); a full payload carries
        // it, so agents that predate that operation can always install the full payload.
        let hash_area = match delta {
            Some(_) => Some(hash_area_span(&usr_path, &build, &salt)?),
            None => None,
        };
        let usr = writer.add_image(
            Destination::Usr,
            &usr_path,
            Some(build.usr_image_size),
            usr_sha,
            Some(&mut verity),
            hash_area.as_ref(),
        )?;
        let actual = verity.finish();
        if actual != Some(root_hash) {
            let actual_root = actual.map_or_else(|| "incomplete".to_owned(), |d| d.to_string());
            return Err(CreateError::ArtifactMismatch {
                path: usr_path,
                what: "verity root hash",
                expected: root_hash.to_string(),
                actual: actual_root,
            });
        }
        let (kernel, source_kernel) = boot_files::add_boot_file(
            &mut writer,
            delta.as_ref(),
            Destination::Kernel,
            &build_dir.join(&build.kernel),
            kernel_sha,
        )?;
        let (initramfs, source_initramfs) = boot_files::add_boot_file(
            &mut writer,
            delta.as_ref(),
            Destination::Initramfs,
            &build_dir.join(&build.initramfs),
            initramfs_sha,
        )?;
        let (data_file, data_len, operations, usr_zero_bytes) = writer.finish()?;
        let manifest = Manifest {
            version: build.version.clone(),
            board: build.board.clone(),
            build_id: build.build_id.clone(),
            min_source_version: options.min_source_version.clone(),
            source: delta.as_ref().map(|d| SourceSlot {
                kernel: source_kernel,
                initramfs: source_initramfs,
                ..d.slot.clone()
            }),
            usr: UsrImage {
                size: usr,
                sha256: usr_sha,
                verity: VerityParams {
                    root_hash,
                    salt: build.verity_salt.to_lowercase(),
                    hash_offset: build.verity_hash_offset,
                    data_blocks: build.verity_data_blocks,
                },
            },
            kernel: FileImage {
                size: kernel,
                sha256: kernel_sha,
            },
            initramfs: FileImage {
                size: initramfs,
                sha256: initramfs_sha,
            },
            data_len,
            operations,
        };
        manifest.validate().map_err(CreateError::Manifest)?;
        write_payload(
            &out_path,
            &manifest,
            signing_keys,
            data_file,
            usr_zero_bytes,
        )
    })();
    let _ = std::fs::remove_file(&data_path);
    let summary = result?;
    if let Some(source_version) = &summary.source_version {
        build_deltas::record_delta_in_build(manifest_json, &summary, source_version)?;
    }
    Ok(summary)
}

/// Where the /usr image's hash area is and the uuid its superblock records, checked against
/// the build manifest's verity parameters.
fn hash_area_span(
    usr_path: &Path,
    build: &BuildManifest,
    salt: &[u8],
) -> Result<blob_writer::HashAreaSpan, CreateError> {
    let mut file = File::open(usr_path).map_err(|source| CreateError::Input {
        path: usr_path.to_owned(),
        source,
    })?;
    let mismatch =
        |what: &'static str, expected: String, actual: String| CreateError::ArtifactMismatch {
            path: usr_path.to_owned(),
            what,
            expected,
            actual,
        };
    let superblock = wellcar_verity::read_superblock(&mut file, build.verity_hash_offset)
        .map_err(|e| mismatch("verity superblock", "a valid one".into(), e.to_string()))?;
    if superblock.data_blocks != build.verity_data_blocks || superblock.salt != salt {
        return Err(mismatch(
            "verity superblock",
            format!(
                "{} data blocks, salt {}",
                build.verity_data_blocks, build.verity_salt
            ),
            format!(
                "{} data blocks, salt {}",
                superblock.data_blocks,
                hex::encode(&superblock.salt)
            ),
        ));
    }
    let len = wellcar_verity::hash_area_size(build.verity_data_blocks)
        .map_err(|e| mismatch("verity data blocks", "at least 1".into(), e.to_string()))?;
    Ok(blob_writer::HashAreaSpan {
        offset: build.verity_hash_offset,
        len,
        uuid: superblock.uuid,
    })
}

fn read_build_manifest(path: &Path) -> Result<BuildManifest, CreateError> {
    BuildManifest::read_file(path).map_err(|e| match e {
        BuildManifestError::Read { path, source } | BuildManifestError::Write { path, source } => {
            CreateError::Input { path, source }
        }
        BuildManifestError::Parse { path, source } => CreateError::BuildManifest { path, source },
    })
}

/// Writes header + manifest + signatures + data to `out` atomically, then `out.sha256`.
fn write_payload(
    out: &Path,
    manifest: &Manifest,
    signing_keys: &[&SigningKey],
    mut data: File,
    usr_zero_bytes: u64,
) -> Result<PayloadSummary, CreateError> {
    let out_err = |path: &Path| {
        let path = path.to_owned();
        move |source| CreateError::Output { path, source }
    };
    let manifest_json = serde_json::to_vec(manifest).expect("a manifest always serializes");
    // Only a delta's manifest is compressed (see `format`): a full payload stays flag-less.
    let manifest_zstd = manifest.is_delta();
    let manifest_bytes =
        encode_manifest_section(&manifest_json, manifest_zstd).map_err(|source| {
            CreateError::Compress {
                path: PathBuf::from("manifest"),
                offset: 0,
                source,
            }
        })?;
    let header = Header {
        manifest_len: manifest_bytes.len() as u64,
        signature_block_len: (4 + SIGNATURE_ENTRY_LEN * signing_keys.len()) as u32,
        manifest_zstd,
    };
    let mut message = header.to_bytes().to_vec();
    message.extend_from_slice(&manifest_bytes);
    let entries: Vec<SignatureEntry> = signing_keys
        .iter()
        .map(|key| SignatureEntry {
            public_key: key.verifying_key().to_bytes(),
            signature: key.sign(&message).to_bytes(),
        })
        .collect();
    let signature_block = encode_signature_block(&entries);

    let mut sha = Sha256::new();
    let size = atomic_file::write_with(out, 0o644, |file| {
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        for part in [&message[..], &signature_block[..]] {
            sha.update(part);
            writer.write_all(part)?;
        }
        data.seek(SeekFrom::Start(0))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = data.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            writer.write_all(&buf[..n])?;
        }
        writer.flush()
    })
    .map_err(out_err(out))?;
    let sha256 = Sha256Digest(sha.finalize().into());
    let mut sha_path = out.as_os_str().to_owned();
    sha_path.push(".sha256");
    let sha_path = PathBuf::from(sha_path);
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    atomic_file::write(
        &sha_path,
        format!("{sha256}  {file_name}\n").as_bytes(),
        0o644,
    )
    .map_err(out_err(&sha_path))?;
    tracing::info!(path = %out.display(), size, %sha256, "wrote update payload");
    Ok(PayloadSummary {
        path: out.to_owned(),
        sha256_path: sha_path,
        size,
        sha256,
        version: manifest.version.clone(),
        board: manifest.board.clone(),
        usr_size: manifest.usr.size,
        usr_zero_bytes,
        operations: manifest.operations.len(),
        signers: signing_keys
            .iter()
            .map(|k| key_fingerprint(k.verifying_key().as_bytes()))
            .collect(),
        source_version: manifest.source.as_ref().map(|s| s.version.clone()),
    })
}

mod blob_writer;
mod boot_files;
mod build_deltas;
pub(crate) mod delta;
