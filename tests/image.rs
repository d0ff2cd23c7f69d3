//! Issue "build a Wellcar OS disk image": the built image checked by independent tools
//! (`sgdisk`, `veritysetup`), reproducibility, and GRUB reaching the kernel under BIOS and UEFI.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::Command;

use wellcar_test_support::vm::BOOT_TIMEOUT;
use wellcar_vmtests::*;

fn sgdisk(args: &[&str], disk: &std::path::Path) -> String {
    let out = Command::new("sgdisk")
        .args(args)
        .arg(disk)
        .output()
        .expect("sgdisk (apt-get install gdisk)");
    assert!(
        out.status.success(),
        "sgdisk {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sgdisk_reads_flatcars_partition_table() {
    let b = image_v1();
    let disk = b.path(&b.manifest.disk_image);
    let table = sgdisk(&["-p"], &disk);
    let expected = [
        (
            1,
            "EFI-SYSTEM",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            None,
        ),
        (2, "BIOS-BOOT", "21686148-6449-6E6F-744E-656564454649", None),
        (
            3,
            "USR-A",
            "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6",
            Some("7130C94A-213A-4E5A-8E26-6CCE9662F132"),
        ),
        (
            4,
            "USR-B",
            "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6",
            Some("E03DD35C-7C2D-4A47-B3FE-27F15780A57C"),
        ),
        (6, "OEM", "0FC63DAF-8483-4772-8E79-3D69D8477DE4", None),
        (
            7,
            "OEM-CONFIG",
            "C95DC21A-DF0E-4340-8D7B-26CBFA9A03E0",
            None,
        ),
        (9, "ROOT", "3884DD41-8582-4404-B9A8-E9B84F2DF50E", None),
    ];
    let numbers: Vec<u32> = table
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(
        numbers,
        [1, 2, 3, 4, 6, 7, 9],
        "partition numbers in:\n{table}"
    );
    for (n, label, type_guid, unique) in expected {
        let info = sgdisk(&["-i", &n.to_string()], &disk);
        assert!(
            info.contains(&format!("Partition GUID code: {type_guid}")),
            "partition {n} type:\n{info}"
        );
        assert!(
            info.contains(&format!("Partition name: '{label}'")),
            "partition {n} name:\n{info}"
        );
        if let Some(u) = unique {
            assert!(
                info.contains(&format!("Partition unique GUID: {u}")),
                "partition {n} unique GUID:\n{info}"
            );
        }
    }
    let usr_a = sgdisk(&["-i", "3"], &disk);
    assert!(usr_a.contains("(1024.0 MiB)"), "USR-A is 1 GiB:\n{usr_a}");
    assert!(
        std::fs::metadata(&disk)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.blocks() * 512 < m.len() / 2
            })
            .unwrap(),
        "the raw image is sparse"
    );
}

/// Copies the USR-A partition out of the raw disk (sparse).
fn extract_usr_a(b: &Built, to: &std::path::Path) {
    let disk = b.path(&b.manifest.disk_image);
    let mut f = File::open(&disk).unwrap();
    let part =
        wellcar_disk::find_partition(&mut f, &disk, wellcar_disk::PartitionKey::Label("USR-A"))
            .unwrap();
    let mut out = File::create(to).unwrap();
    out.set_len(part.size).unwrap();
    f.seek(SeekFrom::Start(part.offset)).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < part.size {
        let n = f.read(&mut buf).unwrap();
        assert!(n > 0, "disk ends inside USR-A");
        if buf[..n].iter().any(|&x| x != 0) {
            out.seek(SeekFrom::Start(done)).unwrap();
            out.write_all(&buf[..n]).unwrap();
        }
        done += n as u64;
    }
}

fn veritysetup_verify(dev: &std::path::Path, offset: u64, root: &str) -> std::process::Output {
    Command::new("veritysetup")
        .arg("verify")
        .arg(format!("--hash-offset={offset}"))
        .arg(dev)
        .arg(dev)
        .arg(root)
        .output()
        .expect("veritysetup (apt-get install cryptsetup-bin)")
}

