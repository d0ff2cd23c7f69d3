//! The payload's data section as it is made: each image read extent by extent (holes become
//! `zero` operations unread), cut into [`CHUNK_LEN`] chunks at fixed offsets, compressed in
//! parallel (or, for /usr of a delta, cut in [`DELTA_CHUNK_LEN`] chunks into source copies
//! and patches) and appended in order, with the operations that describe them. The caller
//! puts the operations into the manifest; the blobs go to a temp file because the manifest,
//! which precedes them, needs their hashes.
//!
//! A delta's /usr hash area is not read into blobs: it becomes one `verity_tree` operation
//! (the host rebuilds it), whose bytes are read here only to hash them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wellcar_verity::RootHasher;

use super::{delta, CreateError, CreateOptions, CHUNK_LEN, DELTA_CHUNK_LEN};
use crate::format::{
    Destination, Operation, ReplaceOp, Sha256Digest, SourceCopyOp, SourcePatchOp, VerityTreeOp,
    ZeroOp,
};

/// The dm-verity hash area of a /usr image, emitted as a `verity_tree` operation.
#[derive(Debug, Clone, Copy)]
pub(super) struct HashAreaSpan {
    /// Byte offset of the area (the hash offset).
    pub(super) offset: u64,
    /// Its size (superblock block plus tree).
    pub(super) len: u64,
    /// The superblock's uuid.
    pub(super) uuid: uuid::Uuid,
}

/// A piece of an image in write order: a file extent, or the hash area.
#[derive(Debug, Clone, Copy)]
enum Span {
    Extent(Extent),
    HashArea,
}

/// `extents` with `[area.offset, area.offset + area.len)` cut out and replaced by one
/// [`Span::HashArea`] in its place.
fn spans(extents: Vec<Extent>, area: Option<&HashAreaSpan>) -> Vec<Span> {
    let Some(area) = area else {
        return extents.into_iter().map(Span::Extent).collect();
    };
    let (start, end) = (area.offset, area.offset + area.len);
    let mut out = Vec::with_capacity(extents.len() + 2);
    let mut area_placed = false;
    for e in extents {
        if e.start < start {
            out.push(Span::Extent(Extent {
                end: e.end.min(start),
                ..e
            }));
        }
        if e.start < end && e.end > start && !area_placed {
            out.push(Span::HashArea);
            area_placed = true;
        }
        if e.end > end {
            out.push(Span::Extent(Extent {
                start: e.start.max(end),
                ..e
            }));
        }
    }
    out
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
pub(super) struct BlobWriter<'d> {
    data: BufWriter<File>,
    data_path: PathBuf,
    data_len: u64,
    pub(super) operations: Vec<Operation>,
    usr_zero_bytes: u64,
    compressors: Vec<zstd::bulk::Compressor<'static>>,
    level: i32,
    delta: Option<&'d delta::DeltaSource>,
}

impl<'d> BlobWriter<'d> {
    pub(super) fn new(
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

    /// Adds one image; checks its size (if given) and sha256; feeds `verity`. With
    /// `hash_area`, that range becomes a `verity_tree` operation. Returns the image's size.
    pub(super) fn add_image(
        &mut self,
        dst: Destination,
        path: &Path,
        expected_size: Option<u64>,
        expected_sha: Sha256Digest,
        mut verity: Option<&mut RootHasher>,
        hash_area: Option<&HashAreaSpan>,
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
        let chunk_len = match (self.delta, dst) {
            (Some(_), Destination::Usr) => DELTA_CHUNK_LEN,
            _ => CHUNK_LEN,
        };
        let threads = self.compressors.len();
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(threads);
        let mut spare: Vec<Vec<u8>> = Vec::new();
        if let Some(area) = hash_area.filter(|a| a.offset.saturating_add(a.len) > len) {
            return Err(CreateError::ArtifactMismatch {
                path: path.to_owned(),
                what: "size",
                expected: format!("at least {} (end of the hash area)", area.offset + area.len),
                actual: len.to_string(),
            });
        }
        for span in spans(extents(&file, len).map_err(input_err)?, hash_area) {
            let extent = match span {
                Span::Extent(extent) => extent,
                Span::HashArea => {
                    let area = hash_area.expect("spans() yields a hash area only when given one");
                    self.compress_batch(dst, path, &mut batch, &mut spare)?;
                    let mut bytes = vec![0u8; area.len as usize];
                    file.read_exact_at(&mut bytes, area.offset)
                        .map_err(input_err)?;
                    sha.update(&bytes);
                    self.operations.push(Operation::VerityTree(VerityTreeOp {
                        dst,
                        dst_offset: area.offset,
                        dst_length: area.len,
                        uuid: area.uuid,
                        dst_sha256: Sha256Digest::of(&bytes),
                    }));
                    continue;
                }
            };
            if !extent.data {
                self.compress_batch(dst, path, &mut batch, &mut spare)?;
                hash_zeros(&mut sha, &mut verity, extent.end - extent.start);
                self.push_zero(dst, extent.start, extent.end - extent.start);
                continue;
            }
            let mut pos = extent.start;
            while pos < extent.end {
                let chunk_end = ((pos / chunk_len + 1) * chunk_len).min(extent.end);
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
                codec,
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
                    codec,
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

    pub(super) fn finish(self) -> Result<(File, u64, Vec<Operation>, u64), CreateError> {
        let data_path = self.data_path;
        let file = self.data.into_inner().map_err(|e| CreateError::Output {
            path: data_path.clone(),
            source: e.into_error(),
        })?;
        Ok((file, self.data_len, self.operations, self.usr_zero_bytes))
    }
}

#[cfg(test)]
#[path = "blob_writer_tests.rs"]
mod tests;
