//! Delta creation: the source build's /usr indexed by block, and each changed chunk of the
//! new /usr cut into `zero`, `source_copy` and `source_patch`/`replace` pieces.
//!
//! Contract: [`DeltaSource::open`] reads the source build's manifest and /usr image, checks
//! that the image hashes to the manifest's dm-verity root (a delta is never made against a
//! build that is not what it says), and indexes every non-zero 4 KiB block of its verity data
//! region by sha256. [`DeltaSource::encode_chunk`] then describes one chunk of the new image:
//! - runs of zero blocks become `zero`;
//! - runs of blocks found in the source (same offset first, else anywhere) become one
//!   `source_copy` whose extents are the matching source blocks, merged where contiguous;
//! - every other run becomes a `source_patch` against the source bytes around where the run
//!   should be (the neighbouring matched block's source position, else the same offset, ±8×
//!   the run's length, at least 256 KiB and at most 2 MiB), or a `replace` when plain zstd is
//!   smaller. Found runs of fewer than 4 blocks between changed blocks are patched with them.
//!   Each patch is made with both codecs (zstd reference prefix and bsdiff, `crate::patch`)
//!   at zstd level 22 whatever the payload's level, and the smaller kept.
//!
//! Memory: the index (about 40 bytes per source block) plus one reference window per thread.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wellcar_verity::{RootHasher, BLOCK_SIZE};

use super::{read_build_manifest, CreateError};
use crate::format::{
    Destination, PatchCodec, Sha256Digest, SourceExtent, SourceSlot, VerityParams,
    MAX_SOURCE_EXTENTS, MAX_SOURCE_LEN,
};

const BLOCK: usize = BLOCK_SIZE as usize;
/// Source bytes either side of a changed run given to the patch as reference: 8 times the
/// run, between these bounds (encoding indexes the whole reference, so small runs get small
/// references).
const MIN_REFERENCE_MARGIN: u64 = 256 * 1024;
const MAX_REFERENCE_MARGIN: u64 = 2 * 1024 * 1024;
/// Found runs shorter than this between two changed runs are patched with them: one operation
/// instead of three, and zstd finds those blocks in the reference anyway.
const MIN_COPY_RUN: usize = 4;
/// Lowest zstd level of a patch: the densest. Patches cover only the changed runs (KiB to a
/// few MiB), so the slowest level costs little time and its bytes are what every host
/// downloads; `--payload-compression-level` still sets the level of `replace` pieces.
const PATCH_MIN_LEVEL: i32 = 22;

/// The source build a delta is made against.
#[derive(Debug)]
pub(crate) struct DeltaSource {
    file: File,
    /// What the delta's manifest names.
    pub slot: SourceSlot,
    data_len: u64,
    index: HashMap<[u8; 32], u32>,
    /// sha256 of the source build's kernel and initramfs (as its manifest says).
    kernel_sha256: Option<Sha256Digest>,
    initramfs_sha256: Option<Sha256Digest>,
}

/// One piece of a chunk of the new image, in order.
#[derive(Debug)]
pub(crate) enum Piece {
    /// Zero bytes.
    Zero { offset: u64, len: u64 },
    /// Copy from the source.
    Copy {
        offset: u64,
        len: u64,
        extents: Vec<SourceExtent>,
        sha256: [u8; 32],
    },
    /// A patch against source extents.
    Patch {
        offset: u64,
        len: u64,
        extents: Vec<SourceExtent>,
        src_sha256: [u8; 32],
        dst_sha256: [u8; 32],
        codec: PatchCodec,
        blob: Vec<u8>,
    },
    /// Plain zstd.
    Replace {
        offset: u64,
        len: u64,
        blob: Vec<u8>,
    },
}

