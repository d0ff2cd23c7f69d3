//! The benchmark's anchor: a plain Debian bookworm disk with Wellcar's kernel and packages,
//! booted the way Debian boots (GRUB for BIOS, initramfs-tools' initrd, `root=... ro`), cached
//! as `~/.cache/wellcar/bench/debian-<sha256 of the inputs>.qcow2`.
//!
//! Made without mounts or loop devices: `mmdebstrap` (the kernel's postinst runs
//! `update-initramfs`), files written into the tree, `mkfs.ext4 -d`, `sgdisk` (a BIOS boot
//! partition and the root), `grub-mkimage` core.img embedded as `wellcar build` does it.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use wellcar_image::boot_files::make_ext4;
use wellcar_image::definition::DebianSource;
use wellcar_image::disk::to_qcow2;
use wellcar_image::grub::embed_bios;
use wellcar_image::tools::{self, Tool, GRUB_MKIMAGE, GRUB_PC_DIR, MMDEBSTRAP, SYSTEMCTL};
use wellcar_image::usr_image::sparse_copy;

/// Bumped whenever the way the disk is made changes.
const FORMAT: &str = "wellcar-bench-debian-v1";
/// Partitioner.
pub const SGDISK: Tool = Tool {
    name: "sgdisk",
    package: "gdisk",
};
/// Filesystem label of the root (GRUB and the kernel find it by it).
const LABEL: &str = "debroot";
/// What a default Debian install adds for its initrd: initramfs-tools and its Recommends.
const INITRD_PACKAGES: &[&str] = &["initramfs-tools", "busybox", "zstd"];
const SECTOR: u64 = 512;
/// GRUB menu timeout, seconds.
pub const GRUB_TIMEOUT: u32 = 0;
/// BIOS boot partition: sectors 2048..4095 (1 MiB); the root starts at 2 MiB.
const BIOS_BOOT_START: u64 = 2048;
const ROOT_START: u64 = 4096;
/// GRUB modules built into core.img (nothing is loaded from /boot/grub/i386-pc).
const GRUB_MODULES: &[&str] = &[
    "biosdisk",
    "part_gpt",
    "ext2",
    "search",
    "search_label",
    "normal",
    "linux",
    "echo",
    "test",
    "configfile",
    "serial",
    "terminal",
    "gzio",
];

/// What goes into the Debian disk.
#[derive(Debug)]
pub struct Spec<'a> {
    /// Wellcar's `[debian]` section: suite, apt sources, packages, dpkg excludes.
    pub source: &'a DebianSource,
    /// The systemd-networkd `.network` file Wellcar ships (DHCP).
    pub network: String,
    /// The ssh public key authorized for root.
    pub authorized_key: String,
    /// Console arguments of the kernel command line (Wellcar's).
    pub console: String,
    /// Size of the virtual disk (Wellcar's).
    pub disk_size: u64,
}

impl Spec<'_> {
    fn packages(&self) -> Vec<String> {
        let mut p: Vec<String> = self.source.packages.clone();
        p.extend(INITRD_PACKAGES.iter().map(|s| s.to_string()));
        p.sort();
        p.dedup();
        p
    }

    /// Debian's grub.cfg as `update-grub` would write it for `GRUB_TERMINAL="console serial"`,
    /// `GRUB_CMDLINE_LINUX="<console>"`, the default `GRUB_CMDLINE_LINUX_DEFAULT="quiet"` and
    /// `GRUB_TIMEOUT=0` (a cloud image's: the anchor spends no time in the menu, whatever
    /// Wellcar's menu does).
    fn grub_cfg(&self, kernel_version: &str) -> String {
        format!(
            "set timeout={GRUB_TIMEOUT}\n\
             serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1\n\
             terminal_input serial console\n\
             terminal_output serial console\n\
             menuentry 'Debian GNU/Linux' {{\n\
             \tlinux /boot/vmlinuz-{k} root=LABEL={LABEL} ro {c} quiet\n\
             \tinitrd /boot/initrd.img-{k}\n\
             }}\n",
            k = kernel_version,
            c = self.console,
        )
    }

    fn fstab(&self) -> String {
        format!("LABEL={LABEL} / ext4 errors=remount-ro 0 1\n")
    }
}

/// Where the benchmark keeps its files: `$XDG_CACHE_HOME/wellcar/bench` or
/// `~/.cache/wellcar/bench`.
pub fn cache_dir() -> PathBuf {
    wellcar_image::rootfs::cache_root()
        .parent()
        .expect("the rootfs cache is inside wellcar's cache")
        .join("bench")
}

