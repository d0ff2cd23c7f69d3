//! Blank extra virtio disks for a machine ([`ExtraDisk`]): their serials are checked before
//! anything is created, and each is created anew at spawn and attached at a fixed PCI slot.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::machine::{run, VmError};

/// A blank virtio disk for a [`MachineConfig`]: a sparse qcow2 file of `size` bytes in the
/// machine's state directory, created anew at every spawn, whose virtio serial is `serial`
/// (the guest's udev links it as `/dev/disk/by-id/virtio-<serial>`). Extra disks sit at fixed
/// PCI slots from 0x10 on, after the boot disk and any config drive (at most 15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraDisk {
    /// The virtio serial: at most 20 bytes of `[A-Za-z0-9_-]`, unique within the machine.
    pub serial: String,
    /// Size in bytes.
    pub size: u64,
}

impl ExtraDisk {
    /// A blank disk of `size` bytes named `serial`.
    pub fn new(serial: impl Into<String>, size: u64) -> ExtraDisk {
        ExtraDisk {
            serial: serial.into(),
            size,
        }
    }

    /// Its file in the state directory `dir`.
    pub fn path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("extra-{}.qcow2", self.serial))
    }
}

/// The PCI slot of the first [`ExtraDisk`]. QEMU creates `-drive if=virtio` devices (the boot
/// disk, a config drive) after every `-device`, so extra disks at automatic slots would come
/// first: the firmware would try to boot a blank disk and the guest would name it `vda`. Fixed
/// slots from here up (the automatic ones are taken from the bottom) keep them last.
const EXTRA_DISK_FIRST_SLOT: usize = 0x10;

/// How many extra disks fit between [`EXTRA_DISK_FIRST_SLOT`] and q35's LPC bridge (slot 0x1f).
const MAX_EXTRA_DISKS: usize = 0x1f - EXTRA_DISK_FIRST_SLOT;

/// Refuses an [`ExtraDisk`] serial QEMU's virtio-blk would truncate or the guest's udev would
/// mangle, and a repeated one.
pub(crate) fn check_serials(disks: &[ExtraDisk]) -> Result<(), VmError> {
    if disks.len() > MAX_EXTRA_DISKS {
        return Err(VmError::TooManyExtraDisks(disks.len()));
    }
    for (i, disk) in disks.iter().enumerate() {
        let valid = !disk.serial.is_empty()
            && disk.serial.len() <= 20
            && disk
                .serial
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && disks[..i].iter().all(|d| d.serial != disk.serial);
        if !valid {
            return Err(VmError::ExtraDiskSerial(disk.serial.clone()));
        }
    }
    Ok(())
}

/// Creates each disk's file in `dir` (replacing one from an earlier spawn) and adds it to
/// `cmd` at its fixed PCI slot.
pub(crate) fn attach(cmd: &mut Command, dir: &Path, disks: &[ExtraDisk]) -> Result<(), VmError> {
    for (i, disk) in disks.iter().enumerate() {
        let file = disk.path(dir);
        let _ = std::fs::remove_file(&file);
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&file)
            .arg(disk.size.to_string()))?;
        cmd.arg("-drive")
            .arg(format!(
                "if=none,id=extra{i},file={},format=qcow2,cache=unsafe",
                file.display()
            ))
            .arg("-device")
            .arg(format!(
                "virtio-blk-pci,drive=extra{i},serial={},addr={:#x}",
                disk.serial,
                EXTRA_DISK_FIRST_SLOT + i
            ));
    }
    Ok(())
}
