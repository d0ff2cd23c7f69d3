//! Issue 14: the live system and the unattended install, one VM per way of starting it:
//! - PXE (BIOS): QEMU's own TFTP server and the NIC's iPXE ROM load `wellcar_pxe.vmlinuz` and
//!   `wellcar_pxe_image.cpio` with the `wellcar.inst.*` arguments on the iPXE kernel line
//!   (and `wellcar.inst.skip_reboot`): the live system runs from RAM with the release's
//!   verified `/usr` (its dm-verity root hash, on a loop device) and applies the Ignition config
//!   of `ignition.config.url=`; the test checks it there, then reboots it by hand;
//! - the hybrid ISO under BIOS and under UEFI, with the `wellcar.inst.*` arguments passed as
//!   QEMU fw_cfg kernel arguments; the live system reboots by itself after the install.
//!
//! Each live system installs the signed image from a plain web server on the host (the
//! release's `image-manifest.json`, its `.sig` and `wellcar.img.zst`, reached through a
//! `guestfwd` relay at 10.0.2.100:8080) onto the machine's blank virtio disk, then the
//! firmware boots that disk (disk first, the CD or the network second): the installed
//! system's first boot applies the config from `wellcar.inst.ignition_url=` (OEM `config.ign`,
//! platform `metal`) and gives the disk its own GUID, so the three disks written from one image
//! end with three different GUIDs. The UEFI one also gets the healthy-system checks of a plain
//! UEFI boot (verified read-only `/usr` from USR-A, the system running).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::json;
use wellcar_contract::live::{
    INSTALL_DEV_PARAM, INSTALL_IGNITION_URL_PARAM, INSTALL_IMAGE_URL_PARAM,
    INSTALL_SKIP_REBOOT_PARAM,
};
use wellcar_test_support::file_server::FileServer;
use wellcar_test_support::tools;
use wellcar_test_support::vm::{assert_healthy_system, logged_in, ok, tail, BOOT_TIMEOUT};
use wellcar_vmtests::{chain, image_v1, machine, test_dir, vm_slot, Built, Firmware, Machine};

/// Where the guest reaches the host's web server.
const WEB: &str = "10.0.2.100:8080";
/// The disk the live system installs onto (the machine's only virtio disk).
const INSTALL_DEV: &str = "/dev/vda";
/// The disk GUID every image is built with.
const BUILD_DISK_GUID: &str = "00000000-0000-0000-0000-000000000001";

/// How the live system is started.
#[derive(Debug, Clone, Copy)]
enum Media {
    /// PXE: QEMU's TFTP server, the NIC's iPXE ROM, an iPXE script.
    Pxe,
    /// The hybrid ISO in a CD-ROM drive.
    Iso,
}

#[test]
fn the_live_system_installs_unattended_from_pxe_and_the_iso_under_bios_and_uefi() {
    let b = image_v1();
    let web = release_web(&b);
    let mut guids = Vec::new();
    for (media, firmware) in [
        (Media::Pxe, Firmware::Bios),
        (Media::Iso, Firmware::Bios),
        (Media::Iso, Firmware::Uefi),
    ] {
        guids.push(live_install(&b, &web, media, firmware));
    }
    let mut distinct = guids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        guids.len(),
        "disks written from one image share a GUID: {guids:?}"
    );
}

/// The release on a web server: the v1 build's raw image signed with the key the image trusts
/// (`wellcar build`'s development key, as `wellcar build` without `--signing-key` signs it),
/// compressed, plus the Ignition configs of the live and the installed system.
struct ReleaseWeb {
    server: FileServer,
    /// Path of the compressed image on the server.
    image_path: String,
}

fn release_web(b: &Built) -> ReleaseWeb {
    let www = test_dir().join("live").join("www");
    let _ = std::fs::remove_dir_all(&www);
    std::fs::create_dir_all(&www).expect("web root");
    let image = &b.manifest.disk_image;
    for name in [image.as_str(), wellcar_contract::BUILD_MANIFEST_FILE] {
        std::fs::hard_link(b.path(name), www.join(name)).expect("linking the build");
    }
    let key = wellcar_payload::dev_signing_key()
        .expect("the development signing key")
        .0;
    wellcar_install::sign_build(&www, &[&key]).expect("signing the image");
    tools::run(
        Command::new(tools::require("zstd"))
            .args(["-q", "-T0", "-3", "--rm"])
            .arg(www.join(image)),
    );
    for (name, path, text) in [
        ("live.ign", "/etc/wellcar-live-test", "provisioned live"),
        (
            "installed.ign",
            "/etc/wellcar-installed-test",
            "provisioned by the installer",
        ),
    ] {
        let config = json!({
            "ignition": {"version": "3.4.0"},
            "storage": {"files": [{
                "path": path,
                "mode": 0o644,
                "contents": {"source": format!("data:,{}%0A", text.replace(' ', "%20"))}
            }]}
        });
        std::fs::write(www.join(name), config.to_string()).expect("config");
    }
    ReleaseWeb {
        server: FileServer::start(&www),
        image_path: format!("/{}.zst", b.manifest.disk_image),
    }
}

/// The unattended-install arguments.
fn install_args(web: &ReleaseWeb) -> Vec<String> {
    vec![
        format!("{INSTALL_DEV_PARAM}={INSTALL_DEV}"),
        format!("{INSTALL_IMAGE_URL_PARAM}=http://{WEB}{}", web.image_path),
        format!("{INSTALL_IGNITION_URL_PARAM}=http://{WEB}/installed.ign"),
    ]
}

