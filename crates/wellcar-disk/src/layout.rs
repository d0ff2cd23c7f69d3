//! The partition table every Wellcar disk carries.
//!
//! Sizes are in bytes and multiples of the 2 MiB alignment. ROOT takes whatever remains of the
//! image and is grown to the end of the disk on first boot.

use uuid::{uuid, Uuid};

/// Logical sector size of every Wellcar image.
pub const SECTOR_SIZE: u64 = 512;
/// Partition alignment: 4096 sectors (2 MiB), as Flatcar's `disk_layout.json`.
pub const ALIGNMENT: u64 = 2 * 1024 * 1024;
/// GPT disk GUID of a freshly built image (Flatcar randomises it on first boot).
pub const BUILD_DISK_GUID: Uuid = uuid!("00000000-0000-0000-0000-000000000001");

/// EFI system partition type.
pub const TYPE_EFI: Uuid = uuid!("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
/// BIOS boot partition type (GRUB's core.img).
pub const TYPE_BIOS_BOOT: Uuid = uuid!("21686148-6449-6E6F-744E-656564454649");
/// CoreOS/Flatcar `/usr` partition type; only these take part in A/B selection.
pub const TYPE_USR: Uuid = uuid!("5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6");
/// Linux filesystem data.
pub const TYPE_LINUX_DATA: Uuid = uuid!("0FC63DAF-8483-4772-8E79-3D69D8477DE4");
/// Flatcar reserved (OEM-CONFIG).
pub const TYPE_FLATCAR_RESERVED: Uuid = uuid!("C95DC21A-DF0E-4340-8D7B-26CBFA9A03E0");
/// Flatcar "resize" type: ROOT, grown to the end of the disk on first boot.
pub const TYPE_ROOT_RESIZE: Uuid = uuid!("3884DD41-8582-4404-B9A8-E9B84F2DF50E");

/// Fixed unique GUID of USR-A (GRUB maps it to the A kernel).
pub const USR_A_GUID: Uuid = uuid!("7130C94A-213A-4E5A-8E26-6CCE9662F132");
/// Fixed unique GUID of USR-B.
pub const USR_B_GUID: Uuid = uuid!("E03DD35C-7C2D-4A47-B3FE-27F15780A57C");

/// One row of the partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSpec {
    /// GPT partition number (1-based); also the entry index + 1.
    pub number: u32,
    /// GPT partition name (what udev shows as PARTLABEL).
    pub label: &'static str,
    /// Partition type GUID.
    pub type_guid: Uuid,
    /// Fixed unique GUID, or `None` for one derived at build time.
    pub unique_guid: Option<Uuid>,
    /// Size in bytes in a freshly built image (0 = "the rest", only for ROOT).
    pub size: u64,
}

const MIB: u64 = 1024 * 1024;

/// The Wellcar partition table, in partition-number order.
pub const LAYOUT: [PartitionSpec; 7] = [
    PartitionSpec {
        number: 1,
        label: "EFI-SYSTEM",
        type_guid: TYPE_EFI,
        unique_guid: None,
        size: 128 * MIB,
    },
    PartitionSpec {
        number: 2,
        label: "BIOS-BOOT",
        type_guid: TYPE_BIOS_BOOT,
        unique_guid: None,
        size: 2 * MIB,
    },
    PartitionSpec {
        number: 3,
        label: "USR-A",
        type_guid: TYPE_USR,
        unique_guid: Some(USR_A_GUID),
        size: 1024 * MIB,
    },
    PartitionSpec {
        number: 4,
        label: "USR-B",
        type_guid: TYPE_USR,
        unique_guid: Some(USR_B_GUID),
        size: 1024 * MIB,
    },
    PartitionSpec {
        number: 6,
        label: "OEM",
        type_guid: TYPE_LINUX_DATA,
        unique_guid: None,
        size: 128 * MIB,
    },
    PartitionSpec {
        number: 7,
        label: "OEM-CONFIG",
        type_guid: TYPE_FLATCAR_RESERVED,
        unique_guid: None,
        size: 64 * MIB,
    },
    PartitionSpec {
        number: 9,
        label: "ROOT",
        type_guid: TYPE_ROOT_RESIZE,
        unique_guid: None,
        size: 0,
    },
];

/// Size of ROOT in a freshly built image; first boot grows it to the end of the disk.
pub const ROOT_BUILD_SIZE: u64 = 512 * MIB;

/// One of the two `/usr` slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// USR-A, partition 3.
    A,
    /// USR-B, partition 4.
    B,
}

impl Slot {
    /// Both slots, A first (A wins priority ties).
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The slot's partition spec.
    pub fn spec(self) -> &'static PartitionSpec {
        match self {
            Slot::A => &LAYOUT[2],
            Slot::B => &LAYOUT[3],
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// Lower-case letter used in ESP file names (`vmlinuz-a`).
    pub fn letter(self) -> char {
        match self {
            Slot::A => 'a',
            Slot::B => 'b',
        }
    }

    /// The slot's fixed unique GUID.
    pub fn unique_guid(self) -> Uuid {
        self.spec().unique_guid.expect("USR slots have fixed GUIDs")
    }

    /// Parses `a`/`b`/`A`/`B`/`USR-A`/`USR-B`.
    pub fn parse(s: &str) -> Option<Slot> {
        match s.to_ascii_uppercase().as_str() {
            "A" | "USR-A" => Some(Slot::A),
            "B" | "USR-B" => Some(Slot::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.spec().label)
    }
}

/// Looks a partition up by its GPT label.
pub fn spec_by_label(label: &str) -> Option<&'static PartitionSpec> {
    LAYOUT.iter().find(|p| p.label == label)
}

/// dm-verity block size (data and hash), as Flatcar.
pub const VERITY_BLOCK_SIZE: u64 = 4096;
/// Data blocks covered by the verity tree in a USR slot: Flatcar's 260094 x 4096 bytes.
pub const USR_DATA_BLOCKS: u64 = 260_094;
/// Byte offset, inside a USR partition, of the verity hash area (superblock first, then the
/// tree). Flatcar's number: data and hash area fit the first 1 GiB of the slot.
pub const USR_VERITY_HASH_OFFSET: u64 = USR_DATA_BLOCKS * VERITY_BLOCK_SIZE;
/// Bytes of a USR slot that an update writes: the filesystem region plus the hash area.
pub const USR_EXTRACT_SIZE: u64 = 1024 * MIB;

// The geometry is Flatcar's byte for byte, and the hash area fits the extract region.
const _: () = assert!(USR_VERITY_HASH_OFFSET == 1_065_345_024);
const _: () = assert!(USR_VERITY_HASH_OFFSET < USR_EXTRACT_SIZE);
const _: () = assert!(USR_EXTRACT_SIZE <= LAYOUT[2].size && USR_EXTRACT_SIZE <= LAYOUT[3].size);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_flatcars() {
        let numbers: Vec<u32> = LAYOUT.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 6, 7, 9]);
        assert!(LAYOUT.iter().all(|p| p.size % ALIGNMENT == 0));
    }

    #[test]
    fn slots() {
        assert_eq!(Slot::A.spec().number, 3);
        assert_eq!(Slot::B.spec().label, "USR-B");
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::parse("usr-b"), Some(Slot::B));
        assert_eq!(Slot::parse("c"), None);
        assert_eq!(
            Slot::B.unique_guid().to_string(),
            "e03dd35c-7c2d-4a47-b3fe-27f15780a57c"
        );
    }
}
