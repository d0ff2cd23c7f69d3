//! The image builder's error type: every variant names the file, tool, package or size that
//! was wrong, so a failed build says what to fix.

use std::path::PathBuf;

use wellcar_contract::CommandError;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A host tool the build needs is not installed.
    #[error("host tool `{tool}` not found: install the Debian package `{package}` (apt-get install {package})")]
    MissingTool {
        /// The command name.
        tool: String,
        /// The Debian package that ships it.
        package: String,
    },
    /// A host command could not be started or failed: its command line, exit status and the
    /// tail of its stderr.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The OS definition names a package the apt sources do not have.
    #[error("unknown package `{package}` in the OS definition: apt cannot locate it in {sources}")]
    UnknownPackage {
        /// The package name.
        package: String,
        /// The apt sources used.
        sources: PathBuf,
        /// mmdebstrap's failure.
        #[source]
        source: Box<CommandError>,
    },
    /// The OS definition is malformed.
    #[error("OS definition {path}: {message}")]
    Definition {
        /// The definition file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The /usr filesystem does not fit its slot.
    #[error("the /usr filesystem is {fs_size} bytes but a USR slot holds at most {capacity} bytes before its verity hash area")]
    UsrTooLarge {
        /// Size of the built filesystem.
        fs_size: u64,
        /// Room in the slot.
        capacity: u64,
    },
    /// The root filesystem is not what the builder expects.
    #[error("root filesystem {path}: {message}")]
    Rootfs {
        /// The offending path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The build manifest could not be written.
    #[error(transparent)]
    Manifest(#[from] wellcar_contract::BuildManifestError),
    /// A file operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Signing keys or the update payload.
    #[error("update payload {path}: {message}")]
    Payload {
        /// The key or payload file.
        path: PathBuf,
        /// What went wrong, with causes.
        message: String,
    },
    /// Writing the partition table failed.
    #[error(transparent)]
    Disk(#[from] wellcar_disk::DiskError),
}

/// Shorthand for the builder's results.
pub type Result<T, E = BuildError> = std::result::Result<T, E>;

/// Adds the path and action to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| BuildError::Io {
            action,
            path: path.into(),
            source,
        })
    }
}
