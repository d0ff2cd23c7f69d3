//! Reshapes a Debian root filesystem into a /usr-only OS.
//!
//! Contract of the result (what the initramfs and the running system rely on):
//! - everything the OS ships is under `usr/` (merged /usr: `/bin`, `/sbin`, `/lib*` are links
//!   the initramfs recreates on ROOT);
//! - the default `/etc` is frozen into `usr/share/wellcar/etc` (lower layer of the /etc overlay);
//! - the default `/var` is kept in `usr/share/wellcar/var` and restored entry by entry by
//!   `usr/lib/tmpfiles.d/wellcar-var.conf` (`C` lines), since ROOT starts empty;
//! - no package manager: apt, dpkg and their databases are gone (the package list is recorded
//!   in the build manifest and `usr/share/wellcar/packages.txt`);
//! - nothing machine-specific: no ssh host keys, an empty machine-id, no hostname;
//! - `usr/lib/os-release` says `ID=wellcar` with the build's version, and
//!   `usr/share/flatcar/release` says it the way Flatcar's update_engine reads it;
//! - units enabled and disabled as the definition says, and ordered for a fast boot ([`units`]).
//!
//! It works on a private copy of the cached tree and never modifies the cache.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use wellcar_contract::release_file::RELEASE_FILE;
use wellcar_contract::{PathIoError, ReleaseFile, WELLCAR_APP_ID};

use crate::definition::OsDefinition;
use crate::error::{BuildError, IoContext, Result};
use crate::tools::{self, DPKG_QUERY};
use crate::units;

/// One installed Debian package (the build manifest's record of it).
pub use wellcar_contract::PackageRecord as Package;

/// The reshaped tree and what was learned from it.
#[derive(Debug)]
pub struct Reshaped {
    /// The root of the reshaped tree (its `usr/` becomes the /usr image).
    pub root: PathBuf,
    /// Installed packages, sorted by name.
    pub packages: Vec<Package>,
    /// The kernel image, moved out of the tree.
    pub kernel: PathBuf,
    /// Kernel release (`6.1.0-…-cloud-amd64`).
    pub kernel_version: String,
    /// Debian's own initrd for that kernel, kept out of the image for benchmarks.
    pub debian_initrd: Option<PathBuf>,
}

/// Identity of this build, written into os-release.
#[derive(Debug, Clone)]
pub struct BuildIdentity {
    /// VERSION / VERSION_ID.
    pub version: String,
    /// BUILD_ID.
    pub build_id: String,
}

/// Copies `cached` to `work/rootfs` and reshapes it. Kernel files go to `work/boot/`.
pub fn reshape(
    cached: &Path,
    work: &Path,
    def: &OsDefinition,
    files: &Path,
    id: &BuildIdentity,
) -> Result<Reshaped> {
    let root = work.join("rootfs");
    if root.exists() {
        fs::remove_dir_all(&root).at("removing old work tree", &root)?;
    }
    fs::create_dir_all(work).at("creating", work)?;
    tools::run(
        Command::new("cp")
            .arg("-a")
            .arg("--reflink=auto")
            .arg(cached)
            .arg(&root),
    )?;
    for link in ["bin", "sbin", "lib"] {
        let p = root.join(link);
        if !p.is_symlink() {
            return Err(BuildError::NotMergedUsr { path: p });
        }
    }

    let packages = list_packages(&root)?;
    let (kernel, kernel_version, debian_initrd) = take_kernel(&root, &work.join("boot"))?;
    remove_package_manager(&root)?;
    remove_machine_identity(&root)?;
    copy_tree(files, &root)?;
    write_os_release(&root, def, id)?;
    // Before the default user joins its groups, so it joins them under their final numbers.
    crate::fixed_groups::apply(&root, &def.groups)?;
    add_default_user(&root, def)?;
    units::enable_units(&root, def)?;
    units::start_after_sysinit(&root)?;
    units::skip_generators(&root, def)?;
    let list: String = packages
        .iter()
        .map(|p| format!("{}\t{}\n", p.name, p.version))
        .collect();
    let share = root.join("usr/share/wellcar");
    fs::create_dir_all(&share).at("creating", &share)?;
    fs::write(share.join("packages.txt"), list).at("writing", share.join("packages.txt"))?;
    freeze_etc_and_var(&root)?;
    Ok(Reshaped {
        root,
        packages,
        kernel,
        kernel_version,
        debian_initrd,
    })
}

