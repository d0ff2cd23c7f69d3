//! Wellcar's `/init`: the only program in the initramfs.
//!
//! Steps (each timed in the kernel log, so `dmesg | grep wellcar-init` profiles a boot):
//! 1. `early-setup`: mount `/proc`, `/sys`, `/dev` (devtmpfs), `/run`; parse the command line
//!    ([`cmdline`]); make a kernel panic (e.g. dm-verity corruption) reboot after the delay.
//! 2. `load-modules`: `finit_module` every module the initramfs carries ([`kmod`]).
//! 3. `find-disk`: wait for the USR and ROOT partitions, reading GPTs ourselves ([`disk`]).
//! 4. `mount-root`, `prepare-root`: ROOT at `/sysroot`, its skeleton ([`sysroot`]).
//! 5. `open-usr`, `mount-usr`: dm-verity mapping of the slot ([`verity`]), EROFS read-only
//!    at `/sysroot/usr`; `mount-etc`: the `/etc` overlay.
//! 6. First boot only: `ignition` (config from fw_cfg or the OEM partition), `grow-root`
//!    ([`grow`]), `first-boot-flag` (removed last, only after all of that succeeded).
//! 7. `switch-root`: move the API mounts, free the initramfs, chroot, exec systemd.
//!
//! A failure prints a report on the console naming the step and the device, file or URL
//! ([`wellcar_init::failure`]). A failed first-boot provisioning then stops in the emergency
//! shell ([`emergency`]) with the first-boot flag kept, unless `wellcar.init.reboot_delay` was
//! given; any other failure reboots after `wellcar.init.reboot_delay` seconds (default 60), so
//! GRUB's tries counter can fall back to the other slot.

mod configdrive;
mod disk;
mod disk_guid;
mod emergency;
mod firstboot;
mod grow;
mod kmod;
mod live;
mod log;
mod provision;
mod storage_stage;
mod switchroot;
mod sys;
mod sysroot;
mod verity;

use std::path::Path;
use std::time::Duration;

use rustix::mount::MountFlags;
use wellcar_contract::{module_list, FW_CFG_BY_NAME};

use disk::Found;
use log::Log;
use wellcar_init::cmdline::{self, BootParams, FirstBoot, UsrSource};
use wellcar_init::failure;

/// Where the new root is assembled.
const SYSROOT: &str = "/sysroot";
/// sysfs block class.
const CLASS_BLOCK: &str = "/sys/class/block";

