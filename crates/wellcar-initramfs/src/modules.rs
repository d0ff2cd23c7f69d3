//! Kernel module lookup: which files the initramfs needs for a list of module names, and in
//! which order `/init` must load them.
//!
//! Contract: [`ModuleIndex::load`] reads `modules.dep` and `modules.builtin` of one kernel's
//! module directory. When `modules.dep` is absent (a tree unpacked with `dpkg-deb -x`, where
//! `depmod` never ran) the index is built from each module's own `.modinfo` `depends=` field
//! instead, so both kinds of tree give the same answer. Names compare with `-` and `_` equal,
//! as the kernel does. [`ModuleIndex::resolve`] returns dependencies before dependents, skips
//! built-in modules and lists unknown names separately instead of failing, because one module
//! list serves kernels with different configurations (the cloud kernel has no `ahci`).
//! [`read_module`] returns a module's bytes, decompressing `.ko.xz`, `.ko.zst` and `.ko.gz`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::InitramfsError;

/// Kernel-style module name: file stem without `.ko*`, `-` folded to `_` (the load list's
/// names, `wellcar_contract::module_list`).
pub use wellcar_contract::module_list::module_name;

/// One loadable module of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEntry {
    /// Path relative to the module directory (`kernel/fs/erofs/erofs.ko`).
    pub path: String,
    /// Names of the modules it needs loaded first.
    pub depends: Vec<String>,
}

/// The modules of one kernel.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    modules: BTreeMap<String, ModuleEntry>,
    builtin: BTreeSet<String>,
}

/// What [`ModuleIndex::resolve`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Modules to put in the initramfs, dependencies before dependents.
    pub load_order: Vec<ModuleEntry>,
    /// Wanted names that are built into the kernel.
    pub builtin: Vec<String>,
    /// Wanted names this kernel does not have at all.
    pub missing: Vec<String>,
}

impl ModuleIndex {
    /// Reads the index of `module_dir` (`.../lib/modules/<kver>`).
    pub fn load(module_dir: &Path) -> Result<Self, InitramfsError> {
        let mut index = ModuleIndex::default();
        let builtin_path = module_dir.join("modules.builtin");
        match fs::read_to_string(&builtin_path) {
            Ok(text) => {
                index.builtin = text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(module_name)
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(InitramfsError::io(&builtin_path, source)),
        }
        let dep_path = module_dir.join("modules.dep");
        match fs::read_to_string(&dep_path) {
            Ok(text) => index.modules = parse_modules_dep(&text, &dep_path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                index.modules = scan_modinfo(module_dir)?;
            }
            Err(source) => return Err(InitramfsError::io(&dep_path, source)),
        }
        Ok(index)
    }

    /// Looks a module up by name.
    pub fn get(&self, name: &str) -> Option<&ModuleEntry> {
        self.modules.get(&module_name(name))
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&module_name(name))
    }

    /// Resolves `wanted` plus all their dependencies into a load order.
    pub fn resolve<S: AsRef<str>>(&self, wanted: &[S]) -> Result<Resolution, InitramfsError> {
        let mut resolution = Resolution::default();
        let mut done = BTreeSet::new();
        for name in wanted {
            let name = module_name(name.as_ref());
            if self.modules.contains_key(&name) {
                self.visit(&name, &mut done, &mut Vec::new(), &mut resolution)?;
            } else if self.builtin.contains(&name) {
                resolution.builtin.push(name);
            } else {
                resolution.missing.push(name);
            }
        }
        Ok(resolution)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
        out: &mut Resolution,
    ) -> Result<(), InitramfsError> {
        if done.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            stack.push(name.to_string());
            return Err(InitramfsError::DependencyCycle {
                chain: stack.join(" -> "),
            });
        }
        let Some(entry) = self.modules.get(name) else {
            if self.builtin.contains(name) {
                return Ok(());
            }
            return Err(InitramfsError::MissingDependency {
                module: stack.last().cloned().unwrap_or_default(),
                dependency: name.to_string(),
            });
        };
        stack.push(name.to_string());
        for dep in &entry.depends {
            self.visit(dep, done, stack, out)?;
        }
        stack.pop();
        done.insert(name.to_string());
        out.load_order.push(entry.clone());
        Ok(())
    }
}

/// Parses `modules.dep` (`path: dep-path dep-path ...` per line).
fn parse_modules_dep(
    text: &str,
    source: &Path,
) -> Result<BTreeMap<String, ModuleEntry>, InitramfsError> {
    let mut modules = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (path, deps) = line
            .split_once(':')
            .ok_or_else(|| InitramfsError::ModulesDep {
                path: source.to_path_buf(),
                line: number + 1,
                what: "missing ':' after the module path".into(),
            })?;
        let path = path.trim();
        if !path.contains(".ko") {
            return Err(InitramfsError::ModulesDep {
                path: source.to_path_buf(),
                line: number + 1,
                what: format!("{path:?} is not a .ko path"),
            });
        }
        modules.insert(
            module_name(path),
            ModuleEntry {
                path: path.to_string(),
                depends: deps.split_whitespace().map(module_name).collect(),
            },
        );
    }
    Ok(modules)
}

