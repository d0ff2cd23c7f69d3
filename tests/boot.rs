//! VM tests of the boot path (issue 3): the Rust initramfs opens /usr through dm-verity,
//! provisions the first boot with Ignition, grows ROOT, hands over to systemd, and fails loudly
//! and safely on a broken slot.
//!
//! Every test boots the real image built by [`image_v1`] in QEMU. Failure tests edit a private
//! copy of the disk (raw conversion, byte edits, back to qcow2) before booting it.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use wellcar_disk::{find_partition, PartitionKey, Slot, USR_VERITY_HASH_OFFSET};
use wellcar_test_support::tools::{self, run};
use wellcar_test_support::vm::{assert_healthy_system, logged_in, BOOT_TIMEOUT};
use wellcar_vmtests::*;

mod flatcar_day;
mod oem_cmdline;
mod storage_day;

const MINUTE: Duration = Duration::from_secs(60);

/// Runs a console command and returns its output; panics (with the output) unless it exits 0.
/// Success is read from a token the guest prints, not from the `rc=` line, which can arrive
/// after `Machine::shell` has returned.
fn ok(vm: &mut Machine, command: &str) -> String {
    let out = vm
        .shell(
            &format!("{{ {command}; }} && echo command-succeeded"),
            BOOT_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{command}: {}\n{}", chain(&e), vm.console()));
    assert!(
        out.lines().any(|l| l.trim() == "command-succeeded"),
        "{command} failed:\n{out}"
    );
    out
}

/// A copy of the built disk in `target/vmtest/<name>`, edited as raw bytes by `edit`, returned
/// as a qcow2 the machine can use as its base image.
fn edited_disk(b: &Built, name: &str, edit: impl FnOnce(&Path, &mut File)) -> PathBuf {
    let dir = test_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("disk.raw");
    let qcow2 = dir.join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(b.path(&b.manifest.qcow2_image))
        .arg(&raw));
    let mut f = File::options().read(true).write(true).open(&raw).unwrap();
    edit(&raw, &mut f);
    f.sync_all().unwrap();
    drop(f);
    run(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    std::fs::remove_file(&raw).unwrap();
    qcow2
}

fn usr_a_offset(raw: &Path, disk: &mut File) -> u64 {
    find_partition(disk, raw, PartitionKey::Guid(Slot::A.unique_guid()))
        .unwrap()
        .offset
}

fn flip_byte(disk: &mut File, offset: u64) {
    use std::io::Read;
    let mut byte = [0u8];
    disk.seek(SeekFrom::Start(offset)).unwrap();
    disk.read_exact(&mut byte).unwrap();
    disk.seek(SeekFrom::Start(offset)).unwrap();
    disk.write_all(&[byte[0] ^ 0xff]).unwrap();
}

#[test]
fn first_boot_provisions_grows_root_and_second_boot_keeps_it() {
    let b = image_v1();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let mut config = serde_json::json!({
        "ignition": {"version": "3.4.0"},
        "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": [public.trim()]}]},
        "storage": {"files": [{
            "path": "/etc/wellcar-test.conf",
            "mode": 0o640,
            "user": {"name": "core"},
            "contents": {"source": "data:,provisioned%0A"}
        }]},
        "systemd": {"units": [{
            "name": "wellcar-test.service",
            "enabled": true,
            "contents": "[Unit]\nDescription=Ignition test unit\n[Service]\nExecStart=/usr/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n"
        }]}
    });
    // Extra disks, RAID, LUKS, filesystems and a kernel argument (issue 16).
    storage_day::add_to_config(&mut config);
    let ign = keys.path().join("config.ign");
    std::fs::write(&ign, config.to_string()).unwrap();

    let _slot = vm_slot();
    let mut cfg = machine(&b, Firmware::Bios);
    cfg.ignition = Some(ign);
    cfg.disk_size = Some(8 << 30);
    cfg.ssh_port = Some(0);
    cfg.extra_disks = storage_day::extra_disks();
    let mut vm = Machine::spawn(&cfg).unwrap();
    vm.wait_for("wellcar.first_boot=detected", BOOT_TIMEOUT)
        .unwrap();
    vm.wait_for("wellcar-init: ignition done", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}\n{}", chain(&e), vm.console()));
    vm.wait_for("wellcar-init: first-boot-flag done", BOOT_TIMEOUT)
        .unwrap();
    logged_in(&mut vm, 0);
    assert_healthy_system(&mut vm);

    let file = ok(
        &mut vm,
        "stat -c '%a %U' /etc/wellcar-test.conf; cat /etc/wellcar-test.conf",
    );
    assert!(file.contains("640 core"), "{file}");
    assert!(file.contains("provisioned"), "{file}");
    let unit = ok(
        &mut vm,
        "systemctl is-enabled wellcar-test.service; systemctl is-active wellcar-test.service",
    );
    assert!(
        unit.contains("enabled") && unit.contains("active"),
        "{unit}"
    );
    // ROOT fills the 8 GiB disk (minus the ~2.4 GiB of other partitions).
    let size = ok(&mut vm, "df -B1 --output=size / | tail -1");
    let bytes: u64 = size.lines().next().unwrap().trim().parse().unwrap();
    assert!(bytes > 5 << 30, "ROOT is only {bytes} bytes:\n{size}");

    let port = vm.ssh_port.unwrap();
    let ssh = tools::output(
        Command::new("ssh")
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "-i"])
            .arg(&key)
            .args(["-p", &port.to_string(), "core@127.0.0.1", "id -un"]),
    );
    assert!(
        String::from_utf8_lossy(&ssh.stdout).trim() == "core",
        "ssh login failed: {}",
        String::from_utf8_lossy(&ssh.stderr)
    );
    let storage_ssh = storage_day::Ssh { port, key: &key };
    storage_day::after_first_boot(&storage_ssh, &vm.console());
    flatcar_day::flatcar_users_day(
        &flatcar_day::CoreSsh { port, key: &key },
        &b.manifest.version,
        keys.path(),
    );

    // Second boot: same disk, Ignition must not run again, and everything is still there.
    let before = vm.console().len();
    vm.send("sudo systemctl reboot\n").unwrap();
    let at = vm
        .wait_for_from(before, "wellcar-init: switching root", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}\n{}", chain(&e), vm.console()));
    let second = vm.console()[before..at].to_string();
    assert!(!second.contains("wellcar.first_boot"), "{second}");
    assert!(!second.contains("ignition done"), "{second}");
    logged_in(&mut vm, at);
    let again = ok(&mut vm, "cat /etc/wellcar-test.conf; systemctl is-active wellcar-test.service; cat ~/.ssh/authorized_keys");
    assert!(
        again.contains("provisioned") && again.contains("active"),
        "{again}"
    );
    assert!(
        again.contains(public.split_whitespace().nth(1).unwrap()),
        "{again}"
    );
    storage_day::after_second_boot(&storage_ssh);
    // Third boot (tests/flatcar_day.rs): flatcar-update's refusal, flatcar-reset, Ignition again.
    flatcar_day::flatcar_update_and_reset(
        &mut vm,
        &flatcar_day::CoreSsh { port, key: &key },
        &b,
        keys.path(),
    );
}

