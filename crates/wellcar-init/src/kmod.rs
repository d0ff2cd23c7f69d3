//! Loading the kernel modules the initramfs carries.
//!
//! Contract: [`load_all`] reads the load list written by `wellcar-initramfs` (at
//! `wellcar_contract::module_list::LOAD_LIST`, in its format: one module per line, its absolute
//! path, then the names of the listed modules it depends on; dependencies come first) and
//! loads the modules with `finit_module`, several at a time: a module starts
//! as soon as every dependency it names has finished (a dependency not in the list counts as
//! present: built in, or loaded by an earlier pass). A module that is already loaded
//! (`EEXIST`) is fine; one whose hardware is absent (`ENODEV`) is reported back but not an
//! error, so one list serves virtio, NVMe and SCSI machines. Anything else stops the loading
//! with an error naming the module file.
//!
//! [`Pass::Boot`] loads everything but [`FIRST_BOOT_ONLY`] (vfat for the ESP flag, fw_cfg for
//! the Ignition config) and [`SCSI_FALLBACK`] (the SCSI stack, needed only when the boot disk
//! is not a virtio-blk or NVMe disk); [`Pass::FirstBoot`] and [`Pass::Scsi`] load those. Both
//! [`Pass::Live`] (the live system, `wellcar.live`) loads [`LIVE_ONLY`] and
//! [`FIRST_BOOT_ONLY`]. The lists are `wellcar_contract::module_list`'s, next to the builder's list of wanted modules.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use wellcar_contract::module_list::{
    ListedModule as Listed, FIRST_BOOT_ONLY, LIVE_ONLY, SCSI_FALLBACK,
};

/// Which modules a [`load_all`] call loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Every boot: all but [`FIRST_BOOT_ONLY`], [`LIVE_ONLY`] and [`SCSI_FALLBACK`].
    Boot,
    /// The live system: [`LIVE_ONLY`] and [`FIRST_BOOT_ONLY`].
    Live,
    /// First boot: only [`FIRST_BOOT_ONLY`].
    FirstBoot,
    /// Boot disk not found: only [`SCSI_FALLBACK`].
    Scsi,
}

impl Pass {
    fn includes(self, name: &str) -> bool {
        let first_boot = FIRST_BOOT_ONLY.contains(&name);
        let scsi = SCSI_FALLBACK.contains(&name);
        let live = LIVE_ONLY.contains(&name);
        match self {
            Pass::Boot => !first_boot && !scsi && !live,
            Pass::Live => first_boot || live,
            Pass::FirstBoot => first_boot,
            Pass::Scsi => scsi,
        }
    }
}

/// A module could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("loading module {path}")]
pub struct ModuleError {
    /// The module file (or the load list itself).
    pub path: PathBuf,
    /// The kernel's error.
    #[source]
    pub source: std::io::Error,
}

/// What [`load_all`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Modules loaded now.
    pub loaded: usize,
    /// Modules that were already in the kernel.
    pub already: usize,
    /// Modules that found no device (`ENODEV`), by path.
    pub no_device: Vec<String>,
    /// The slowest loads (module name, time), slowest first, at most three.
    pub slowest: Vec<(String, Duration)>,
}

fn parse_list(text: &str, pass: Pass) -> Vec<Listed> {
    wellcar_contract::module_list::parse(text)
        .filter(|m| pass.includes(&m.name))
        .collect()
}

/// Outcome of one module load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// Inserted now.
    New,
    /// Was already in the kernel.
    Already,
    /// Its driver found no device.
    NoDevice,
}

/// `finit_module` on the file at `path`.
fn finit(path: &str) -> std::io::Result<Loaded> {
    let file = std::fs::File::open(path)?;
    match rustix::system::finit_module(&file, c"", 0) {
        Ok(()) => Ok(Loaded::New),
        Err(rustix::io::Errno::EXIST) => Ok(Loaded::Already),
        Err(rustix::io::Errno::NODEV) => Ok(Loaded::NoDevice),
        Err(e) => Err(e.into()),
    }
}

/// Loads the modules of `pass` from the list at `list`, `workers` at a time; a missing list
/// loads nothing.
pub fn load_all(list: &Path, pass: Pass, workers: usize) -> Result<LoadReport, ModuleError> {
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LoadReport::default()),
        Err(source) => {
            return Err(ModuleError {
                path: list.to_path_buf(),
                source,
            })
        }
    };
    load_parallel(&parse_list(&text, pass), workers, finit)
}

#[derive(Default)]
struct Schedule {
    started: Vec<bool>,
    finished: HashSet<String>,
    running: usize,
    report: LoadReport,
    error: Option<ModuleError>,
}

