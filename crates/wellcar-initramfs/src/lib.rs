//! Host side of Wellcar's initramfs: packs the static `/init` (crate `wellcar-init`) and the
//! kernel modules the boot needs into one reproducible, compressed `newc` cpio.
//!
//! Contract of [`build_initramfs`]:
//! - modules come from `<rootfs>/usr/lib/modules/<kver>` (or `lib/modules/<kver>`); the wanted
//!   names plus their dependencies are resolved (see [`modules`]), built-in ones skipped,
//!   names the kernel lacks reported in [`InitramfsSummary::skipped`] and logged;
//! - modules are stored decompressed at `usr/lib/modules/<kver>/<path>.ko`, so `/init` only
//!   calls `finit_module`; the load list ([`module_list::LOAD_LIST`], whose format is
//!   `wellcar_contract`'s) names them one per line, dependencies first: the absolute path, then
//!   the names of the listed modules it depends on, so `/init` can load independent modules in
//!   parallel;
//! - the archive also holds `/init`, `/dev/console` and the empty mount points `/dev`, `/proc`,
//!   `/sys`, `/run`, `/sysroot`; nothing else (no shell, no busybox);
//! - every mtime is `SOURCE_DATE_EPOCH` (0 when unset), members are sorted, so the same inputs
//!   give the same bytes;
//! - the archive is zstd-compressed when the kernel config (`boot/config-<kver>`) has
//!   `CONFIG_RD_ZSTD=y`, else gzip with `CONFIG_RD_GZIP=y`, else left uncompressed;
//! - the output is written to a temporary file, fsynced and renamed, so a crash never leaves
//!   a half-written initramfs at `output`.

pub mod cpio;
pub mod modules;

use std::io::Write;
use std::path::{Path, PathBuf};

use wellcar_contract::module_list::{self, ListedModule};

/// What to build.
#[derive(Debug, Clone)]
pub struct InitramfsOptions {
    /// Root tree containing `usr/lib/modules/<kernel_version>` (and `boot/config-<kver>`).
    pub rootfs: PathBuf,
    /// Kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
    /// The static `/init` binary.
    pub init_binary: PathBuf,
    /// Wanted module names; dependencies are added, built-ins skipped. Wellcar's:
    /// [`module_list::WANTED`].
    pub modules: Vec<String>,
    /// Where to write the initramfs.
    pub output: PathBuf,
}

/// Compression applied to the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd (level 19).
    Zstd,
    /// gzip (level 9).
    Gzip,
    /// Plain cpio.
    None,
}

/// What was built.
#[derive(Debug, Clone)]
pub struct InitramfsSummary {
    /// Size of the written file in bytes.
    pub size: u64,
    /// Module names in load order.
    pub modules: Vec<String>,
    /// Wanted names this kernel has neither as a module nor built in.
    pub skipped: Vec<String>,
    /// Compression used.
    pub compression: Compression,
}

/// Why the initramfs could not be built; every variant names the file or module concerned.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// Reading or writing a file failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No module directory for the kernel in the root tree.
    #[error("no usr/lib/modules/{kernel_version} or lib/modules/{kernel_version} in {rootfs}")]
    NoModuleDir {
        /// The root tree.
        rootfs: PathBuf,
        /// The kernel release looked for.
        kernel_version: String,
    },
    /// A line of `modules.dep` could not be parsed.
    #[error("{path} line {line}: {what}")]
    ModulesDep {
        /// The `modules.dep` file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        what: String,
    },
    /// A module's `.modinfo` could not be read.
    #[error("{path}: {what}")]
    Modinfo {
        /// The module file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// A compressed module could not be decompressed.
    #[error("decompressing {path}: {what}")]
    Decompress {
        /// The module file.
        path: PathBuf,
        /// The decoder's message.
        what: String,
    },
    /// A module depends on one the tree does not have.
    #[error("module {module} depends on {dependency}, which is neither a module nor built in")]
    MissingDependency {
        /// The module.
        module: String,
        /// Its missing dependency.
        dependency: String,
    },
    /// Modules depend on each other in a circle.
    #[error("module dependency cycle: {chain}")]
    DependencyCycle {
        /// The circle, `a -> b -> a`.
        chain: String,
    },
    /// `SOURCE_DATE_EPOCH` is set but not a non-negative integer that fits a cpio mtime.
    #[error("SOURCE_DATE_EPOCH={value:?} is not a unix time between 0 and 4294967295")]
    SourceDateEpoch {
        /// The variable's value.
        value: String,
    },
}

