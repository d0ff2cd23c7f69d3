//! Delta payloads: a kernel or initramfs that did not change since the source build is copied
//! from the source slot's own file instead of being sent.
//!
//! Contract: [`add_boot_file`] adds the kernel or initramfs of the new build. When the payload
//! is a delta and the source build's file has the same sha256, the file becomes `source_copy`
//! operations with `src` = the same file, one per [`DELTA_CHUNK_LEN`] chunk at fixed offsets, each
//! with the chunk's `src_sha256`; the caller puts the returned [`FileImage`] into the
//! manifest's `source`, which the installer checks the source file against before reading
//! it. Any other file is compressed as in a full payload. Either way the new file's sha256
//! must equal the build manifest's.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::blob_writer::BlobWriter;
use super::delta::DeltaSource;
use super::{CreateError, DELTA_CHUNK_LEN};
use crate::format::{Destination, FileImage, Operation, Sha256Digest, SourceCopyOp, SourceExtent};

/// Adds `dst`'s file at `path` (sha256 `sha256`, from the build manifest). Returns its size
/// and, when it is copied from the source slot, what the manifest's `source` must describe.
pub(super) fn add_boot_file(
    writer: &mut BlobWriter<'_>,
    delta: Option<&DeltaSource>,
    dst: Destination,
    path: &Path,
    sha256: Sha256Digest,
) -> Result<(u64, Option<FileImage>), CreateError> {
    if delta.is_some_and(|d| d.boot_file_sha256(dst) == Some(sha256)) {
        let (size, operations) = copy_operations(dst, path, sha256)?;
        writer.operations.extend(operations);
        return Ok((size, Some(FileImage { size, sha256 })));
    }
    Ok((writer.add_image(dst, path, None, sha256, None, None)?, None))
}

/// The `source_copy` operations that rebuild the file at `path` from the source's same file.
fn copy_operations(
    dst: Destination,
    path: &Path,
    expected: Sha256Digest,
) -> Result<(u64, Vec<Operation>), CreateError> {
    let input_err = |source| CreateError::Input {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(input_err)?;
    let len = file.metadata().map_err(input_err)?.len();
    let mut whole = Sha256::new();
    let mut operations = Vec::new();
    let mut chunk = vec![0u8; DELTA_CHUNK_LEN as usize];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(DELTA_CHUNK_LEN);
        let bytes = &mut chunk[..n as usize];
        file.read_exact_at(bytes, pos).map_err(input_err)?;
        whole.update(&*bytes);
        operations.push(Operation::SourceCopy(SourceCopyOp {
            dst,
            src: dst,
            dst_offset: pos,
            dst_length: n,
            src_extents: vec![SourceExtent {
                offset: pos,
                length: n,
            }],
            src_sha256: Sha256Digest::of(bytes),
        }));
        pos += n;
    }
    let actual = Sha256Digest(whole.finalize().into());
    if actual != expected {
        return Err(CreateError::ArtifactMismatch {
            path: path.to_owned(),
            what: "sha256",
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok((len, operations))
}
