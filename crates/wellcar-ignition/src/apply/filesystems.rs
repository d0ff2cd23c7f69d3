//! `storage.filesystems` on other disks: create ext4/xfs/btrfs/vfat/swap with Ignition's
//! `wipeFilesystem` semantics and write the systemd units that mount them at `path`.
//!
//! - Devices are paths in the provisioning environment (e.g. `/dev/vdb`), not in the target.
//! - Existing filesystem (`blkid -p`): with `wipeFilesystem: false` it is reused only if its type
//!   matches and, when given, its label and UUID match; otherwise the apply fails. With
//!   `wipeFilesystem: true` signatures are wiped (`wipefs -a`) and the filesystem recreated.
//!   Format `none` only wipes.
//! - With a `path` (or for swap) an enabled unit is written, like Butane's `with_mount_unit`:
//!   `/etc/systemd/system/<escaped path>.mount` (`RequiredBy=local-fs.target`) or
//!   `<escaped device>.swap` (`RequiredBy=swap.target`), unless the config brings a unit of
//!   that name itself. The mount point is created in the target.
//! - The device may be a `/dev/disk/by-*` path; it is waited for (see `storage::devices`).
//!   Mounting below the target root for the files stage is `storage::mounts`.
//!
//! Runs `blkid`, `wipefs` and `mkfs.<type>`/`mkswap` from `PATH`.

use std::process::{Command, Output};
use wellcar_contract::PathIoError;

use wellcar_contract::command;

use super::root::{write_atomic, TargetRoot};
use super::{ApplyError, Recorder};
use crate::model::{Config, Filesystem};

const ETC_UNITS: &str = "/etc/systemd/system";

