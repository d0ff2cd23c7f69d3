//! Power cuts at every header write, clean and torn, then the next boot's call: always one
//! consistent, unique disk GUID in both headers, partitions untouched, `sgdisk -v` content.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::process::Command;

use super::*;
use crate::gpt::{minimum_disk_size, read_gpt, write_layout};

/// A disk that loses power after `writes_left` successful writes: the next write fails, after
/// putting its first `torn_bytes` bytes on the disk.
struct CutDisk {
    file: File,
    writes_left: usize,
    torn_bytes: usize,
}

impl Read for CutDisk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for CutDisk {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

impl Write for CutDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.writes_left == 0 {
            let torn = self.torn_bytes.min(buf.len());
            self.file.write_all(&buf[..torn])?;
            return Err(io::Error::other("power cut"));
        }
        self.writes_left -= 1;
        self.file.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn built_disk() -> (tempfile::TempPath, u64) {
    let file = tempfile::NamedTempFile::new().unwrap();
    let len = minimum_disk_size();
    let mut f = file.reopen().unwrap();
    f.set_len(len).unwrap();
    write_layout(&mut f, len, Path::new("disk")).unwrap();
    (file.into_temp_path(), len)
}

fn no_sync<D>(_: &mut D) -> io::Result<()> {
    Ok(())
}

/// Both headers valid and carrying `guid`; sgdisk agrees.
fn assert_consistent(path: &Path, len: u64, guid: Uuid) {
    let mut f = File::open(path).unwrap();
    for lba in [1, len / 512 - 1] {
        let mut bytes = vec![0u8; 512];
        f.seek(SeekFrom::Start(lba * 512)).unwrap();
        f.read_exact(&mut bytes).unwrap();
        assert!(header_valid(&bytes, lba), "header at LBA {lba} invalid");
        let h = HeaderSector {
            lba,
            bytes,
            valid: true,
        };
        assert_eq!(h.guid(), guid, "header at LBA {lba}");
    }
    let out = Command::new("sgdisk")
        .arg("-v")
        .arg(path)
        .output()
        .expect("sgdisk (package gdisk) is required");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("No problems found"),
        "{text}"
    );
    let out = Command::new("sgdisk").arg("-p").arg(path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_uppercase();
    assert!(text.contains(&guid.to_string().to_uppercase()), "{text}");
}

#[test]
fn a_built_disk_gets_a_random_guid_once() {
    let (path, len) = built_disk();
    let before = read_gpt(&mut File::open(&path).unwrap(), &path).unwrap();
    let mut f = File::options().read(true).write(true).open(&path).unwrap();
    assert_eq!(disk_guid(&mut f, len).unwrap(), Some(BUILD_DISK_GUID));
    let new = Uuid::new_v4();
    let outcome = make_disk_guid_unique(&mut f, len, &path, new, &mut no_sync).unwrap();
    assert_eq!(outcome, DiskGuidOutcome::Randomized(new));
    assert_consistent(&path, len, new);
    // Second boot: nothing to do, nothing written.
    let again = make_disk_guid_unique(&mut f, len, &path, Uuid::new_v4(), &mut no_sync).unwrap();
    assert_eq!(again, DiskGuidOutcome::AlreadyUnique(new));
    // Partitions (and their GUIDs) are untouched.
    assert_eq!(read_gpt(&mut f, &path).unwrap(), before);
}

#[test]
fn a_power_cut_at_each_write_clean_or_torn_is_completed_by_the_next_boot() {
    // Two header writes (backup, primary); cut before each, whole or torn mid-sector.
    for writes_done in 0..2 {
        for torn_bytes in [0, 40, 300] {
            let (path, len) = built_disk();
            let before = read_gpt(&mut File::open(&path).unwrap(), &path).unwrap();
            let first = Uuid::new_v4();
            let mut disk = CutDisk {
                file: File::options().read(true).write(true).open(&path).unwrap(),
                writes_left: writes_done,
                torn_bytes,
            };
            let err = make_disk_guid_unique(&mut disk, len, &path, first, &mut no_sync)
                .expect_err("the cut interrupts the run");
            assert!(err.to_string().contains("I/O on"), "{err}");
            // Whatever happened, one of the headers is valid: the disk still boots.
            let mut f = File::options().read(true).write(true).open(&path).unwrap();
            assert!(disk_guid(&mut f, len).unwrap().is_some());

            let second = Uuid::new_v4();
            let outcome = make_disk_guid_unique(&mut f, len, &path, second, &mut no_sync).unwrap();
            let case = format!("cut after {writes_done} writes, {torn_bytes} bytes torn");
            let guid = match outcome {
                // The backup carried the first run's GUID (written, or torn past its 92-byte
                // header): kept.
                DiskGuidOutcome::Repaired(g) => {
                    assert!(writes_done == 1 || torn_bytes >= 92, "{case}");
                    assert_eq!(g, first, "{case}");
                    g
                }
                DiskGuidOutcome::Randomized(g) => {
                    assert!(writes_done == 0 && torn_bytes < 92, "{case}");
                    assert_eq!(g, second, "{case}");
                    g
                }
                // Both headers landed (the primary torn past its header): complete.
                DiskGuidOutcome::AlreadyUnique(g) => {
                    assert!(writes_done == 1 && torn_bytes >= 92, "{case}");
                    assert_eq!(g, first, "{case}");
                    g
                }
            };
            assert_ne!(guid, BUILD_DISK_GUID);
            assert_consistent(&path, len, guid);
            assert_eq!(read_gpt(&mut f, &path).unwrap(), before, "{case}");
        }
    }
}

#[test]
fn sync_runs_after_each_header_write_backup_first() {
    let (path, len) = built_disk();
    let mut f = File::options().read(true).write(true).open(&path).unwrap();
    let new = Uuid::new_v4();
    let mut seen = Vec::new();
    make_disk_guid_unique(&mut f, len, &path, new, &mut |f: &mut File| {
        // Which headers carry the new GUID at each sync.
        let mut state = Vec::new();
        for lba in [len / 512 - 1, 1] {
            let mut bytes = vec![0u8; 512];
            f.seek(SeekFrom::Start(lba * 512))?;
            f.read_exact(&mut bytes)?;
            state.push(header_valid(&bytes, lba) && bytes[56..72] == new.to_bytes_le());
        }
        seen.push(state);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, [[true, false], [true, true]]);
}
