//! The live system (ISO and PXE): how its initramfs carries `/usr` and what tells `/init` it
//! is live.
//!
//! Contract, shared by the builder (`wellcar-image`, which writes the live initramfs) and
//! `/init` (which reads it):
//! - the kernel command line carries [`LIVE_PARAM`] and the release's `verity.usrhash=`;
//!   there is no `verity.usr=`/`mount.usr=` and no `root=`: root is a tmpfs;
//! - the live initramfs is the disk image's `initramfs.img` followed by a second (newc) cpio
//!   archive holding [`LIVE_USR_FS`], the release's EROFS `/usr` (the USR slot's first bytes,
//!   up to the filesystem's end rounded up to 4 KiB), and [`LIVE_USR_HASH`], the slot's
//!   dm-verity hash area (from `USR_VERITY_HASH_OFFSET` to the end of the tree);
//! - `/init` lays them out in place as the USR slot (filesystem at 0, a hole up to the hash
//!   offset, the hash area there), so the release's own root hash verifies the live `/usr`.

/// The flag on the kernel command line that makes `/init` boot the live system.
pub const LIVE_PARAM: &str = "wellcar.live";
/// The EROFS `/usr` inside the live initramfs (a path relative to its root).
pub const LIVE_USR_FS: &str = "wellcar/usr.erofs";
/// The `/usr` dm-verity hash area inside the live initramfs.
pub const LIVE_USR_HASH: &str = "wellcar/usr.verity";

/// Unattended install from the live system (Fedora CoreOS's `coreos.inst.*`): the target
/// device. Without it the live system installs nothing.
pub const INSTALL_DEV_PARAM: &str = "wellcar.inst.install_dev";
/// Unattended install: the image URL (required with [`INSTALL_DEV_PARAM`]).
pub const INSTALL_IMAGE_URL_PARAM: &str = "wellcar.inst.image_url";
/// Unattended install: the installed system's Ignition config URL.
pub const INSTALL_IGNITION_URL_PARAM: &str = "wellcar.inst.ignition_url";
/// Unattended install: the installed system's platform (OEM) id; `metal` when absent.
pub const INSTALL_PLATFORM_ID_PARAM: &str = "wellcar.inst.platform_id";
/// Unattended install flag: accept an unsigned image.
pub const INSTALL_INSECURE_PARAM: &str = "wellcar.inst.insecure";
/// Unattended install flag: stay in the live system afterwards instead of rebooting.
pub const INSTALL_SKIP_REBOOT_PARAM: &str = "wellcar.inst.skip_reboot";