#[test]
fn wrong_root_hash_names_the_step_and_reboots() {
    let b = image_v1();
    // Change the top block of USR-A's hash tree: the tree no longer hashes to the root hash
    // GRUB passes, exactly what a wrong verity.usrhash looks like to the initramfs.
    let disk = edited_disk(&b, "boot-wrong-hash", |raw, f| {
        oem_cmdline::append_to_cmdline(raw, f, "wellcar.init.reboot_delay=2");
        let usr = usr_a_offset(raw, f);
        flip_byte(f, usr + USR_VERITY_HASH_OFFSET + 4096 + 17);
    });
    fails_and_reboots(&b, disk, "open-usr", "verity root hash of /dev/vda3");
}

#[test]
fn missing_usr_partition_names_it_and_reboots() {
    let b = image_v1();
    let disk = edited_disk(&b, "boot-missing-usr", |raw, f| {
        oem_cmdline::append_to_cmdline(
            raw,
            f,
            "wellcar.init.reboot_delay=2 wellcar.init.disk_timeout=3",
        );
        let mut gpt = gptman::GPT::read_from(f, 512).unwrap();
        gpt.remove(3).unwrap();
        gpt.write_into(f).unwrap();
    });
    fails_and_reboots(
        &b,
        disk,
        "find-disk",
        "no device for PARTUUID=7130c94a-213a-4e5a-8e26-6cce9662f132",
    );
}

/// Boots `disk` (under BIOS) and waits for `/init`'s failure report (`BOOT FAILED`, the
/// `step` and the start of the `reason`), the 2 s reboot delay and the reboot: GRUB runs again
/// instead of the machine hanging.
fn fails_and_reboots(b: &Built, disk: PathBuf, step: &str, reason: &str) {
    let _slot = vm_slot();
    let mut cfg = machine(b, Firmware::Bios);
    cfg.image = disk;
    let mut vm = Machine::spawn(&cfg).unwrap();
    let failed = vm
        .wait_for("wellcar-init: BOOT FAILED", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}\n{}", chain(&e), vm.console()));
    let at = vm
        .wait_for_from(failed, &format!("step:   {step}"), MINUTE)
        .unwrap_or_else(|e| panic!("{}\n{}", chain(&e), vm.console()));
    vm.wait_for_from(at, &format!("reason: {reason}"), MINUTE)
        .unwrap_or_else(|e| panic!("{}\n{}", chain(&e), vm.console()));
    vm.wait_for_from(at, "Rebooting in 2 s", MINUTE).unwrap();
    vm.wait_for_from(at, "Wellcar: booting", MINUTE)
        .unwrap_or_else(|e| panic!("no reboot: {}\n{}", chain(&e), vm.console()));
}

#[test]
fn flipped_byte_in_usr_a_is_caught_by_verity() {
    let b = image_v1();
    // Byte 1024 is the EROFS superblock, read when /usr is mounted.
    let disk = edited_disk(&b, "boot-flipped-usr", |raw, f| {
        let usr = usr_a_offset(raw, f);
        flip_byte(f, usr + 1024 + 8);
    });
    let _slot = vm_slot();
    let mut cfg = machine(&b, Firmware::Bios);
    cfg.image = disk;
    let mut vm = Machine::spawn(&cfg).unwrap();
    let at = vm
        .wait_for("is corrupted", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("no verity failure: {}\n{}", chain(&e), vm.console()));
    let line_start = vm.console()[..at].rfind('\n').unwrap_or(0);
    assert!(
        vm.console()[line_start..at].contains("verity"),
        "{}",
        &vm.console()[line_start..]
    );
    // panic_on_corruption: the kernel stops instead of serving bad data, and /usr never mounts.
    vm.wait_for_from(at, "Kernel panic", MINUTE).unwrap();
    assert!(!vm.console().contains("wellcar-init: mount-usr done"));
}
