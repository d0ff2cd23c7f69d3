//! Loading the kernel modules the initramfs carries.
//!
//! Contract: [`load_all`] reads the load list written by `wellcar-initramfs` (absolute module
//! paths, dependencies first, one per line) and loads each with `finit_module`. A module that
//! is already loaded (`EEXIST`) is fine; one whose hardware is absent (`ENODEV`) is reported
//! back but not an error, so one list serves virtio, NVMe and SCSI machines. Anything else
//! stops the boot with an error naming the module file.
//!
//! Modules only the first boot needs ([`FIRST_BOOT_ONLY`]: vfat for the ESP flag, fw_cfg for
//! the Ignition config) are skipped by [`load_all`] with `first_boot = false`; a later call with
//! `true` loads whatever is still missing.

use std::path::{Path, PathBuf};

/// Path of the load list inside the initramfs (`wellcar_initramfs::MODULE_LOAD_LIST`).
pub const MODULE_LOAD_LIST: &str = "/etc/wellcar-init/modules.load";

/// Modules needed only on first boot (by kernel module name).
pub const FIRST_BOOT_ONLY: &[&str] = &[
    "fat",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_ascii",
    "nls_utf8",
    "qemu_fw_cfg",
];

/// Kernel module name of a module path (`.../nls_iso8859-1.ko` -> `nls_iso8859_1`).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
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
    pub slowest: Vec<(String, std::time::Duration)>,
}

/// Loads the modules of the list at `list` (all of them if `first_boot`, else all but
/// [`FIRST_BOOT_ONLY`]); a missing list means "nothing to load".
pub fn load_all(list: &Path, first_boot: bool) -> Result<LoadReport, ModuleError> {
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
    let mut report = LoadReport::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = module_name(line);
        if !first_boot && FIRST_BOOT_ONLY.contains(&name.as_str()) {
            continue;
        }
        let err = |source| ModuleError {
            path: line.into(),
            source,
        };
        let file = std::fs::File::open(line).map_err(err)?;
        let started = std::time::Instant::now();
        let result = rustix::system::finit_module(&file, c"", 0);
        let name = line
            .rsplit('/')
            .next()
            .unwrap_or(line)
            .trim_end_matches(".ko");
        report.slowest.push((name.to_string(), started.elapsed()));
        report
            .slowest
            .sort_by_key(|entry| std::cmp::Reverse(entry.1));
        report.slowest.truncate(3);
        match result {
            Ok(()) => report.loaded += 1,
            Err(rustix::io::Errno::EXIST) => report.already += 1,
            Err(rustix::io::Errno::NODEV) => report.no_device.push(line.to_string()),
            Err(e) => return Err(err(e.into())),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_list_loads_nothing() {
        let report = load_all(Path::new("/nonexistent/modules.load"), true).unwrap();
        assert_eq!(report, LoadReport::default());
        assert!(report.slowest.is_empty());
    }

    #[test]
    fn missing_module_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("modules.load");
        std::fs::write(&list, "/nonexistent/kernel/fs/erofs.ko\n").unwrap();
        let err = load_all(&list, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "loading module /nonexistent/kernel/fs/erofs.ko"
        );
    }

    #[test]
    fn first_boot_modules_wait_for_the_first_boot() {
        // Missing files: only an attempted load can fail, so the error tells what was tried.
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("modules.load");
        std::fs::write(
            &list,
            "/m/kernel/fs/nls/nls_iso8859-1.ko\n/m/qemu_fw_cfg.ko\n",
        )
        .unwrap();
        assert_eq!(load_all(&list, false).unwrap(), LoadReport::default());
        let err = load_all(&list, true).unwrap_err();
        assert_eq!(err.path, Path::new("/m/kernel/fs/nls/nls_iso8859-1.ko"));
        assert_eq!(module_name("/m/nls_iso8859-1.ko"), "nls_iso8859_1");
    }

    #[test]
    fn a_non_module_is_refused_by_the_kernel() {
        // The real syscall: without CAP_SYS_MODULE it is EPERM, with it the kernel rejects
        // the non-ELF file (ENOEXEC); either way the error names the file.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake.ko");
        std::fs::write(&fake, b"not a module").unwrap();
        let list = dir.path().join("modules.load");
        std::fs::write(&list, format!("{}\n", fake.display())).unwrap();
        let err = load_all(&list, true).unwrap_err();
        assert_eq!(err.path, fake);
    }
}
