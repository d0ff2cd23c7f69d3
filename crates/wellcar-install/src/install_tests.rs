//! Installing the small fixture build (`wellcar_test_support::build`) laid out as a real
//! Wellcar disk: the same GPT as `wellcar build` writes (2.9 GiB, sparse), its USR-A holding the
//! fixture's dm-verity /usr image and its OEM an ext4 made by `mke2fs -d`, as the builder
//! makes it.

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use wellcar_payload::keys::TrustedKey;
use wellcar_payload::{SigningKey, TrustedKeys};
use wellcar_test_support::build::{Build, HASH_OFFSET, USR_SIZE};
use wellcar_test_support::tools;

use super::*;

const OEM_GRUB_CFG: &str = "set oem_id=\"qemu\"\nset linux_append=\"wellcar.autologin\"\n";

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    build: Build,
    key: SigningKey,
}

impl Fixture {
    /// A signed build with a disk image.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let build = Build::create(&root.join("build"), "1.2.3");
        let disk_path = build.path(&build.manifest.disk_image);
        let size = wellcar_disk::gpt::minimum_disk_size();
        let mut disk = std::fs::File::create_new(&disk_path).unwrap();
        disk.set_len(size).unwrap();
        let parts = wellcar_disk::write_layout(&mut disk, size, &disk_path).unwrap();
        let part = |label: &str| parts.iter().find(|p| p.label == label).unwrap().clone();
        disk.write_all_at(&build.usr_image(), part("USR-A").offset)
            .unwrap();
        let tree = root.join("oem-tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("grub.cfg"), OEM_GRUB_CFG).unwrap();
        let oem_img = root.join("oem.img");
        tools::run(
            Command::new(tools::require("mke2fs"))
                .args(["-q", "-t", "ext4", "-L", "OEM", "-d"])
                .arg(&tree)
                .arg(&oem_img)
                .arg(format!("{}k", part("OEM").size / 1024)),
        );
        let oem = std::fs::read(&oem_img).unwrap();
        for (i, block) in oem.chunks(4096).enumerate() {
            if block.iter().any(|&b| b != 0) {
                disk.write_all_at(block, part("OEM").offset + i as u64 * 4096)
                    .unwrap();
            }
        }
        disk.sync_all().unwrap();
        let key = wellcar_test_support::build::signing_key();
        sign_build(&build.dir, &[&key]).unwrap();
        Fixture {
            _dir: dir,
            root,
            build,
            key,
        }
    }

    fn image(&self) -> PathBuf {
        self.build.path(&self.build.manifest.disk_image)
    }

    fn trusted(key: &SigningKey) -> TrustedKeys {
        TrustedKeys::new(vec![TrustedKey {
            name: "release".into(),
            verifying_key: key.verifying_key(),
        }])
    }

    fn request(&self, target: &Path, image: ImageSource) -> InstallRequest {
        InstallRequest {
            target: target.into(),
            image,
            trusted_keys: Self::trusted(&self.key),
            insecure: false,
            oem: OemSettings::default(),
        }
    }

    /// A sparse copy of the image in its own directory with the same manifest and signature.
    fn copy_image(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        std::fs::create_dir(&dir).unwrap();
        for file in [
            wellcar_contract::IMAGE_MANIFEST_FILE,
            wellcar_contract::IMAGE_SIGNATURES_FILE,
        ] {
            std::fs::copy(self.build.path(file), dir.join(file)).unwrap();
        }
        let copy = dir.join(&self.build.manifest.disk_image);
        tools::run(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(self.image())
                .arg(&copy),
        );
        copy
    }
}

fn sgdisk(args: &[&str], disk: &Path) -> std::process::Output {
    tools::output(Command::new(tools::require("sgdisk")).args(args).arg(disk))
}

/// No partition table at either end: the target does not look bootable.
fn assert_not_bootable(target: &Path) {
    let bytes = std::fs::read(target).map(|b| b.len()).unwrap_or(0);
    if bytes == 0 {
        return;
    }
    let f = std::fs::File::open(target).unwrap();
    let len = f.metadata().unwrap().len();
    let mut head = vec![0u8; 34 * 512];
    f.read_exact_at(&mut head, 0).unwrap();
    let mut tail = vec![0u8; 33 * 512];
    f.read_exact_at(&mut tail, len - 33 * 512).unwrap();
    assert!(
        head.iter().chain(&tail).all(|&b| b == 0),
        "{} has a partition table left",
        target.display()
    );
    let out = sgdisk(&["-p"], target);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("USR-A"),
        "sgdisk still sees partitions: {text}"
    );
}

