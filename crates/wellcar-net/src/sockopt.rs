//! The one socket option std does not offer: `SO_BINDTODEVICE`. This module is the crate's
//! only `unsafe`.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

/// Binds `socket` to interface `name` (needs CAP_NET_RAW).
pub fn bind_to_device(socket: &impl AsRawFd, name: &str) -> std::io::Result<()> {
    let bytes = name.as_bytes();
    // SAFETY: the pointer and length describe `bytes`, which lives across the call; the
    // kernel copies at most `len` bytes and does not keep the pointer.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            bytes.as_ptr().cast(),
            bytes.len() as libc::socklen_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