fn list_packages(root: &Path) -> Result<Vec<Package>> {
    let out = tools::run(
        DPKG_QUERY
            .command()?
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n"]),
    )?;
    let mut packages: Vec<Package> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let status = f.next()?;
            let (name, version) = (f.next()?, f.next()?);
            status.starts_with("ii").then(|| Package {
                name: name.into(),
                version: version.into(),
            })
        })
        .collect();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    if packages.is_empty() {
        return Err(BuildError::NoInstalledPackages {
            path: root.join("var/lib/dpkg"),
        });
    }
    Ok(packages)
}

fn take_kernel(root: &Path, boot_out: &Path) -> Result<(PathBuf, String, Option<PathBuf>)> {
    let boot = root.join("boot");
    let mut kernels: Vec<String> = fs::read_dir(&boot)
        .at("listing", &boot)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_string))
        .collect();
    kernels.sort();
    let Some(kver) = kernels.pop() else {
        return Err(BuildError::NoKernel { path: boot });
    };
    fs::create_dir_all(boot_out).at("creating", boot_out)?;
    let kernel = boot_out.join("vmlinuz");
    fs::copy(boot.join(format!("vmlinuz-{kver}")), &kernel).at("copying kernel to", &kernel)?;
    let initrd_src = boot.join(format!("initrd.img-{kver}"));
    let debian_initrd = if initrd_src.exists() {
        let dst = boot_out.join("debian-initrd.img");
        fs::copy(&initrd_src, &dst).at("copying Debian initrd to", &dst)?;
        Some(dst)
    } else {
        None
    };
    // The kernel config stays readable for the initramfs builder (compression support).
    let config = boot.join(format!("config-{kver}"));
    if config.exists() {
        fs::copy(&config, boot_out.join("config")).at("copying kernel config", &config)?;
    }
    for entry in fs::read_dir(&boot).at("listing", &boot)? {
        let p = entry.at("listing", &boot)?.path();
        remove(&p)?;
    }
    for link in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        remove(&root.join(link))?;
    }
    Ok((kernel, kver, debian_initrd))
}

/// Paths (relative to the root) that make up apt, dpkg and their state.
const PACKAGE_MANAGER: &[&str] = &[
    "etc/apt",
    "etc/dpkg",
    "var/lib/apt",
    "var/lib/dpkg",
    "var/cache/apt",
    "var/cache/debconf",
    "var/log/apt",
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/bootstrap.log",
    "usr/lib/apt",
    "usr/lib/dpkg",
    "usr/share/dpkg",
    "usr/share/bug",
    "usr/share/initramfs-tools",
    "etc/initramfs-tools",
    "usr/sbin/mkinitramfs",
    "usr/sbin/update-initramfs",
    "etc/systemd/system/timers.target.wants/dpkg-db-backup.timer",
    "usr/lib/systemd/system/dpkg-db-backup.timer",
    "usr/lib/systemd/system/dpkg-db-backup.service",
    "etc/cron.daily/dpkg",
    "etc/logrotate.d/dpkg",
    "etc/logrotate.d/apt",
];

fn remove_package_manager(root: &Path) -> Result<()> {
    for rel in PACKAGE_MANAGER {
        remove(&root.join(rel))?;
    }
    for dir in ["usr/bin", "usr/sbin"] {
        let d = root.join(dir);
        for entry in fs::read_dir(&d).at("listing", &d)? {
            let entry = entry.at("listing", &d)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("apt") || name.starts_with("dpkg") {
                remove(&entry.path())?;
            }
        }
    }
    Ok(())
}

