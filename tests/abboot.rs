//! Issue 5: USR-A/USR-B boot selection with automatic fallback, in QEMU, modelled on Flatcar's
//! kola tests `cl.update.reboot`, `cl.update.badverity` and `coreos.update.badusr`.
//!
//! One machine lives through most of the story so boots are shared between assertions (TCG
//! boots take about a minute each):
//!
//! 1. fresh image on USR-A: refusals of `rollback`, `cancel`, `stage A`; copy USR-A to USR-B
//!    with its kernel and initramfs; `stage B`, `cancel`, `stage B`; reboot
//! 2. runs USR-B, marked good after `boot-complete.target` (manual update); `rollback`; reboot
//! 3. runs USR-A (rollback); three power cuts while `stage`/`cancel` rewrite the state: the next
//!    boot picks the slot the last committed write selected
//! 4. unhealthy USR-B (a required health check fails): never marked good, next reboot runs A
//! 5. bad verity: USR-B staged with a wrong root hash: falls back to A by itself
//!
//! A second test, on a fresh machine under UEFI: bad /usr: USR-B holds an empty EROFS with a
//! valid verity tree (written and staged on the ESP from the host): the initramfs fails and the
//! machine falls back to A.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use wellcar_bootstate::{BootState, Esp};
use wellcar_disk::{find_partition, PartitionKey, Slot, USR_DATA_BLOCKS, USR_VERITY_HASH_OFFSET};
use wellcar_test_support::tools::run;
use wellcar_test_support::vm::{logged_in, shell_status, tail, BOOT_TIMEOUT};
use wellcar_vmtests::*;

mod oem_cmdline;

/// A failing boot: kernel panic (`panic=10`) or initramfs failure (reboot delay 3 s) plus GRUB.
const FALLBACK_TIMEOUT: Duration = Duration::from_secs(480);
const B_GUID: &str = "e03dd35c-7c2d-4a47-b3fe-27f15780a57c";

/// Runs `command` on the console; returns its output and exit status.
fn sh(vm: &mut Machine, command: &str) -> (String, i32) {
    shell_status(vm, command).unwrap_or_else(|e| panic!("{e}\n{}", tail(vm)))
}

fn ok(vm: &mut Machine, command: &str) -> String {
    let (out, code) = sh(vm, command);
    assert_eq!(code, 0, "{command} failed:\n{out}");
    out
}

fn refused(vm: &mut Machine, command: &str, reason: &str) {
    let (out, code) = sh(vm, &format!("{command} 2>&1"));
    assert_eq!(code, 2, "{command} was not refused:\n{out}");
    assert!(
        out.contains(reason),
        "{command}: {out:?} does not say {reason:?}"
    );
}

fn status(vm: &mut Machine) -> serde_json::Value {
    let out = ok(vm, "sudo wellcar-update status --json");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
}

fn slot_field<'a>(st: &'a serde_json::Value, slot: Slot, key: &str) -> &'a serde_json::Value {
    &st["slots"][usize::from(slot == Slot::B)][key]
}

/// Waits for GRUB to boot `slot` after console offset `from`, then for the autologin shell;
/// returns the offset after the GRUB line.
fn expect_boot(vm: &mut Machine, from: usize, slot: Slot, timeout: Duration) -> usize {
    let at = next_boot(vm, from, timeout);
    let booted = vm.console()[at..].chars().next();
    assert_eq!(
        booted,
        Some(slot.letter()),
        "GRUB booted the wrong slot:\n{}",
        tail(vm)
    );
    logged_in_quiet(vm, at);
    at
}