/// `systemd-escape --path`.
pub(crate) fn escape_path(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    let parts: Vec<&str> = trimmed.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, b) in part.bytes().enumerate() {
            let plain = b.is_ascii_alphanumeric() || b == b':' || b == b'_' || (b == b'.' && j > 0);
            if plain {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out
}

/// Runs `program` for the config entry at `field`.
fn run(field: &str, program: &str, args: &[String]) -> Result<Output, ApplyError> {
    tracing::debug!("exec: {program} {args:?}");
    command::run(Command::new(program).args(args)).map_err(|source| ApplyError::Command {
        field: field.to_string(),
        source,
    })
}

/// `(TYPE, LABEL, UUID)` of an existing signature, if any.
pub(crate) fn probe(
    field: &str,
    device: &str,
) -> Result<Option<(String, String, String)>, ApplyError> {
    let args = ["-p".into(), "-o".into(), "export".into(), device.into()];
    let out = match run(field, "blkid", &args) {
        Ok(out) => out,
        // blkid's "nothing found".
        Err(ApplyError::Command { source, .. })
            if source.status().and_then(|s| s.code()) == Some(2) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    let ty = get("TYPE");
    Ok((!ty.is_empty()).then(|| (ty, get("LABEL"), get("UUID"))))
}

fn mkfs_command(fs: &Filesystem, format: &str) -> (String, Vec<String>) {
    let mut args: Vec<String> = Vec::new();
    let label = fs.label.clone();
    let uuid = fs.uuid.clone();
    let program = match format {
        "swap" => {
            args.push("-f".into());
            if let Some(l) = label {
                args.extend(["-L".into(), l]);
            }
            if let Some(u) = uuid {
                args.extend(["-U".into(), u]);
            }
            "mkswap".to_string()
        }
        "vfat" => {
            if let Some(l) = label {
                args.extend(["-n".into(), l]);
            }
            if let Some(u) = uuid {
                args.extend(["-i".into(), u.replace('-', "")]);
            }
            "mkfs.vfat".to_string()
        }
        "xfs" => {
            args.push("-f".into());
            if let Some(l) = label {
                args.extend(["-L".into(), l]);
            }
            if let Some(u) = uuid {
                args.extend(["-m".into(), format!("uuid={u}")]);
            }
            "mkfs.xfs".to_string()
        }
        other => {
            // ext4, btrfs
            args.push(if other == "ext4" {
                "-F".into()
            } else {
                "-f".into()
            });
            if let Some(l) = label {
                args.extend(["-L".into(), l]);
            }
            if let Some(u) = uuid {
                args.extend(["-U".into(), u]);
            }
            format!("mkfs.{other}")
        }
    };
    args.extend(fs.options.iter().cloned());
    args.push(fs.device.clone());
    (program, args)
}

fn write_unit(
    root: &TargetRoot,
    rec: &mut Recorder,
    name: &str,
    contents: &str,
    wanted_by: &str,
) -> Result<(), ApplyError> {
    let path = format!("{ETC_UNITS}/{name}");
    let host = root.prepare_parent(&path)?;
    write_atomic(&host, contents.as_bytes(), 0o644)?;
    let link = root.prepare_parent(&format!("{ETC_UNITS}/{wanted_by}.requires/{name}"))?;
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(&path, &link).map_err(|source| {
            ApplyError::Io(PathIoError::new("creating symlink", link.clone(), source))
        })?;
    }
    rec.action(format!("wrote and enabled {path}"));
    Ok(())
}

/// Creates the configured filesystems and their mount/swap units.
pub(crate) fn apply_filesystems(
    root: &TargetRoot,
    config: &Config,
    device_wait: std::time::Duration,
    rec: &mut Recorder,
) -> Result<(), ApplyError> {
    for (i, configured) in config.storage.filesystems.iter().enumerate() {
        let field = format!("storage.filesystems.{i}");
        let Some(format) = configured.format.as_deref().filter(|f| !f.is_empty()) else {
            continue;
        };
        // The kernel device the configured path (maybe a /dev/disk/by-* link) stands for.
        let device = super::storage::devices::wait_for_device(
            &format!("{field}.device"),
            &configured.device,
            device_wait,
        )?;
        let fs = &Filesystem {
            device,
            ..configured.clone()
        };
        let existing = probe(&field, &fs.device)?;
        let wipe = fs.wipe_filesystem == Some(true);
        let reusable = existing.as_ref().is_some_and(|(ty, label, uuid)| {
            ty == format
                && fs.label.as_deref().is_none_or(|l| l == label)
                && fs
                    .uuid
                    .as_deref()
                    .is_none_or(|u| u.eq_ignore_ascii_case(uuid))
        });
        match (&existing, wipe) {
            (Some(_), false) if reusable => {
                rec.action(format!("reusing {format} filesystem on {}", fs.device))
            }
            (Some((ty, label, uuid)), false) => {
                return Err(ApplyError::FilesystemMismatch {
                    field,
                    device: fs.device.clone(),
                    found: format!("{ty} label {label:?} uuid {uuid}"),
                })
            }
            _ => {
                if existing.is_some() {
                    run(&field, "wipefs", &["-a".into(), fs.device.clone()])?;
                    rec.action(format!("wiped signatures on {}", fs.device));
                }
                if format != "none" {
                    let (program, args) = mkfs_command(fs, format);
                    run(&field, &program, &args)?;
                    rec.action(format!("created {format} filesystem on {}", fs.device));
                }
            }
        }
        let own_unit = |name: &str| config.systemd.units.iter().any(|u| u.name == name);
        if format == "swap" {
            let name = format!("{}.swap", escape_path(&configured.device));
            if !own_unit(&name) {
                let unit = format!("# Generated by wellcar-ignition from {field}\n[Swap]\nWhat={}\n\n[Install]\nRequiredBy=swap.target\n", configured.device);
                write_unit(root, rec, &name, &unit, "swap.target")?;
            }
        } else if let Some(path) = fs.path.as_deref().filter(|_| format != "none") {
            root.create_dir_all(path)?;
            let name = format!("{}.mount", escape_path(path));
            if !own_unit(&name) {
                let options = if fs.mount_options.is_empty() {
                    String::new()
                } else {
                    format!("Options={}\n", fs.mount_options.join(","))
                };
                let unit = format!(
                    "# Generated by wellcar-ignition from {field}\n[Unit]\nBefore=local-fs.target\n\n[Mount]\nWhat={}\nWhere={path}\nType={format}\n{options}\n[Install]\nRequiredBy=local-fs.target\n",
                    configured.device
                );
                write_unit(root, rec, &name, &unit, "local-fs.target")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn path_escaping_matches_systemd_escape() {
        assert_eq!(escape_path("/var/lib/data"), "var-lib-data");
        assert_eq!(escape_path("/"), "-");
        assert_eq!(
            escape_path("/dev/disk/by-label/my-swap"),
            "dev-disk-by\\x2dlabel-my\\x2dswap"
        );
        assert_eq!(escape_path("/srv/.hidden"), "srv-\\x2ehidden");
    }

    fn have(tool: &str) -> bool {
        Command::new(tool).arg("--version").output().is_ok()
    }

    #[test]
    fn a_failing_program_is_an_error_naming_the_field_program_and_stderr() {
        let err = run(
            "storage.filesystems.0",
            "sh",
            &["-c".into(), "echo 'no such device' >&2; exit 1".into()],
        )
        .unwrap_err();
        let ApplyError::Command { field, source } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(field, "storage.filesystems.0");
        assert!(
            matches!(source, wellcar_contract::CommandError::Failed { program, stderr, .. }
                if program == "sh" && stderr == "no such device"),
            "{source:?}"
        );
        let err = run("storage.filesystems.1", "wellcar-no-mkfs", &[]).unwrap_err();
        assert_eq!(err.to_string(), "storage.filesystems.1");
        assert_eq!(
            std::error::Error::source(&err).unwrap().to_string(),
            "cannot run `wellcar-no-mkfs`"
        );
    }

    /// Runs mkfs against a regular file, which mkfs and blkid accept like a disk.
    #[test]
    fn creates_reuses_and_refuses_filesystems_on_an_image_file() {
        if !(have("mkfs.ext4") && have("blkid") && have("wipefs") && have("mkfs.vfat")) {
            panic!("mkfs.ext4, mkfs.vfat, blkid and wipefs are needed for this test (e2fsprogs, dosfstools, util-linux)");
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        crate::corpus_tests::seed_root(&root);
        let disk = tmp.path().join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        // Only ext4 gets a path (it is mounted while applying; this kernel may lack vfat).
        let cfg = |format: &str, wipe: bool| {
            let path = if format == "ext4" {
                r#""path":"/var/lib/data","#
            } else {
                ""
            };
            format!(
                r#"{{"ignition":{{"version":"3.6.0"}},"storage":{{"filesystems":[{{"device":"{}","format":"{format}","label":"data",{path}"wipeFilesystem":{wipe},"mountOptions":["noatime"]}}]}}}}"#,
                disk.display()
            )
        };
        let apply =
            |json: &str| crate::apply(&crate::parse_config(json.as_bytes()).unwrap().config, &root);
        apply(&cfg("ext4", false)).unwrap();
        let probed = probe("t", disk.to_str().unwrap()).unwrap().unwrap();
        assert_eq!((probed.0.as_str(), probed.1.as_str()), ("ext4", "data"));
        let unit =
            std::fs::read_to_string(root.join("etc/systemd/system/var-lib-data.mount")).unwrap();
        assert!(
            unit.contains("Where=/var/lib/data\nType=ext4\nOptions=noatime\n"),
            "{unit}"
        );
        let link = std::fs::read_link(
            root.join("etc/systemd/system/local-fs.target.requires/var-lib-data.mount"),
        )
        .unwrap();
        assert_eq!(link, Path::new("/etc/systemd/system/var-lib-data.mount"));
        assert!(root.join("var/lib/data").is_dir());

        let report = apply(&cfg("ext4", false)).unwrap();
        assert!(
            report.actions.iter().any(|a| a.starts_with("reusing ext4")),
            "{:?}",
            report.actions
        );
        let err = apply(&cfg("vfat", false)).unwrap_err();
        assert!(
            matches!(err, ApplyError::FilesystemMismatch { .. }),
            "{err}"
        );
        apply(&cfg("vfat", true)).unwrap();
        assert_eq!(
            probe("t", disk.to_str().unwrap()).unwrap().unwrap().0,
            "vfat"
        );

        let below = format!(
            r#"{{"ignition":{{"version":"3.6.0"}},"storage":{{"filesystems":[{{"device":"{}","format":"ext4","wipeFilesystem":true,"path":"/var/lib/data"}}],"files":[{{"path":"/var/lib/data/x"}}]}}}}"#,
            disk.display()
        );
        // The file lands on the filesystem mounted at its path, not in the root's directory.
        apply(&below).unwrap();
        assert!(!root.join("var/lib/data/x").exists());
        let check = tmp.path().join("check");
        std::fs::create_dir(&check).unwrap();
        command::run(Command::new("mount").arg(&disk).arg(&check)).unwrap();
        let on_fs = check.join("x").is_file();
        command::run(Command::new("umount").arg(&check)).unwrap();
        assert!(on_fs, "x is not on the filesystem");
    }
}