/// Runs `load` on every module with up to `workers` at a time, each after its dependencies.
fn load_parallel(
    modules: &[Listed],
    workers: usize,
    load: impl Fn(&str) -> std::io::Result<Loaded> + Sync,
) -> Result<LoadReport, ModuleError> {
    let listed: HashSet<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    let state = Mutex::new(Schedule {
        started: vec![false; modules.len()],
        ..Schedule::default()
    });
    let wake = Condvar::new();
    let worker = || loop {
        let mut s = state
            .lock()
            .expect("no worker panics while holding the lock");
        let index = loop {
            if s.error.is_some() || s.started.iter().all(|&b| b) {
                return;
            }
            let ready = (0..modules.len()).find(|&i| {
                !s.started[i]
                    && modules[i]
                        .depends
                        .iter()
                        .all(|d| !listed.contains(d.as_str()) || s.finished.contains(d))
            });
            match ready {
                Some(i) => break i,
                // Nothing can start and nothing runs: the list names a dependency cycle or a
                // dependency listed after its user; load the first waiting one anyway and let
                // the kernel decide.
                None if s.running == 0 => {
                    break s
                        .started
                        .iter()
                        .position(|&b| !b)
                        .expect("some not started")
                }
                None => {
                    s = wake
                        .wait(s)
                        .expect("no worker panics while holding the lock")
                }
            }
        };
        s.started[index] = true;
        s.running += 1;
        drop(s);
        let module = &modules[index];
        let began = Instant::now();
        let result = load(&module.path);
        let took = began.elapsed();
        let mut s = state
            .lock()
            .expect("no worker panics while holding the lock");
        s.running -= 1;
        match result {
            Ok(outcome) => {
                match outcome {
                    Loaded::New => s.report.loaded += 1,
                    Loaded::Already => s.report.already += 1,
                    Loaded::NoDevice => s.report.no_device.push(module.path.clone()),
                }
                s.finished.insert(module.name.clone());
                s.report.slowest.push((module.name.clone(), took));
                s.report
                    .slowest
                    .sort_by_key(|entry| std::cmp::Reverse(entry.1));
                s.report.slowest.truncate(3);
            }
            Err(source) => {
                s.error.get_or_insert(ModuleError {
                    path: module.path.clone().into(),
                    source,
                });
            }
        }
        drop(s);
        wake.notify_all();
    };
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            scope.spawn(worker);
        }
    });
    let s = state.into_inner().expect("workers finished");
    match s.error {
        Some(e) => Err(e),
        None => Ok(s.report),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "/m/virtio_ring.ko\n\
                        /m/virtio.ko virtio_ring\n\
                        /m/virtio_blk.ko virtio virtio_ring\n\
                        /m/dm-mod.ko\n\
                        /m/dm-verity.ko dm_mod\n\
                        /m/fat.ko\n\
                        /m/vfat.ko fat\n\
                        /m/qemu_fw_cfg.ko\n\
                        /m/loop.ko\n\
                        /m/scsi_mod.ko\n\
                        /m/sd_mod.ko scsi_mod\n";

    /// `finit_module` cannot run in a test (it would change the build machine's kernel), so the
    /// scheduler is driven with a loader that records the order and checks dependencies.
    fn recording_loader(
        modules: &[Listed],
        log: &Mutex<Vec<String>>,
        path: &str,
    ) -> std::io::Result<Loaded> {
        let me = modules.iter().find(|m| m.path == path).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let mut done = log.lock().unwrap();
        for dep in &me.depends {
            if modules.iter().any(|m| &m.name == dep) {
                assert!(done.contains(dep), "{} loaded before {dep}", me.name);
            }
        }
        done.push(me.name.clone());
        Ok(if me.name == "qemu_fw_cfg" {
            Loaded::NoDevice
        } else {
            Loaded::New
        })
    }

    #[test]
    fn boot_pass_respects_dependencies_and_skips_first_boot_modules() {
        let modules = parse_list(LIST, Pass::Boot);
        assert_eq!(modules.len(), 5);
        let log = Mutex::new(Vec::new());
        let report = load_parallel(&modules, 4, |p| recording_loader(&modules, &log, p)).unwrap();
        assert_eq!(report.loaded, 5);
        assert_eq!(report.slowest.len(), 3);
        let order = log.into_inner().unwrap();
        assert_eq!(order.len(), 5);
        assert!(!order.contains(&"vfat".to_string()));
    }

    #[test]
    fn first_boot_pass_loads_only_the_rest() {
        let modules = parse_list(LIST, Pass::FirstBoot);
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["fat", "vfat", "qemu_fw_cfg"]);
        let log = Mutex::new(Vec::new());
        let report = load_parallel(&modules, 2, |p| recording_loader(&modules, &log, p)).unwrap();
        assert_eq!(report.loaded, 2);
        assert_eq!(report.no_device, ["/m/qemu_fw_cfg.ko"]);
    }

    #[test]
    fn live_pass_loads_the_loop_driver_and_the_first_boot_modules() {
        let names: Vec<String> = parse_list(LIST, Pass::Live)
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["fat", "vfat", "qemu_fw_cfg", "loop"]);
        let boot: Vec<String> = parse_list(LIST, Pass::Boot)
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert!(!boot.contains(&"loop".to_string()), "{boot:?}");
    }

    #[test]
    fn scsi_pass_loads_the_scsi_stack() {
        let modules = parse_list(LIST, Pass::Scsi);
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["scsi_mod", "sd_mod"]);
        let log = Mutex::new(Vec::new());
        load_parallel(&modules, 1, |p| recording_loader(&modules, &log, p)).unwrap();
        assert_eq!(log.into_inner().unwrap(), ["scsi_mod", "sd_mod"]);
    }

    #[test]
    fn first_error_stops_and_names_the_module() {
        let modules = parse_list(LIST, Pass::Boot);
        let err = load_parallel(&modules, 3, |p| {
            if p.ends_with("dm-mod.ko") {
                Err(std::io::Error::from_raw_os_error(libc::ENOEXEC))
            } else {
                Ok(Loaded::New)
            }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "loading module /m/dm-mod.ko");
    }

    #[test]
    fn missing_list_loads_nothing() {
        let report = load_all(Path::new("/nonexistent/modules.load"), Pass::Boot, 1).unwrap();
        assert_eq!(report, LoadReport::default());
    }

    #[test]
    fn missing_module_file_is_named() {
        // The real loader: opening the file fails before any syscall reaches the kernel.
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("modules.load");
        std::fs::write(&list, "/nonexistent/kernel/fs/erofs.ko\n").unwrap();
        let err = load_all(&list, Pass::Boot, 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "loading module /nonexistent/kernel/fs/erofs.ko"
        );
    }
}
