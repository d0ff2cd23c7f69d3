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
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};
use wellcar_contract::{BuildManifest, BuildManifestError};

use crate::format::{
    encode_signature_block, key_fingerprint, Destination, FileImage, FormatError, Header, Manifest,
    Operation, ReplaceOp, Sha256Digest, SignatureEntry, SourceCopyOp, SourcePatchOp, SourceSlot,
    UsrImage, VerityParams, ZeroOp, SIGNATURE_ENTRY_LEN,
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
        let mut writer = BlobWriter::new(data_file, &data_path, options, delta.as_ref())?;
        let usr_path = build_dir.join(&build.usr_image);
        let mut verity = RootHasher::new(&salt, build.verity_data_blocks);
        let usr = writer.add_image(
            Destination::Usr,
            &usr_path,
            Some(build.usr_image_size),
            usr_sha,
            Some(&mut verity),
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

fn read_build_manifest(path: &Path) -> Result<BuildManifest, CreateError> {
    BuildManifest::read_file(path).map_err(|e| match e {
        BuildManifestError::Read { path, source } | BuildManifestError::Write { path, source } => {
            CreateError::Input { path, source }
        }
        BuildManifestError::Parse { path, source } => CreateError::BuildManifest { path, source },
    })
}

/// One extent of a sparse file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    start: u64,
    end: u64,
    data: bool,
}

/// Data and hole extents of `file` up to `len`, from `SEEK_DATA`/`SEEK_HOLE`. A file system
/// without hole reporting yields one data extent.
fn extents(file: &File, len: u64) -> io::Result<Vec<Extent>> {
    use rustix::fs::SeekFrom as RSeek;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < len {
        let data_start =
            match rustix::io::retry_on_intr(|| rustix::fs::seek(file, RSeek::Data(pos))) {
                Ok(offset) => offset.min(len),
                Err(rustix::io::Errno::NXIO) => len,
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) if pos == 0 => {
                    return Ok(vec![Extent {
                        start: 0,
                        end: len,
                        data: true,
                    }]);
                }
                Err(e) => return Err(e.into()),
            };
        if data_start > pos {
            out.push(Extent {
                start: pos,
                end: data_start,
                data: false,
            });
        }
        if data_start >= len {
            break;
        }
        let hole_start = match rustix::fs::seek(file, RSeek::Hole(data_start)) {
            Ok(offset) => offset.min(len),
            Err(e) => return Err(e.into()),
        };
        out.push(Extent {
            start: data_start,
            end: hole_start,
            data: true,
        });
        pos = hole_start;
    }
    Ok(out)
}

/// Accumulates operations and compressed blobs.
struct BlobWriter<'d> {
    data: BufWriter<File>,
    data_path: PathBuf,
    data_len: u64,
    operations: Vec<Operation>,
    usr_zero_bytes: u64,
    compressors: Vec<zstd::bulk::Compressor<'static>>,
    level: i32,
    delta: Option<&'d delta::DeltaSource>,
}

