//! Boots a Wellcar disk image in QEMU.
//!
//! Contract:
//! - the built image is never written: the VM boots a qcow2 overlay in a private temp dir;
//! - KVM is used only when a probe shows it really runs a kernel (on some CPUs `/dev/kvm`
//!   opens but guests hang); otherwise TCG. The probe's answer is cached in
//!   `~/.cache/wellcar/accel-<key>` keyed by CPU model, host kernel and QEMU version;
//! - networking is QEMU user-mode with `restrict=on`: the guest reaches only the host loopback
//!   services given as `guestfwd`s, and ssh is forwarded from a host loopback port;
//! - an Ignition config is passed over fw_cfg as `opt/org.flatcar-linux/config`, as Flatcar's
//!   QEMU platform does; without one, `wellcar run` passes one that lets `core` log in with a
//!   key it keeps (module [`login`]);
//! - blank extra disks ([`ExtraDisk`]) are sparse qcow2 files in the state directory, attached
//!   as virtio-blk devices with a stable serial, after the boot disk and any config drive.

pub mod accel;
pub mod config_drive;
pub mod extra_disk;
pub mod login;
pub mod machine;
pub mod network;

pub use accel::{choose_accel, Accel};
pub use extra_disk::ExtraDisk;
pub use login::{authorized_keys, cache_dir, core_login_config, core_ssh, login_key, LoginKey};
pub use machine::{Firmware, Machine, MachineConfig, NetworkBoot, VmError, LINK_LOCAL_NETWORK};
