//! The per-operation steps shared by [`super::Installer`] and [`super::verify_payload`]:
//! reading a blob from the stream, checking its sha256, decompressing it; plus zero-filling
//! and hashing files.
//!
//! Contract: a blob is read whole (at most [`MAX_BLOB_LEN`] bytes) and its hash checked
//! before it reaches the decompressor, and decompression succeeds only with exactly the
//! declared size. Errors carry the payload offset and operation index.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use super::{ApplyError, ZEROS};
use crate::format::{Operation, Sha256Digest, MAX_BLOB_LEN};

/// Data bytes used by the first `count` operations.
pub(super) fn data_before(operations: &[Operation], count: usize) -> u64 {
    operations[..count].iter().map(Operation::data_length).sum()
}

pub(super) fn read_blob(
    body: &mut impl Read,
    blob: &mut Vec<u8>,
    len: u64,
    offset: u64,
    operation: usize,
) -> Result<(), ApplyError> {
    debug_assert!(len <= MAX_BLOB_LEN, "bounded by Manifest::validate");
    blob.resize(len as usize, 0);
    let mut filled = 0;
    while filled < blob.len() {
        match body.read(&mut blob[filled..]) {
            Ok(0) => {
                return Err(ApplyError::Truncated {
                    offset: offset + filled as u64,
                    operation,
                })
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(ApplyError::Read {
                    offset: offset + filled as u64,
                    operation,
                    source,
                })
            }
        }
    }
    Ok(())
}

pub(super) fn check_blob(
    blob: &[u8],
    expected: &Sha256Digest,
    offset: u64,
    operation: usize,
) -> Result<(), ApplyError> {
    let actual = Sha256Digest::of(blob);
    if actual != *expected {
        return Err(ApplyError::BlobHashMismatch {
            operation,
            offset,
            expected: *expected,
            actual,
        });
    }
    Ok(())
}

pub(super) fn decompress(
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    blob: &[u8],
    output: &mut Vec<u8>,
    expected: u64,
    offset: u64,
    operation: usize,
) -> Result<(), ApplyError> {
    output.clear();
    output.reserve(expected as usize);
    let err = |reason: String| ApplyError::Decompress {
        operation,
        offset,
        expected,
        reason,
    };
    let n = decompressor
        .decompress_to_buffer(blob, output)
        .map_err(|e| err(e.to_string()))?;
    if n as u64 != expected {
        return Err(err(format!("got {n} bytes")));
    }
    Ok(())
}

pub(super) fn write_zeros_at(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

pub(super) fn hash_file(file: &mut File, len: u64) -> io::Result<Sha256Digest> {
    file.seek(SeekFrom::Start(0))?;
    let mut sha = Sha256::new();
    let copied = io::copy(&mut (&*file).take(len), &mut HashWriter(&mut sha))?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{copied} of {len} bytes"),
        ));
    }
    Ok(Sha256Digest(sha.finalize().into()))
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