/// Builds the index from every module's `.modinfo` section (no `modules.dep` present).
fn scan_modinfo(module_dir: &Path) -> Result<BTreeMap<String, ModuleEntry>, InitramfsError> {
    let mut files = Vec::new();
    collect_modules(module_dir, module_dir, &mut files)?;
    let mut modules = BTreeMap::new();
    for relative in files {
        let full = module_dir.join(&relative);
        let bytes = read_module(&full)?;
        let depends = modinfo_field(&bytes, "depends", &full)?
            .map(|d| {
                d.split(',')
                    .filter(|s| !s.is_empty())
                    .map(module_name)
                    .collect()
            })
            .unwrap_or_default();
        modules.insert(
            module_name(&relative),
            ModuleEntry {
                path: relative,
                depends,
            },
        );
    }
    Ok(modules)
}

fn collect_modules(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), InitramfsError> {
    let entries = fs::read_dir(dir).map_err(|e| InitramfsError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| InitramfsError::io(dir, e))?;
        let path = entry.path();
        let file_type = entry
            .file_type()
            .map_err(|e| InitramfsError::io(&path, e))?;
        if file_type.is_dir() {
            collect_modules(root, &path, out)?;
        } else if is_module_file(&entry.file_name().to_string_lossy()) {
            let relative = path
                .strip_prefix(root)
                .map_err(|_| InitramfsError::io(&path, std::io::Error::other("outside tree")))?;
            out.push(relative.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

fn is_module_file(name: &str) -> bool {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// Reads a module file, decompressing it according to its extension.
pub fn read_module(path: &Path) -> Result<Vec<u8>, InitramfsError> {
    let raw = fs::read(path).map_err(|e| InitramfsError::io(path, e))?;
    let name = path.to_string_lossy();
    let decompress_err = |what: String| InitramfsError::Decompress {
        path: path.to_path_buf(),
        what,
    };
    if name.ends_with(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out)
            .map_err(|e| decompress_err(e.to_string()))?;
        Ok(out)
    } else if name.ends_with(".zst") {
        zstd::decode_all(raw.as_slice()).map_err(|e| decompress_err(e.to_string()))
    } else if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| decompress_err(e.to_string()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The value of `key=` in the `.modinfo` section of a 64-bit little-endian ELF module.
fn modinfo_field(elf: &[u8], key: &str, path: &Path) -> Result<Option<String>, InitramfsError> {
    let bad = |what: &str| InitramfsError::Modinfo {
        path: path.to_path_buf(),
        what: what.to_string(),
    };
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let section_table = u64_at(0x28).ok_or_else(|| bad("truncated header"))? as usize;
    let entry_size = u16_at(0x3a).ok_or_else(|| bad("truncated header"))? as usize;
    let count = u16_at(0x3c).ok_or_else(|| bad("truncated header"))? as usize;
    let names_index = u16_at(0x3e).ok_or_else(|| bad("truncated header"))? as usize;
    let section = |i: usize| -> Result<(u32, usize, usize), InitramfsError> {
        let base = section_table + i * entry_size;
        let name = u32_at(base).ok_or_else(|| bad("section header out of range"))?;
        let offset = u64_at(base + 24).ok_or_else(|| bad("section header out of range"))?;
        let size = u64_at(base + 32).ok_or_else(|| bad("section header out of range"))?;
        Ok((name, offset as usize, size as usize))
    };
    let (_, names_offset, names_size) = section(names_index)?;
    let names = elf
        .get(names_offset..names_offset + names_size)
        .ok_or_else(|| bad("section name table out of range"))?;
    for i in 0..count {
        let (name, offset, size) = section(i)?;
        let name_bytes = names.get(name as usize..).unwrap_or_default();
        let name_end = name_bytes.iter().position(|b| *b == 0).unwrap_or(0);
        if &name_bytes[..name_end] != b".modinfo" {
            continue;
        }
        let data = elf
            .get(offset..offset + size)
            .ok_or_else(|| bad(".modinfo out of range"))?;
        let prefix = format!("{key}=");
        return Ok(data
            .split(|b| *b == 0)
            .filter_map(|s| std::str::from_utf8(s).ok())
            .find_map(|s| s.strip_prefix(&prefix).map(str::to_string)));
    }
    Err(bad("no .modinfo section"))
}

/// Finds the module directory of `kernel_version` in a root tree: `usr/lib/modules/<kver>`,
/// else `lib/modules/<kver>` (Debian packages still ship the latter path).
pub fn module_dir(rootfs: &Path, kernel_version: &str) -> Result<PathBuf, InitramfsError> {
    let candidates = [
        rootfs.join("usr/lib/modules").join(kernel_version),
        rootfs.join("lib/modules").join(kernel_version),
    ];
    candidates
        .iter()
        .find(|p| p.is_dir())
        .cloned()
        .ok_or_else(|| InitramfsError::NoModuleDir {
            rootfs: rootfs.to_path_buf(),
            kernel_version: kernel_version.to_string(),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 file with a `.modinfo` section holding `fields`.
    pub(crate) fn fake_module(fields: &[&str]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for f in fields {
            modinfo.extend_from_slice(f.as_bytes());
            modinfo.push(0);
        }
        let names = b"\0.modinfo\0.shstrtab\0".to_vec();
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let modinfo_offset = elf.len();
        elf.extend_from_slice(&modinfo);
        let names_offset = elf.len();
        elf.extend_from_slice(&names);
        let table = elf.len();
        let section = |name: u32, offset: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(offset as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        let null = section(0, 0, 0);
        let info = section(1, modinfo_offset, modinfo.len());
        let strtab = section(10, names_offset, names.len());
        elf.extend(null);
        elf.extend(info);
        elf.extend(strtab);
        elf[0x28..0x30].copy_from_slice(&(table as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    /// A module tree: dm-verity needs dm-bufio and dm-mod; dm-bufio needs nothing loadable.
    pub(crate) fn fixture_tree(with_modules_dep: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("usr/lib/modules/6.1.0-test");
        let files = [
            ("kernel/drivers/md/dm-mod.ko", "depends="),
            ("kernel/drivers/md/dm-bufio.ko", "depends="),
            ("kernel/drivers/md/dm-verity.ko", "depends=dm-bufio,dm-mod"),
            ("kernel/fs/erofs/erofs.ko", "depends="),
            ("kernel/drivers/virtio/virtio_ring.ko", "depends="),
            ("kernel/drivers/virtio/virtio.ko", "depends=virtio_ring"),
            (
                "kernel/drivers/block/virtio_blk.ko",
                "depends=virtio,virtio_ring",
            ),
        ];
        for (path, depends) in files {
            let full = m.join(path);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(&full, fake_module(&["license=GPL", depends])).unwrap();
        }
        if with_modules_dep {
            fs::write(
                m.join("modules.dep"),
                "kernel/drivers/md/dm-mod.ko:\n\
                 kernel/drivers/md/dm-bufio.ko:\n\
                 kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n\
                 kernel/fs/erofs/erofs.ko:\n\
                 kernel/drivers/virtio/virtio_ring.ko:\n\
                 kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
                 kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n",
            )
            .unwrap();
        }
        fs::write(
            m.join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\nkernel/drivers/nvme/host/nvme.ko\n",
        )
        .unwrap();
        dir
    }

    fn check_resolution(index: &ModuleIndex) {
        let r = index
            .resolve(&["virtio_blk", "dm_verity", "ext4", "ahci", "dm-mod"])
            .unwrap();
        let order: Vec<String> = r.load_order.iter().map(|m| module_name(&m.path)).collect();
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio",
                "virtio_blk",
                "dm_bufio",
                "dm_mod",
                "dm_verity"
            ]
        );
        assert_eq!(r.builtin, ["ext4"]);
        assert_eq!(r.missing, ["ahci"]);
    }

    #[test]
    fn resolves_from_modules_dep() {
        let tree = fixture_tree(true);
        let dir = module_dir(tree.path(), "6.1.0-test").unwrap();
        check_resolution(&ModuleIndex::load(&dir).unwrap());
    }

    #[test]
    fn resolves_from_modinfo_without_depmod() {
        let tree = fixture_tree(false);
        let dir = module_dir(tree.path(), "6.1.0-test").unwrap();
        let index = ModuleIndex::load(&dir).unwrap();
        assert_eq!(
            index.get("dm-verity").unwrap().depends,
            ["dm_bufio", "dm_mod"]
        );
        check_resolution(&index);
    }

    #[test]
    fn malformed_modules_dep_names_line() {
        let err =
            parse_modules_dep("a.ko:\nbroken line\n", Path::new("/m/modules.dep")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/m/modules.dep line 2: missing ':' after the module path"
        );
    }

    #[test]
    fn dependency_cycle_is_an_error() {
        let index = ModuleIndex {
            modules: parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n", Path::new("m")).unwrap(),
            builtin: BTreeSet::new(),
        };
        let err = index.resolve(&["a"]).unwrap_err();
        assert_eq!(err.to_string(), "module dependency cycle: a -> b -> a");
    }

    #[test]
    fn compressed_modules_are_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let payload = fake_module(&["depends=x"]);
        let zst = dir.path().join("a.ko.zst");
        fs::write(&zst, zstd::encode_all(payload.as_slice(), 3).unwrap()).unwrap();
        assert_eq!(read_module(&zst).unwrap(), payload);
        let xz = dir.path().join("b.ko.xz");
        let mut compressed = Vec::new();
        lzma_rs::xz_compress(&mut payload.as_slice(), &mut compressed).unwrap();
        fs::write(&xz, compressed).unwrap();
        assert_eq!(read_module(&xz).unwrap(), payload);
        let bad = dir.path().join("c.ko.xz");
        fs::write(&bad, b"not xz").unwrap();
        assert!(read_module(&bad)
            .unwrap_err()
            .to_string()
            .contains("c.ko.xz"));
    }
}