fn remove_machine_identity(root: &Path) -> Result<()> {
    let ssh = root.join("etc/ssh");
    if ssh.is_dir() {
        for entry in fs::read_dir(&ssh).at("listing", &ssh)? {
            let p = entry.at("listing", &ssh)?.path();
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ssh_host_"))
            {
                remove(&p)?;
            }
        }
    }
    for rel in [
        "var/lib/dbus/machine-id",
        "etc/hostname",
        "var/lib/systemd/random-seed",
        "var/cache/ldconfig/aux-cache",
    ] {
        remove(&root.join(rel))?;
    }
    fs::write(root.join("etc/machine-id"), "").at("emptying", root.join("etc/machine-id"))?;
    Ok(())
}

fn write_os_release(root: &Path, def: &OsDefinition, id: &BuildIdentity) -> Result<()> {
    let os = &def.os;
    let text = format!(
        "NAME=\"{name}\"\nID={id}\nID_LIKE=flatcar\nVERSION={v}\nVERSION_ID={v}\nBUILD_ID={b}\n\
         PRETTY_NAME=\"{name} {v}\"\nHOME_URL=\"{url}\"\nWELLCAR_BOARD=\"{board}\"\n",
        name = os.name,
        id = os.id,
        v = id.version,
        b = id.build_id,
        url = os.home_url,
        board = os.board,
    );
    let p = root.join("usr/lib/os-release");
    remove(&p)?;
    fs::write(&p, text).at("writing", &p)?;
    let etc = root.join("etc/os-release");
    remove(&etc)?;
    std::os::unix::fs::symlink("../usr/lib/os-release", &etc).at("linking", &etc)?;
    write_flatcar_release(root, def, id)
}

/// `/usr/share/flatcar/release`, the identity Flatcar's update_engine and scripts read.
fn write_flatcar_release(root: &Path, def: &OsDefinition, id: &BuildIdentity) -> Result<()> {
    let release = ReleaseFile {
        version: crate::definition::check_version(&id.version).map_err(|source| {
            BuildError::Version {
                path: "--os-version".into(),
                source,
            }
        })?,
        board: def.os.board.clone(),
        app_id: format!("{{{WELLCAR_APP_ID}}}"),
    };
    let p = root.join(RELEASE_FILE.trim_start_matches('/'));
    let dir = p.parent().expect("the release file is in a directory");
    fs::create_dir_all(dir).at("creating", dir)?;
    fs::write(&p, release.render()).at("writing", &p)
}

/// Appends the default user to passwd/shadow/group/gshadow and its supplementary groups.
fn add_default_user(root: &Path, def: &OsDefinition) -> Result<()> {
    let u = &def.user;
    let etc = root.join("etc");
    let edit = |file: &str, f: &dyn Fn(String) -> String| -> Result<()> {
        let p = etc.join(file);
        let text = fs::read_to_string(&p).at("reading", &p)?;
        fs::write(&p, f(text)).at("writing", &p)
    };
    let already = fs::read_to_string(etc.join("passwd")).at("reading", etc.join("passwd"))?;
    if already
        .lines()
        .any(|l| l.split(':').next() == Some(&u.name))
    {
        return Ok(());
    }
    edit("passwd", &|t| {
        format!(
            "{t}{}:x:{}:{}:{}:/home/{}:/bin/bash\n",
            u.name, u.uid, u.uid, u.gecos, u.name
        )
    })?;
    edit("shadow", &|t| {
        format!("{t}{}:*:19000:0:99999:7:::\n", u.name)
    })?;
    // The member list is field 3 in both group(5) and gshadow(5).
    let add_member = |t: String| -> String {
        let mut out = String::new();
        for line in t.lines() {
            let mut f: Vec<String> = line.split(':').map(str::to_string).collect();
            let members = 3;
            if f.len() > members && u.groups.iter().any(|g| *g == f[0]) {
                let m = &mut f[members];
                if !m.is_empty() {
                    m.push(',');
                }
                m.push_str(&u.name);
            }
            let _ = writeln!(out, "{}", f.join(":"));
        }
        out
    };
    edit("group", &|t| {
        format!("{}{}:x:{}:\n", add_member(t), u.name, u.uid)
    })?;
    edit("gshadow", &|t| format!("{}{}:!::\n", add_member(t), u.name))?;
    Ok(())
}

