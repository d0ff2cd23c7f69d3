//! Host tools: finding them (with the Debian package to install when missing) and running them
//! with errors that show the command and its stderr.

use std::path::PathBuf;
use std::process::{Command, Output};

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
/// Raw to qcow2.
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
        Err(BuildError::MissingTool {
            tool: dir.into(),
            package: package.into(),
        })
    }
}

/// Runs a command, failing with its command line and the tail of its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    tracing::debug!("exec: {cmd:?}");
    let out = cmd.output().map_err(|e| BuildError::Command {
        command: format!("{cmd:?}"),
        status: "could not start".into(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(BuildError::Command {
            command: format!("{cmd:?}"),
            status: out.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&out.stderr), 20),
        })
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
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
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("boom") && err.contains("exit status: 3"),
            "{err}"
        );
    }
}