/// Offset just after the next "Wellcar: booting USR-" GRUB prints after `from`.
fn next_boot(vm: &mut Machine, from: usize, timeout: Duration) -> usize {
    let at = vm
        .wait_for_from(from, "Wellcar: booting USR-", timeout)
        .unwrap_or_else(|e| panic!("no boot: {}\n{}", chain(&e), tail(vm)));
    // The slot letter may not have arrived with the match.
    for _ in 0..100 {
        if vm.console().len() > at {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    at
}

/// Waits for the autologin shell, then keeps kernel messages off the console.
fn logged_in_quiet(vm: &mut Machine, from: usize) {
    logged_in(vm, from);
    // Kernel messages on the serial console would interleave with command output.
    ok(vm, "sudo dmesg -n 1");
}

fn reboot(vm: &mut Machine) -> usize {
    let from = vm.console().len();
    vm.send("sudo systemctl reboot\n").unwrap();
    from
}

/// Waits until the boot finished and returns whether mark-good ran.
fn boot_settled(vm: &mut Machine) -> bool {
    let _ = vm.shell("systemctl is-system-running --wait", BOOT_TIMEOUT);
    let out = vm
        .shell(
            "systemctl is-active wellcar-mark-good.service",
            BOOT_TIMEOUT,
        )
        .unwrap();
    out.starts_with("active")
}

/// Restarts the machine on the disk `vm` left behind (after a power cut or a poweroff).
fn restart(b: &Built, vm: Machine, dir: &Path, n: usize, firmware: Firmware) -> Machine {
    let disk = vm.disk();
    drop(vm);
    spawn_on(b, disk, dir, n, firmware)
}

fn spawn_on(b: &Built, image: PathBuf, dir: &Path, n: usize, firmware: Firmware) -> Machine {
    let mut cfg = machine(b, firmware);
    cfg.image = image;
    cfg.state_dir = Some(dir.join(format!("run{n}")));
    Machine::spawn(&cfg).unwrap()
}

/// This file's build (once per test process; both tests use it).
fn image() -> Built {
    static BUILT: std::sync::OnceLock<Built> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| build("abboot", "1.0.0")).clone()
}

#[test]
fn ab_update_rollback_fallbacks_and_power_cuts() {
    let b = image();
    let hash_a = b.manifest.verity_root_hash.to_string();
    let _slot = vm_slot();
    let dir = test_dir().join("abboot-vm");
    let _ = std::fs::remove_dir_all(&dir);
    let mut runs = 0;
    let mut vm = spawn_on(
        &b,
        b.path(&b.manifest.qcow2_image),
        &dir,
        runs,
        Firmware::Bios,
    );

    // 1. Fresh image.
    expect_boot(&mut vm, 0, Slot::A, BOOT_TIMEOUT);
    ok(
        &mut vm,
        "sudo mkdir -p /run/oem && sudo mount LABEL=OEM /run/oem && sudo sed -i 's/linux_append=\"/linux_append=\"wellcar.init.reboot_delay=3 /' /run/oem/grub.cfg && sudo umount /run/oem",
    );
    assert!(
        boot_settled(&mut vm),
        "mark-good did not run on a healthy first boot:\n{}",
        tail(&vm)
    );
    let st = status(&mut vm);
    assert_eq!(st["booted"], "USR-A");
    assert_eq!(st["next_boot"], "USR-A");
    assert_eq!(slot_field(&st, Slot::A, "priority"), 1);
    assert_eq!(slot_field(&st, Slot::A, "successful"), true);
    assert_eq!(slot_field(&st, Slot::A, "verity_hash"), hash_a.as_str());
    assert_eq!(slot_field(&st, Slot::B, "priority"), 0);
    refused(&mut vm, "sudo wellcar-update rollback", "no verified /usr");
    refused(&mut vm, "sudo wellcar-update cancel", "no staged update");
    refused(
        &mut vm,
        &format!("sudo wellcar-update stage A --root-hash {hash_a} --version 1.0.1"),
        "USR-A is the booted slot",
    );
    ok(
        &mut vm,
        "sudo dd if=/dev/disk/by-partlabel/USR-A of=/dev/disk/by-partlabel/USR-B bs=4M conv=fsync status=none",
    );
    ok(
        &mut vm,
        "sudo cp /boot/wellcar/vmlinuz-a /boot/wellcar/vmlinuz-b && sudo cp /boot/wellcar/initrd-a /boot/wellcar/initrd-b && sync",
    );
    let stage_b = format!("sudo wellcar-update stage B --root-hash {hash_a} --version 1.0.1");
    ok(&mut vm, &stage_b);
    let st = status(&mut vm);
    assert_eq!(st["next_boot"], "USR-B");
    assert_eq!(st["staged"]["slot"], "USR-B");
    refused(
        &mut vm,
        "sudo wellcar-update rollback",
        "use `wellcar-update cancel`",
    );
    ok(&mut vm, "sudo wellcar-update cancel");
    let st = status(&mut vm);
    assert_eq!(st["next_boot"], "USR-A");
    assert!(st["staged"].is_null());
    ok(&mut vm, &stage_b);

    // 2. Manual update: runs B, marked good once boot-complete.target is reached.
    let from = reboot(&mut vm);
    expect_boot(&mut vm, from, Slot::B, BOOT_TIMEOUT);
    assert!(
        boot_settled(&mut vm),
        "B was not marked good:\n{}",
        tail(&vm)
    );
    let st = status(&mut vm);
    assert_eq!(st["booted"], "USR-B");
    assert_eq!(slot_field(&st, Slot::B, "successful"), true);
    assert_eq!(slot_field(&st, Slot::B, "priority"), 2);
    assert_eq!(slot_field(&st, Slot::B, "version"), "1.0.1");
    assert_eq!(slot_field(&st, Slot::A, "priority"), 1);
    let human = ok(&mut vm, "sudo wellcar-update status");
    assert!(human.contains("*USR-B 1.0.1"), "{human}");
    refused(&mut vm, "sudo wellcar-update cancel", "not a staged update");
    let out = ok(&mut vm, "sudo wellcar-update rollback");
    assert!(
        out.contains("USR-A (version 1.0.0) will boot next"),
        "{out}"
    );

    // 3. Rollback runs A; then power cuts while the state is written.
    let from = reboot(&mut vm);
    expect_boot(&mut vm, from, Slot::A, BOOT_TIMEOUT);
    assert!(boot_settled(&mut vm));
    let st = status(&mut vm);
    assert_eq!(slot_field(&st, Slot::A, "priority"), 2);
    assert_eq!(slot_field(&st, Slot::B, "priority"), 1);
    let mut booted = Slot::A;
    for cut in 0..3u64 {
        let other = booted.other();
        let from = vm.console().len();
        vm.send(&format!(
            "i=0; while true; do sudo wellcar-update stage {o} --root-hash {hash_a} --version 0.{cut}.$i >/dev/null && echo CUT-STAGED-$i; sudo wellcar-update cancel >/dev/null && echo CUT-CANCELLED-$i; i=$((i+1)); done\n",
            o = other.letter()
        ))
        .unwrap();
        vm.wait_for_from(from, "CUT-STAGED-1", BOOT_TIMEOUT)
            .unwrap();
        // Somewhere inside the next write pairs.
        std::thread::sleep(Duration::from_millis(150 + 370 * cut));
        vm.kill();
        let log = vm.console()[from..].to_string();
        let last = |what: &str| {
            log.lines()
                .filter_map(|l| l.trim().strip_prefix(what)?.parse::<u32>().ok())
                .max()
        };
        let staged = last("CUT-STAGED-").expect("at least one stage");
        runs += 1;
        vm = restart(&b, vm, &dir, runs, Firmware::Bios);
        let at = next_boot(&mut vm, 0, BOOT_TIMEOUT);
        let now = if vm.console()[at..].starts_with('b') {
            Slot::B
        } else {
            Slot::A
        };
        logged_in_quiet(&mut vm, at);
        boot_settled(&mut vm);
        let st = status(&mut vm);
        assert_eq!(st["booted"], now.to_string());
        let version = slot_field(&st, other, "version")
            .as_str()
            .unwrap()
            .to_string();
        let allowed = [
            format!("0.{cut}.{staged}"),
            format!("0.{cut}.{}", staged + 1),
        ];
        assert!(
            allowed.contains(&version),
            "cut {cut}: {other} holds {version}, expected one of {allowed:?} (log: {log})"
        );
        if now == other {
            // The cut left B staged: GRUB consumed its try, it booted and was marked good.
            assert_eq!(
                slot_field(&st, other, "successful"),
                true,
                "cut {cut}: {st}"
            );
        } else {
            // The cut left the update cancelled: the other slot is not bootable.
            assert_eq!(slot_field(&st, other, "priority"), 0, "cut {cut}: {st}");
            assert_eq!(slot_field(&st, other, "bootable"), false, "cut {cut}: {st}");
        }
        booted = now;
    }
    if booted == Slot::B {
        ok(
            &mut vm,
            &format!("sudo wellcar-update stage A --root-hash {hash_a} --version 1.0.0"),
        );
        let from = reboot(&mut vm);
        expect_boot(&mut vm, from, Slot::A, BOOT_TIMEOUT);
        assert!(boot_settled(&mut vm));
    }

    // 4. Unhealthy B: a required health check fails on B only.
    ok(
        &mut vm,
        &format!(
            "printf '%s\\n' '[Unit]' 'Description=test check failing on USR-B' 'DefaultDependencies=no' 'ConditionKernelCommandLine=verity.usr=PARTUUID={B_GUID}' 'Before=boot-complete.target' '[Service]' 'Type=oneshot' 'ExecStart=/bin/false' '[Install]' 'RequiredBy=boot-complete.target' | sudo tee /etc/systemd/system/test-fail-on-b.service >/dev/null && sudo systemctl enable test-fail-on-b.service"
        ),
    );
    ok(
        &mut vm,
        &format!("sudo wellcar-update stage B --root-hash {hash_a} --version 1.0.2"),
    );
    let from = reboot(&mut vm);
    expect_boot(&mut vm, from, Slot::B, BOOT_TIMEOUT);
    assert!(
        !boot_settled(&mut vm),
        "B was marked good although a health check failed"
    );
    let st = status(&mut vm);
    assert_eq!(st["booted"], "USR-B");
    assert_eq!(slot_field(&st, Slot::B, "successful"), false);
    assert_eq!(slot_field(&st, Slot::B, "tries"), 0);
    assert_eq!(st["next_boot"], "USR-A");
    let from = reboot(&mut vm);
    expect_boot(&mut vm, from, Slot::A, BOOT_TIMEOUT);
    assert!(boot_settled(&mut vm));
    let st = status(&mut vm);
    assert_eq!(slot_field(&st, Slot::A, "priority"), 2);
    assert_eq!(slot_field(&st, Slot::B, "bootable"), false);

    // 5. Bad verity: B staged with a wrong root hash falls back to A by itself.
    let wrong = format!(
        "{}{}",
        &hash_a[..63],
        if hash_a.ends_with('0') { '1' } else { '0' }
    );
    ok(
        &mut vm,
        &format!("sudo wellcar-update stage B --root-hash {wrong} --version 1.0.3"),
    );
    let from = reboot(&mut vm);
    let at = next_boot(&mut vm, from, BOOT_TIMEOUT);
    assert!(vm.console()[at..].starts_with('b'), "{}", tail(&vm));
    let failed = vm
        .wait_for_from(at, "wellcar-init: BOOT FAILED", FALLBACK_TIMEOUT)
        .unwrap_or_else(|e| panic!("B did not fail: {}\n{}", chain(&e), tail(&vm)));
    expect_boot(&mut vm, failed, Slot::A, FALLBACK_TIMEOUT);
    assert!(boot_settled(&mut vm));
    let st = status(&mut vm);
    assert_eq!(st["booted"], "USR-A");
    assert_eq!(st["next_boot"], "USR-A");
    assert_eq!(slot_field(&st, Slot::A, "priority"), 2);
    assert_eq!(slot_field(&st, Slot::B, "bootable"), false);
    assert_eq!(slot_field(&st, Slot::B, "verity_hash"), wrong.as_str());
}

/// Bad /usr (`coreos.update.badusr`), on a fresh image under UEFI: USR-B holds an empty EROFS
/// with a valid verity tree, staged on the ESP from the host. The initramfs finds no init in
/// it, reboots, and GRUB falls back to USR-A by itself.
#[test]
fn bad_usr_falls_back_under_uefi() {
    let b = image();
    let _slot = vm_slot();
    let dir = test_dir().join("abboot-badusr");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let empty_hash = write_empty_usr_b(&b.path(&b.manifest.qcow2_image), &dir);
    // The OEM grub.cfg sets wellcar.init.reboot_delay=3 (write_empty_usr_b).
    let mut vm = spawn_on(&b, dir.join("bad-usr.qcow2"), &dir, 0, Firmware::Uefi);
    let at = next_boot(&mut vm, 0, BOOT_TIMEOUT);
    assert!(vm.console()[at..].starts_with('b'), "{}", tail(&vm));
    let failed = vm
        .wait_for_from(at, "wellcar-init: BOOT FAILED", FALLBACK_TIMEOUT)
        .unwrap_or_else(|e| {
            panic!(
                "B did not fail in the initramfs: {}\n{}",
                chain(&e),
                tail(&vm)
            )
        });
    expect_boot(&mut vm, failed, Slot::A, FALLBACK_TIMEOUT);
    boot_settled(&mut vm);
    let st = status(&mut vm);
    assert_eq!(st["booted"], "USR-A");
    assert_eq!(st["next_boot"], "USR-A");
    assert_eq!(slot_field(&st, Slot::B, "bootable"), false);
    assert_eq!(slot_field(&st, Slot::B, "tries"), 0);
    assert_eq!(slot_field(&st, Slot::B, "verity_hash"), empty_hash.as_str());
    assert_eq!(slot_field(&st, Slot::B, "version"), "0.0.0+empty");
}

/// Writes an empty EROFS with a valid verity tree into USR-B of the overlay `disk`, stages it on
/// the ESP (through mtools, with the bootstate library), shortens the initramfs's reboot delay
/// after a failure to 3 s (OEM `grub.cfg`), and leaves `dir/bad-usr.qcow2`.
/// Returns the new root hash.
fn write_empty_usr_b(disk: &Path, dir: &Path) -> String {
    let raw = dir.join("bad-usr.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(disk)
        .arg(&raw));
    let slot = dir.join("empty-usr.img");
    let empty = dir.join("empty-tree");
    std::fs::create_dir_all(&empty).unwrap();
    let fs = dir.join("empty.erofs");
    run(Command::new("mkfs.erofs").arg(&fs).arg(&empty));
    std::fs::copy(&fs, &slot).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&slot).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    let out = run(Command::new("veritysetup")
        .arg("format")
        .arg(format!("--hash-offset={USR_VERITY_HASH_OFFSET}"))
        .arg(format!("--data-blocks={USR_DATA_BLOCKS}"))
        .arg(&slot)
        .arg(&slot));
    let out = String::from_utf8_lossy(&out.stdout);
    let hash = out
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .expect("veritysetup prints the root hash")
        .trim()
        .to_string();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&raw)
        .unwrap();
    let usr_b = find_partition(&mut f, &raw, PartitionKey::Guid(Slot::B.unique_guid())).unwrap();
    let esp = find_partition(&mut f, &raw, PartitionKey::Label("EFI-SYSTEM")).unwrap();
    drop(f);
    run(Command::new("dd")
        .arg(format!("if={}", slot.display()))
        .arg(format!("of={}", raw.display()))
        .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
        .arg(format!("seek={}", usr_b.offset >> 20)));
    // USR-B's kernel and initramfs: USR-A's (the slot's /usr is what is broken).
    for (from, to) in [("vmlinuz-a", "vmlinuz-b"), ("initrd-a", "initrd-b")] {
        let local = dir.join(from);
        run(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-o", "-i", &format!("{}@@{}", raw.display(), esp.offset)])
            .arg(format!("::/wellcar/{from}"))
            .arg(&local));
        run(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-o", "-i", &format!("{}@@{}", raw.display(), esp.offset)])
            .arg(&local)
            .arg(format!("::/wellcar/{to}")));
        let _ = std::fs::remove_file(&local);
    }
    // The boot state: copied out of the FAT, staged with the library, copied back.
    let tree = dir.join("esp");
    std::fs::create_dir_all(tree.join("wellcar")).unwrap();
    let image = format!("{}@@{}", raw.display(), esp.offset);
    for i in 0..2 {
        run(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-o", "-i", &image])
            .arg(format!("::/wellcar/state-{i}.env"))
            .arg(tree.join(format!("wellcar/state-{i}.env"))));
    }
    let store = Esp::new(&tree);
    let (_, loaded) = store
        .update(|s: &mut BootState| {
            s.stage(Slot::B, Some(Slot::A), hash.parse().unwrap(), "0.0.0+empty")
        })
        .unwrap();
    assert_eq!(loaded.state.next_boot(), Some(Slot::B));
    for i in 0..2 {
        run(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-o", "-i", &image])
            .arg(tree.join(format!("wellcar/state-{i}.env")))
            .arg(format!("::/wellcar/state-{i}.env")));
    }
    // B's failure reboots after 3 s instead of the initramfs's default 60 s.
    {
        let mut disk = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&raw)
            .unwrap();
        oem_cmdline::append_to_cmdline(&raw, &mut disk, "wellcar.init.reboot_delay=3");
    }
    run(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(dir.join("bad-usr.qcow2")));
    for p in [&raw, &slot, &fs] {
        let _ = std::fs::remove_file(p);
    }
    hash
}
