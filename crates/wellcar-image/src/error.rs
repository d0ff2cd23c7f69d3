//! The image builder's error type: every variant names the file, tool, package, field or size
//! that was wrong, so a failed build says what to fix, and carries the error that caused it as
//! its [`source`](std::error::Error::source) (`wellcar build` prints the whole chain).

use std::path::PathBuf;
use wellcar_contract::{IoResultExt, PathIoError};

use wellcar_contract::{CommandError, VersionError};

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
    /// A directory of GRUB platform files (modules, `boot.img`) is not installed.
    #[error("GRUB platform files {dir} not found: install the Debian package `{package}` (apt-get install {package})")]
    MissingPlatformFiles {
        /// The directory.
        dir: PathBuf,
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
    /// The OS definition file cannot be read.
    #[error("reading the OS definition {path}")]
    DefinitionRead {
        /// The definition file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The OS definition is not TOML of the definition's schema (the cause names the key).
    #[error("OS definition {path}")]
    DefinitionSyntax {
        /// The definition file.
        path: PathBuf,
        /// The parser's error, naming the line and key.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A field of the OS definition has a value the build refuses.
    #[error("OS definition {path}: {field}: {problem}")]
    DefinitionField {
        /// The definition file.
        path: PathBuf,
        /// The field (`debian.packages.0`, `systemd.mask.1`, ...).
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A `[groups]` entry cannot be given its gid in the tree.
    #[error("group {group} cannot get gid {gid}: {problem}")]
    FixedGroup {
        /// The group's name.
        group: String,
        /// The gid the definition asks for.
        gid: u32,
        /// What stands in the way.
        problem: String,
    },
    /// The definition's `os.version` is not an OS version.
    #[error("OS definition {path}: os.version")]
    Version {
        /// The definition file.
        path: PathBuf,
        /// Why it is not a version.
        #[source]
        source: VersionError,
    },
    /// The version given to build instead of the definition's is not an OS version.
    #[error("the version to build (given instead of os.version)")]
    VersionOverride(#[source] VersionError),
    /// The initramfs `/init` binary is missing.
    #[error(
        "the initramfs /init binary {path} is missing; build it with `scripts/build-guest.sh`"
    )]
    InitBinaryMissing {
        /// Where it was expected.
        path: PathBuf,
    },
    /// The initramfs could not be built.
    #[error("building the initramfs {path}")]
    Initramfs {
        /// The initramfs being written.
        path: PathBuf,
        /// The cause (naming the module or file).
        #[source]
        source: wellcar_initramfs::InitramfsError,
    },
    /// The Debian tree is not merged-/usr: a top-level directory is not a link into `/usr`.
    #[error("root filesystem: {path} is not a merged-/usr symlink")]
    NotMergedUsr {
        /// The directory.
        path: PathBuf,
    },
    /// The Debian tree's package database lists no installed package.
    #[error("root filesystem: no installed packages in {path}")]
    NoInstalledPackages {
        /// The dpkg database directory.
        path: PathBuf,
    },
    /// The Debian tree has no kernel.
    #[error("root filesystem: no vmlinuz-* in {path} (is a linux-image package listed?)")]
    NoKernel {
        /// The `/boot` directory searched.
        path: PathBuf,
    },
    /// A program to install into `/usr/bin` has no file name.
    #[error("{path}: a program for /usr/bin must be a file")]
    UsrBinaryName {
        /// The path given.
        path: PathBuf,
    },
    /// A `/usr` overlay is not a directory.
    #[error("usr overlay {path} is not a directory")]
    UsrOverlayNotDirectory {
        /// The path given.
        path: PathBuf,
    },
    /// A generator in `systemd.skip_generators` is not in the image.
    #[error("{path} is in systemd.skip_generators but is no generator in the image")]
    UnknownGenerator {
        /// Where the generator was looked for.
        path: PathBuf,
    },
    /// A unit to start after `sysinit.target` is no longer ordered before it: its upstream
    /// ordering changed.
    #[error("{path} has no `Before=` line naming {target}: check the boot order it now has")]
    UnitOrdering {
        /// The unit file.
        path: PathBuf,
        /// The target it was expected before.
        target: &'static str,
    },
    /// The /usr filesystem does not fit its slot.
    #[error("the /usr filesystem is {fs_size} bytes but a USR slot holds at most {capacity} bytes before its verity hash area")]
    UsrTooLarge {
        /// Size of the built filesystem.
        fs_size: u64,
        /// Room in the slot.
        capacity: u64,
    },
    /// The dm-verity hash tree of the /usr slot image could not be written.
    #[error("formatting dm-verity in {path}")]
    Verity {
        /// The slot image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: wellcar_verity::VerityError,
    },
    /// GRUB's `boot.img` is not one sector.
    #[error("GRUB's boot.img ({dir}) is {len} bytes, expected 512")]
    BootImgSize {
        /// The GRUB platform directory it is in.
        dir: PathBuf,
        /// Its size.
        len: usize,
    },
    /// `core.img` is not whole sectors, or shorter than two.
    #[error("GRUB's core.img is {len} bytes, expected a multiple of 512 of at least 1024")]
    CoreImgSize {
        /// Its size.
        len: usize,
    },
    /// `core.img` has more sectors than one block list entry describes.
    #[error("GRUB's core.img has {sectors} sectors, more than one block list entry holds")]
    CoreImgSectors {
        /// Its sectors.
        sectors: u64,
    },
    /// A partition image is larger than its partition.
    #[error("{image} is {len} bytes but partition {number} ({label}) holds {capacity}")]
    PartitionTooSmall {
        /// The image file (partition image or GRUB's core.img).
        image: PathBuf,
        /// Its size.
        len: u64,
        /// The partition number.
        number: u32,
        /// The partition label.
        label: String,
        /// The partition size.
        capacity: u64,
    },
    /// The version cannot go into the initial boot state.
    #[error("making the initial boot state")]
    InitialBootState(#[source] wellcar_bootstate::Refusal),
    /// Writing the boot state into the ESP tree failed (the cause names the file).
    #[error("writing the initial boot state")]
    BootState(#[source] wellcar_bootstate::StoreError),
    /// The payload signing key cannot be loaded or made (the cause names the file).
    #[error("the payload signing key")]
    SigningKey(#[source] wellcar_payload::KeyError),
    /// A key to trust for updates cannot be loaded.
    #[error("the trusted key {path}")]
    TrustedKey {
        /// The key file given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: wellcar_payload::KeyError,
    },
    /// The update payload could not be created.
    #[error("creating the update payload {path}")]
    Payload {
        /// The payload file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<wellcar_payload::CreateError>,
    },
    /// The delta payload from an earlier build could not be made.
    #[error("making the delta payload from the build in {from}")]
    Delta {
        /// The earlier build directory.
        from: PathBuf,
        /// The cause.
        #[source]
        source: Box<wellcar_payload::CreateError>,
    },
    /// The build manifest could not be written.
    #[error(transparent)]
    Manifest(#[from] wellcar_contract::BuildManifestError),
    /// An I/O operation on a path failed.
    #[error(transparent)]
    Io(#[from] PathIoError),
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
        Ok(self.at_path(action, path.into())?)
    }
}
