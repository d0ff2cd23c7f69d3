//! Streaming the image onto the target so that a half-written target never looks bootable.
//!
//! Order: (1) zero the target's primary GPT area (LBA 0-33) and its last 33 sectors (where a
//! backup GPT lives), and sync; (2) stream the image, hashing every byte, writing everything
//! except its first [`HEAD_LEN`] bytes (protective MBR with GRUB's boot code, primary GPT) and
//! its last [`TAIL_LEN`] bytes (its backup GPT), which are kept back (the head in memory, the
//! tail replaced by zeros); a plain-file target is sparse, so all-zero chunks are skipped;
//! (3) refuse unless exactly the signed number of bytes came with the signed sha256. Only then
//! does the caller edit the OEM partition and write the partition table (see `gpt_last`).
//! A device error mid-write (a USB stick pulled) surfaces as an I/O error naming the target,
//! which still has no partition table.

use std::io::{Read, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::error::InstallError;
use crate::target::Target;
use crate::InstallEvent;

/// Bytes at the start of the image kept back until the end: everything before the first
/// partition (2 MiB alignment), which holds the protective MBR and the primary GPT.
pub const HEAD_LEN: u64 = wellcar_disk::layout::ALIGNMENT;
/// Bytes at the end of the image kept back: its backup GPT (header + 32 sectors of entries).
pub const TAIL_LEN: u64 = 33 * 512;
/// Bytes the GPT occupies at the start of a disk (protective MBR, header, 32 sectors).
const GPT_HEAD_LEN: u64 = 34 * 512;
const CHUNK: usize = 1 << 20;
/// Chunks read ahead of the hashing thread.
const HASH_QUEUE: usize = 8;
/// A progress event at least every this many bytes.
const PROGRESS_EVERY: u64 = 64 << 20;

fn target_io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl Fn(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        action,
        path: path.into(),
        source,
    }
}

/// Zeros the places a partition table is looked for: LBA 0-33 and the last 33 sectors.
pub fn wipe_partition_table(target: &mut Target) -> Result<(), InstallError> {
    let path = target.path.clone();
    let zeros = vec![0u8; GPT_HEAD_LEN as usize];
    target
        .file
        .write_all_at(&zeros, 0)
        .map_err(target_io("wiping the partition table of", &path))?;
    let tail = target.size.saturating_sub(TAIL_LEN).max(GPT_HEAD_LEN);
    target
        .file
        .write_all_at(&zeros[..(target.size - tail) as usize], tail)
        .map_err(target_io("wiping the backup partition table of", &path))?;
    target.file.sync_all().map_err(target_io("syncing", &path))
}

/// Streams `image` (its decompressed bytes) onto `target` as the module docs say, and returns
/// the kept-back head once size and sha256 matched the signed ones.
///
/// The sha256 runs on its own thread, fed the chunks this thread has read (decompressed) and
/// written, so hashing overlaps reading and writing (it is the slowest of the three; chunk
/// buffers go back to this thread for reuse).
pub fn stream_image(
    image: &mut dyn Read,
    image_path: &Path,
    target: &mut Target,
    expected_size: u64,
    expected_sha256: &str,
    progress: &dyn Fn(InstallEvent),
) -> Result<Vec<u8>, InstallError> {
    std::thread::scope(|scope| {
        let (to_hash, hash_queue) = std::sync::mpsc::sync_channel::<Vec<u8>>(HASH_QUEUE);
        let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
        let hasher = scope.spawn(move || {
            let mut hasher = Sha256::new();
            for chunk in hash_queue {
                hasher.update(&chunk);
                // The streaming side may be gone (an error): then the buffer is just freed.
                let _ = recycle.send(chunk);
            }
            hex::encode(hasher.finalize())
        });
        let mut stream = || -> Result<(Vec<u8>, u64), InstallError> {
            let mut head = Vec::with_capacity(HEAD_LEN as usize);
            let mut offset = 0u64;
            let mut next_report = 0u64;
            loop {
                let mut buf = recycled.try_recv().unwrap_or_default();
                buf.resize(CHUNK, 0);
                let n = read_full(image, &mut buf).map_err(|source| InstallError::Io {
                    action: "reading the image",
                    path: image_path.into(),
                    source,
                })?;
                if n == 0 {
                    return Ok((head, offset));
                }
                buf.truncate(n);
                if offset + n as u64 > expected_size {
                    return Err(InstallError::TooLong {
                        path: image_path.into(),
                        expected: expected_size,
                    });
                }
                write_chunk(target, &buf, offset, expected_size, &mut head)?;
                offset += n as u64;
                // The hasher only stops when this side hangs up.
                to_hash
                    .send(buf)
                    .expect("the hashing thread runs until the stream ends");
                if offset >= next_report {
                    progress(InstallEvent::Writing {
                        written: offset,
                        total: expected_size,
                    });
                    next_report = offset + PROGRESS_EVERY;
                }
            }
        };
        let streamed = stream();
        drop(to_hash);
        let actual = hasher.join().expect("the hashing thread does not panic");
        let (head, offset) = streamed?;
        if offset < expected_size {
            return Err(InstallError::Truncated {
                path: image_path.into(),
                read: offset,
                expected: expected_size,
            });
        }
        if actual != expected_sha256 {
            return Err(InstallError::Tampered {
                path: image_path.into(),
                actual,
                expected: expected_sha256.into(),
            });
        }
        target
            .file
            .sync_all()
            .map_err(target_io("syncing", &target.path))?;
        progress(InstallEvent::Written {
            bytes: offset,
            sha256: actual,
        });
        Ok(head)
    })
}

