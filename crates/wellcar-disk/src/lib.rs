//! Wellcar's disk layout: the contract between the image builder, the initramfs, the boot-state
//! code and the update agent.
//!
//! The layout is Flatcar's (partition numbers, GPT labels, type GUIDs and the fixed unique GUIDs
//! of USR-A and USR-B), so Flatcar users' tools (`cgpt`, `sgdisk`, udev `by-partlabel` links)
//! keep working. Partitions 5 and 8 do not exist. See ARCHITECTURE.md "Disk layout".
//!
//! This crate knows *where* things are; it does not format filesystems.

pub mod disk_guid;
pub mod gpt;
pub mod layout;

pub use disk_guid::{make_disk_guid_unique, DiskGuidOutcome};
pub use gpt::{find_partition, read_gpt, write_layout, DiskError, PartitionKey, PartitionLocation};
pub use layout::{
    PartitionSpec, Slot, LAYOUT, SECTOR_SIZE, USR_DATA_BLOCKS, USR_EXTRACT_SIZE,
    USR_VERITY_HASH_OFFSET, VERITY_BLOCK_SIZE,
};
