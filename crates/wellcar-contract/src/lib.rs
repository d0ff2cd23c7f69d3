//! The one home of the contracts Wellcar's crates share, each typed once.
//!
//! A contract is a value that one crate writes and another reads: the image builder writes the
//! OS version into the build manifest, the payload and the boot state; the update server sorts
//! published packages by it; the update agent compares it. When each crate checks such a value
//! with its own grammar, a value can pass one check and fail the next (a build with version
//! `1.2` used to pass the image and payload checks and then could not be published). So each
//! contract is parsed here, by one type, and every crate uses that type.
//!
//! Today: [`OsVersion`] (the OS version grammar, [`version`]), [`RootHash`] (the dm-verity
//! root hash of a `/usr` slot, [`root_hash`]), how a file is replaced so that a power cut
//! never leaves half of it ([`atomic_file`]), the build's `manifest.json`
//! ([`BuildManifest`]), the files on the EFI system partition ([`esp`]), the FleetLock reboot-lock protocol
//! ([`fleetlock`]), the initramfs module
//! load list ([`module_list`]), the image's Flatcar-style release file and the Omaha app ids
//! ([`release_file`]), how a host program is run so that its failure says why
//! ([`command`]), and how an I/O failure on a path and an error's causes are reported
//! ([`error_report`]).
//!
//! This crate is linked into the static initramfs (through `wellcar-verity`): it depends on
//! `serde`, `serde_json`, `thiserror` and `std` only, and encodes hex by hand.

pub mod atomic_file;
pub mod build_manifest;
pub mod command;
pub mod error_report;
pub mod esp;
pub mod fleetlock;
pub mod image_manifest;
pub mod live;
pub mod module_list;
pub mod release_file;
pub mod root_hash;
pub mod version;

pub use build_manifest::{
    BuildManifest, BuildManifestError, DeltaArtifact, PackageRecord, BUILD_MANIFEST_FILE,
};
pub use command::CommandError;
pub use error_report::{error_chain, IoResultExt, PathIoError};
pub use image_manifest::{
    ImageManifest, ImageSignature, IMAGE_MANIFEST_FILE, IMAGE_SIGNATURES_FILE,
};
pub use release_file::{ReleaseFile, ReleaseFileError, FLATCAR_APP_ID, WELLCAR_APP_ID};
pub use root_hash::{RootHash, RootHashError, ROOT_HASH_HEX_LEN, ROOT_HASH_LEN};
pub use version::{OsVersion, VersionError, MAX_VERSION_LEN};

/// fw_cfg entry (`wellcar run --platform/--kernel-arg`) whose text `/init` appends to the
/// kernel command line it reads for provisioning (platform id, `ignition.config.url`, ...).
pub const FW_CFG_KERNEL_ARGS: &str = "opt/org.wellcar/kernel-args";
/// Where Linux shows QEMU's fw_cfg entries by name (module `qemu_fw_cfg`); an entry's bytes are
/// in `NAME/raw`.
pub const FW_CFG_BY_NAME: &str = "/sys/firmware/qemu_fw_cfg/by_name";

/// The file a booted machine reads [`FW_CFG_KERNEL_ARGS`] from (`/init` and the live system's
/// unattended install).
pub fn fw_cfg_kernel_args_file() -> std::path::PathBuf {
    std::path::Path::new(FW_CFG_BY_NAME)
        .join(FW_CFG_KERNEL_ARGS)
        .join("raw")
}