/// Moves `/etc` and `/var` into `/usr/share/wellcar` and writes the tmpfiles that restore /var.
fn freeze_etc_and_var(root: &Path) -> Result<()> {
    let share = root.join("usr/share/wellcar");
    fs::create_dir_all(&share).at("creating", &share)?;
    let etc = share.join("etc");
    remove(&etc)?;
    fs::rename(root.join("etc"), &etc).at("freezing /etc into", &etc)?;
    let var = share.join("var");
    remove(&var)?;
    fs::rename(root.join("var"), &var).at("keeping /var defaults in", &var)?;
    let mut lines =
        String::from("# Restores Debian's default /var entries on ROOT (which starts empty).\n");
    // Two levels deep, so an entry someone created early (journald's /var/log) does not stop
    // its siblings from being restored: `C` skips only an existing destination.
    for (rel, path) in sorted_children(&var, Path::new(""))? {
        if path.is_symlink() {
            let target = fs::read_link(&path).at("reading link", &path)?;
            let _ = writeln!(
                lines,
                "L /var/{} - - - - {}",
                rel.display(),
                target.display()
            );
        } else if path.is_dir() {
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &fs::metadata(&path).at("inspecting", &path)?.permissions(),
            );
            let _ = writeln!(
                lines,
                "d /var/{} {:04o} - - -",
                rel.display(),
                mode & 0o7777
            );
            for (child, cpath) in sorted_children(&path, &rel)? {
                if cpath.is_symlink() {
                    let target = fs::read_link(&cpath).at("reading link", &cpath)?;
                    let _ = writeln!(
                        lines,
                        "L /var/{} - - - - {}",
                        child.display(),
                        target.display()
                    );
                } else {
                    let _ = writeln!(
                        lines,
                        "C /var/{} - - - - /usr/share/wellcar/var/{}",
                        child.display(),
                        child.display()
                    );
                }
            }
        }
    }
    let p = root.join("usr/lib/tmpfiles.d/wellcar-var.conf");
    fs::write(&p, lines).at("writing", &p)?;
    fs::create_dir(root.join("etc")).at("creating", root.join("etc"))?;
    fs::create_dir(root.join("var")).at("creating", root.join("var"))?;
    Ok(())
}

/// Copies Wellcar's own programs into `/usr/bin` (mode 0755).
pub fn install_usr_binaries(root: &Path, binaries: &[PathBuf]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for bin in binaries {
        let name = bin
            .file_name()
            .ok_or_else(|| BuildError::UsrBinaryName { path: bin.clone() })?;
        let dst = root.join("usr/bin").join(name);
        fs::copy(bin, &dst).at("installing", bin)?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).at("chmod", &dst)?;
    }
    Ok(())
}

/// Lays the contents of `overlay` over `/usr` (files replace, directories merge).
pub fn overlay_usr(root: &Path, overlay: &Path) -> Result<()> {
    if !overlay.is_dir() {
        return Err(BuildError::UsrOverlayNotDirectory {
            path: overlay.into(),
        });
    }
    tools::run(
        Command::new("cp")
            .arg("-a")
            .arg("--remove-destination")
            .arg(format!("{}/.", overlay.display()))
            .arg(root.join("usr")),
    )?;
    Ok(())
}

/// Entries of `dir` sorted by name, with their path relative to the /var root.
fn sorted_children(dir: &Path, rel: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut out: Vec<(PathBuf, PathBuf)> = fs::read_dir(dir)
        .at("listing", dir)?
        .filter_map(|e| e.ok())
        .map(|e| (rel.join(e.file_name()), e.path()))
        .collect();
    out.sort();
    Ok(out)
}

/// Copies the definition's overlay tree onto the root, keeping modes.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if !from.is_dir() {
        return Ok(());
    }
    tools::run(
        Command::new("cp")
            .arg("-a")
            .arg("--no-preserve=ownership")
            .arg(format!("{}/.", from.display()))
            .arg(to),
    )?;
    Ok(())
}