/// The cached Debian disk for `spec`, built first when it is not cached.
pub fn ensure(spec: &Spec<'_>) -> Result<PathBuf> {
    let key = cache_key(spec)?;
    let dir = cache_dir();
    let disk = dir.join(format!("debian-{}.qcow2", &key[..16]));
    if disk.is_file() {
        eprintln!("bench: Debian disk (cached): {}", disk.display());
        return Ok(disk);
    }
    if !is_root() {
        bail!("building the Debian disk needs root (mmdebstrap writes root-owned files)");
    }
    let work = dir.join(format!(
        "debian-{}.partial-{}",
        &key[..16],
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    eprintln!("bench: building the Debian disk in {}", work.display());
    let result = build(spec, &work, &disk);
    let _ = fs::remove_dir_all(&work);
    result.map(|()| disk)
}

fn build(spec: &Spec<'_>, work: &Path, disk: &Path) -> Result<()> {
    let tree = work.join("tree");
    mmdebstrap(spec, &tree)?;
    let kernel = kernel_version(&tree)?;
    configure(spec, &tree, &kernel)?;

    let raw = work.join("disk.raw");
    let root_sectors = partition(&raw, spec.disk_size)?;
    let root = work.join("root.ext4");
    make_ext4(&root, root_sectors * SECTOR, LABEL, Some(&tree))?;
    fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    let mut out = File::options()
        .read(true)
        .write(true)
        .open(&raw)
        .with_context(|| format!("opening {}", raw.display()))?;
    let mut src = File::open(&root).with_context(|| format!("opening {}", root.display()))?;
    sparse_copy(&mut src, &root, &mut out, &raw, ROOT_START * SECTOR)?;
    install_grub(work, &mut out)?;
    out.sync_all()?;
    drop(out);

    let partial = work.join("disk.qcow2");
    to_qcow2(&raw, &partial)?;
    fs::rename(&partial, disk).with_context(|| format!("publishing {}", disk.display()))?;
    eprintln!("bench: Debian disk built: {}", disk.display());
    remove_other_disks(disk);
    Ok(())
}

/// Disks made from other inputs are stale: only the newest one is kept.
fn remove_other_disks(keep: &Path) {
    let Some(dir) = keep.parent() else { return };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("debian-") && name.ends_with(".qcow2") && e.path() != keep {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn mmdebstrap(spec: &Spec<'_>, tree: &Path) -> Result<()> {
    let mut cmd = MMDEBSTRAP.command()?;
    cmd.arg("--variant=essential")
        .arg(format!("--include={}", spec.packages().join(",")));
    for glob in &spec.source.path_exclude {
        cmd.arg(format!("--dpkgopt=path-exclude={glob}"));
    }
    // fstab before the packages, so the initrd the kernel's postinst makes knows the root.
    cmd.arg(format!(
        "--setup-hook=mkdir -p \"$1/etc\" && printf '%s' '{}' > \"$1/etc/fstab\"",
        spec.fstab()
    ))
    .arg(&spec.source.suite)
    .arg(tree)
    .arg(&spec.source.sources);
    tools::run(&mut cmd)?;
    Ok(())
}

/// The one kernel in the tree's /boot, which must have its initrd.
fn kernel_version(tree: &Path) -> Result<String> {
    let boot = tree.join("boot");
    let mut names: Vec<String> = fs::read_dir(&boot)
        .with_context(|| format!("listing {}", boot.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let versions: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix("vmlinuz-"))
        .collect();
    let [version] = versions[..] else {
        bail!("expected one kernel in {}: {names:?}", boot.display());
    };
    if !names.iter().any(|n| n == &format!("initrd.img-{version}")) {
        bail!(
            "no initrd.img-{version} in {} ({names:?}): did the kernel's postinst run update-initramfs?",
            boot.display()
        );
    }
    Ok(version.to_string())
}

/// Networking (networkd + DHCP, as Wellcar), root's ssh key, hostname, GRUB's config.
fn configure(spec: &Spec<'_>, tree: &Path, kernel: &str) -> Result<()> {
    write(&tree.join("etc/hostname"), "debian\n", 0o644)?;
    write(
        &tree.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    )?;
    write(
        &tree.join("etc/systemd/network/90-dhcp.network"),
        &spec.network,
        0o644,
    )?;
    let ssh = tree.join("root/.ssh");
    fs::create_dir_all(&ssh)?;
    fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700))?;
    write(
        &ssh.join("authorized_keys"),
        &format!("{}\n", spec.authorized_key.trim()),
        0o600,
    )?;
    write(
        &tree.join("boot/grub/grub.cfg"),
        &spec.grub_cfg(kernel),
        0o644,
    )?;
    tools::run(
        SYSTEMCTL
            .command()?
            .arg(format!("--root={}", tree.display()))
            .args(["enable", "systemd-networkd.service"]),
    )?;
    Ok(())
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Makes the raw disk with its GPT (BIOS boot, root); returns the root's size in sectors.
fn partition(raw: &Path, size: u64) -> Result<u64> {
    let _ = fs::remove_file(raw);
    File::create(raw)
        .and_then(|f| f.set_len(size))
        .with_context(|| format!("creating {}", raw.display()))?;
    // The backup GPT takes the last 33 sectors; the root ends on a 1 MiB boundary before it.
    let last = (size / SECTOR - 34) / 2048 * 2048 - 1;
    tools::run(
        SGDISK
            .command()?
            .arg(format!("--new=1:{BIOS_BOOT_START}:{}", ROOT_START - 1))
            .args(["--typecode=1:EF02", "--change-name=1:BIOS-BOOT"])
            .arg(format!("--new=2:{ROOT_START}:{last}"))
            .args(["--typecode=2:8300", &format!("--change-name=2:{LABEL}")])
            .arg(raw),
    )?;
    Ok(last - ROOT_START + 1)
}

/// GRUB for BIOS: core.img (finds the root by label, reads /boot/grub/grub.cfg) in the BIOS
/// boot partition, boot.img in the MBR.
fn install_grub(work: &Path, disk: &mut File) -> Result<()> {
    let dir = tools::require_dir(GRUB_PC_DIR)?;
    let early = work.join("grub-early.cfg");
    fs::write(
        &early,
        format!("search --no-floppy --label {LABEL} --set root\nset prefix=($root)/boot/grub\n"),
    )?;
    let core_path = work.join("core.img");
    tools::run(
        GRUB_MKIMAGE
            .command()?
            .args(["-O", "i386-pc", "-d"])
            .arg(&dir)
            .arg("-o")
            .arg(&core_path)
            .arg("-c")
            .arg(&early)
            .args(["-p", "/boot/grub"])
            .args(GRUB_MODULES),
    )?;
    let mut core = fs::read(&core_path)?;
    core.resize(core.len().div_ceil(512) * 512, 0);
    if core.len() as u64 > (ROOT_START - BIOS_BOOT_START) * SECTOR {
        bail!(
            "core.img is {} bytes, the BIOS boot partition holds 1 MiB",
            core.len()
        );
    }
    let boot_img = fs::read(dir.join("boot.img"))?;
    let mut mbr = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut mbr)?;
    embed_bios(&boot_img, &mut mbr, &mut core, BIOS_BOOT_START)?;
    disk.seek(SeekFrom::Start(0))?;
    disk.write_all(&mbr)?;
    disk.seek(SeekFrom::Start(BIOS_BOOT_START * SECTOR))?;
    disk.write_all(&core)?;
    Ok(())
}

/// sha256 over everything that changes the disk.
fn cache_key(spec: &Spec<'_>) -> Result<String> {
    let sources = fs::read(&spec.source.sources)
        .with_context(|| format!("reading apt sources {}", spec.source.sources.display()))?;
    let version = |tool: Tool| -> Result<Vec<u8>> {
        Ok(tools::run(tool.command()?.arg("--version"))?.stdout)
    };
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &[u8]| {
        h.update(name.as_bytes());
        h.update((value.len() as u64).to_le_bytes());
        h.update(value);
    };
    field("format", FORMAT.as_bytes());
    field("suite", spec.source.suite.as_bytes());
    field("packages", spec.packages().join(",").as_bytes());
    field("exclude", spec.source.path_exclude.join(",").as_bytes());
    field("sources", &sources);
    field("mmdebstrap", &version(MMDEBSTRAP)?);
    field("grub-mkimage", &version(GRUB_MKIMAGE)?);
    field("network", spec.network.as_bytes());
    field("key", spec.authorized_key.trim().as_bytes());
    field("grub.cfg", spec.grub_cfg("KERNEL").as_bytes());
    field("fstab", spec.fstab().as_bytes());
    field("size", &spec.disk_size.to_le_bytes());
    Ok(hex::encode(h.finalize()))
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
