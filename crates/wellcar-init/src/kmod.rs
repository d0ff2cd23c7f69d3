//! Loading the kernel modules the initramfs carries.
//!
//! Contract: [`load_all`] reads the load list written by `wellcar-initramfs` (absolute module
//! paths, dependencies first, one per line) and loads each with `finit_module`. A module that
//! is already loaded (`EEXIST`) is fine; one whose hardware is absent (`ENODEV`) is reported
//! back but not an error, so one list serves virtio, NVMe and SCSI machines. Anything else
//! stops the boot with an error naming the module file.

use std::path::{Path, PathBuf};

/// Path of the load list inside the initramfs (`wellcar_initramfs::MODULE_LOAD_LIST`).
pub const MODULE_LOAD_LIST: &str = "/etc/wellcar-init/modules.load";

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
}

/// Loads every module of the list at `list`; a missing list means "nothing to load".
pub fn load_all(list: &Path) -> Result<LoadReport, ModuleError> {
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
        let err = |source| ModuleError {
            path: line.into(),
            source,
        };
        let file = std::fs::File::open(line).map_err(err)?;
        match rustix::system::finit_module(&file, c"", 0) {
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
        assert_eq!(
            load_all(Path::new("/nonexistent/modules.load")).unwrap(),
            LoadReport::default()
        );
    }

    #[test]
    fn missing_module_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("modules.load");
        std::fs::write(&list, "/nonexistent/kernel/fs/erofs.ko\n").unwrap();
        let err = load_all(&list).unwrap_err();
        assert_eq!(
            err.to_string(),
            "loading module /nonexistent/kernel/fs/erofs.ko"
        );
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
        let err = load_all(&list).unwrap_err();
        assert_eq!(err.path, fake);
    }
}