/// Removes a file, link or tree if it exists.
fn remove(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BuildError::Io(PathIoError::new("inspecting", p, e))),
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).at("removing", p),
        Ok(_) => fs::remove_file(p).at("removing", p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> OsDefinition {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../os/wellcar.toml");
        OsDefinition::load(&p).unwrap()
    }

    #[test]
    fn default_user_joins_its_groups() {
        let d = tempfile::tempdir().unwrap();
        let etc = d.path().join("etc");
        fs::create_dir(&etc).unwrap();
        fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        fs::write(etc.join("shadow"), "root:*:1:0:99999:7:::\n").unwrap();
        fs::write(etc.join("group"), "root:x:0:\nsudo:x:27:\nadm:x:4:syslog\n").unwrap();
        fs::write(etc.join("gshadow"), "root:*::\nsudo:*::\nadm:*::syslog\n").unwrap();
        add_default_user(d.path(), &def()).unwrap();
        add_default_user(d.path(), &def()).unwrap(); // idempotent
        let passwd = fs::read_to_string(etc.join("passwd")).unwrap();
        assert_eq!(passwd.matches("core:x:500:500:").count(), 1, "{passwd}");
        let group = fs::read_to_string(etc.join("group")).unwrap();
        assert!(
            group.contains("sudo:x:27:core\n") && group.contains("adm:x:4:syslog,core\n"),
            "{group}"
        );
        assert!(group.ends_with("core:x:500:\n"), "{group}");
        let gshadow = fs::read_to_string(etc.join("gshadow")).unwrap();
        assert!(gshadow.contains("sudo:*::core\n"), "{gshadow}");
    }

    #[test]
    fn usr_overlay_replaces_and_adds() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
        fs::write(root.join("usr/lib/systemd/systemd"), "real").unwrap();
        let ov = d.path().join("ov");
        fs::create_dir_all(ov.join("lib/systemd")).unwrap();
        fs::create_dir_all(ov.join("share/extra")).unwrap();
        fs::write(ov.join("lib/systemd/systemd"), "broken").unwrap();
        fs::write(ov.join("share/extra/x"), "x").unwrap();
        overlay_usr(&root, &ov).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("usr/lib/systemd/systemd")).unwrap(),
            "broken"
        );
        assert_eq!(
            fs::read_to_string(root.join("usr/share/extra/x")).unwrap(),
            "x"
        );
        let err = overlay_usr(&root, &d.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn var_is_frozen_with_tmpfiles() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in [
            "etc/ssh",
            "var/lib/dbus",
            "var/log",
            "usr/lib/tmpfiles.d",
            "usr/share",
        ] {
            fs::create_dir_all(r.join(dir)).unwrap();
        }
        std::os::unix::fs::symlink("/run/lock", r.join("var/lock")).unwrap();
        fs::write(r.join("etc/ssh/ssh_host_ed25519_key"), "secret").unwrap();
        fs::write(r.join("etc/machine-id"), "0123").unwrap();
        remove_machine_identity(r).unwrap();
        freeze_etc_and_var(r).unwrap();
        assert!(!r
            .join("usr/share/wellcar/etc/ssh/ssh_host_ed25519_key")
            .exists());
        assert_eq!(
            fs::read(r.join("usr/share/wellcar/etc/machine-id")).unwrap(),
            b""
        );
        let conf = fs::read_to_string(r.join("usr/lib/tmpfiles.d/wellcar-var.conf")).unwrap();
        assert!(
            conf.contains("C /var/lib/dbus - - - - /usr/share/wellcar/var/lib/dbus\n"),
            "{conf}"
        );
        assert!(conf.contains("d /var/log 0755 - - -\n"), "{conf}");
        assert!(conf.contains("L /var/lock - - - - /run/lock\n"), "{conf}");
        assert!(r.join("etc").is_dir() && fs::read_dir(r.join("etc")).unwrap().next().is_none());
    }
}
