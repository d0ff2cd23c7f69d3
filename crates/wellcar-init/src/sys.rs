//! The few ioctls `/init` needs that neither `std` nor `rustix` wrap: device-mapper
//! (create, load table, resume), `BLKPG` partition resize, ext4 online resize, and the loop
//! device's `LOOP_CTL_GET_FREE` and `LOOP_CONFIGURE` (the live system's `/usr` image).
//!
//! Contract: every function takes an open file descriptor and plain values, builds the kernel
//! structure in a buffer owned by the function, issues one ioctl and returns the kernel's
//! error as `std::io::Error`. Nothing here keeps state. This is the crate's only `unsafe`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `struct dm_ioctl` is 312 bytes; the kernel checks `version[0] == 4`.
const DM_IOCTL_SIZE: usize = 312;
/// `struct dm_target_spec` is 40 bytes.
const DM_TARGET_SPEC_SIZE: usize = 40;
const DM_VERSION: [u32; 3] = [4, 0, 0];
const DM_READONLY_FLAG: u32 = 1 << 0;
/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
const fn dm_ioctl_request(nr: u32) -> u32 {
    (3 << 30) | ((DM_IOCTL_SIZE as u32) << 16) | (0xfd << 8) | nr
}
const DM_DEV_CREATE: u32 = dm_ioctl_request(3);
const DM_DEV_SUSPEND: u32 = dm_ioctl_request(6);
const DM_TABLE_LOAD: u32 = dm_ioctl_request(9);

/// `_IO(0x12, 105)`.
const BLKPG: u32 = 0x1269;
const BLKPG_RESIZE_PARTITION: i32 = 3;
/// `_IOW('f', 16, __u64)`.
const EXT4_IOC_RESIZE_FS: u32 = 0x4008_6610;

/// `LOOP_CTL_GET_FREE` on `/dev/loop-control`: the number of a free loop device.
const LOOP_CTL_GET_FREE: u32 = 0x4C82;
/// `LOOP_CONFIGURE` (Linux 5.8): backing file, flags and block size in one call.
const LOOP_CONFIGURE: u32 = 0x4C0A;
/// `struct loop_config`: fd, block_size, `struct loop_info64` (232 bytes), 8 reserved u64.
const LOOP_CONFIG_SIZE: usize = 304;
/// `lo_flags` inside `loop_config` (offset 8 of `loop_info64`'s 52).
const LOOP_CONFIG_FLAGS_AT: usize = 8 + 52;
const LO_FLAGS_READ_ONLY: u32 = 1;

fn ioctl(fd: BorrowedFd<'_>, request: u32, arg: *mut libc::c_void) -> io::Result<libc::c_int> {
    // SAFETY: `fd` is a live descriptor for the duration of the call, and every caller passes
    // an `arg` pointing to a buffer that is at least as large as the structure `request`
    // encodes and stays alive until the call returns.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::c_ulong, arg) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A `struct dm_ioctl` header followed by `payload` bytes, 8-byte aligned.
struct DmBuffer {
    words: Vec<u64>,
}

impl DmBuffer {
    fn new(name: &str, flags: u32, target_count: u32, payload: &[u8]) -> io::Result<Self> {
        if name.is_empty() || name.len() >= 128 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("device-mapper name {name:?} must be 1 to 127 bytes"),
            ));
        }
        let total = (DM_IOCTL_SIZE + payload.len()).div_ceil(8) * 8;
        let mut buffer = DmBuffer {
            words: vec![0u64; total / 8],
        };
        let bytes = buffer.bytes_mut();
        for (i, v) in DM_VERSION.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        bytes[12..16].copy_from_slice(&(total as u32).to_ne_bytes()); // data_size
        bytes[16..20].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes()); // data_start
        bytes[20..24].copy_from_slice(&target_count.to_ne_bytes());
        bytes[28..32].copy_from_slice(&flags.to_ne_bytes());
        bytes[48..48 + name.len()].copy_from_slice(name.as_bytes()); // name[128] at 48
        bytes[DM_IOCTL_SIZE..DM_IOCTL_SIZE + payload.len()].copy_from_slice(payload);
        Ok(buffer)
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.words.len() * 8;
        // SAFETY: the Vec<u64> owns `len` initialised bytes, u8 has no alignment needs, and
        // the returned slice borrows `self` mutably, so nothing else aliases it.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len) }
    }

    fn call(&mut self, control: BorrowedFd<'_>, request: u32) -> io::Result<()> {
        ioctl(control, request, self.words.as_mut_ptr().cast())?;
        Ok(())
    }

    /// The `dev` field the kernel filled in (huge-encoded dev_t).
    fn dev(&mut self) -> u64 {
        u64::from_ne_bytes(self.bytes_mut()[40..48].try_into().expect("8 bytes"))
    }
}

/// Creates the (empty) mapped device `name` on `/dev/mapper/control`; returns (major, minor).
pub fn dm_create(control: BorrowedFd<'_>, name: &str, uuid: &str) -> io::Result<(u32, u32)> {
    let mut buffer = DmBuffer::new(name, 0, 0, &[])?;
    if uuid.len() >= 129 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "device-mapper uuid longer than 128 bytes",
        ));
    }
    buffer.bytes_mut()[176..176 + uuid.len()].copy_from_slice(uuid.as_bytes()); // uuid[129] at 176
    buffer.call(control, DM_DEV_CREATE)?;
    let dev = buffer.dev();
    // The kernel's huge_encode_dev: minor low byte, major, then the rest of minor.
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff_ff00)) as u32;
    Ok((major, minor))
}

