//! Host tools the tests run, and the Debian package of each.
//!
//! Contract: a test that needs a tool never skips when it is missing; it fails, naming the
//! Debian package that provides the tool (`scripts/install-deps.sh` installs every one of them,
//! `scripts/check-deps.sh` lists them). [`run`] and [`output`] run a command and fail that way
//! when its program is not installed; [`require`] checks up front.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `(program, Debian package)` of the tools tests run (the same pairs as
/// `scripts/check-deps.sh`).
const PACKAGES: &[(&str, &str)] = &[
    ("veritysetup", "cryptsetup-bin"),
    ("losetup", "mount"),
    ("sha256sum", "coreutils"),
    ("dd", "coreutils"),
    ("zstd", "zstd"),
    ("qemu-img", "qemu-utils"),
    ("mkfs.erofs", "erofs-utils"),
    ("mcopy", "mtools"),
    ("debugfs", "e2fsprogs"),
    ("sgdisk", "gdisk"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("scp", "openssh-client"),
    ("gzip", "gzip"),
    ("tar", "tar"),
    ("kill", "procps"),
    ("etcd", "etcd-server"),
    ("dbus-daemon", "dbus-daemon"),
    ("busctl", "systemd"),
];

/// The Debian package that provides `program`, if it is one the tests run.
pub fn package_of(program: &str) -> Option<&'static str> {
    PACKAGES
        .iter()
        .find(|(p, _)| *p == program)
        .map(|(_, package)| *package)
}

/// What to tell someone whose machine lacks `program`.
fn missing(program: &str) -> String {
    match package_of(program) {
        Some(package) => format!(
            "{program} is not installed: install the Debian package `{package}` \
             (scripts/install-deps.sh installs it)"
        ),
        None => format!("{program} is not installed (see scripts/install-deps.sh)"),
    }
}

/// The path of `program` on `PATH`; fails the test, naming its package, when it is not there.
pub fn require(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| panic!("{}", missing(program)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `cmd` and returns its output, whatever its exit status; fails the test, naming the
/// package, when the program is not installed.
pub fn output(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{cmd:?}: {}", missing(&cmd.get_program().to_string_lossy()))
        }
        Err(e) => panic!("{cmd:?}: {e}"),
    }
}

/// Runs `cmd` and returns its output; fails the test unless it exits 0 (with its stderr), or
/// when the program is not installed (naming the package).
pub fn run(cmd: &mut Command) -> Output {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_fails_naming_its_package() {
        let empty = std::env::temp_dir().join("wellcar-test-support-no-tools");
        std::fs::create_dir_all(&empty).unwrap();
        // The program is looked up on the command's own PATH: here, a directory without it.
        let err = std::panic::catch_unwind(|| {
            output(
                Command::new("veritysetup")
                    .arg("--version")
                    .env("PATH", &empty),
            )
        })
        .unwrap_err();
        let message = err.downcast_ref::<String>().unwrap();
        assert!(
            message.contains(
                "veritysetup is not installed: install the Debian package `cryptsetup-bin`"
            ),
            "{message}"
        );
        let err = std::panic::catch_unwind(|| require("wellcar-no-such-tool")).unwrap_err();
        let message = err.downcast_ref::<String>().unwrap();
        assert!(
            message.contains("wellcar-no-such-tool is not installed"),
            "{message}"
        );
    }

    #[test]
    fn a_known_missing_program_names_the_package() {
        assert_eq!(
            missing("veritysetup"),
            "veritysetup is not installed: install the Debian package `cryptsetup-bin` \
             (scripts/install-deps.sh installs it)"
        );
    }

    #[test]
    fn run_returns_stdout_and_fails_on_a_bad_exit() {
        let out = run(Command::new("sh").args(["-c", "echo hello"]));
        assert_eq!(out.stdout, b"hello\n");
        let err = std::panic::catch_unwind(|| {
            run(Command::new("sh").args(["-c", "echo broken >&2; exit 3"]))
        })
        .unwrap_err();
        let message = err.downcast_ref::<String>().unwrap();
        assert!(message.contains("broken"), "{message}");
        assert!(require("sh").is_absolute());
    }

    #[test]
    fn every_tool_is_listed_in_check_deps_with_the_same_package() {
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check-deps.sh"),
        )
        .unwrap();
        for (program, package) in PACKAGES {
            assert!(
                script.contains(&format!("{program}:{package}")),
                "scripts/check-deps.sh does not list {program}:{package}"
            );
        }
    }
}
