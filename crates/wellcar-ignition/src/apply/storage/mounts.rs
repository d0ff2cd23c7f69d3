//! Filesystems with a `path`, mounted below the target root for the files stage (Ignition's
//! `mount` stage) and unmounted after it.
//!
//! Contract: mounts happen in order of path depth (`/var` before `/var/lib/docker`); the mount
//! point is resolved inside the root (symlinks planted in the root cannot move it outside) and
//! created if missing; `mountOptions` are passed as `-o`. [`Mounted`] unmounts in reverse order
//! — explicitly through [`Mounted::unmount`], which reports failures, or on drop after an error.
//! Swap and `none` are not mounted.

use std::path::PathBuf;
use std::process::Command;

use wellcar_contract::command;

use super::devices::wait_for_device;
use crate::apply::root::TargetRoot;
use crate::apply::{ApplyError, Recorder};
use crate::model::Config;

/// Filesystems mounted below the root, innermost last.
#[derive(Debug, Default)]
pub(crate) struct Mounted {
    points: Vec<(String, PathBuf)>,
}

impl Mounted {
    /// Unmounts everything, innermost first.
    pub(crate) fn unmount(mut self, rec: &mut Recorder) -> Result<(), ApplyError> {
        while let Some((field, host)) = self.points.pop() {
            command::run(Command::new("umount").arg(&host)).map_err(|source| {
                ApplyError::Command {
                    field: field.clone(),
                    source,
                }
            })?;
            rec.action(format!("unmounted {}", host.display()));
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        while let Some((_, host)) = self.points.pop() {
            // Best effort after an error; the error being returned says what failed.
            let _ = Command::new("umount").arg(&host).status();
        }
    }
}

/// Mounts the configured filesystems that have a `path`.
pub(crate) fn mount_filesystems(
    root: &TargetRoot,
    config: &Config,
    device_wait: std::time::Duration,
    rec: &mut Recorder,
) -> Result<Mounted, ApplyError> {
    let mut wanted: Vec<(usize, &crate::model::Filesystem, &str, &str)> = config
        .storage
        .filesystems
        .iter()
        .enumerate()
        .filter_map(|(i, fs)| {
            let format = fs.format.as_deref()?;
            let path = fs.path.as_deref()?;
            (!matches!(format, "" | "swap" | "none")).then_some((i, fs, format, path))
        })
        .collect();
    wanted.sort_by_key(|(_, _, _, path)| path.split('/').filter(|c| !c.is_empty()).count());
    let mut mounted = Mounted::default();
    for (i, fs, format, path) in wanted {
        let field = format!("storage.filesystems.{i}");
        let device = wait_for_device(&format!("{field}.device"), &fs.device, device_wait)?;
        let host = root.create_dir_all(path)?;
        let mut cmd = Command::new("mount");
        cmd.args(["-t", format]);
        if !fs.mount_options.is_empty() {
            cmd.args(["-o", &fs.mount_options.join(",")]);
        }
        cmd.arg(&device).arg(&host);
        command::run(&mut cmd).map_err(|source| ApplyError::Command {
            field: field.clone(),
            source,
        })?;
        rec.action(format!("mounted {device} ({format}) at {path}"));
        mounted.points.push((field, host));
    }
    Ok(mounted)
}
