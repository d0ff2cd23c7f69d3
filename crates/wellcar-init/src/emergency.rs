//! The emergency shell a failed first-boot provisioning stops in.
//!
//! Contract: [`stop`] writes the report to `wellcar_init::failure::REPORT_PATH` (tmpfs `/run`),
//! prints it on the console and logs it to the kernel log at level 2, then, when the new root's
//! `/usr` is mounted and has `bash`, bind-mounts `/dev`, `/proc`, `/sys` and `/run` into
//! `/sysroot`, chroots `/init` there and runs `bash -l` on `/dev/console` (through
//! `setsid --ctty` for job control when the root has it). When the shell exits, the report is
//! printed again and a new shell started: the machine never reboots by itself. Without a
//! shell it waits forever with the report on the console. The first-boot flag is untouched.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rustix::mount::MountFlags;

use crate::log::Log;
use crate::SYSROOT;

/// The shell and the session helper, inside the new root.
const SHELL: &str = "/usr/bin/bash";
const SETSID: &str = "/usr/bin/setsid";

/// Prints `report` (its lines) and stops in the emergency shell; never returns.
pub fn stop(log: &mut Log, report_lines: &[String], report_text: &str) -> ! {
    let report_path = Path::new(wellcar_init::failure::REPORT_PATH);
    if let Some(dir) = report_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(report_path, report_text);
    for line in report_lines {
        log.console(line);
    }
    let sysroot = Path::new(SYSROOT);
    let has_shell = sysroot.join(SHELL.trim_start_matches('/')).exists();
    let in_root = has_shell && enter_root(sysroot).is_ok();
    if !in_root {
        log.console("no shell available (the new root's /usr is not mounted); stopped here");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    loop {
        let status = shell().map(|mut child| child.wait());
        log.console(&format!(
            "emergency shell ended ({status:?}); starting a new one"
        ));
        for line in report_lines {
            log.console(line);
        }
        // A shell that cannot start at all must not spin.
        if !matches!(status, Ok(Ok(_))) {
            std::thread::sleep(Duration::from_secs(5));
        }
    }
}

/// Bind-mounts the API filesystems into `sysroot` and chroots there.
fn enter_root(sysroot: &Path) -> std::io::Result<()> {
    for api in crate::switchroot::MOVED_MOUNTS {
        let target = sysroot.join(api.trim_start_matches('/'));
        let _ = std::fs::create_dir_all(&target);
        crate::sysroot::mount(api, &target, "", MountFlags::BIND | MountFlags::REC, "")
            .map_err(std::io::Error::other)?;
    }
    std::os::unix::fs::chroot(sysroot)?;
    std::env::set_current_dir("/")
}

/// Starts `bash -l` on the console.
fn shell() -> std::io::Result<std::process::Child> {
    let console = || {
        std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/console")
    };
    let mut command = if Path::new(SETSID).exists() {
        let mut c = Command::new(SETSID);
        c.args(["--ctty", "--wait", SHELL, "-l"]);
        c
    } else {
        let mut c = Command::new(SHELL);
        c.arg("-l");
        c
    };
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin")
        .env("HOME", "/root")
        .env("TERM", "linux")
        .env("PS1", "wellcar-emergency# ")
        .stdin(Stdio::from(console()?))
        .stdout(Stdio::from(console()?))
        .stderr(Stdio::from(console()?))
        .spawn()
}