/// Events, recorded.
#[derive(Default)]
struct Recorder(Mutex<Vec<InstallEvent>>);

impl Recorder {
    fn event(&self, event: InstallEvent) {
        self.0.lock().unwrap().push(event)
    }

    fn events(self) -> Vec<InstallEvent> {
        self.0.into_inner().unwrap()
    }
}

#[test]
fn a_signed_image_installs_onto_a_larger_file_with_its_oem_config_and_gpt_at_the_end() {
    let fixture = Fixture::new();
    let target = fixture.root.join("disk.raw");
    let size = wellcar_disk::gpt::minimum_disk_size() + (64 << 20);
    std::fs::File::create_new(&target)
        .unwrap()
        .set_len(size)
        .unwrap();
    // zstd-compressed copy: decompressed while streaming.
    let copy = fixture.copy_image("zst");
    tools::run(
        Command::new(tools::require("zstd"))
            .args(["-q", "-1", "--rm"])
            .arg(&copy),
    );
    let zst = copy.with_extension("img.zst");
    assert!(zst.is_file());
    let ignition = br#"{"ignition":{"version":"3.4.0"}}"#.to_vec();
    let mut request = fixture.request(&target, ImageSource::File(zst.clone()));
    request.oem = OemSettings {
        ignition: Some(ignition.clone()),
        oem_id: Some("metal".into()),
        kernel_args: vec!["console=ttyS0,115200".into()],
    };
    let recorder = Recorder::default();
    let report = install(&request, &|e| recorder.event(e)).unwrap();
    assert_eq!(
        (report.version.as_str(), report.target_size),
        ("1.2.3", size)
    );
    let events = recorder.events();
    assert!(
        matches!(
            &events[0],
            InstallEvent::Verified { compression: Compression::Zstd, signed_by: Some(k), .. } if k.starts_with("release (")
        ),
        "{events:?}"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, InstallEvent::Writing { .. })));
    assert_eq!(events.last(), Some(&InstallEvent::Done));

    // sgdisk accepts the table, with the backup at the end of the larger target.
    let verify = sgdisk(&["-v"], &target);
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && text.contains("No problems found"),
        "{text}"
    );
    let print = String::from_utf8_lossy(&sgdisk(&["-p"], &target).stdout).into_owned();
    for label in [
        "EFI-SYSTEM",
        "BIOS-BOOT",
        "USR-A",
        "USR-B",
        "OEM",
        "OEM-CONFIG",
        "ROOT",
    ] {
        assert!(print.contains(label), "{label} missing: {print}");
    }
    let mut f = std::fs::File::open(&target).unwrap();
    let gpt = gptman::GPT::read_from(&mut f, 512).unwrap();
    assert_eq!(gpt.header.backup_lba, size / 512 - 1);
    let parts = wellcar_disk::read_gpt(&mut f, &target).unwrap();
    let part = |label: &str| parts.iter().find(|p| p.label == label).unwrap().clone();

    // veritysetup accepts USR-A against the manifest's root hash.
    let usr_a = part("USR-A");
    let mut usr = vec![0u8; USR_SIZE as usize];
    f.read_exact_at(&mut usr, usr_a.offset).unwrap();
    let usr_copy = fixture.root.join("usr-a.img");
    std::fs::write(&usr_copy, &usr).unwrap();
    tools::run(
        Command::new(tools::require("veritysetup"))
            .arg("verify")
            .arg(format!("--hash-offset={HASH_OFFSET}"))
            .arg(&usr_copy)
            .arg(&usr_copy)
            .arg(fixture.build.root_hash().to_string()),
    );

    // config.ign, the OEM id and the kernel argument are on the OEM partition.
    let oem = part("OEM");
    assert_eq!(
        oem::read_file(&target, oem.offset, "config.ign").unwrap(),
        Some(ignition)
    );
    let cfg = String::from_utf8(
        oem::read_file(&target, oem.offset, "grub.cfg")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(
        cfg.contains("set oem_id=\"metal\"") && !cfg.contains("qemu"),
        "{cfg}"
    );
    assert!(cfg.contains("$linux_append console=ttyS0,115200"), "{cfg}");
    assert_eq!(
        oem::read_file(&target, oem.offset, "oem-release").unwrap(),
        Some(b"ID=metal\n".to_vec())
    );
    let fsck = tools::output(Command::new("sh").arg("-c").arg(format!(
        "dd if={} bs=1M skip={} count={} status=none of={} && e2fsck -fn {}",
        target.display(),
        oem.offset >> 20,
        oem.size >> 20,
        fixture.root.join("oem-check.img").display(),
        fixture.root.join("oem-check.img").display()
    )));
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );

    // The MBR keeps the image's code area and covers the larger disk.
    let mut mbr = [0u8; 512];
    f.read_exact_at(&mut mbr, 0).unwrap();
    assert_eq!(mbr[446 + 4], 0xee);
    assert_eq!(
        u32::from_le_bytes(mbr[458..462].try_into().unwrap()) as u64,
        size / 512 - 1
    );
}