impl InitramfsError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        InitramfsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Builds the initramfs described by `opts`; see the crate docs for what it contains.
pub fn build_initramfs(opts: &InitramfsOptions) -> Result<InitramfsSummary, InitramfsError> {
    let mtime = source_date_epoch()?;
    let module_dir = modules::module_dir(&opts.rootfs, &opts.kernel_version)?;
    let index = modules::ModuleIndex::load(&module_dir)?;
    let resolution = index.resolve(&opts.modules)?;
    for name in &resolution.missing {
        tracing::warn!(module = %name, kernel = %opts.kernel_version, "module not in this kernel, skipped");
    }

    let mut archive = cpio::Archive::new();
    let init =
        std::fs::read(&opts.init_binary).map_err(|e| InitramfsError::io(&opts.init_binary, e))?;
    archive.add_file("init", 0o755, init);
    archive.add_dir("dev", 0o755);
    archive.add_char_device("dev/console", 0o600, 5, 1);
    archive.add_dir("proc", 0o555);
    archive.add_dir("sys", 0o555);
    archive.add_dir("run", 0o755);
    archive.add_dir("sysroot", 0o755);

    let mut load_list = String::new();
    let mut names: Vec<String> = Vec::new();
    for module in &resolution.load_order {
        let bytes = modules::read_module(&module_dir.join(&module.path))?;
        let stored = strip_compression(&module.path);
        let inside = format!("usr/lib/modules/{}/{stored}", opts.kernel_version);
        // Dependencies that are themselves in the list (earlier lines); built-ins are not.
        let depends = module
            .depends
            .iter()
            .filter(|d| names.contains(d))
            .cloned()
            .collect();
        let listed = ListedModule::new(format!("/{inside}"), depends);
        load_list.push_str(&listed.to_string());
        load_list.push('\n');
        archive.add_file(&inside, 0o644, bytes);
        names.push(listed.name);
    }
    archive.add_file(
        archive_path(module_list::LOAD_LIST),
        0o644,
        load_list.into_bytes(),
    );

    let compression = kernel_compression(&opts.rootfs, &opts.kernel_version)?;
    let size = write_atomically(&opts.output, |file| {
        let mut buffered = std::io::BufWriter::new(file);
        match compression {
            Compression::Zstd => {
                let mut encoder = zstd::Encoder::new(&mut buffered, 19)?;
                encoder.include_checksum(true)?;
                archive.write_to(&mut encoder, mtime)?;
                encoder.finish()?;
            }
            Compression::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(&mut buffered, flate2::Compression::best());
                archive.write_to(&mut encoder, mtime)?;
                encoder.finish()?;
            }
            Compression::None => {
                archive.write_to(&mut buffered, mtime)?;
            }
        }
        buffered.flush()
    })?;
    tracing::info!(output = %opts.output.display(), size, modules = names.len(), ?compression, "initramfs written");
    Ok(InitramfsSummary {
        size,
        modules: names,
        skipped: resolution.missing,
        compression,
    })
}

/// A path inside the initramfs as the archive names it (no leading `/`).
fn archive_path(absolute: &str) -> &str {
    absolute.trim_start_matches('/')
}

fn strip_compression(path: &str) -> &str {
    [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|ext| path.strip_suffix(ext))
        .unwrap_or(path)
}

fn source_date_epoch() -> Result<u32, InitramfsError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse::<u32>()
            .map_err(|_| InitramfsError::SourceDateEpoch { value }),
        Err(_) => Ok(0),
    }
}

/// Which initramfs compression the kernel can unpack, from its config in the root tree.
pub fn kernel_compression(
    rootfs: &Path,
    kernel_version: &str,
) -> Result<Compression, InitramfsError> {
    let candidates = [
        rootfs.join(format!("boot/config-{kernel_version}")),
        rootfs.join(format!("usr/lib/modules/{kernel_version}/config")),
        rootfs.join(format!("lib/modules/{kernel_version}/config")),
    ];
    let Some(path) = candidates.iter().find(|p| p.is_file()) else {
        tracing::warn!(kernel = %kernel_version, "no kernel config found, initramfs left uncompressed");
        return Ok(Compression::None);
    };
    let config = std::fs::read_to_string(path).map_err(|e| InitramfsError::io(path, e))?;
    let enabled = |option: &str| config.lines().any(|l| l.trim() == format!("{option}=y"));
    Ok(if enabled("CONFIG_RD_ZSTD") {
        Compression::Zstd
    } else if enabled("CONFIG_RD_GZIP") {
        Compression::Gzip
    } else {
        Compression::None
    })
}

