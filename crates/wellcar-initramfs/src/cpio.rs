//! A reproducible writer (and a small reader) for the `newc` cpio format the kernel unpacks.
//!
//! Contract: [`Archive`] collects entries keyed by path; [`Archive::write_to`] emits them sorted
//! by path (so every parent directory precedes its children), with inode numbers assigned in
//! that order, uid/gid 0, one fixed mtime, and the `TRAILER!!!` record. The same entries and
//! mtime always give the same bytes. Parent directories that were not added explicitly are
//! added with mode 0755. [`read_archive`] parses such an archive back (used by tests and by
//! anyone who wants to inspect a built initramfs).

use std::collections::BTreeMap;
use std::io::{self, Write};

/// `newc` magic (no checksums).
const MAGIC: &[u8; 6] = b"070701";
/// Name of the closing record.
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// What one archive member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Directory,
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A symbolic link to the given target.
    Symlink(String),
    /// A character device node (major, minor).
    CharDevice(u32, u32),
}

/// One archive member: its kind and permission bits (`0o7777` part of the mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File, directory, link or device.
    pub kind: EntryKind,
    /// Permission bits.
    pub permissions: u32,
}

impl Entry {
    fn mode(&self) -> u32 {
        let file_type = match self.kind {
            EntryKind::Directory => S_IFDIR,
            EntryKind::File(_) => S_IFREG,
            EntryKind::Symlink(_) => S_IFLNK,
            EntryKind::CharDevice(..) => S_IFCHR,
        };
        file_type | (self.permissions & 0o7777)
    }

    fn data(&self) -> &[u8] {
        match &self.kind {
            EntryKind::File(data) => data,
            EntryKind::Symlink(target) => target.as_bytes(),
            EntryKind::Directory | EntryKind::CharDevice(..) => &[],
        }
    }
}

/// An in-memory set of archive members, keyed by their path without a leading `/`.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `path`, creating missing parent directories with mode 0755.
    pub fn insert(&mut self, path: &str, entry: Entry) {
        let path = normalize(path);
        let mut parent = String::new();
        for component in path
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            self.entries.entry(parent.clone()).or_insert(Entry {
                kind: EntryKind::Directory,
                permissions: 0o755,
            });
        }
        self.entries.insert(path, entry);
    }

    /// Adds a directory.
    pub fn add_dir(&mut self, path: &str, permissions: u32) {
        self.insert(
            path,
            Entry {
                kind: EntryKind::Directory,
                permissions,
            },
        );
    }

    /// Adds a regular file.
    pub fn add_file(&mut self, path: &str, permissions: u32, data: Vec<u8>) {
        self.insert(
            path,
            Entry {
                kind: EntryKind::File(data),
                permissions,
            },
        );
    }

    /// Adds a symbolic link.
    pub fn add_symlink(&mut self, path: &str, target: &str) {
        self.insert(
            path,
            Entry {
                kind: EntryKind::Symlink(target.to_string()),
                permissions: 0o777,
            },
        );
    }

    /// Adds a character device node.
    pub fn add_char_device(&mut self, path: &str, permissions: u32, major: u32, minor: u32) {
        self.insert(
            path,
            Entry {
                kind: EntryKind::CharDevice(major, minor),
                permissions,
            },
        );
    }

    /// The members, sorted by path.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// Writes the archive in `newc` format with every mtime set to `mtime`; returns the number
    /// of bytes written.
    pub fn write_to<W: Write>(&self, out: &mut W, mtime: u32) -> io::Result<u64> {
        let mut written = 0u64;
        for (index, (path, entry)) in self.entries.iter().enumerate() {
            let (rdev_major, rdev_minor) = match entry.kind {
                EntryKind::CharDevice(major, minor) => (major, minor),
                _ => (0, 0),
            };
            let nlink = if entry.kind == EntryKind::Directory {
                2
            } else {
                1
            };
            let header = Header {
                ino: index as u32 + 1,
                mode: entry.mode(),
                nlink,
                mtime,
                rdev_major,
                rdev_minor,
            };
            written += write_record(out, &header, path, entry.data())?;
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            mtime: 0,
            rdev_major: 0,
            rdev_minor: 0,
        };
        written += write_record(out, &trailer, TRAILER, &[])?;
        Ok(written)
    }
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

