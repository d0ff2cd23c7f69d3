//! Editing a built disk image's kernel command line from the host, through the OEM
//! partition's `grub.cfg` (`linux_append`, which GRUB sources): failure tests shorten the
//! initramfs's 60 s reboot delay with `wellcar.init.reboot_delay=N`. Shared by the `boot` and
//! `abboot` test binaries.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use wellcar_disk::{find_partition, PartitionKey};
use wellcar_test_support::tools::{self, run};

/// Appends `extra` to the kernel command line through the OEM partition's grub.cfg
/// (`linux_append`), so failure tests can shorten the 60 s reboot delay.
pub fn append_to_cmdline(raw: &Path, disk: &mut File, extra: &str) {
    let oem = find_partition(disk, raw, PartitionKey::Label("OEM")).unwrap();
    let part = raw.with_extension("oem");
    run(Command::new("dd")
        .arg(format!("if={}", raw.display()))
        .arg(format!("of={}", part.display()))
        .args(["bs=512", "status=none"])
        .arg(format!("skip={}", oem.offset / 512))
        .arg(format!("count={}", oem.size / 512)));
    let cfg = raw.with_extension("grub.cfg");
    let dumped = tools::output(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump /grub.cfg {}", cfg.display()))
            .arg(&part),
    );
    assert!(dumped.status.success());
    let text = std::fs::read_to_string(&cfg).unwrap_or_default();
    let edited = if text.contains("linux_append=\"") {
        text.replacen("linux_append=\"", &format!("linux_append=\"{extra} "), 1)
    } else {
        format!("{text}\nset linux_append=\"{extra}\"\n")
    };
    std::fs::write(&cfg, edited).unwrap();
    run(Command::new("debugfs")
        .args(["-w", "-R", "rm /grub.cfg"])
        .arg(&part));
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} grub.cfg", cfg.display()))
        .arg(&part));
    let bytes = std::fs::read(&part).unwrap();
    disk.seek(SeekFrom::Start(oem.offset)).unwrap();
    disk.write_all(&bytes).unwrap();
    std::fs::remove_file(&part).unwrap();
    std::fs::remove_file(&cfg).unwrap();
}
