//! Why an installation was refused or failed; every variant names the file, device, URL or
//! argument concerned. A failure after writing began leaves the target without a partition
//! table (its primary and backup GPT headers were zeroed first), so it never looks bootable.

use std::path::PathBuf;

/// An installation error.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Plain I/O on a file or device failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or device.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The build directory's `manifest.json` could not be read.
    #[error("reading the build in {}", dir.display())]
    BuildManifest {
        /// The build directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: wellcar_contract::BuildManifestError,
    },
    /// The build has no raw disk image.
    #[error("the build in {} names no disk image", dir.display())]
    NoDiskImage {
        /// The build directory.
        dir: PathBuf,
    },
    /// No signature file: the image is unsigned.
    #[error("the image is unsigned: {} is missing (build with --signing-key, or pass --insecure)", path.display())]
    Unsigned {
        /// The missing signature file.
        path: PathBuf,
    },
    /// No signature verifies with a trusted key.
    #[error("no signature in {} verifies with a trusted key (signed by: {signers}; trusted: {trusted})", path.display())]
    BadSignature {
        /// The signature file.
        path: PathBuf,
        /// Fingerprints of the keys that signed.
        signers: String,
        /// The trusted keys.
        trusted: String,
    },
    /// The trusted keys could not be loaded.
    #[error("loading the trusted keys")]
    Keys(#[from] wellcar_payload::KeyError),
    /// The manifest or signature file is not valid JSON of its shape.
    #[error("{} is not valid", path.display())]
    ManifestParse {
        /// The file.
        path: PathBuf,
        /// The JSON error (names the key).
        #[source]
        source: serde_json::Error,
    },
    /// The image file is not the one the manifest names.
    #[error("{} is not the image the manifest names ({expected}, optionally .zst or .gz)", image.display())]
    ImageName {
        /// The image given.
        image: PathBuf,
        /// The manifest's name.
        expected: String,
    },
    /// The target is too small for the image.
    #[error("target {} is too small: {size} bytes, the image needs {needed}", path.display())]
    TargetTooSmall {
        /// The target.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The image size.
        needed: u64,
    },
    /// The target (or one of its partitions) is mounted.
    #[error("target {} is in use: {reason}", path.display())]
    TargetInUse {
        /// The target.
        path: PathBuf,
        /// What uses it (`/dev/sda1 is mounted at /boot`).
        reason: String,
    },
    /// The target is neither a block device nor a regular file.
    #[error("target {} is neither a block device nor a regular file", path.display())]
    TargetKind {
        /// The target.
        path: PathBuf,
    },
    /// The image ended before the size the manifest signs.
    #[error("image {} is truncated: {read} bytes, the signed manifest says {expected}", path.display())]
    Truncated {
        /// The image.
        path: PathBuf,
        /// Bytes read.
        read: u64,
        /// Signed size.
        expected: u64,
    },
    /// The image is longer than the size the manifest signs.
    #[error("image {} is longer than the {expected} bytes the signed manifest says", path.display())]
    TooLong {
        /// The image.
        path: PathBuf,
        /// Signed size.
        expected: u64,
    },
    /// The image's content does not match the signed sha256.
    #[error("image {} does not match the signed manifest: sha256 {actual}, signed {expected}", path.display())]
    Tampered {
        /// The image.
        path: PathBuf,
        /// Computed sha256.
        actual: String,
        /// Signed sha256.
        expected: String,
    },
    /// The image's partition table could not be read or written.
    #[error("partition table of {}", path.display())]
    Gpt {
        /// The image or target.
        path: PathBuf,
        /// gptman's error.
        #[source]
        source: gptman::Error,
    },
    /// The image has no OEM partition.
    #[error("image {} has no OEM partition", path.display())]
    NoOemPartition {
        /// The image.
        path: PathBuf,
    },
    /// An `--oem` id or `--kernel-arg` cannot go into GRUB's config.
    #[error("{what} {value:?} is not allowed: {reason}")]
    BadArgument {
        /// Which option.
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A file or URL install needs does not exist (no such file, HTTP 404).
    #[error("{what} is missing: {} (no such file, or HTTP 404)", path.display())]
    NotFound {
        /// What it is.
        what: &'static str,
        /// The file or URL.
        path: PathBuf,
    },
    /// No candidate of the image exists.
    #[error("the image is missing: none of {tried} exists (no such file, or HTTP 404)")]
    ImageMissing {
        /// The files or URLs tried, in order.
        tried: String,
    },
    /// A small file (manifest, signature, Ignition config) is larger than its bound.
    #[error("{} is larger than {limit} bytes", path.display())]
    TooLarge {
        /// The file or URL.
        path: PathBuf,
        /// The bound.
        limit: u64,
    },
    /// A kernel argument an unattended install needs is missing.
    #[error("{argument}= is missing: {because}= asks for an install")]
    MissingArgument {
        /// The missing argument.
        argument: &'static str,
        /// The argument that needs it.
        because: &'static str,
    },
    /// The Ignition config is not JSON.
    #[error("Ignition config from {source_name} is not JSON")]
    IgnitionNotJson {
        /// File or URL.
        source_name: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Fetching a URL failed.
    #[error("fetching {url}")]
    Fetch {
        /// The URL.
        url: String,
        /// ureq's error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// A host tool failed.
    #[error(transparent)]
    Command(#[from] wellcar_contract::CommandError),
    /// Writing the OEM partition did not take (read back differs).
    #[error("writing {file} onto the OEM partition of {}: read back differs", path.display())]
    OemReadBack {
        /// The target.
        path: PathBuf,
        /// The file on the OEM partition.
        file: String,
    },
}
