//! Host tools: finding them (with the Debian package to install when missing) and running them
//! with errors that show the command and its stderr.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;

use wellcar_contract::command::{self, STDERR_TAIL_LINES};
use wellcar_contract::CommandError;

use crate::error::{BuildError, Result};

/// A host command and the Debian package that ships it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// Command name, looked up in `PATH` (and the sbin directories).
    pub name: &'static str,
    /// The Debian package providing it.
    pub package: &'static str,
}

/// Every tool the builder calls.
pub const MMDEBSTRAP: Tool = Tool {
    name: "mmdebstrap",
    package: "mmdebstrap",
};
/// EROFS image writer.
pub const MKFS_EROFS: Tool = Tool {
    name: "mkfs.erofs",
    package: "erofs-utils",
};
/// ext4 writer (`-d` populates without mounting).
pub const MKFS_EXT4: Tool = Tool {
    name: "mkfs.ext4",
    package: "e2fsprogs",
};
/// FAT writer for the ESP.
pub const MKFS_VFAT: Tool = Tool {
    name: "mkfs.vfat",
    package: "dosfstools",
};
/// Copies files into a FAT image without mounting it.
pub const MCOPY: Tool = Tool {
    name: "mcopy",
    package: "mtools",
};
/// Makes directories in a FAT image without mounting it.
pub const MMD: Tool = Tool {
    name: "mmd",
    package: "mtools",
};
/// Builds GRUB core images.
pub const GRUB_MKIMAGE: Tool = Tool {
    name: "grub-mkimage",
    package: "grub-common",
};
/// GRUB's rescue-image maker: a hybrid BIOS (El Torito) and UEFI (appended ESP) ISO through
/// xorriso, without root.
pub const GRUB_MKRESCUE: Tool = Tool {
    name: "grub-mkrescue",
    package: "grub-common",
};
/// The ISO writer grub-mkrescue drives.
pub const XORRISO: Tool = Tool {
    name: "xorriso",
    package: "xorriso",
};
/// qcow2 conversion.
pub const QEMU_IMG: Tool = Tool {
    name: "qemu-img",
    package: "qemu-utils",
};
/// Reads the package database of the built tree.
pub const DPKG_QUERY: Tool = Tool {
    name: "dpkg-query",
    package: "dpkg",
};
/// Enables units offline (`systemctl --root`).
pub const SYSTEMCTL: Tool = Tool {
    name: "systemctl",
    package: "systemd",
};

/// Measures what a phase produced.
pub const DU: Tool = Tool {
    name: "du",
    package: "coreutils",
};

/// GRUB platform files come from these packages.
pub const GRUB_PC_DIR: (&str, &str) = ("/usr/lib/grub/i386-pc", "grub-pc-bin");
/// GRUB EFI platform files.
pub const GRUB_EFI_DIR: (&str, &str) = ("/usr/lib/grub/x86_64-efi", "grub-efi-amd64-bin");

impl Tool {
    /// Finds the tool or says which package to install.
    pub fn find(self) -> Result<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
        std::env::split_paths(&path)
            .chain(extra)
            .map(|dir| dir.join(self.name))
            .find(|p| p.is_file())
            .ok_or_else(|| BuildError::MissingTool {
                tool: self.name.into(),
                package: self.package.into(),
            })
    }

    /// A `Command` for the tool.
    pub fn command(self) -> Result<Command> {
        Ok(Command::new(self.find()?))
    }
}

/// Checks that a platform directory (GRUB modules) exists.
pub fn require_dir((dir, package): (&str, &str)) -> Result<PathBuf> {
    let p = PathBuf::from(dir);
    if p.is_dir() {
        Ok(p)
    } else {
        Err(BuildError::MissingPlatformFiles {
            dir: p,
            package: package.into(),
        })
    }
}

/// Runs a command, failing with its command line and the tail of its stderr
/// ([`wellcar_contract::command`]).
pub fn run(cmd: &mut Command) -> Result<Output> {
    tracing::debug!("exec: {cmd:?}");
    Ok(command::run(cmd)?)
}

/// Which output of a command a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Runs a command, handing each line of its stdout and stderr to `on_line` as it arrives
/// (without the line ending; not UTF-8 is replaced), and fails like [`run`] with the tail of
/// its stderr.
pub fn run_streaming(cmd: &mut Command, mut on_line: impl FnMut(Stream, &str)) -> Result<()> {
    tracing::debug!("exec: {cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CommandError::spawn(cmd, e))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let mut last = VecDeque::with_capacity(STDERR_TAIL_LINES);
    let status = std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        let out_tx = tx.clone();
        s.spawn(move || stdout.map(|p| forward_lines(p, Stream::Stdout, &out_tx)));
        s.spawn(move || stderr.map(|p| forward_lines(p, Stream::Stderr, &tx)));
        for (stream, line) in rx {
            on_line(stream, &line);
            if stream == Stream::Stderr {
                if last.len() == STDERR_TAIL_LINES {
                    last.pop_front();
                }
                last.push_back(line);
            }
        }
        child.wait()
    })
    .map_err(|e| CommandError::spawn(cmd, e))?;
    if status.success() {
        Ok(())
    } else {
        let stderr = Vec::from(last).join("\n");
        Err(CommandError::failed(cmd, status, stderr.as_bytes()).into())
    }
}

/// Sends the lines of `pipe` until it ends or nobody listens.
fn forward_lines(pipe: impl Read, stream: Stream, tx: &mpsc::Sender<(Stream, String)>) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
        let line = String::from_utf8_lossy(&buf);
        if tx
            .send((stream, line.trim_end_matches(['\n', '\r']).to_owned()))
            .is_err()
        {
            return;
        }
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_package() {
        let t = Tool {
            name: "wellcar-no-such-tool",
            package: "wellcar-pkg",
        };
        let err = t.find().unwrap_err().to_string();
        assert!(err.contains("apt-get install wellcar-pkg"), "{err}");
    }

    #[test]
    fn failing_command_reports_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        assert!(
            matches!(&err, BuildError::Command(CommandError::Failed { stderr, .. }) if stderr == "boom"),
            "{err:?}"
        );
        let err = err.to_string();
        assert!(
            err.contains("boom") && err.contains("exit status: 3"),
            "{err}"
        );
    }

    #[test]
    fn streaming_hands_over_lines_and_keeps_the_stderr_tail() {
        let mut seen = Vec::new();
        run_streaming(
            Command::new("sh").args(["-c", "echo out; echo err >&2; printf 'no newline'"]),
            |stream, line| seen.push((stream, line.to_owned())),
        )
        .unwrap();
        seen.sort_by_key(|(_, l)| l.clone());
        assert_eq!(
            seen,
            [
                (Stream::Stderr, "err".to_owned()),
                (Stream::Stdout, "no newline".to_owned()),
                (Stream::Stdout, "out".to_owned()),
            ]
        );

        let script = "for i in $(seq 1 30); do echo line$i >&2; done; exit 4";
        let err = run_streaming(Command::new("sh").args(["-c", script]), |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("exit status: 4"), "{err}");
        assert!(
            err.contains("line11\nline12") && err.ends_with("line30"),
            "{err}"
        );
        assert!(!err.contains("line10"), "{err}");
    }
}