impl DeltaSource {
    /// Opens and indexes the source build in `dir` (its `manifest.json`).
    pub fn open(dir: &Path) -> Result<Self, CreateError> {
        let manifest_path = dir.join(wellcar_contract::BUILD_MANIFEST_FILE);
        let build = read_build_manifest(&manifest_path)?;
        wellcar_contract::OsVersion::parse(&build.version).map_err(|e| {
            CreateError::BuildManifestField {
                path: manifest_path.clone(),
                field: "version",
                reason: e.to_string(),
            }
        })?;
        let salt =
            hex::decode(&build.verity_salt).map_err(|e| CreateError::BuildManifestField {
                path: manifest_path.clone(),
                field: "verity_salt",
                reason: format!("not hex: {e}"),
            })?;
        let usr_path = dir.join(&build.usr_image);
        let input_err = |source| CreateError::Input {
            path: usr_path.clone(),
            source,
        };
        let file = File::open(&usr_path).map_err(input_err)?;
        let data_len = build.verity_data_blocks * BLOCK_SIZE;
        let mut hasher = RootHasher::new(&salt, build.verity_data_blocks);
        let mut index = HashMap::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0u64;
        while pos < data_len {
            let n = (data_len - pos).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], pos).map_err(input_err)?;
            hasher.update(&buf[..n]);
            for (i, block) in buf[..n].chunks(BLOCK).enumerate() {
                if block.len() == BLOCK && !is_zero(block) {
                    let number = (pos / BLOCK_SIZE) as u32 + i as u32;
                    index.entry(Sha256::digest(block).into()).or_insert(number);
                }
            }
            pos += n as u64;
        }
        let actual = hasher.finish();
        if actual != Some(build.verity_root_hash) {
            return Err(CreateError::ArtifactMismatch {
                path: usr_path,
                what: "verity root hash",
                expected: build.verity_root_hash.to_string(),
                actual: actual.map_or_else(|| "incomplete".to_owned(), |r| r.to_string()),
            });
        }
        Ok(Self {
            file,
            data_len,
            index,
            kernel_sha256: Sha256Digest::from_hex(&build.kernel_sha256),
            initramfs_sha256: Sha256Digest::from_hex(&build.initramfs_sha256),
            slot: SourceSlot {
                version: build.version,
                verity: VerityParams {
                    root_hash: build.verity_root_hash,
                    salt: build.verity_salt.to_lowercase(),
                    hash_offset: build.verity_hash_offset,
                    data_blocks: build.verity_data_blocks,
                },
                kernel: None,
                initramfs: None,
            },
        })
    }

    /// sha256 of the source build's kernel or initramfs (`None` for /usr or if unknown).
    pub fn boot_file_sha256(&self, file: Destination) -> Option<Sha256Digest> {
        match file {
            Destination::Usr => None,
            Destination::Kernel => self.kernel_sha256,
            Destination::Initramfs => self.initramfs_sha256,
        }
    }

    fn read(&self, extents: &[SourceExtent], path: &Path) -> Result<Vec<u8>, CreateError> {
        let mut out = Vec::new();
        for e in extents {
            let start = out.len();
            out.resize(start + e.length as usize, 0);
            self.file
                .read_exact_at(&mut out[start..], e.offset)
                .map_err(|source| CreateError::Input {
                    path: path.to_owned(),
                    source,
                })?;
        }
        Ok(out)
    }

    /// The source block holding `block`, preferring `same` (the block at the same offset).
    fn find(&self, block: &[u8], same: u64, path: &Path) -> Result<Option<u64>, CreateError> {
        if block.len() != BLOCK {
            return Ok(None);
        }
        let digest: [u8; 32] = Sha256::digest(block).into();
        let Some(&found) = self.index.get(&digest) else {
            return Ok(None);
        };
        if same + BLOCK_SIZE <= self.data_len {
            let at_same = self.read(
                &[SourceExtent {
                    offset: same,
                    length: BLOCK_SIZE,
                }],
                path,
            )?;
            if at_same == block {
                return Ok(Some(same));
            }
        }
        Ok(Some(u64::from(found) * BLOCK_SIZE))
    }

    /// Cuts the chunk `data` of the new image at `offset` into pieces (see the module docs).
    pub fn encode_chunk(
        &self,
        offset: u64,
        data: &[u8],
        level: i32,
        compressor: &mut zstd::bulk::Compressor<'static>,
        source_path: &Path,
    ) -> Result<Vec<Piece>, CreateError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Kind {
            Zero,
            Found(u64),
            New,
        }
        let mut kinds = Vec::with_capacity(data.len().div_ceil(BLOCK));
        for (i, block) in data.chunks(BLOCK).enumerate() {
            let at = offset + (i * BLOCK) as u64;
            kinds.push(if is_zero(block) {
                Kind::Zero
            } else if let Some(src) = self.find(block, at, source_path)? {
                Kind::Found(src)
            } else {
                Kind::New
            });
        }
        // Short found runs between changed blocks join the changed run.
        let mut i = 0;
        while i < kinds.len() {
            if !matches!(kinds[i], Kind::Found(_)) {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < kinds.len() && matches!(kinds[j], Kind::Found(_)) {
                j += 1;
            }
            let between_changes =
                i > 0 && kinds[i - 1] == Kind::New && kinds.get(j) == Some(&Kind::New);
            if between_changes && j - i < MIN_COPY_RUN {
                kinds[i..j].fill(Kind::New);
            }
            i = j;
        }
        let mut pieces = Vec::new();
        let mut i = 0;
        while i < kinds.len() {
            let class = |k: Kind| match k {
                Kind::Zero => 0,
                Kind::Found(_) => 1,
                Kind::New => 2,
            };
            let mut j = i + 1;
            while j < kinds.len() && class(kinds[j]) == class(kinds[i]) {
                if let (Kind::Found(_), true) = (kinds[i], j - i >= MAX_SOURCE_EXTENTS) {
                    break;
                }
                j += 1;
            }
            let start = i * BLOCK;
            let end = (j * BLOCK).min(data.len());
            let run_offset = offset + start as u64;
            let len = (end - start) as u64;
            match kinds[i] {
                Kind::Zero => pieces.push(Piece::Zero {
                    offset: run_offset,
                    len,
                }),
                Kind::Found(_) => {
                    let mut extents: Vec<SourceExtent> = Vec::new();
                    for k in &kinds[i..j] {
                        let Kind::Found(src) = *k else { unreachable!() };
                        match extents.last_mut() {
                            Some(last) if last.offset + last.length == src => {
                                last.length += BLOCK_SIZE
                            }
                            _ => extents.push(SourceExtent {
                                offset: src,
                                length: BLOCK_SIZE,
                            }),
                        }
                    }
                    pieces.push(Piece::Copy {
                        offset: run_offset,
                        len,
                        sha256: Sha256::digest(&data[start..end]).into(),
                        extents,
                    });
                }
                Kind::New => {
                    // Where the run should sit in the source: after the previous matched
                    // block's source, before the next one's, else at the same offset.
                    let anchor = match (i.checked_sub(1).map(|p| kinds[p]), kinds.get(j)) {
                        (Some(Kind::Found(src)), _) => src + BLOCK_SIZE,
                        (_, Some(Kind::Found(src))) => src.saturating_sub(len),
                        _ => run_offset,
                    };
                    pieces.push(self.patch_or_replace(
                        run_offset,
                        &data[start..end],
                        anchor,
                        level,
                        compressor,
                        source_path,
                    )?);
                }
            }
            i = j;
        }
        Ok(pieces)
    }

    fn patch_or_replace(
        &self,
        offset: u64,
        data: &[u8],
        anchor: u64,
        level: i32,
        compressor: &mut zstd::bulk::Compressor<'static>,
        source_path: &Path,
    ) -> Result<Piece, CreateError> {
        let compress_err = |source| CreateError::Compress {
            path: PathBuf::from("/usr"),
            offset,
            source,
        };
        let plain = compressor.compress(data).map_err(compress_err)?;
        let len = data.len() as u64;
        let margin = (len * 8)
            .clamp(MIN_REFERENCE_MARGIN, MAX_REFERENCE_MARGIN)
            .min(MAX_SOURCE_LEN.saturating_sub(len) / 2);
        let ref_start = anchor.saturating_sub(margin).min(self.data_len);
        let ref_end = (anchor + len + margin)
            .min(self.data_len)
            .min(ref_start + MAX_SOURCE_LEN);
        if ref_end <= ref_start {
            return Ok(Piece::Replace {
                offset,
                len,
                blob: plain,
            });
        }
        let extents = vec![SourceExtent {
            offset: ref_start,
            length: ref_end - ref_start,
        }];
        let reference = self.read(&extents, source_path)?;
        // Both codecs; the smallest of them and plain zstd wins.
        let mut best: Option<(PatchCodec, Vec<u8>)> = None;
        for codec in [PatchCodec::Zstd, PatchCodec::Bsdiff] {
            let patch = crate::patch::encode(codec, &reference, data, level.max(PATCH_MIN_LEVEL))
                .map_err(|e| compress_err(std::io::Error::other(e)))?;
            if best.as_ref().is_none_or(|(_, b)| patch.len() < b.len()) {
                best = Some((codec, patch));
            }
        }
        let (codec, patch) = best.expect("two codecs were tried");
        if patch.len() >= plain.len() {
            return Ok(Piece::Replace {
                offset,
                len,
                blob: plain,
            });
        }
        Ok(Piece::Patch {
            offset,
            len,
            src_sha256: Sha256::digest(&reference).into(),
            dst_sha256: Sha256::digest(data).into(),
            extents,
            codec,
            blob: patch,
        })
    }
}

fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}
