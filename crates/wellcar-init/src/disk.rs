//! Finding block devices without udev: scan `/sys/class/block`, read every whole disk's GPT
//! with `wellcar-disk`, and match [`DeviceSpec`]s against the partitions found.
//!
//! Contract: [`scan`] never fails because of one unreadable or non-GPT disk (those are simply
//! not ours); it lists every GPT partition that has a device node. [`Scan::find`] resolves
//! a spec to at most one partition: `PARTUUID`/`PARTLABEL` by GPT entry, `LABEL`/`UUID` by the
//! ext4 superblock (then, for `LABEL`, by GPT name as a fallback, since Wellcar gives ROOT the
//! same GPT and filesystem label). [`wait_for`] rescans until every spec resolves or the
//! timeout passes, and then names what is still missing.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wellcar_disk::PartitionLocation;

use crate::cmdline::DeviceSpec;

/// One GPT partition found on a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Whole-disk device node (`/dev/vda`).
    pub disk: PathBuf,
    /// Partition device node (`/dev/vda3`).
    pub device: PathBuf,
    /// What the GPT says about it.
    pub location: PartitionLocation,
}

/// The partitions of every GPT disk present at scan time.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// All partitions, disk by disk, in GPT order.
    pub partitions: Vec<Partition>,
}

/// What a resolved spec points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A partition of a GPT disk.
    Partition(Partition),
    /// A device given by path that is not a GPT partition we know (e.g. `/dev/mapper/x`).
    Path(PathBuf),
}

impl Found {
    /// The device node to open or mount.
    pub fn device(&self) -> &Path {
        match self {
            Found::Partition(p) => &p.device,
            Found::Path(p) => p,
        }
    }
}

/// The wait for devices timed out.
#[derive(Debug, thiserror::Error)]
#[error("no device for {missing} after {waited:?} (disks seen: {seen})")]
pub struct WaitError {
    /// The specs that did not resolve, comma-separated.
    pub missing: String,
    /// How long we waited.
    pub waited: Duration,
    /// Whole disks that were present, for the console message.
    pub seen: String,
}

/// ext4 identity read from a superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Identity {
    /// Volume label.
    pub label: String,
    /// Filesystem UUID.
    pub uuid: uuid::Uuid,
}

/// Reads the ext4 label and UUID of `device`, or `None` if it is not ext2/3/4.
pub fn ext4_identity(device: &Path) -> Option<Ext4Identity> {
    let mut file = File::open(device).ok()?;
    let mut sb = [0u8; 256];
    file.seek(SeekFrom::Start(1024)).ok()?;
    file.read_exact(&mut sb).ok()?;
    if sb[0x38..0x3a] != [0x53, 0xef] {
        return None;
    }
    let label = &sb[0x78..0x88];
    let end = label.iter().position(|b| *b == 0).unwrap_or(label.len());
    Some(Ext4Identity {
        label: String::from_utf8_lossy(&label[..end]).into_owned(),
        uuid: uuid::Uuid::from_bytes(sb[0x68..0x78].try_into().ok()?),
    })
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Scans `class_block` (normally `/sys/class/block`) for whole disks, reads their GPTs and
/// maps partitions to device nodes under `dev` (normally `/dev`).
pub fn scan(class_block: &Path, dev: &Path) -> Scan {
    let mut names: Vec<String> = match std::fs::read_dir(class_block) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return Scan::default(),
    };
    names.sort();
    // Partition number -> name, per disk, from each partition's `partition` file.
    let mut partition_names: Vec<(String, u32, String)> = Vec::new();
    let mut disks = Vec::new();
    for name in &names {
        let entry = class_block.join(name);
        if let Some(number) = read_trimmed(&entry.join("partition")) {
            let Ok(number) = number.parse::<u32>() else {
                continue;
            };
            let parent = std::fs::canonicalize(&entry).ok().and_then(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            });
            if let Some(disk) = parent {
                partition_names.push((disk, number, name.clone()));
            }
        } else {
            let skip = ["loop", "ram", "dm-", "sr", "zram", "md", "nbd"]
                .iter()
                .any(|p| name.starts_with(p));
            let empty = read_trimmed(&entry.join("size")).is_some_and(|s| s == "0");
            if !skip && !empty {
                disks.push(name.clone());
            }
        }
    }
    let mut partitions = Vec::new();
    for disk in disks {
        let node = dev.join(&disk);
        let Ok(mut file) = File::open(&node) else {
            continue;
        };
        let Ok(table) = wellcar_disk::read_gpt(&mut file, &node) else {
            continue;
        };
        for location in table {
            let Some((_, _, part_name)) = partition_names
                .iter()
                .find(|(d, n, _)| *d == disk && *n == location.number)
            else {
                continue;
            };
            let device = dev.join(part_name);
            if device.exists() {
                partitions.push(Partition {
                    disk: node.clone(),
                    device,
                    location,
                });
            }
        }
    }
    Scan { partitions }
}