#[test]
fn bad_images_keys_and_targets_are_refused_and_leave_nothing_bootable() {
    let fixture = Fixture::new();
    let build = ImageSource::Build(fixture.build.dir.clone());

    // A wrong key: refused before the target is created.
    let target = fixture.root.join("wrong-key.raw");
    let mut request = fixture.request(&target, build.clone());
    let other = wellcar_test_support::build::signing_key();
    request.trusted_keys = Fixture::trusted(&other);
    let err = install(&request, &|_| {}).unwrap_err();
    assert!(
        matches!(err, InstallError::BadSignature { .. })
            && err.to_string().contains("no signature in")
            && err.to_string().contains("verifies with a trusted key"),
        "{err}"
    );
    assert!(!target.exists());

    // A too small target: refused by size, untouched.
    let small = fixture.root.join("small.raw");
    std::fs::File::create_new(&small)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let err = install(&fixture.request(&small, build.clone()), &|_| {}).unwrap_err();
    assert!(
        err.to_string().contains("is too small: 1073741824 bytes"),
        "{err}"
    );

    // A tampered image (one byte of USR-A flipped): refused after streaming, no GPT written.
    let tampered = fixture.copy_image("tampered");
    let usr_a = wellcar_disk::LAYOUT[2].number;
    let offset = {
        let mut f = std::fs::File::open(&tampered).unwrap();
        wellcar_disk::read_gpt(&mut f, &tampered)
            .unwrap()
            .into_iter()
            .find(|p| p.number == usr_a)
            .unwrap()
            .offset
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&tampered)
        .unwrap();
    f.write_all_at(b"X", offset + 4096).unwrap();
    drop(f);
    let target = fixture.root.join("tampered.raw");
    let err = install(
        &fixture.request(&target, ImageSource::File(tampered.clone())),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, InstallError::Tampered { .. })
            && err
                .to_string()
                .contains("does not match the signed manifest"),
        "{err}"
    );
    assert_not_bootable(&target);

    // A truncated image: refused with both sizes, no GPT.
    let truncated = fixture.copy_image("truncated");
    let full = std::fs::metadata(&truncated).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(full - (1 << 20))
        .unwrap();
    let err = install(
        &fixture.request(&target, ImageSource::File(truncated)),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "is truncated: {} bytes, the signed manifest says {full}",
            full - (1 << 20)
        )),
        "{err}"
    );
    assert_not_bootable(&target);

    // Unsigned: refused, unless --insecure (which still installs the intact image).
    std::fs::remove_file(fixture.build.path(wellcar_contract::IMAGE_SIGNATURES_FILE)).unwrap();
    let unsigned_target = fixture.root.join("unsigned.raw");
    let err = install(&fixture.request(&unsigned_target, build.clone()), &|_| {}).unwrap_err();
    assert!(err.to_string().contains("the image is unsigned"), "{err}");
    assert!(!unsigned_target.exists());
    let mut insecure = fixture.request(&unsigned_target, build);
    insecure.insecure = true;
    let recorder = Recorder::default();
    install(&insecure, &|e| recorder.event(e)).unwrap();
    assert!(matches!(
        &recorder.events()[0],
        InstallEvent::Verified {
            signed_by: None,
            ..
        }
    ));
    assert!(sgdisk(&["-v"], &unsigned_target).status.success());
}

