//! Issue 14: the live system boots over PXE (QEMU's own TFTP server and the NIC's iPXE ROM) from
//! the build's `wellcar_pxe.vmlinuz` and `wellcar_pxe_image.cpio`, runs from RAM with the
//! release's verified `/usr` (same dm-verity root hash as the disk image) and applies an
//! Ignition config from fw_cfg.

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

#[test]
fn pxe_boots_the_live_system_with_the_verified_usr() {
    let b = image_v1();
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

    let dir = test_dir().join("live");
    let _ = std::fs::remove_dir_all(&dir);
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
             ignition.platform.id=qemu wellcar.autologin\ninitrd {initramfs}\nboot\n"
        ),
    )
    .expect("iPXE script");
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

    let _slot = vm_slot();
    let mut cfg = machine(&b, Firmware::Bios);
    cfg.image = blank;
    cfg.memory_mib = 2048;
    cfg.ignition = Some(ign);
    cfg.state_dir = Some(dir.join("run"));
    cfg.network_boot = Some(wellcar_vm::NetworkBoot {
        tftp_dir: tftp,
        bootfile: "boot.ipxe".into(),
    });
    let mut vm = Machine::spawn(&cfg).expect("starting the machine");
    let live = vm
        .wait_for("wellcar-init: live /usr", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}\n{}", chain(&e), tail(&vm)));
    let done = vm
        .wait_for_from(live, "wellcar-init: ignition done", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}\n{}", chain(&e), tail(&vm)));
    logged_in(&mut vm, done);
    let root = ok(&mut vm, "findmnt -no FSTYPE /; findmnt -no SOURCE /usr");
    assert!(root.contains("tmpfs"), "{root}");
    assert!(root.contains("/dev/mapper/usr"), "{root}");
    let table = ok(&mut vm, "dmsetup table usr");
    assert!(
        table.contains(&b.manifest.verity_root_hash.to_string()),
        "the live /usr is not checked against the release's root hash:\n{table}"
    );
    let file = ok(&mut vm, "cat /etc/wellcar-live-test");
    assert!(file.contains("provisioned live"), "{file}");
}
