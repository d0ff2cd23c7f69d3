//! The OEM partition (ext4, label OEM) of the written target: `config.ign`, the OEM id and
//! kernel arguments in its `grub.cfg` (which the ESP's `grub.cfg` sources: `oem_id`,
//! `linux_append`), and `oem-release` when the id changes.
//!
//! Written without mounting, so a plain-file target needs no root: e2fsprogs' `debugfs -w`
//! opens the filesystem at its byte offset inside the target (`TARGET?offset=N`), each file is
//! removed and written again, then read back and compared (debugfs reports failures only on
//! its standard error, so the read-back is the check).

use std::path::Path;
use std::process::Command;

use crate::error::InstallError;

/// The files the installer may write onto the OEM partition.
pub const IGNITION_FILE: &str = "config.ign";
/// GRUB's platform settings.
pub const GRUB_CFG_FILE: &str = "grub.cfg";
/// The OEM release file.
pub const OEM_RELEASE_FILE: &str = "oem-release";

/// What to put onto the OEM partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OemSettings {
    /// The Ignition config (checked to be JSON).
    pub ignition: Option<Vec<u8>>,
    /// The OEM (platform) id, `wellcar.oem.id=` at boot.
    pub oem_id: Option<String>,
    /// Kernel arguments appended to `linux_append`.
    pub kernel_args: Vec<String>,
}

impl OemSettings {
    /// Whether there is anything to write.
    pub fn is_empty(&self) -> bool {
        self.ignition.is_none() && self.oem_id.is_none() && self.kernel_args.is_empty()
    }

    /// Refuses an id or argument that cannot sit inside a double-quoted GRUB string.
    pub fn validate(&self) -> Result<(), InstallError> {
        if let Some(id) = &self.oem_id {
            let ok = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if !ok {
                return Err(InstallError::BadArgument {
                    what: "--oem",
                    value: id.clone(),
                    reason: "an OEM id is 1-64 characters of a-z, 0-9, '-', '_' and '.'",
                });
            }
        }
        for arg in &self.kernel_args {
            let ok = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_graphic() && !"\"'\\$;`{}".contains(c));
            if !ok {
                return Err(InstallError::BadArgument {
                    what: "--kernel-arg",
                    value: arg.clone(),
                    reason: "a kernel argument is printable ASCII without spaces, quotes, \\, $, ;, ` or braces",
                });
            }
        }
        Ok(())
    }
}

/// The OEM `grub.cfg` with the id replaced and the arguments appended.
pub fn edit_grub_cfg(old: &str, settings: &OemSettings) -> String {
    let mut out = String::new();
    let mut id_set = false;
    for line in old.lines() {
        if let (Some(id), true) = (
            &settings.oem_id,
            line.trim_start().starts_with("set oem_id="),
        ) {
            out.push_str(&format!("set oem_id=\"{id}\"\n"));
            id_set = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if let (Some(id), false) = (&settings.oem_id, id_set) {
        out.push_str(&format!("set oem_id=\"{id}\"\n"));
    }
    if !settings.kernel_args.is_empty() {
        out.push_str("# Added by wellcar install --kernel-arg.\n");
        out.push_str(&format!(
            "set linux_append=\"$linux_append {}\"\n",
            settings.kernel_args.join(" ")
        ));
    }
    out
}

fn device_spec(target: &Path, offset: u64) -> String {
    format!("{}?offset={offset}", target.display())
}

/// Reads a file from the ext4 filesystem at `offset` inside `target` (`None`: no such file).
pub fn read_file(target: &Path, offset: u64, name: &str) -> Result<Option<Vec<u8>>, InstallError> {
    let spec = device_spec(target, offset);
    let out = wellcar_contract::command::run(Command::new("debugfs").args([
        "-R",
        &format!("cat /{name}"),
        &spec,
    ]))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("File not found") {
        return Ok(None);
    }
    Ok(Some(out.stdout))
}

/// Writes `settings` onto the OEM filesystem at `offset` inside `target`.
pub fn configure(target: &Path, offset: u64, settings: &OemSettings) -> Result<(), InstallError> {
    let mut files: Vec<(&str, Vec<u8>)> = Vec::new();
    if let Some(ignition) = &settings.ignition {
        files.push((IGNITION_FILE, ignition.clone()));
    }
    if settings.oem_id.is_some() || !settings.kernel_args.is_empty() {
        let old = read_file(target, offset, GRUB_CFG_FILE)?.unwrap_or_default();
        let cfg = edit_grub_cfg(&String::from_utf8_lossy(&old), settings);
        files.push((GRUB_CFG_FILE, cfg.into_bytes()));
    }
    if let Some(id) = &settings.oem_id {
        files.push((OEM_RELEASE_FILE, format!("ID={id}\n").into_bytes()));
    }
    write_files(target, offset, &files)
}

/// Writes `files` (name in the filesystem's root, content) onto the ext4 filesystem at `offset`
/// inside `target`, replacing existing ones, and reads each back.
pub fn write_files(
    target: &Path,
    offset: u64,
    files: &[(&str, Vec<u8>)],
) -> Result<(), InstallError> {
    if files.is_empty() {
        return Ok(());
    }
    let work = tempfile::tempdir().map_err(|source| InstallError::Io {
        action: "creating a temporary directory in",
        path: std::env::temp_dir(),
        source,
    })?;
    let mut commands = String::new();
    for (name, content) in files {
        let local = work.path().join(name);
        std::fs::write(&local, content).map_err(|source| InstallError::Io {
            action: "writing",
            path: local,
            source,
        })?;
        commands.push_str(&format!("rm /{name}\nwrite {name} /{name}\n"));
    }
    let script = work.path().join("commands");
    std::fs::write(&script, commands).map_err(|source| InstallError::Io {
        action: "writing",
        path: script.clone(),
        source,
    })?;
    wellcar_contract::command::run(
        Command::new("debugfs")
            .current_dir(work.path())
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(device_spec(target, offset)),
    )?;
    for (name, content) in files {
        if read_file(target, offset, name)?.as_ref() != Some(content) {
            return Err(InstallError::OemReadBack {
                path: target.into(),
                file: (*name).into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_cfg_gets_the_id_replaced_and_arguments_appended() {
        let old =
            "# Platform settings\nset oem_id=\"qemu\"\nset linux_append=\"wellcar.autologin\"\n";
        let settings = OemSettings {
            oem_id: Some("metal".into()),
            kernel_args: vec!["console=ttyS0".into(), "quiet".into()],
            ignition: None,
        };
        settings.validate().unwrap();
        let cfg = edit_grub_cfg(old, &settings);
        assert!(cfg.contains("set oem_id=\"metal\"\n"), "{cfg}");
        assert!(!cfg.contains("qemu"), "{cfg}");
        assert!(
            cfg.ends_with("set linux_append=\"$linux_append console=ttyS0 quiet\"\n"),
            "{cfg}"
        );
        let fresh = edit_grub_cfg("", &settings);
        assert!(fresh.starts_with("set oem_id=\"metal\"\n"), "{fresh}");
    }

    #[test]
    fn unsafe_ids_and_arguments_are_refused_by_name() {
        let bad = OemSettings {
            kernel_args: vec!["a\"; reboot".into()],
            ..OemSettings::default()
        };
        let err = bad.validate().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--kernel-arg \"a\\\"; reboot\""),
            "{err}"
        );
        let bad = OemSettings {
            oem_id: Some("Q EMU".into()),
            ..OemSettings::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("--oem"));
    }
}