/// A failed boot step: `step` names it, `source` says what and where.
#[derive(Debug)]
pub struct BootError {
    /// The step that failed.
    pub step: &'static str,
    /// What went wrong.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for BootError {
    /// The one console line: step, then the whole error chain.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {} failed: {}", self.step, self.source)?;
        let mut cause = self.source.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

fn main() {
    if rustix::process::getpid() != rustix::process::Pid::INIT {
        eprintln!(
            "wellcar-init: must run as PID 1 from the initramfs; refusing to touch this system"
        );
        std::process::exit(2);
    }
    let mut log = Log::new();
    let mut reboot = RebootPolicy {
        delay: cmdline::DEFAULT_REBOOT_DELAY,
        requested: false,
    };
    let err = boot(&mut log, &mut reboot);
    fail(&mut log, &err, reboot);
}

/// `wellcar.init.reboot_delay`: its value and whether the command line gave it.
#[derive(Debug, Clone, Copy)]
struct RebootPolicy {
    delay: Duration,
    requested: bool,
}

/// Reports the failure, then stops in the emergency shell or reboots after the delay
/// ([`failure::decide`]). Never returns (PID 1 must not exit).
fn fail(log: &mut Log, err: &BootError, reboot: RebootPolicy) -> ! {
    let provisioning = err.source.downcast_ref::<provision::ProvisionError>();
    let kind = match provisioning {
        Some(_) => failure::FailureKind::Provisioning,
        None => failure::FailureKind::Boot,
    };
    let action = failure::decide(kind, reboot.delay, reboot.requested);
    let report = failure::FailureReport {
        step: err.step.to_string(),
        phase: provisioning.map(|p| p.phase),
        source: provisioning.and_then(|p| p.source_name.clone()),
        http_status: provisioning.and_then(|p| p.http_status),
        reason: failure::chain(err.source.as_ref()),
        action,
    };
    let delay = match action {
        failure::Action::EmergencyShell => emergency::stop(log, &report.lines(), &report.render()),
        failure::Action::Reboot(delay) => delay,
    };
    for line in report.lines() {
        log.console(&line);
    }
    let path = Path::new(failure::REPORT_PATH);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(path, report.render());
    std::thread::sleep(delay);
    rustix::fs::sync();
    let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Mounts the API filesystems the rest of the boot needs.
fn early_mounts() -> Result<(), sysroot::SysrootError> {
    let nosuid_nodev_noexec = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    sysroot::mount("proc", Path::new("/proc"), "proc", nosuid_nodev_noexec, "")?;
    sysroot::mount("sysfs", Path::new("/sys"), "sysfs", nosuid_nodev_noexec, "")?;
    match sysroot::mount(
        "devtmpfs",
        Path::new("/dev"),
        "devtmpfs",
        MountFlags::NOSUID,
        "mode=0755",
    ) {
        // Already mounted by the kernel (CONFIG_DEVTMPFS_MOUNT).
        Err(sysroot::SysrootError::Mount { source, .. })
            if source.raw_os_error() == Some(libc::EBUSY) => {}
        other => other?,
    }
    sysroot::mount(
        "tmpfs",
        Path::new("/run"),
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        // systemd's own options for /run: a fifth of memory at most, not tmpfs's half.
        "mode=0755,size=20%,nr_inodes=800k",
    )?;
    Ok(())
}

/// `/dev/kmsg` lets a process write 10 lines per 5 s by default; lift that for `/init`'s
/// timing lines and return the previous setting, to restore before systemd starts.
fn unlimit_kmsg() -> Option<String> {
    let path = "/proc/sys/kernel/printk_devkmsg";
    let previous = std::fs::read_to_string(path).ok()?.trim().to_string();
    // Fails when the command line fixed it (printk.devkmsg=); then there is nothing to do.
    std::fs::write(path, "on\n").ok()?;
    Some(previous)
}

/// Makes a kernel panic reboot after `delay` unless the command line chose otherwise.
fn reboot_on_panic(delay: Duration) -> std::io::Result<()> {
    let path = "/proc/sys/kernel/panic";
    if std::fs::read_to_string(path)?.trim() == "0" {
        std::fs::write(path, format!("{}\n", delay.as_secs().max(1)))?;
    }
    Ok(())
}

/// Runs the boot; returns only on failure.
fn boot(log: &mut Log, reboot: &mut RebootPolicy) -> BootError {
    match boot_steps(log, reboot) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn boot_steps(
    log: &mut Log,
    reboot: &mut RebootPolicy,
) -> Result<std::convert::Infallible, BootError> {
    let mut kmsg_setting = None;
    let params = log.step("early-setup", |log| {
        early_mounts()?;
        kmsg_setting = unlimit_kmsg();
        log.open_kmsg();
        let text = std::fs::read_to_string("/proc/cmdline")
            .map_err(|e| format!("reading /proc/cmdline: {e}"))?;
        // Even if the rest is invalid, honour the reboot delay the user asked for.
        reboot.delay = BootParams::reboot_delay_of(&text);
        let params = BootParams::parse(&text)?;
        reboot.delay = params.reboot_delay;
        reboot.requested = params.reboot_delay_requested;
        reboot_on_panic(params.reboot_delay)
            .map_err(|e| format!("setting /proc/sys/kernel/panic: {e}"))?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(params)
    })?;

    log.step("load-modules", |log| {
        let report = kmod::load_all(
            Path::new(module_list::LOAD_LIST),
            kmod::Pass::Boot,
            params.module_workers,
        )?;
        log.info(&format!(
            "modules: {} loaded, {} already loaded, no device for {:?}; slowest {:?}",
            report.loaded, report.already, report.no_device, report.slowest
        ));
        Ok::<_, kmod::ModuleError>(())
    })?;

    let sysroot = Path::new(SYSROOT);
    // The live system (ISO, PXE) has no disk: /usr comes from the initramfs, root is a tmpfs.
    let disk = match &params.usr {
        UsrSource::Live { .. } => {
            log.step("load-live-modules", |_| {
                kmod::load_all(
                    Path::new(module_list::LOAD_LIST),
                    kmod::Pass::Live,
                    params.module_workers,
                )
            })?;
            None
        }
        UsrSource::Verity { device, .. } | UsrSource::Plain(device) => {
            Some(log.step("find-disk", |log| find_disk(log, &params, device))?)
        }
    };

    log.step("mount-root", |_| match &disk {
        Some((_, root_found)) => {
            let (flags, data) = sysroot::split_flags(&params.root_flags);
            sysroot::mount(
                &root_found.device().display().to_string(),
                sysroot,
                &params.root_fstype,
                flags,
                &data,
            )
            .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
        }
        None => live::mount_root(sysroot).map_err(Into::into),
    })?;

    if params.first_boot.is_some() && disk.is_some() {
        // flatcar-reset's selective OS reset: before anything on ROOT is created or used.
        log.step("os-reset", |log| {
            if let Some(done) = wellcar_init::os_reset::reset(sysroot)? {
                log.info(&format!(
                    "OS reset: deleted {} entries of ROOT, kept {}",
                    done.deleted.len(),
                    done.kept.len()
                ));
            }
            Ok::<_, wellcar_init::os_reset::ResetError>(())
        })?;
    }

    log.step("prepare-root", |log| {
        let created = sysroot::build_skeleton(sysroot)?;
        if !created.is_empty() {
            log.info(&format!("created on ROOT: {}", created.join(" ")));
        }
        Ok::<_, sysroot::SysrootError>(())
    })?;

    let usr_device = log.step("open-usr", |log| {
        let dev = Path::new("/dev");
        let device = match (&params.usr, &disk) {
            (
                UsrSource::Verity {
                    root_hash, name, ..
                },
                Some((usr_found, _)),
            ) => verity::open_verity(usr_found.device(), name, root_hash, dev)?,
            (UsrSource::Live { root_hash, name }, _) => {
                let slot = live::assemble_slot(Path::new("/"))?;
                let device = live::attach_read_only(&slot, dev)?;
                log.info(&format!(
                    "live /usr: {} on {}",
                    slot.display(),
                    device.display()
                ));
                verity::open_verity(&device, name, root_hash, dev)?
            }
            (_, Some((usr_found, _))) => usr_found.device().to_path_buf(),
            (_, None) => unreachable!("only the live system has no disk"),
        };
        log.info(&format!("/usr from {}", device.display()));
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(device)
    })?;

    log.step("mount-usr", |_| {
        let (mut flags, data) = sysroot::split_flags(&params.usr_flags);
        flags |= MountFlags::RDONLY;
        let data = sysroot::usr_mount_data(&params.usr_fstype, data);
        sysroot::mount(
            &usr_device.display().to_string(),
            &sysroot.join("usr"),
            &params.usr_fstype,
            flags,
            &data,
        )
    })?;

    log.step("mount-etc", |_| {
        sysroot::mount_etc_overlay(sysroot)?;
        sysroot::ensure_machine_id(sysroot)
    })?;

    match (&disk, params.first_boot) {
        (Some((_, root_found)), Some(first_boot)) => {
            first_boot_steps(log, &params, first_boot, root_found)?;
        }
        // The live system keeps nothing: it provisions on every boot, from the platform's
        // sources (no OEM partition).
        (None, _) => {
            let network = log.step("ignition", |log| provision::provision(log, None))?;
            if let Some(network) = network {
                log.step("network-down", |_| network.teardown())?;
            }
        }
        (Some(_), None) => {}
    }

    let init = log.step("pick-init", |_| {
        switchroot::pick_init(sysroot, params.init.as_deref())
    })?;
    log.info(&format!(
        "switching root, exec {init}; /init ran {:.1} ms",
        log.elapsed().as_secs_f64() * 1000.0
    ));
    if let Some(previous) = kmsg_setting {
        let _ = std::fs::write("/proc/sys/kernel/printk_devkmsg", format!("{previous}\n"));
    }
    Err(BootError {
        step: "switch-root",
        source: Box::new(switchroot::switch_root(sysroot, &init)),
    })
}

/// Waits for the USR partition (`usr_spec`) and ROOT; returns them in that order.
fn find_disk(
    log: &mut Log,
    params: &BootParams,
    usr_spec: &cmdline::DeviceSpec,
) -> Result<(Found, Found), Box<dyn std::error::Error + Send + Sync>> {
    let specs = [usr_spec, &params.root];
    let class_block = Path::new(CLASS_BLOCK);
    let dev = Path::new("/dev");
    // virtio-blk disks appear while their module loads (NVMe is built in and probes on
    // its own); only if the disk is not there yet is the SCSI stack worth loading.
    let found = match disk::wait_for(&specs, class_block, dev, Duration::ZERO, Duration::ZERO) {
        Ok(found) => found,
        Err(_) => {
            let report = kmod::load_all(
                Path::new(module_list::LOAD_LIST),
                kmod::Pass::Scsi,
                params.module_workers,
            )?;
            log.info(&format!(
                "disk not found yet, loaded {} SCSI modules",
                report.loaded
            ));
            disk::wait_for(
                &specs,
                class_block,
                dev,
                params.disk_timeout,
                Duration::from_millis(10),
            )?
        }
    };
    let [usr, root]: [Found; 2] = found.try_into().expect("two specs give two results");
    log.info(&format!(
        "usr {} is {}, root {} is {}",
        usr_spec,
        usr.device().display(),
        params.root,
        root.device().display()
    ));
    Ok((usr, root))
}

/// A partition of the boot disk found by GPT label.
fn sibling(root: &Found, label: &str) -> Option<disk::Partition> {
    let Found::Partition(root) = root else {
        return None;
    };
    disk::scan(Path::new(CLASS_BLOCK), Path::new("/dev"))
        .partitions
        .into_iter()
        .find(|p| p.disk == root.disk && p.location.label == label)
}

fn first_boot_steps(
    log: &mut Log,
    params: &BootParams,
    first_boot: FirstBoot,
    root_found: &Found,
) -> Result<(), BootError> {
    log.step("disk-guid", |log| disk_guid::make_unique(log, root_found))?;
    log.step("load-first-boot-modules", |_| {
        kmod::load_all(
            Path::new(module_list::LOAD_LIST),
            kmod::Pass::FirstBoot,
            params.module_workers,
        )
    })?;
    let oem = sibling(root_found, "OEM").map(|p| p.device);
    let network = log.step("ignition", |log| provision::provision(log, oem.as_deref()))?;
    if let Some(network) = network {
        // Clean links for systemd-networkd after switch root.
        log.step("network-down", |_| network.teardown())?;
    }

    log.step("grow-root", |log| {
        let Found::Partition(root) = root_found else {
            log.info("ROOT given as a device path, not growing it");
            return Ok(());
        };
        let report = grow::grow_root(root, Path::new(SYSROOT), Path::new(CLASS_BLOCK))?;
        log.info(&format!(
            "ROOT is {} MiB, ext4 {} -> {} blocks",
            report.partition_size >> 20,
            report.fs_blocks.0,
            report.fs_blocks.1
        ));
        Ok::<_, grow::GrowError>(())
    })?;

    if first_boot == FirstBoot::Detected {
        log.step("first-boot-flag", |log| {
            let esp = sibling(root_found, "EFI-SYSTEM").ok_or_else(|| {
                format!(
                    "no EFI-SYSTEM partition next to ROOT ({}) to remove the first-boot flag from",
                    root_found.device().display()
                )
            })?;
            let removed = firstboot::remove_flag(&esp.device, Path::new("/mnt/esp"))?;
            if removed.is_empty() {
                log.info("first-boot flag was already gone from the ESP");
            } else {
                log.info(&format!("removed {} from the ESP", removed.join(", ")));
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })?;
    }
    Ok(())
}