fn padding(len: u64) -> usize {
    ((4 - len % 4) % 4) as usize
}

fn write_record<W: Write>(out: &mut W, h: &Header, name: &str, data: &[u8]) -> io::Result<u64> {
    let data_len = u32::try_from(data.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is larger than 4 GiB, newc cannot hold it"),
        )
    })?;
    let name_size = name.len() as u32 + 1;
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    let fields = [
        h.ino,
        h.mode,
        0,
        0,
        h.nlink,
        h.mtime,
        data_len,
        0,
        0,
        h.rdev_major,
        h.rdev_minor,
        name_size,
        0,
    ];
    let mut header = Vec::with_capacity(110 + name.len() + 4);
    header.extend_from_slice(MAGIC);
    for field in fields {
        header.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    header.extend_from_slice(name.as_bytes());
    header.push(0);
    let pad = padding(header.len() as u64);
    header.extend(std::iter::repeat_n(0u8, pad));
    out.write_all(&header)?;
    out.write_all(data)?;
    let data_pad = padding(data.len() as u64);
    out.write_all(&[0u8; 3][..data_pad])?;
    Ok((header.len() + data.len() + data_pad) as u64)
}

/// One member as read back by [`read_archive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    /// Path as stored.
    pub path: String,
    /// Full mode (type and permissions).
    pub mode: u32,
    /// Modification time.
    pub mtime: u32,
    /// Contents (files) or target (symlinks).
    pub data: Vec<u8>,
    /// Device numbers for device nodes.
    pub rdev: (u32, u32),
}

/// Why an archive could not be read; `offset` is where in the (uncompressed) archive.
#[derive(Debug, thiserror::Error)]
#[error("malformed newc archive at byte {offset}: {what}")]
pub struct ReadError {
    /// Byte offset of the bad record.
    pub offset: usize,
    /// What was wrong.
    pub what: String,
}