impl Scan {
    /// Resolves `spec`, or `None` if nothing matches (yet).
    pub fn find(&self, spec: &DeviceSpec) -> Option<Found> {
        let by = |pred: &dyn Fn(&Partition) -> bool| {
            self.partitions
                .iter()
                .find(|p| pred(p))
                .cloned()
                .map(Found::Partition)
        };
        match spec {
            DeviceSpec::PartUuid(guid) => by(&|p| p.location.unique_guid == *guid),
            DeviceSpec::PartLabel(label) => by(&|p| p.location.label == *label),
            // Wellcar gives ROOT the same GPT and filesystem label: try the partition named
            // like the label first, so the usual case reads one superblock, not all of them.
            DeviceSpec::Label(label) => {
                let fs_label =
                    |p: &Partition| ext4_identity(&p.device).is_some_and(|id| id.label == *label);
                by(&|p| p.location.label == *label && fs_label(p))
                    .or_else(|| by(&fs_label))
                    .or_else(|| by(&|p| p.location.label == *label))
            }
            DeviceSpec::FsUuid(uuid) => {
                by(&|p| ext4_identity(&p.device).is_some_and(|id| id.uuid == *uuid))
            }
            DeviceSpec::Path(path) => by(&|p| p.device == Path::new(path))
                .or_else(|| Path::new(path).exists().then(|| Found::Path(path.into()))),
        }
    }
}