#[test]
fn a_release_server_and_an_image_url_install_over_http_and_missing_or_tampered_ones_are_named() {
    let fixture = Fixture::new();
    // Flatcar's release layout on a plain web server: CHANNEL/VERSION/, here with the image
    // compressed (tried first) and the raw one absent.
    let www = fixture.root.join("www");
    let release = www.join("stable").join("current");
    std::fs::create_dir_all(&release).unwrap();
    for file in [
        wellcar_contract::IMAGE_MANIFEST_FILE,
        wellcar_contract::IMAGE_SIGNATURES_FILE,
    ] {
        std::fs::copy(fixture.build.path(file), release.join(file)).unwrap();
    }
    let disk_image = fixture.build.manifest.disk_image.clone();
    tools::run(
        Command::new(tools::require("zstd"))
            .args(["-q", "-1", "-o"])
            .arg(release.join(format!("{disk_image}.zst")))
            .arg(fixture.image()),
    );
    let server = wellcar_test_support::file_server::FileServer::start(&www);
    let target = fixture.root.join("from-server.raw");
    let source = ImageSource::Release {
        server: format!("{}/", server.url()),
        channel: "stable".into(),
        version: source::CURRENT_VERSION.into(),
    };
    let recorder = Recorder::default();
    let report = install(&fixture.request(&target, source), &|e| recorder.event(e)).unwrap();
    assert_eq!(report.version, "1.2.3");
    let image_path = format!("/stable/current/{disk_image}.zst");
    assert_eq!(server.statuses_for(&image_path), vec![200]);
    let events = recorder.events();
    assert!(
        matches!(&events[0], InstallEvent::Verified { compression: Compression::Zstd, image, .. } if image.to_string_lossy().ends_with(&image_path)),
        "{events:?}"
    );
    assert!(sgdisk(&["-v"], &target).status.success());

    // The same image by URL.
    let by_url = fixture.root.join("from-url.raw");
    let url = format!("{}{image_path}", server.url());
    install(&fixture.request(&by_url, ImageSource::Url(url)), &|_| {}).unwrap();
    assert!(sgdisk(&["-v"], &by_url).status.success());

    // A channel the server does not have: the manifest URL is named, nothing is created.
    let missing = fixture.root.join("missing.raw");
    let err = install(
        &fixture.request(
            &missing,
            ImageSource::Release {
                server: server.url(),
                channel: "beta".into(),
                version: "9.9.9".into(),
            },
        ),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("/beta/9.9.9/image-manifest.json (no such file, or HTTP 404)"),
        "{err}"
    );
    assert!(!missing.exists());

    // An unreachable server: the URL is named.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = install(
        &fixture.request(
            &missing,
            ImageSource::Url(format!("http://127.0.0.1:{port}/x/{disk_image}")),
        ),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "fetching http://127.0.0.1:{port}/x/image-manifest.json"
        )),
        "{err}"
    );

    // A tampered download: refused after streaming, the target keeps no partition table.
    let mut bytes = std::fs::read(release.join(format!("{disk_image}.zst"))).unwrap();
    let raw = zstd::decode_all(&bytes[..]).unwrap();
    let mut altered = raw.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 0xff;
    bytes = zstd::encode_all(&altered[..], 1).unwrap();
    std::fs::write(release.join(format!("{disk_image}.zst")), bytes).unwrap();
    let tampered = fixture.root.join("tampered-download.raw");
    let err = install(
        &fixture.request(
            &tampered,
            ImageSource::Release {
                server: server.url(),
                channel: "stable".into(),
                version: source::CURRENT_VERSION.into(),
            },
        ),
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(err, InstallError::Tampered { .. }), "{err}");
    assert_not_bootable(&tampered);
}

/// A block device that fails mid-write, as a USB stick that is pulled: a loop device over a
/// sparse file of the full size on a 96 MiB tmpfs, so the device's writes fail (ENOSPC in the
/// loop driver, EIO to the writer) once 96 MiB are written. The install stops with an I/O error
/// naming the device (at a write, or at the fsync after the stream: writes to a block device go
/// through the page cache), and the device has no partition table. Needs root (mount, losetup).
#[test]
fn a_device_that_fails_mid_write_is_named_and_left_without_a_partition_table() {
    let fixture = Fixture::new();
    let size = wellcar_disk::gpt::minimum_disk_size();
    let small = fixture.root.join("small");
    std::fs::create_dir(&small).unwrap();
    tools::run(
        Command::new(tools::require("mount"))
            .args(["-t", "tmpfs", "-o", "size=96m", "tmpfs"])
            .arg(&small),
    );
    struct Cleanup(PathBuf, Option<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(device) = &self.1 {
                let _ = Command::new("losetup").args(["-d", device]).status();
            }
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let mut cleanup = Cleanup(small.clone(), None);
    let backing = small.join("stick.img");
    std::fs::File::create_new(&backing)
        .unwrap()
        .set_len(size)
        .unwrap();
    let device = String::from_utf8(
        tools::run(
            Command::new(tools::require("losetup"))
                .args(["-f", "--show"])
                .arg(&backing),
        )
        .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    cleanup.1 = Some(device.clone());
    let device = PathBuf::from(device);

    let build = ImageSource::Build(fixture.build.dir.clone());
    let err = install(&fixture.request(&device, build), &|_| {}).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, InstallError::Io { path, .. } if path == &device)
            && (text.starts_with("writing to") || text.starts_with("syncing"))
            && text.contains(&device.display().to_string()),
        "{text}"
    );
    // No partition table at either end of what the device holds.
    assert_not_bootable(&backing);
}