/// Boots the live system from `media` under `firmware` on a blank disk, lets it install onto
/// that disk, boots the installed disk and checks it; returns the installed disk's GUID.
fn live_install(b: &Built, web: &ReleaseWeb, media: Media, firmware: Firmware) -> String {
    let name = format!("{media:?}-{firmware:?}").to_lowercase();
    let dir = test_dir().join("live").join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
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
    cfg.state_dir = Some(dir.join("run"));
    cfg.guest_relays = vec![(WEB.into(), web.server.port())];
    match media {
        Media::Pxe => cfg.network_boot = Some(pxe_tree(b, web, &dir)),
        Media::Iso => {
            let iso = b.manifest.iso_image.clone().expect("manifest iso_image");
            cfg.cdrom = Some(b.path(&iso));
            cfg.kernel_args = install_args(web);
        }
    }

    let _slot = vm_slot();
    let started = Instant::now();
    let mut vm = Machine::spawn(&cfg).expect("starting the machine");
    let live = vm
        .wait_for("wellcar-init: live /usr", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name}: {}\n{}", chain(&e), tail(&vm)));
    let live_at = started.elapsed();
    let fetched_before = web.server.statuses_for(&web.image_path).len();
    if let Media::Pxe = media {
        let done = vm
            .wait_for_from(live, "wellcar-init: ignition done", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{name}: {}\n{}", chain(&e), tail(&vm)));
        logged_in(&mut vm, done);
        check_live_system(&mut vm, b, &name);
    }
    let installed = vm
        .wait_for_from(live, "installed Wellcar 1.0.0 onto /dev/vda", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name}: {}\n{}", chain(&e), tail(&vm)));
    let installed_at = started.elapsed();
    let fetched = web.server.statuses_for(&web.image_path);
    assert_eq!(
        fetched[fetched_before..],
        [200],
        "{name}: the image was not fetched once"
    );
    if let Media::Pxe = media {
        // wellcar.inst.skip_reboot: the live system stays; reboot it as a user would.
        vm.send("sudo systemctl reboot\n")
            .expect("typing on the console");
    }
    // The installed disk's first boot: Ignition from the OEM config.ign, then the login.
    let done = vm
        .wait_for_from(installed, "wellcar-init: ignition done", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name}: {}\n{}", chain(&e), tail(&vm)));
    logged_in(&mut vm, done);
    let provisioned_at = started.elapsed();
    eprintln!(
        "{name}: live /usr at {:.1} s, installed at {:.1} s, installed system logged in at {:.1} s",
        live_at.as_secs_f64(),
        installed_at.as_secs_f64(),
        provisioned_at.as_secs_f64()
    );
    let root = ok(&mut vm, "findmnt -no FSTYPE,SOURCE /; cat /proc/cmdline");
    assert!(
        !root.contains("tmpfs") && root.contains("ext4") && !root.contains("wellcar.live"),
        "{name}: not the installed system: {root}"
    );
    assert!(root.contains("wellcar.oem.id=metal"), "{name}: {root}");
    let file = ok(&mut vm, "cat /etc/wellcar-installed-test");
    assert!(
        file.contains("provisioned by the installer"),
        "{name}: {file}"
    );
    let guid = ok(&mut vm, &format!("lsblk -dno PTUUID {INSTALL_DEV}"))
        .trim()
        .to_owned();
    assert!(
        guid.len() == 36 && guid != BUILD_DISK_GUID,
        "{name}: disk GUID {guid:?}"
    );
    if let Firmware::Uefi = firmware {
        // The plain UEFI boot of a disk (this one written by the installer): verified /usr from
        // USR-A, the system running.
        assert_healthy_system(&mut vm);
        let deps = ok(&mut vm, "lsblk -no PARTLABEL -s /dev/mapper/usr | tail -1");
        assert!(deps.contains("USR-A"), "{name}: {deps}");
    }
    vm.kill();
    guid
}

/// The live system as booted over PXE: tmpfs root, /usr verified by the release's root hash on
/// a loop device, the `ignition.config.url=` config applied.
fn check_live_system(vm: &mut Machine, b: &Built, name: &str) {
    let root = ok(vm, "findmnt -no FSTYPE /; findmnt -no SOURCE /usr");
    assert!(root.contains("tmpfs"), "{name}: {root}");
    assert!(root.contains("/dev/mapper/usr"), "{name}: {root}");
    // /init maps /usr only when the slot's superblock carries the command line's root hash;
    // the mapping sits on the loop device over the image from the initramfs.
    let verity = ok(vm, "cat /proc/cmdline; lsblk -sno NAME /dev/mapper/usr");
    for expected in [b.manifest.verity_root_hash.to_string(), "loop0".to_owned()] {
        assert!(
            verity.contains(&expected),
            "{name}: no {expected:?} in\n{verity}"
        );
    }
    let file = ok(vm, "cat /etc/wellcar-live-test");
    assert!(file.contains("provisioned live"), "{name}: {file}");
}

/// The TFTP root for a PXE boot of `b`: its PXE kernel and initramfs and an iPXE script that
/// boots the live system with the unattended-install arguments.
fn pxe_tree(b: &Built, web: &ReleaseWeb, dir: &Path) -> wellcar_vm::NetworkBoot {
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
             wellcar.autologin ignition.config.url=http://{WEB}/live.ign {} \
             {INSTALL_SKIP_REBOOT_PARAM}\ninitrd {initramfs}\nboot\n",
            install_args(web).join(" ")
        ),
    )
    .expect("iPXE script");
    wellcar_vm::NetworkBoot {
        tftp_dir: tftp,
        bootfile: "boot.ipxe".into(),
    }
}
