//! Helpers of the VM tests (`tests/`) over a booted [`Machine`]: the end of its console for
//! failure messages, the wait for the autologin shell, a console command with its exit status.
//!
//! Building the images those machines boot stays in the VM tests' own harness
//! (`tests/harness.rs`, which needs the image builder).

use std::time::Duration;

use wellcar_vm::{Machine, VmError};

/// Generous timeouts: TCG on two shared cores is slow.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// How much of the console [`tail`] shows.
const TAIL_BYTES: usize = 6000;

use wellcar_contract::error_chain as chain;

/// The last 6000 bytes of the console (from a character boundary), for failure messages.
pub fn tail(vm: &Machine) -> String {
    tail_of(&vm.console())
}

fn tail_of(c: &str) -> String {
    let start = c.len().saturating_sub(TAIL_BYTES);
    let start = (0..=start)
        .rev()
        .find(|&i| c.is_char_boundary(i))
        .unwrap_or(0);
    c[start..].to_string()
}

/// Waits (up to [`BOOT_TIMEOUT`]) for the autologin shell on the serial console after byte
/// `from`, then 2 s more before anything is typed.
pub fn wait_logged_in(vm: &mut Machine, from: usize) -> Result<(), VmError> {
    vm.wait_for_from(from, "(automatic login)", BOOT_TIMEOUT)?;
    // Let the shell print its prompt before typing. A fixed pause, kept as the VM tests have
    // always had it (they take an hour to run again): the prompt has no marker to wait for.
    std::thread::sleep(Duration::from_secs(2));
    Ok(())
}

/// [`wait_logged_in`], failing the test with the console's tail.
pub fn logged_in(vm: &mut Machine, from: usize) {
    if let Err(e) = wait_logged_in(vm, from) {
        panic!("no autologin: {}\n{}", chain(&e), tail(vm));
    }
}

/// Runs `command` on the (logged-in) console; returns its output and exit status, or why not.
/// The status is printed inside the framed output (the frame's own `rc=` can be read before it
/// fully arrived).
pub fn shell_status(vm: &mut Machine, command: &str) -> Result<(String, i32), String> {
    let out = vm
        .shell(&format!("{command}; echo \"@RC=$?@\""), BOOT_TIMEOUT)
        .map_err(|e| format!("{command}: {}", chain(&e)))?;
    let at = out
        .rfind("@RC=")
        .ok_or_else(|| format!("{command}: no status in {out:?}"))?;
    let code = out[at + 4..]
        .split('@')
        .next()
        .and_then(|c| c.trim().parse().ok())
        .ok_or_else(|| format!("{command}: bad status in {out:?}"))?;
    Ok((out[..at].to_string(), code))
}

/// Runs `command` on the (logged-in) console and returns its output; fails the test with the
/// console's tail unless it exits 0.
pub fn ok(vm: &mut Machine, command: &str) -> String {
    match shell_status(vm, command) {
        Ok((out, 0)) => out,
        Ok((out, rc)) => panic!("{command}: exit {rc}\n{out}\n{}", tail(vm)),
        Err(e) => panic!("{e}\n{}", tail(vm)),
    }
}

/// A booted, logged-in Wellcar as it should be: `/usr` read-only from dm-verity (with
/// `panic_on_corruption`), the system `running` with no failed unit, no package manager, and
/// `/init`'s timing in the kernel log.
pub fn assert_healthy_system(vm: &mut Machine) {
    let usr = ok(vm, "findmnt -no SOURCE,OPTIONS /usr");
    assert!(usr.contains("/dev/mapper/usr"), "{usr}");
    assert!(
        usr.contains("ro,") || usr.contains(" ro"),
        "/usr not read-only: {usr}"
    );
    let table = ok(vm, "sudo dmsetup table usr");
    assert!(table.contains(" verity 1 "), "{table}");
    assert!(table.contains("panic_on_corruption"), "{table}");
    let running = vm
        .shell("systemctl is-system-running --wait", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("systemctl is-system-running: {}\n{}", chain(&e), tail(vm)));
    assert!(
        // Kernel messages can interleave on the serial console: look for the line itself.
        running.lines().any(|l| l.trim() == "running"),
        "system is not running:\n{running}\n{}",
        ok(vm, "systemctl --failed --no-pager")
    );
    let absent = ok(
        vm,
        "for p in apt apt-get dpkg; do command -v $p; done; true",
    );
    assert!(
        !absent.contains("/bin/"),
        "package managers present: {absent}"
    );
    // The initramfs logged its timing.
    let timing = ok(vm, "sudo dmesg | grep 'wellcar-init: switching root'");
    assert!(timing.contains("/init ran"), "{timing}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_last_bytes_from_a_character_boundary() {
        assert_eq!(tail_of("short"), "short");
        let long = format!("{}é{}", "x".repeat(10), "y".repeat(TAIL_BYTES - 1));
        // The cut would fall inside "é" (two bytes): it moves back to the character's start.
        assert_eq!(tail_of(&long), format!("é{}", "y".repeat(TAIL_BYTES - 1)));
    }

    #[test]
    fn errors_read_with_their_causes() {
        let e = VmError::Io(wellcar_contract::PathIoError::new(
            "reading",
            "/x",
            std::io::Error::other("boom"),
        ));
        assert_eq!(chain(&e), "reading /x: boom");
    }
}
