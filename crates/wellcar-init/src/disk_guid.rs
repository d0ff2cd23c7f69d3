//! First boot: give the boot disk its own GPT disk GUID when it still carries the build's
//! (Flatcar's `randomize_disk_guid`), before Ignition or the real root looks disks up by GUID.
//! The power-cut-safe header rewrite is `wellcar_disk::make_disk_guid_unique` (backup header
//! first, each write fsynced; an interrupted run is completed on the next boot, which is again
//! a first boot because the first-boot flag is removed only after every first-boot step).

use std::fs::File;
use std::io::{Seek as _, SeekFrom};

use wellcar_disk::{make_disk_guid_unique, DiskError, DiskGuidOutcome};

use crate::disk::Found;
use crate::log::Log;

/// Makes the disk holding ROOT's GUID unique; a ROOT given by path (not a GPT partition we
/// found) is left alone.
pub fn make_unique(log: &mut Log, root: &Found) -> Result<(), DiskError> {
    let Found::Partition(root) = root else {
        log.info("ROOT is not a GPT partition: disk GUID left alone");
        return Ok(());
    };
    let io = |source| DiskError::Io {
        path: root.disk.clone(),
        source,
    };
    let mut disk = File::options()
        .read(true)
        .write(true)
        .open(&root.disk)
        .map_err(io)?;
    let len = disk.seek(SeekFrom::End(0)).map_err(io)?;
    let outcome = make_disk_guid_unique(
        &mut disk,
        len,
        &root.disk,
        uuid::Uuid::new_v4(),
        &mut |d: &mut File| d.sync_all(),
    )?;
    let line = match outcome {
        DiskGuidOutcome::AlreadyUnique(g) => format!("disk GUID {g} is already unique"),
        DiskGuidOutcome::Randomized(g) => format!("disk GUID randomized to {g}"),
        DiskGuidOutcome::Repaired(g) => format!("disk GUID {g}: interrupted change completed"),
    };
    log.info(&format!("{}: {line}", root.disk.display()));
    Ok(())
}