/// Rescans every `poll` until all `specs` resolve or `timeout` passes; returns them in order.
pub fn wait_for(
    specs: &[&DeviceSpec],
    class_block: &Path,
    dev: &Path,
    timeout: Duration,
    poll: Duration,
) -> Result<Vec<Found>, WaitError> {
    let start = Instant::now();
    loop {
        let scan = scan(class_block, dev);
        let found: Vec<Option<Found>> = specs.iter().map(|s| scan.find(s)).collect();
        if found.iter().all(Option::is_some) {
            return Ok(found.into_iter().flatten().collect());
        }
        if start.elapsed() >= timeout {
            let missing: Vec<String> = specs
                .iter()
                .zip(&found)
                .filter(|(_, f)| f.is_none())
                .map(|(s, _)| s.to_string())
                .collect();
            let mut seen: Vec<String> = scan
                .partitions
                .iter()
                .map(|p| p.disk.display().to_string())
                .collect();
            seen.dedup();
            return Err(WaitError {
                missing: missing.join(", "),
                waited: start.elapsed(),
                seen: if seen.is_empty() {
                    "no GPT disk".into()
                } else {
                    seen.join(" ")
                },
            });
        }
        std::thread::sleep(poll);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs + /dev: `vda` is a sparse image file carrying the Wellcar GPT; the
    /// partition "nodes" are plain files (a stand-in: real block devices need a kernel
    /// loop device, which this sandbox does not allow to partition-scan).
    pub(crate) struct FakeMachine {
        pub dir: tempfile::TempDir,
    }

    impl FakeMachine {
        pub(crate) fn new(len: u64) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let dev = dir.path().join("dev");
            let devices = dir.path().join("sys/devices/virtio0/block/vda");
            let class = dir.path().join("sys/class/block");
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::create_dir_all(&devices).unwrap();
            std::fs::create_dir_all(&class).unwrap();
            let disk = dev.join("vda");
            let mut f = File::create(&disk).unwrap();
            f.set_len(len).unwrap();
            let layout = wellcar_disk::write_layout(&mut f, len, &disk).unwrap();
            std::fs::write(devices.join("size"), format!("{}\n", len / 512)).unwrap();
            symlink(&devices, class.join("vda")).unwrap();
            for p in layout {
                let name = format!("vda{}", p.number);
                let part = devices.join(&name);
                std::fs::create_dir_all(&part).unwrap();
                std::fs::write(part.join("partition"), format!("{}\n", p.number)).unwrap();
                symlink(&part, class.join(&name)).unwrap();
                std::fs::write(dev.join(&name), b"").unwrap();
            }
            // A loop device and an empty drive that must be ignored.
            std::fs::create_dir_all(class.join("loop0")).unwrap();
            std::fs::create_dir_all(class.join("vdb")).unwrap();
            std::fs::write(class.join("vdb/size"), "0\n").unwrap();
            FakeMachine { dir }
        }
        pub(crate) fn class(&self) -> PathBuf {
            self.dir.path().join("sys/class/block")
        }
        pub(crate) fn dev(&self) -> PathBuf {
            self.dir.path().join("dev")
        }
    }

    #[test]
    fn finds_usr_a_by_partuuid_and_root_by_label() {
        let m = FakeMachine::new(4 << 30);
        let scan = scan(&m.class(), &m.dev());
        assert_eq!(scan.partitions.len(), 7);
        let usr = scan
            .find(&DeviceSpec::PartUuid(wellcar_disk::layout::USR_A_GUID))
            .unwrap();
        assert_eq!(usr.device(), m.dev().join("vda3"));
        // ROOT has no ext4 yet here, so LABEL= falls back to the GPT name.
        let Found::Partition(root) = scan.find(&DeviceSpec::Label("ROOT".into())).unwrap() else {
            panic!("ROOT should be a GPT partition")
        };
        assert_eq!(
            (root.location.number, root.disk.clone()),
            (9, m.dev().join("vda"))
        );
        assert!(scan.find(&DeviceSpec::PartLabel("USR-C".into())).is_none());
    }

    #[test]
    fn ext4_label_is_read_from_the_superblock() {
        let m = FakeMachine::new(4 << 30);
        // Put an ext4 superblock labelled "DATA" on the OEM partition's node.
        let mut sb = vec![0u8; 2048];
        sb[1024 + 0x38] = 0x53;
        sb[1024 + 0x39] = 0xef;
        sb[1024 + 0x78..1024 + 0x7c].copy_from_slice(b"DATA");
        std::fs::write(m.dev().join("vda6"), &sb).unwrap();
        let scan = scan(&m.class(), &m.dev());
        let found = scan.find(&DeviceSpec::Label("DATA".into())).unwrap();
        assert_eq!(found.device(), m.dev().join("vda6"));
        assert_eq!(ext4_identity(&m.dev().join("vda6")).unwrap().label, "DATA");
        assert!(ext4_identity(&m.dev().join("vda3")).is_none());
    }

    #[test]
    fn timeout_names_the_missing_device() {
        let m = FakeMachine::new(4 << 30);
        let missing = DeviceSpec::PartLabel("USR-C".into());
        let root = DeviceSpec::Label("ROOT".into());
        let err = wait_for(
            &[&root, &missing],
            &m.class(),
            &m.dev(),
            Duration::from_millis(30),
            Duration::from_millis(10),
        )
        .unwrap_err();
        assert_eq!(err.missing, "PARTLABEL=USR-C");
        assert!(err
            .to_string()
            .contains(&m.dev().join("vda").display().to_string()));
        let ok = wait_for(
            &[&root],
            &m.class(),
            &m.dev(),
            Duration::ZERO,
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(ok[0].device(), m.dev().join("vda9"));
    }
}