/// Writes `output` (mode 0644) with [`wellcar_contract::atomic_file`]: fill a temporary file
/// in the same directory, fsync, rename, fsync the directory. Returns the final size.
fn write_atomically(
    output: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<u64, InitramfsError> {
    wellcar_contract::atomic_file::write_with(output, 0o644, fill)
        .map_err(|e| InitramfsError::io(output, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn options(tree: &Path, init: &Path, output: &Path) -> InitramfsOptions {
        InitramfsOptions {
            rootfs: tree.to_path_buf(),
            kernel_version: "6.1.0-test".into(),
            init_binary: init.to_path_buf(),
            modules: module_list::WANTED.iter().map(|s| s.to_string()).collect(),
            output: output.to_path_buf(),
        }
    }

    fn unpack(bytes: &[u8], compression: Compression) -> Vec<cpio::ReadEntry> {
        let raw = match compression {
            Compression::Zstd => zstd::decode_all(bytes).unwrap(),
            Compression::Gzip => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out)
                    .unwrap();
                out
            }
            Compression::None => bytes.to_vec(),
        };
        cpio::read_archive(&raw).unwrap()
    }

    #[test]
    fn builds_zstd_archive_with_modules_in_load_order() {
        let tree = modules::tests::fixture_tree(true);
        fs::create_dir_all(tree.path().join("boot")).unwrap();
        fs::write(
            tree.path().join("boot/config-6.1.0-test"),
            "CONFIG_RD_GZIP=y\nCONFIG_RD_ZSTD=y\n",
        )
        .unwrap();
        // xz-compressed module: stored decompressed under its .ko name.
        let erofs = tree
            .path()
            .join("usr/lib/modules/6.1.0-test/kernel/fs/erofs/erofs.ko");
        let plain = fs::read(&erofs).unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut plain.as_slice(), &mut xz).unwrap();
        fs::write(erofs.with_extension("ko.xz"), xz).unwrap();
        fs::remove_file(&erofs).unwrap();
        let dep = tree.path().join("usr/lib/modules/6.1.0-test/modules.dep");
        let text = fs::read_to_string(&dep)
            .unwrap()
            .replace("erofs.ko:", "erofs.ko.xz:");
        fs::write(&dep, text).unwrap();

        let init = tree.path().join("init-bin");
        fs::write(&init, b"\x7fELF init").unwrap();
        let out = tree.path().join("out/initramfs.img");
        fs::create_dir_all(out.parent().unwrap()).unwrap();
        let summary = build_initramfs(&options(tree.path(), &init, &out)).unwrap();

        assert_eq!(summary.compression, Compression::Zstd);
        assert_eq!(summary.size, fs::metadata(&out).unwrap().len());
        assert_eq!(
            summary.modules,
            // WANTED order, each after its dependencies.
            [
                "virtio_ring",
                "virtio",
                "virtio_blk",
                "dm_mod",
                "dm_bufio",
                "dm_verity",
                "erofs"
            ]
        );
        // Not in the fixture kernel at all (ext4 and nvme are built in there).
        assert!(summary.skipped.contains(&"ahci".to_string()));
        assert!(!summary.skipped.contains(&"ext4".to_string()));

        let entries = unpack(&fs::read(&out).unwrap(), summary.compression);
        let get = |p: &str| entries.iter().find(|e| e.path == p);
        assert_eq!(get("init").unwrap().data, b"\x7fELF init");
        assert_eq!(get("init").unwrap().mode, 0o100_755);
        assert_eq!(get("dev/console").unwrap().rdev, (5, 1));
        assert!(get("sysroot").is_some());
        assert_eq!(
            get("usr/lib/modules/6.1.0-test/kernel/fs/erofs/erofs.ko")
                .unwrap()
                .data,
            plain
        );
        let list = get(archive_path(module_list::LOAD_LIST))
            .unwrap()
            .data
            .clone();
        let list = String::from_utf8(list).unwrap();
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(
            lines[0],
            "/usr/lib/modules/6.1.0-test/kernel/drivers/virtio/virtio_ring.ko"
        );
        assert_eq!(
            lines[2],
            "/usr/lib/modules/6.1.0-test/kernel/drivers/block/virtio_blk.ko virtio virtio_ring"
        );
        assert_eq!(lines.len(), 7);
        // /init reads it back (wellcar_contract's parser) as the modules built, in order.
        let names: Vec<String> = module_list::parse(&list).map(|m| m.name).collect();
        assert_eq!(names, summary.modules);
        let paths = lines.iter().map(|l| l.split(' ').next().unwrap());
        assert!(paths.clone().all(|p| get(&p[1..]).is_some()), "{list}");
    }

    #[test]
    fn same_inputs_same_bytes_and_gzip_fallback() {
        let tree = modules::tests::fixture_tree(false);
        fs::create_dir_all(tree.path().join("boot")).unwrap();
        fs::write(
            tree.path().join("boot/config-6.1.0-test"),
            "# CONFIG_RD_ZSTD is not set\nCONFIG_RD_GZIP=y\n",
        )
        .unwrap();
        let init = tree.path().join("init-bin");
        fs::write(&init, b"init").unwrap();
        let (a, b) = (tree.path().join("a.img"), tree.path().join("b.img"));
        let summary = build_initramfs(&options(tree.path(), &init, &a)).unwrap();
        build_initramfs(&options(tree.path(), &init, &b)).unwrap();
        assert_eq!(summary.compression, Compression::Gzip);
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        let entries = unpack(&fs::read(&a).unwrap(), Compression::Gzip);
        assert!(entries
            .iter()
            .all(|e| e.mtime == source_date_epoch().unwrap()));
    }

    #[test]
    fn missing_module_dir_and_init_are_named() {
        let tree = modules::tests::fixture_tree(true);
        let mut opts = options(
            tree.path(),
            Path::new("/nonexistent/init"),
            &tree.path().join("o"),
        );
        let err = build_initramfs(&opts).unwrap_err();
        assert_eq!(err.to_string(), "/nonexistent/init");
        opts.kernel_version = "9.9.9".into();
        let err = build_initramfs(&opts).unwrap_err();
        assert!(
            err.to_string().starts_with("no usr/lib/modules/9.9.9"),
            "{err}"
        );
        assert!(!tree.path().join("o").exists());
    }
}
