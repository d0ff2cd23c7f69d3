//! Issue 14: the live system boots over PXE (QEMU's own TFTP server and the NIC's iPXE ROM)
//! from the build's `wellcar_pxe.vmlinuz` and `wellcar_pxe_image.cpio`, and from the hybrid
//! ISO under BIOS and UEFI. Each time it runs from RAM with the release's verified `/usr` (the
//! same dm-verity root hash as the disk image) and applies an Ignition config from fw_cfg.

use std::process::Command;

use serde_json::json;
use wellcar_test_support::tools;
use wellcar_test_support::vm::{logged_in, shell_status, tail, BOOT_TIMEOUT};
use wellcar_vmtests::{chain, image_v1, machine, test_dir, vm_slot, Firmware, Machine};

fn ok(vm: &mut Machine, command: &str) -> String {
    match shell_status(vm, command) {
        Ok((out, 0)) => out,
        Ok((out, rc)) => panic!("{command}: exit {rc}\n{out}\n{}", tail(vm)),
        Err(e) => panic!("{e}\n{}", tail(vm)),
    }
}

/// How the live system is started.
#[derive(Debug, Clone, Copy)]
enum Media {
    /// PXE: QEMU's TFTP server, the NIC's iPXE ROM, an iPXE script.
    Pxe,
    /// The hybrid ISO in a CD-ROM drive.
    Iso,
}

#[test]
fn the_live_system_boots_over_pxe_and_from_the_iso_under_bios_and_uefi() {
    let b = image_v1();
    for (media, firmware) in [
        (Media::Pxe, Firmware::Bios),
        (Media::Iso, Firmware::Bios),
        (Media::Iso, Firmware::Uefi),
    ] {
        boot_live(&b, media, firmware);
    }
}

/// Boots the live system from `media` under `firmware` with a blank disk and an Ignition
/// config over fw_cfg; checks the tmpfs root, the verified /usr and the applied config.
fn boot_live(b: &wellcar_vmtests::Built, media: Media, firmware: Firmware) {
    let name = format!("{media:?}-{firmware:?}").to_lowercase();
    let dir = test_dir().join("live").join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    let config = json!({
        "ignition": {"version": "3.4.0"},
        "storage": {"files": [{
            "path": "/etc/wellcar-live-test",
            "mode": 0o644,
            "contents": {"source": "data:,provisioned%20live%0A"}
        }]}
    });
    let ign = dir.join("config.ign");
    std::fs::write(&ign, config.to_string()).expect("config");
    // A blank disk: the live system must not need one.
    let blank = dir.join("blank.qcow2");
    tools::run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&blank)
            .arg("4G"),
    );
    let mut cfg = machine(b, firmware);
    cfg.image = blank;
    cfg.memory_mib = 2048;
    cfg.ignition = Some(ign);
    cfg.kernel_args = vec!["ignition.platform.id=qemu".into()];
    cfg.state_dir = Some(dir.join("run"));
    match media {
        Media::Pxe => cfg.network_boot = Some(pxe_tree(b, &dir)),
        Media::Iso => {
            let iso = b.manifest.iso_image.clone().expect("manifest iso_image");
            cfg.cdrom = Some(b.path(&iso));
        }
    }

    let _slot = vm_slot();
    let started = std::time::Instant::now();
    let mut vm = Machine::spawn(&cfg).expect("starting the machine");
    let live = vm
        .wait_for("wellcar-init: live /usr", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name}: {}\n{}", chain(&e), tail(&vm)));
    let done = vm
        .wait_for_from(live, "wellcar-init: ignition done", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name}: {}\n{}", chain(&e), tail(&vm)));
    logged_in(&mut vm, done);
    eprintln!(
        "{name}: logged in {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    let root = ok(&mut vm, "findmnt -no FSTYPE /; findmnt -no SOURCE /usr");
    assert!(root.contains("tmpfs"), "{name}: {root}");
    assert!(root.contains("/dev/mapper/usr"), "{name}: {root}");
    // /init maps /usr only when the slot's superblock carries the command line's root hash;
    // the mapping sits on the loop device over the image from the initramfs.
    let verity = ok(
        &mut vm,
        "cat /proc/cmdline; lsblk -sno NAME /dev/mapper/usr",
    );
    for expected in [b.manifest.verity_root_hash.to_string(), "loop0".to_owned()] {
        assert!(
            verity.contains(&expected),
            "{name}: no {expected:?} in\n{verity}"
        );
    }
    let file = ok(&mut vm, "cat /etc/wellcar-live-test");
    assert!(file.contains("provisioned live"), "{name}: {file}");
    vm.kill();
}

/// The TFTP root for a PXE boot of `b`: its PXE kernel and initramfs and an iPXE script.
fn pxe_tree(b: &wellcar_vmtests::Built, dir: &std::path::Path) -> wellcar_vm::NetworkBoot {
    let kernel = b.manifest.pxe_kernel.clone().expect("manifest pxe_kernel");
    let initramfs = b
        .manifest
        .pxe_initramfs
        .clone()
        .expect("manifest pxe_initramfs");
    let live_args = b
        .manifest
        .live_kernel_args
        .clone()
        .expect("manifest live_kernel_args");
    let tftp = dir.join("tftp");
    std::fs::create_dir_all(&tftp).expect("tftp dir");
    for name in [&kernel, &initramfs] {
        std::fs::hard_link(b.path(name), tftp.join(name))
            .or_else(|_| std::fs::copy(b.path(name), tftp.join(name)).map(|_| ()))
            .expect("serving a PXE file");
    }
    std::fs::write(
        tftp.join("boot.ipxe"),
        format!(
            "#!ipxe\nkernel {kernel} {live_args} console=ttyS0,115200n8 loglevel=6 \
             wellcar.autologin\ninitrd {initramfs}\nboot\n"
        ),
    )
    .expect("iPXE script");
    wellcar_vm::NetworkBoot {
        tftp_dir: tftp,
        bootfile: "boot.ipxe".into(),
    }
}