impl<'d> BlobWriter<'d> {
    fn new(
        data: File,
        data_path: &Path,
        options: &CreateOptions,
        delta: Option<&'d delta::DeltaSource>,
    ) -> Result<Self, CreateError> {
        let compressors = (0..options.threads.max(1))
            .map(|_| zstd::bulk::Compressor::new(options.compression_level))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|source| CreateError::Compress {
                path: data_path.to_owned(),
                offset: 0,
                source,
            })?;
        Ok(Self {
            data: BufWriter::with_capacity(1 << 20, data),
            data_path: data_path.to_owned(),
            data_len: 0,
            operations: Vec::new(),
            usr_zero_bytes: 0,
            compressors,
            level: options.compression_level,
            delta,
        })
    }

    fn push_zero(&mut self, dst: Destination, offset: u64, len: u64) {
        if dst == Destination::Usr {
            self.usr_zero_bytes += len;
        }
        if let Some(Operation::Zero(last)) = self.operations.last_mut() {
            if last.dst == dst && last.dst_offset + last.dst_length == offset {
                last.dst_length += len;
                return;
            }
        }
        self.operations.push(Operation::Zero(ZeroOp {
            dst,
            dst_offset: offset,
            dst_length: len,
        }));
    }

    /// Adds one image; checks its size (if given) and sha256; feeds `verity`. Returns its size.
    fn add_image(
        &mut self,
        dst: Destination,
        path: &Path,
        expected_size: Option<u64>,
        expected_sha: Sha256Digest,
        mut verity: Option<&mut RootHasher>,
    ) -> Result<u64, CreateError> {
        let input_err = |source| CreateError::Input {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(input_err)?;
        let len = file.metadata().map_err(input_err)?.len();
        if let Some(expected) = expected_size {
            if expected != len {
                return Err(CreateError::ArtifactMismatch {
                    path: path.to_owned(),
                    what: "size",
                    expected: expected.to_string(),
                    actual: len.to_string(),
                });
            }
        }
        let mut sha = Sha256::new();
        let zeros = vec![0u8; 1 << 16];
        let hash_zeros = |sha: &mut Sha256, verity: &mut Option<&mut RootHasher>, mut n: u64| {
            if let Some(v) = verity.as_deref_mut() {
                v.update_zeros(n);
            }
            while n > 0 {
                let take = n.min(zeros.len() as u64) as usize;
                sha.update(&zeros[..take]);
                n -= take as u64;
            }
        };
        let threads = self.compressors.len();
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(threads);
        let mut spare: Vec<Vec<u8>> = Vec::new();
        for extent in extents(&file, len).map_err(input_err)? {
            if !extent.data {
                self.compress_batch(dst, path, &mut batch, &mut spare)?;
                hash_zeros(&mut sha, &mut verity, extent.end - extent.start);
                self.push_zero(dst, extent.start, extent.end - extent.start);
                continue;
            }
            let mut pos = extent.start;
            while pos < extent.end {
                let chunk_end = ((pos / CHUNK_LEN + 1) * CHUNK_LEN).min(extent.end);
                let mut buf = spare.pop().unwrap_or_default();
                buf.resize((chunk_end - pos) as usize, 0);
                file.read_exact_at(&mut buf, pos).map_err(input_err)?;
                if buf.iter().all(|&b| b == 0) {
                    // Zero data inside an allocated extent: no blob. Flush pending chunks
                    // first so operations stay in offset order.
                    self.compress_batch(dst, path, &mut batch, &mut spare)?;
                    hash_zeros(&mut sha, &mut verity, buf.len() as u64);
                    self.push_zero(dst, pos, buf.len() as u64);
                    spare.push(buf);
                } else {
                    sha.update(&buf);
                    if let Some(v) = verity.as_deref_mut() {
                        v.update(&buf);
                    }
                    batch.push((pos, buf));
                    if batch.len() == threads {
                        self.compress_batch(dst, path, &mut batch, &mut spare)?;
                    }
                }
                pos = chunk_end;
            }
        }
        self.compress_batch(dst, path, &mut batch, &mut spare)?;
        let actual = Sha256Digest(sha.finalize().into());
        if actual != expected_sha {
            return Err(CreateError::ArtifactMismatch {
                path: path.to_owned(),
                what: "sha256",
                expected: expected_sha.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(len)
    }

    /// Compresses the batch in parallel, one thread per chunk, and appends in order.
    fn compress_batch(
        &mut self,
        dst: Destination,
        path: &Path,
        batch: &mut Vec<(u64, Vec<u8>)>,
        spare: &mut Vec<Vec<u8>>,
    ) -> Result<(), CreateError> {
        if batch.is_empty() {
            return Ok(());
        }
        if let (Some(delta), Destination::Usr) = (self.delta, dst) {
            return self.delta_batch(delta, path, batch, spare);
        }
        let results: Vec<io::Result<Vec<u8>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .zip(self.compressors.iter_mut())
                .map(|((_, data), compressor)| scope.spawn(move || compressor.compress(data)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("compression thread panicked"))
                .collect()
        });
        for ((offset, data), compressed) in batch.drain(..).zip(results) {
            let compressed = compressed.map_err(|source| CreateError::Compress {
                path: path.to_owned(),
                offset,
                source,
            })?;
            self.data
                .write_all(&compressed)
                .map_err(|source| CreateError::Output {
                    path: self.data_path.clone(),
                    source,
                })?;
            self.operations.push(Operation::Replace(ReplaceOp {
                dst,
                dst_offset: offset,
                dst_length: data.len() as u64,
                data_offset: self.data_len,
                data_length: compressed.len() as u64,
                data_sha256: Sha256Digest::of(&compressed),
            }));
            self.data_len += compressed.len() as u64;
            spare.push(data);
        }
        Ok(())
    }

    /// [`Self::compress_batch`] for /usr of a delta: each chunk cut into pieces in parallel.
    fn delta_batch(
        &mut self,
        delta: &delta::DeltaSource,
        path: &Path,
        batch: &mut Vec<(u64, Vec<u8>)>,
        spare: &mut Vec<Vec<u8>>,
    ) -> Result<(), CreateError> {
        let level = self.level;
        let results: Vec<Result<Vec<delta::Piece>, CreateError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .zip(self.compressors.iter_mut())
                .map(|((offset, data), compressor)| {
                    scope.spawn(move || delta.encode_chunk(*offset, data, level, compressor, path))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("delta thread panicked"))
                .collect()
        });
        for ((_, data), pieces) in batch.drain(..).zip(results) {
            for piece in pieces? {
                self.push_piece(piece)?;
            }
            spare.push(data);
        }
        Ok(())
    }

    fn push_blob(&mut self, blob: &[u8]) -> Result<(u64, Sha256Digest), CreateError> {
        self.data
            .write_all(blob)
            .map_err(|source| CreateError::Output {
                path: self.data_path.clone(),
                source,
            })?;
        let offset = self.data_len;
        self.data_len += blob.len() as u64;
        Ok((offset, Sha256Digest::of(blob)))
    }

    fn push_piece(&mut self, piece: delta::Piece) -> Result<(), CreateError> {
        let dst = Destination::Usr;
        let op = match piece {
            delta::Piece::Zero { offset, len } => {
                self.push_zero(dst, offset, len);
                return Ok(());
            }
            delta::Piece::Copy {
                offset,
                len,
                extents,
                sha256,
            } => Operation::SourceCopy(SourceCopyOp {
                dst,
                src: Destination::Usr,
                dst_offset: offset,
                dst_length: len,
                src_extents: extents,
                src_sha256: Sha256Digest(sha256),
            }),
            delta::Piece::Patch {
                offset,
                len,
                extents,
                src_sha256,
                dst_sha256,
                blob,
            } => {
                let (data_offset, data_sha256) = self.push_blob(&blob)?;
                Operation::SourcePatch(SourcePatchOp {
                    dst,
                    dst_offset: offset,
                    dst_length: len,
                    src_extents: extents,
                    src_sha256: Sha256Digest(src_sha256),
                    data_offset,
                    data_length: blob.len() as u64,
                    data_sha256,
                    dst_sha256: Sha256Digest(dst_sha256),
                })
            }
            delta::Piece::Replace { offset, len, blob } => {
                let (data_offset, data_sha256) = self.push_blob(&blob)?;
                Operation::Replace(ReplaceOp {
                    dst,
                    dst_offset: offset,
                    dst_length: len,
                    data_offset,
                    data_length: blob.len() as u64,
                    data_sha256,
                })
            }
        };
        self.operations.push(op);
        Ok(())
    }

    fn finish(self) -> Result<(File, u64, Vec<Operation>, u64), CreateError> {
        let data_path = self.data_path;
        let file = self.data.into_inner().map_err(|e| CreateError::Output {
            path: data_path.clone(),
            source: e.into_error(),
        })?;
        Ok((file, self.data_len, self.operations, self.usr_zero_bytes))
    }
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
    let manifest_bytes = serde_json::to_vec(manifest).expect("a manifest always serializes");
    let header = Header {
        manifest_len: manifest_bytes.len() as u64,
        signature_block_len: (4 + SIGNATURE_ENTRY_LEN * signing_keys.len()) as u32,
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

mod boot_files;
mod build_deltas;
pub(crate) mod delta;
#[cfg(test)]
mod tests;