#[test]
fn veritysetup_verifies_usr_a_and_rejects_a_flipped_byte() {
    let b = image_v1();
    let tmp = tempfile::tempdir().unwrap();
    let usr = tmp.path().join("usr-a");
    extract_usr_a(&b, &usr);
    let m = &b.manifest;
    let ok = veritysetup_verify(&usr, m.verity_hash_offset, &m.verity_root_hash.to_string());
    assert!(
        ok.status.success(),
        "veritysetup rejected a fresh USR-A: {}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Flip one byte inside the EROFS filesystem region.
    let mut f = File::options().read(true).write(true).open(&usr).unwrap();
    let at = m.usr_fs_size / 2;
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[byte[0] ^ 0x01]).unwrap();
    drop(f);
    let bad = veritysetup_verify(&usr, m.verity_hash_offset, &m.verity_root_hash.to_string());
    assert!(
        !bad.status.success(),
        "veritysetup accepted a corrupted USR-A"
    );
}

#[test]
fn manifest_has_the_documented_keys() {
    let b = image_v1();
    let text = std::fs::read_to_string(b.path("manifest.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "version",
        "verity_root_hash",
        "verity_hash_offset",
        "packages",
        "disk_image",
        "qcow2_image",
        "usr_image",
        "initramfs",
    ] {
        assert!(v.get(key).is_some(), "manifest.json lacks {key}");
    }
    assert_eq!(v["version"], "1.0.0");
    assert_eq!(v["verity_root_hash"].as_str().unwrap().len(), 64);
    assert_eq!(v["verity_hash_offset"], 1_065_345_024u64);
    let packages = v["packages"].as_array().unwrap();
    for want in [
        "systemd",
        "openssh-server",
        "containerd",
        "linux-image-cloud-amd64",
    ] {
        assert!(
            packages.iter().any(|p| p["name"] == want),
            "package {want} not listed"
        );
    }
    for key in ["disk_image", "qcow2_image", "usr_image", "initramfs"] {
        assert!(
            b.path(v[key].as_str().unwrap()).is_file(),
            "{key} file missing"
        );
    }
    // No package manager and nothing machine-specific in /usr.
    let usr = b.dir.join(".work/rootfs/usr");
    for gone in [
        "bin/apt",
        "bin/apt-get",
        "bin/dpkg",
        "lib/dpkg",
        "share/wellcar/etc/ssh/ssh_host_ed25519_key",
    ] {
        assert!(!usr.join(gone).exists(), "/usr/{gone} is in the image");
    }
    assert_eq!(
        std::fs::read(usr.join("share/wellcar/etc/machine-id")).unwrap(),
        b""
    );
    let os_release = std::fs::read_to_string(usr.join("lib/os-release")).unwrap();
    assert!(
        os_release.contains("ID=wellcar\n") && os_release.contains("VERSION_ID=1.0.0\n"),
        "{os_release}"
    );
}

#[test]
fn two_builds_give_identical_usr_images() {
    let first = image_v1();
    let second = build("v1-again", "1.0.0");
    assert_eq!(
        first.manifest.usr_image_sha256, second.manifest.usr_image_sha256,
        "the /usr images differ"
    );
    assert_eq!(
        first.manifest.verity_root_hash,
        second.manifest.verity_root_hash
    );
    let _ = std::fs::remove_dir_all(&second.dir);
}

fn boots_to_kernel(firmware: Firmware) {
    let b = image_v1();
    let _slot = vm_slot();
    let mut vm = Machine::spawn(&machine(&b, firmware)).unwrap();
    vm.wait_for("Wellcar: booting USR-a", BOOT_TIMEOUT).unwrap();
    vm.wait_for("Linux version", BOOT_TIMEOUT).unwrap();
    // The kernel echoes its command line (a notice, shown at the image's loglevel=6): GRUB
    // passed the slot's hash.
    let at = vm.wait_for("Kernel command line:", BOOT_TIMEOUT).unwrap();
    vm.wait_for_from(
        at,
        &format!("verity.usrhash={}", b.manifest.verity_root_hash),
        BOOT_TIMEOUT,
    )
    .unwrap();
    assert!(vm.console()[at..].contains("verity.usr=PARTUUID=7130c94a-213a-4e5a-8e26-6cce9662f132"));
}

#[test]
fn grub_reaches_the_kernel_under_bios() {
    boots_to_kernel(Firmware::Bios);
}

#[test]
fn grub_reaches_the_kernel_under_uefi() {
    boots_to_kernel(Firmware::Uefi);
}
