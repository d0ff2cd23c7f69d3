//! The one home of the contracts Wellcar's crates share, each typed once.
//!
//! A contract is a value that one crate writes and another reads: the image builder writes the
//! OS version into the build manifest, the payload and the boot state; the update server sorts
//! published packages by it; the update agent compares it. When each crate checks such a value
//! with its own grammar, a value can pass one check and fail the next (a build with version
//! `1.2` used to pass the image and payload checks and then could not be published). So each
//! contract is parsed here, by one type, and every crate uses that type.
//!
//! Today: [`OsVersion`]. More contracts move here later: the dm-verity root hash, the build
//! manifest, the ESP layout.
//!
//! This crate is linked into the static initramfs (through `wellcar-bootstate`): it depends on
//! `serde` and `thiserror` only.

pub mod version;

pub use version::{OsVersion, VersionError, MAX_VERSION_LEN};
