//! Where the images of a payload are written: the [`UsrTarget`] trait, the
//! [`UsrPartition`] implementation over a block device or pre-sized file, and
//! [`InstallTargets`].
//!
//! Contract: a target never grows; its capacity is fixed when opened, and writes land at the
//! offsets given. `sync` makes written data durable; `drop_cache` makes a later read-back
//! read the medium rather than the page cache.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use super::ZEROS;

/// Where the /usr image goes: a USR partition, or a file standing in for one.
pub trait UsrTarget: Read + Write + Seek {
    /// Capacity in bytes.
    fn capacity(&mut self) -> io::Result<u64>;
    /// Writes `len` zero bytes at `offset`. The default writes from a static zero buffer.
    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.seek(SeekFrom::Start(offset))?;
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            self.write_all(&ZEROS[..n])?;
            left -= n as u64;
        }
        Ok(())
    }
    /// Makes written data durable.
    fn sync(&mut self) -> io::Result<()> {
        self.flush()
    }
    /// Drops cached pages so a read-back reads the medium. Default: nothing.
    fn drop_cache(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Name for messages.
    fn describe(&self) -> String;
}

/// A USR partition block device, or a regular file of fixed size standing in for one.
#[derive(Debug)]
pub struct UsrPartition {
    file: File,
    path: PathBuf,
    size: u64,
}

impl UsrPartition {
    /// Opens an existing block device or regular file read-write; never creates or resizes
    /// it. Its size is the capacity (pre-size a file with `truncate -s`).
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let meta = file.metadata()?;
        let size = if meta.file_type().is_block_device() {
            file.seek(SeekFrom::End(0))?
        } else {
            meta.len()
        };
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
        })
    }
}

impl Read for UsrPartition {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for UsrPartition {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for UsrPartition {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

impl UsrTarget for UsrPartition {
    fn capacity(&mut self) -> io::Result<u64> {
        Ok(self.size)
    }

    /// Zeroes without transferring data: `fallocate(PUNCH_HOLE)` on files (the range becomes
    /// a hole), `ZERO_RANGE` (the kernel's zero-out) where punching is unsupported, such as
    /// on some block devices; writes zeros only if neither works.
    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        use rustix::fs::{fallocate, FallocateFlags};
        let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        let zero = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
        for flags in [punch, zero] {
            match fallocate(&self.file, flags, offset, len) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn drop_cache(&mut self) -> io::Result<()> {
        rustix::fs::fadvise(&self.file, 0, None, rustix::fs::Advice::DontNeed)?;
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Where each image of a payload goes.
#[derive(Debug)]
pub struct InstallTargets<T> {
    /// The inactive USR partition.
    pub usr: T,
    /// The inactive slot's kernel path on the ESP.
    pub kernel: PathBuf,
    /// The inactive slot's initramfs path on the ESP.
    pub initramfs: PathBuf,
}