/// Parses an uncompressed `newc` archive up to its trailer.
pub fn read_archive(bytes: &[u8]) -> Result<Vec<ReadEntry>, ReadError> {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    let fail = |offset: usize, what: &str| ReadError {
        offset,
        what: what.to_string(),
    };
    loop {
        let header = bytes
            .get(pos..pos + 110)
            .ok_or_else(|| fail(pos, "truncated header"))?;
        if &header[..6] != MAGIC {
            return Err(fail(pos, "bad magic"));
        }
        let field = |i: usize| -> Result<u32, ReadError> {
            let text = std::str::from_utf8(&header[6 + i * 8..14 + i * 8])
                .map_err(|_| fail(pos, "non-ascii header field"))?;
            u32::from_str_radix(text, 16).map_err(|_| fail(pos, "non-hex header field"))
        };
        let (mode, mtime, file_size, name_size) = (field(1)?, field(5)?, field(6)?, field(11)?);
        let rdev = (field(9)?, field(10)?);
        let name_start = pos + 110;
        let name_end = name_start + name_size as usize;
        let name_bytes = bytes
            .get(name_start..name_end.saturating_sub(1))
            .ok_or_else(|| fail(pos, "truncated name"))?;
        let path =
            String::from_utf8(name_bytes.to_vec()).map_err(|_| fail(pos, "name is not utf-8"))?;
        let data_start = name_end + padding(name_end as u64);
        let data_end = data_start + file_size as usize;
        let data = bytes
            .get(data_start..data_end)
            .ok_or_else(|| fail(pos, "truncated data"))?
            .to_vec();
        pos = data_end + padding(data_end as u64);
        if path == TRAILER {
            return Ok(entries);
        }
        entries.push(ReadEntry {
            path,
            mode,
            mtime,
            data,
            rdev,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add_file("/init", 0o755, b"#!static\n".to_vec());
        a.add_file(
            "usr/lib/modules/6.1.0/kernel/fs/erofs.ko",
            0o644,
            vec![7; 1001],
        );
        a.add_symlink("lib", "usr/lib");
        a.add_char_device("dev/console", 0o600, 5, 1);
        a.add_dir("proc", 0o555);
        a
    }

    #[test]
    fn parents_are_created_and_sorted_first() {
        let a = sample();
        let paths: Vec<&str> = a.entries().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "dev",
                "dev/console",
                "init",
                "lib",
                "proc",
                "usr",
                "usr/lib",
                "usr/lib/modules",
                "usr/lib/modules/6.1.0",
                "usr/lib/modules/6.1.0/kernel",
                "usr/lib/modules/6.1.0/kernel/fs",
                "usr/lib/modules/6.1.0/kernel/fs/erofs.ko",
            ]
        );
    }

    #[test]
    fn round_trip_through_reader() {
        let mut out = Vec::new();
        let len = sample().write_to(&mut out, 1_700_000_000).unwrap();
        assert_eq!(len as usize, out.len());
        assert_eq!(out.len() % 4, 0);
        let read = read_archive(&out).unwrap();
        assert_eq!(read.len(), 12);
        let module = read.iter().find(|e| e.path.ends_with("erofs.ko")).unwrap();
        assert_eq!(module.data, vec![7; 1001]);
        assert_eq!(module.mode, 0o100_644);
        assert_eq!(module.mtime, 1_700_000_000);
        let link = read.iter().find(|e| e.path == "lib").unwrap();
        assert_eq!(
            (link.mode, link.data.as_slice()),
            (0o120_777, &b"usr/lib"[..])
        );
        let console = read.iter().find(|e| e.path == "dev/console").unwrap();
        assert_eq!((console.mode, console.rdev), (0o020_600, (5, 1)));
    }

    #[test]
    fn output_is_reproducible() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        sample().write_to(&mut a, 5).unwrap();
        // Same members inserted in another order.
        let mut other = Archive::new();
        other.add_dir("proc", 0o555);
        other.add_char_device("dev/console", 0o600, 5, 1);
        other.add_symlink("lib", "usr/lib");
        other.add_file(
            "usr/lib/modules/6.1.0/kernel/fs/erofs.ko",
            0o644,
            vec![7; 1001],
        );
        other.add_file("init", 0o755, b"#!static\n".to_vec());
        other.write_to(&mut b, 5).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn gnu_cpio_lists_and_extracts_it() {
        // Cross-check against GNU cpio (package cpio, which scripts/install-deps.sh installs).
        let status = std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .expect("cpio is missing: install cpio (scripts/install-deps.sh)");
        assert!(status.status.success());
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        let mut bytes = Vec::new();
        sample().write_to(&mut bytes, 1234).unwrap();
        std::fs::write(&archive, &bytes).unwrap();
        let listing = std::process::Command::new("cpio")
            .args(["-it", "--quiet", "-F"])
            .arg(&archive)
            .output()
            .unwrap();
        assert!(listing.status.success(), "{listing:?}");
        let names: Vec<String> = String::from_utf8(listing.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(names.len(), 12);
        assert!(names.contains(&"usr/lib/modules/6.1.0/kernel/fs/erofs.ko".to_string()));
        let extract = dir.path().join("x");
        std::fs::create_dir(&extract).unwrap();
        let unpacked = std::process::Command::new("cpio")
            .args(["-id", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(&archive)
            .arg("init")
            .arg("lib")
            .current_dir(&extract)
            .output()
            .unwrap();
        assert!(unpacked.status.success(), "{unpacked:?}");
        assert_eq!(std::fs::read(extract.join("init")).unwrap(), b"#!static\n");
        assert_eq!(
            std::fs::read_link(extract.join("lib")).unwrap(),
            std::path::Path::new("usr/lib")
        );
    }

    #[test]
    fn truncated_archive_is_reported_with_offset() {
        let mut bytes = Vec::new();
        sample().write_to(&mut bytes, 0).unwrap();
        let err = read_archive(&bytes[..200]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("malformed newc archive at byte"),
            "{err}"
        );
        let mut bad = bytes.clone();
        bad[0] = b'1';
        assert_eq!(read_archive(&bad).unwrap_err().offset, 0);
    }
}
