//! Every platform image made from one small raw image laid out like a build's (the real GPT,
//! sparse, with an ext4 OEM partition), checked with the tools that read each format.

use std::process::Command;

use super::*;

fn tool(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?} (qemu-utils, tar, e2fsprogs): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A raw image with the Wellcar GPT and a QEMU OEM partition.
fn raw_image(dir: &Path) -> (PathBuf, u64) {
    let raw = dir.join("wellcar.img");
    let size = wellcar_disk::gpt::minimum_disk_size();
    let mut f = std::fs::File::create_new(&raw).unwrap();
    f.set_len(size).unwrap();
    let parts = wellcar_disk::write_layout(&mut f, size, &raw).unwrap();
    drop(f);
    let oem = parts.iter().find(|p| p.label == "OEM").unwrap();
    tool(
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-L", "OEM"])
            .arg("-E")
            .arg(format!("offset={}", oem.offset))
            .arg(&raw)
            .arg(format!("{}k", oem.size / 1024)),
    );
    assert_eq!(
        std::fs::metadata(&raw).unwrap().len(),
        size,
        "mke2fs kept the size"
    );
    (raw, oem.offset)
}

fn info(path: &Path) -> serde_json::Value {
    serde_json::from_str(&tool(
        Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(path),
    ))
    .unwrap()
}

#[test]
fn every_platform_gets_its_format_and_oem_settings() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, oem_offset) = raw_image(dir.path());
    let size = std::fs::metadata(&raw).unwrap().len();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for platform in Platform::ALL {
        let image = write_platform_image(&raw, platform, &out).unwrap();
        assert_eq!(image, out.join(platform.file_name()));
        match platform {
            Platform::Qemu | Platform::Openstack => {
                let info = info(&image);
                assert_eq!(info["format"], "qcow2", "{platform:?}");
                assert_eq!(info["virtual-size"], size);
            }
            Platform::Metal | Platform::Aws => {
                assert_eq!(std::fs::metadata(&image).unwrap().len(), size);
                let cfg = wellcar_install::oem::read_file(&image, oem_offset, "grub.cfg")
                    .unwrap()
                    .unwrap();
                let cfg = String::from_utf8(cfg).unwrap();
                assert!(
                    cfg.contains(&format!("set oem_id=\"{}\"", platform.id())),
                    "{cfg}"
                );
                let release = wellcar_install::oem::read_file(&image, oem_offset, "oem-release")
                    .unwrap()
                    .unwrap();
                assert!(release.starts_with(format!("ID={}\n", platform.id()).as_bytes()));
            }
            Platform::Azure => {
                // Fixed VHD: the data, then a 512-byte footer ("conectix", qemu-img probes the
                // file as raw, so its format is given).
                assert_eq!(std::fs::metadata(&image).unwrap().len(), size + 512);
                let mut footer = [0u8; 8];
                std::os::unix::fs::FileExt::read_exact_at(
                    &std::fs::File::open(&image).unwrap(),
                    &mut footer,
                    size,
                )
                .unwrap();
                assert_eq!(&footer, b"conectix");
                let info: serde_json::Value = serde_json::from_str(&tool(
                    Command::new("qemu-img")
                        .args(["info", "-f", "vpc", "--output=json"])
                        .arg(&image),
                ))
                .unwrap();
                assert_eq!(info["virtual-size"], size);
            }
            Platform::Vmware => {
                let list = tool(Command::new("tar").arg("-tf").arg(&image));
                assert_eq!(
                    list.lines().collect::<Vec<_>>(),
                    ["wellcar_vmware.ovf", "wellcar_vmware-disk1.vmdk"]
                );
                let x = dir.path().join("ova");
                std::fs::create_dir(&x).unwrap();
                tool(Command::new("tar").arg("-xf").arg(&image).arg("-C").arg(&x));
                let vmdk = x.join("wellcar_vmware-disk1.vmdk");
                let info = info(&vmdk);
                assert_eq!(info["format"], "vmdk");
                assert_eq!(info["virtual-size"], size);
                assert_eq!(
                    info["format-specific"]["data"]["create-type"],
                    "streamOptimized"
                );
                let ovf = std::fs::read_to_string(x.join("wellcar_vmware.ovf")).unwrap();
                let vmdk_len = std::fs::metadata(&vmdk).unwrap().len();
                assert!(ovf.contains(&format!("ovf:size=\"{vmdk_len}\"")), "{ovf}");
                assert!(ovf.contains(&format!("ovf:capacity=\"{size}\"")), "{ovf}");
            }
            Platform::Gcp => {
                let list = tool(Command::new("tar").arg("-tzf").arg(&image));
                assert_eq!(list, "disk.raw\n");
            }
        }
    }
    // Nothing but the images is left in the output directory.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), Platform::ALL.len(), "{names:?}");
    let err = "vbox".parse::<Platform>().unwrap_err();
    assert!(
        err.to_string().contains("unknown platform \"vbox\""),
        "{err}"
    );
}