/// Writes the image bytes `chunk` found at `offset`: the part inside the kept-back head goes to
/// `head`, the middle to the target (all-zero parts skipped on a sparse file), the part inside
/// the image's backup GPT is written as zeros (a block device) or skipped (a file).
fn write_chunk(
    target: &mut Target,
    chunk: &[u8],
    offset: u64,
    image_size: u64,
    head: &mut Vec<u8>,
) -> Result<(), InstallError> {
    let tail_start = image_size.saturating_sub(TAIL_LEN);
    let end = offset + chunk.len() as u64;
    let head_end = end.min(HEAD_LEN);
    if offset < head_end {
        head.extend_from_slice(&chunk[..(head_end - offset) as usize]);
    }
    let mid_start = offset.max(HEAD_LEN);
    let mid_end = end.min(tail_start);
    if mid_start < mid_end {
        let part = &chunk[(mid_start - offset) as usize..(mid_end - offset) as usize];
        if !(target.is_file && part.iter().all(|&b| b == 0)) {
            target
                .file
                .write_all_at(part, mid_start)
                .map_err(target_io("writing to", &target.path))?;
        }
    }
    let tail_from = offset.max(tail_start).max(HEAD_LEN);
    if tail_from < end && !target.is_file {
        let zeros = vec![0u8; (end - tail_from) as usize];
        target
            .file
            .write_all_at(&zeros, tail_from)
            .map_err(target_io("writing to", &target.path))?;
    }
    Ok(())
}

/// Fills `buf` unless the stream ends first; returns how much was read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The image's partition table, read from the kept-back head.
pub fn image_gpt(head: &[u8], image_path: &Path) -> Result<gptman::GPT, InstallError> {
    gptman::GPT::read_from(&mut std::io::Cursor::new(head), 512).map_err(|source| {
        InstallError::Gpt {
            path: image_path.into(),
            source,
        }
    })
}

/// The last step: the protective MBR (with GRUB's boot code, its size fixed to the target),
/// then the image's partition table with its backup moved to the end of the target, primary
/// header and array, then backup header and array; then sync.
pub fn gpt_last(
    target: &mut Target,
    head: &[u8],
    mut gpt: gptman::GPT,
) -> Result<(), InstallError> {
    let path = target.path.clone();
    let gpt_err = |source| InstallError::Gpt {
        path: path.clone(),
        source,
    };
    // Between the GPT and the first partition (normally zeros).
    target
        .file
        .write_all_at(&head[GPT_HEAD_LEN as usize..], GPT_HEAD_LEN)
        .map_err(target_io("writing to", &path))?;
    let mut mbr = head[..512].to_vec();
    let sectors = (target.size / 512 - 1).min(u64::from(u32::MAX)) as u32;
    if mbr[446 + 4] == 0xee {
        mbr[446 + 12..446 + 16].copy_from_slice(&sectors.to_le_bytes());
    }
    target
        .file
        .write_all_at(&mbr, 0)
        .map_err(target_io("writing the MBR of", &path))?;
    gpt.header
        .update_from(&mut target.file, 512)
        .map_err(gpt_err)?;
    target
        .file
        .seek(SeekFrom::Start(0))
        .map_err(target_io("seeking", &path))?;
    gpt.write_into(&mut target.file).map_err(gpt_err)?;
    target.file.flush().map_err(target_io("writing", &path))?;
    target.file.sync_all().map_err(target_io("syncing", &path))
}
