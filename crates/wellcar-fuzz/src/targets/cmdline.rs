//! The kernel command line as the initramfs `/init` reads it
//! ([`wellcar_init::cmdline::BootParams::parse`], and the fallback
//! [`BootParams::reboot_delay_of`] used when parsing failed). Whoever can edit GRUB's command
//! line (the console, the ESP) controls these bytes; a panic in `/init` is a kernel panic.

use wellcar_init::cmdline::{split, BootParams};

use crate::Target;

/// `BootParams::parse` and `reboot_delay_of`.
pub const KERNEL_CMDLINE: Target = Target {
    name: "kernel-cmdline",
    exercises: "wellcar_init::cmdline::BootParams::parse + split + reboot_delay_of",
    run: kernel_cmdline,
};

fn kernel_cmdline(data: &[u8]) {
    // /init reads /proc/cmdline as UTF-8 (anything else is a clear error before parsing).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let words = split(text);
    assert!(
        words.iter().all(|w| !w.contains('"')),
        "split left a quote in a word: {words:?}"
    );
    let _ = BootParams::parse(text);
    let _ = BootParams::reboot_delay_of(text);
}