/// Loads a one-target, read-only table (`start length target params`) into `name`'s
/// inactive slot.
pub fn dm_load_table(
    control: BorrowedFd<'_>,
    name: &str,
    sectors: u64,
    target: &str,
    params: &str,
) -> io::Result<()> {
    if target.len() >= 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("device-mapper target type {target:?} is too long"),
        ));
    }
    let spec_len = (DM_TARGET_SPEC_SIZE + params.len() + 1).div_ceil(8) * 8;
    let mut spec = vec![0u8; spec_len];
    spec[8..16].copy_from_slice(&sectors.to_ne_bytes()); // length; sector_start stays 0
    spec[20..24].copy_from_slice(&(spec_len as u32).to_ne_bytes()); // next
    spec[24..24 + target.len()].copy_from_slice(target.as_bytes());
    spec[DM_TARGET_SPEC_SIZE..DM_TARGET_SPEC_SIZE + params.len()]
        .copy_from_slice(params.as_bytes());
    let mut buffer = DmBuffer::new(name, DM_READONLY_FLAG, 1, &spec)?;
    buffer.call(control, DM_TABLE_LOAD)
}

/// Makes the loaded table live (`DM_DEV_SUSPEND` without the suspend flag = resume).
pub fn dm_resume(control: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let mut buffer = DmBuffer::new(name, 0, 0, &[])?;
    buffer.call(control, DM_DEV_SUSPEND)
}

/// A free loop device's number, from `/dev/loop-control` (made on demand by the kernel).
pub fn loop_get_free(control: BorrowedFd<'_>) -> io::Result<u32> {
    let number = ioctl(control, LOOP_CTL_GET_FREE, std::ptr::null_mut())?;
    Ok(number as u32)
}

/// Backs the loop device open as `device` with `backing`, read-only. It stays attached (no
/// `LO_FLAGS_AUTOCLEAR`: the caller closes its descriptor before device-mapper opens the
/// device, which would detach it).
pub fn loop_configure_read_only(device: BorrowedFd<'_>, backing: BorrowedFd<'_>) -> io::Result<()> {
    let mut config = [0u64; LOOP_CONFIG_SIZE / 8];
    {
        // SAFETY: the array owns LOOP_CONFIG_SIZE initialised bytes, u8 has no alignment
        // needs, and this borrow ends before the array is used again.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(config.as_mut_ptr().cast::<u8>(), LOOP_CONFIG_SIZE)
        };
        let fd = u32::try_from(backing.as_raw_fd())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative descriptor"))?;
        bytes[0..4].copy_from_slice(&fd.to_ne_bytes());
        // block_size 0: the kernel's default (512, or the backing device's).
        bytes[LOOP_CONFIG_FLAGS_AT..LOOP_CONFIG_FLAGS_AT + 4]
            .copy_from_slice(&LO_FLAGS_READ_ONLY.to_ne_bytes());
    }
    ioctl(device, LOOP_CONFIGURE, config.as_mut_ptr().cast())?;
    Ok(())
}

#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut libc::c_void,
}

/// Tells the kernel that partition `number` of the disk open as `disk` now spans
/// `start..start+length` bytes (the start must not change).
pub fn blkpg_resize_partition(
    disk: BorrowedFd<'_>,
    number: u32,
    start: u64,
    length: u64,
) -> io::Result<()> {
    let mut partition = BlkpgPartition {
        start: start as i64,
        length: length as i64,
        pno: number as i32,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: (&mut partition as *mut BlkpgPartition).cast(),
    };
    ioctl(disk, BLKPG, (&mut arg as *mut BlkpgIoctlArg).cast())?;
    Ok(())
}

/// Grows the mounted ext4 filesystem open as `mount_point` to `blocks` filesystem blocks.
pub fn ext4_resize(mount_point: BorrowedFd<'_>, blocks: u64) -> io::Result<()> {
    let mut count = blocks;
    ioctl(
        mount_point,
        EXT4_IOC_RESIZE_FS,
        (&mut count as *mut u64).cast(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        // Values from linux/dm-ioctl.h, linux/blkpg.h and fs/ext4/ext4.h on x86_64.
        assert_eq!(DM_DEV_CREATE, 0xc138_fd03);
        assert_eq!(DM_TABLE_LOAD, 0xc138_fd09);
        assert_eq!(DM_DEV_SUSPEND, 0xc138_fd06);
        assert_eq!(std::mem::size_of::<BlkpgPartition>(), 152);
        assert_eq!(std::mem::size_of::<BlkpgIoctlArg>(), 24);
    }

    #[test]
    fn dm_buffer_layout() {
        let mut b = DmBuffer::new("usr", DM_READONLY_FLAG, 1, &[0xaa; 45]).unwrap();
        let bytes = b.bytes_mut().to_vec();
        assert_eq!(bytes.len(), 360); // 312 + 45 rounded up to 8
        assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().unwrap()), 4);
        assert_eq!(u32::from_ne_bytes(bytes[12..16].try_into().unwrap()), 360);
        assert_eq!(u32::from_ne_bytes(bytes[16..20].try_into().unwrap()), 312);
        assert_eq!(&bytes[48..52], b"usr\0");
        assert_eq!(bytes[312], 0xaa);
        assert!(DmBuffer::new(&"x".repeat(128), 0, 0, &[]).is_err());
    }

    #[test]
    fn dm_ioctl_on_a_non_dm_descriptor_reports_the_kernel_error() {
        // The real ioctl on /dev/null: the kernel answers ENOTTY and that comes back.
        use std::os::fd::AsFd;
        let null = std::fs::File::open("/dev/null").unwrap();
        let err = dm_create(null.as_fd(), "usr", "").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }
}
