//! Block devices named by a config: waiting for them, udev-like `/dev/disk/by-*` lookups, and
//! partition device names.
//!
//! Contract: [`wait_for_device`] returns the kernel device path (`/dev/vdb`, `/dev/loop3p1`) for
//! a configured path, polling until it exists or the wait bound passes (then the error names the
//! field, the path and the bound). The initramfs has no udev, so a `/dev/disk/by-label`,
//! `by-partlabel`, `by-uuid` or `by-partuuid` path that does not exist as a link is looked up
//! with `blkid -o device -t KEY=VALUE` (the same tags udev builds those links from). Other paths
//! must exist (symlinks are resolved).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use wellcar_contract::command;

use crate::apply::ApplyError;

/// How often a device that has not appeared yet is looked for again.
const POLL: Duration = Duration::from_millis(50);

/// The blkid tag a `/dev/disk/by-*` link directory stands for.
fn by_link_tag(path: &str) -> Option<(&'static str, &str)> {
    let rest = path.strip_prefix("/dev/disk/")?;
    let (dir, value) = rest.split_once('/')?;
    let tag = match dir {
        "by-label" => "LABEL",
        "by-partlabel" => "PARTLABEL",
        "by-uuid" => "UUID",
        "by-partuuid" => "PARTUUID",
        _ => return None,
    };
    (!value.is_empty() && !value.contains('/')).then_some((tag, value))
}

/// udev escapes link names (`\x2f` for `/`, `\x20` for space); blkid wants the plain value.
fn unescape_udev(value: &str) -> String {
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') && i + 4 <= bytes.len() {
            if let Ok(b) = u8::from_str_radix(&value[i + 2..i + 4], 16) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One look for `path`: the resolved device if it is there now.
fn find_once(path: &str) -> Option<String> {
    if let Ok(resolved) = std::fs::canonicalize(path) {
        return Some(resolved.to_string_lossy().into_owned());
    }
    if let Some(name) = path.strip_prefix("/dev/disk/by-id/dm-name-") {
        let mapper = format!("/dev/mapper/{name}");
        return std::fs::canonicalize(&mapper).ok().map(|_| mapper);
    }
    let (tag, value) = by_link_tag(path)?;
    let wanted = format!("{tag}={}", unescape_udev(value));
    let out = command::run(Command::new("blkid").args(["-o", "device", "-t", &wanted])).ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut devices = text.lines().filter(|l| !l.is_empty());
    let first = devices.next()?.to_string();
    // Two devices with one label: udev's link would point at either; refuse to guess.
    devices.next().is_none().then_some(first)
}

/// Waits (at most `bound`) for the device configured at `field` to exist.
pub(crate) fn wait_for_device(
    field: &str,
    path: &str,
    bound: Duration,
) -> Result<String, ApplyError> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(found) = find_once(path) {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            return Err(ApplyError::DeviceMissing {
                field: field.to_string(),
                device: path.to_string(),
                waited: bound,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// The device node of partition `number` of the whole disk `disk` (`/dev/vda` → `/dev/vda1`,
/// `/dev/loop0` or `/dev/nvme0n1` → `…p1`), as the kernel names it.
pub(crate) fn partition_path(disk: &str, number: u32) -> String {
    let ends_in_digit = disk.bytes().last().is_some_and(|b| b.is_ascii_digit());
    if ends_in_digit {
        format!("{disk}p{number}")
    } else {
        format!("{disk}{number}")
    }
}

/// `(start, size)` in 512-byte sectors of a partition as the kernel sees it, from sysfs.
pub(crate) fn kernel_partition_extent(partition: &str) -> Option<(u64, u64)> {
    let name = Path::new(partition).file_name()?.to_str()?;
    let read = |what: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/class/block/{name}/{what}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("start")?, read("size")?))
}

/// Whether the kernel block device `device` is mounted, used as swap, or held (by dm, md).
pub(crate) fn in_use(device: &str) -> bool {
    let Some(name) = Path::new(device).file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let sys = format!("/sys/class/block/{name}");
    let held = std::fs::read_dir(format!("{sys}/holders")).is_ok_and(|mut d| d.next().is_some());
    let numbers = std::fs::read_to_string(format!("{sys}/dev")).unwrap_or_default();
    let numbers = numbers.trim();
    let mounted = !numbers.is_empty()
        && std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some(numbers));
    let swap = std::fs::read_to_string("/proc/swaps")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(device));
    held || mounted || swap
}

/// Polls `probe` until it holds or `bound` passes; returns whether it held.
pub(crate) fn wait_for(bound: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if probe() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_links_map_to_blkid_tags_and_partition_names_follow_the_kernel() {
        assert_eq!(
            by_link_tag("/dev/disk/by-partlabel/data"),
            Some(("PARTLABEL", "data"))
        );
        assert_eq!(
            by_link_tag("/dev/disk/by-uuid/1234"),
            Some(("UUID", "1234"))
        );
        assert_eq!(by_link_tag("/dev/disk/by-id/virtio-x"), None);
        assert_eq!(by_link_tag("/dev/vdb"), None);
        assert_eq!(unescape_udev("my\\x20disk"), "my disk");
        assert_eq!(partition_path("/dev/vdb", 3), "/dev/vdb3");
        assert_eq!(partition_path("/dev/loop0", 1), "/dev/loop0p1");
        assert_eq!(partition_path("/dev/nvme0n1", 2), "/dev/nvme0n1p2");
    }

    #[test]
    fn a_device_that_never_appears_is_an_error_naming_field_path_and_bound() {
        let err = wait_for_device(
            "storage.disks.0.device",
            "/dev/disk/by-partlabel/wellcar-test-never-there",
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "storage.disks.0.device: /dev/disk/by-partlabel/wellcar-test-never-there did not appear within 100ms"
        );
    }
}
