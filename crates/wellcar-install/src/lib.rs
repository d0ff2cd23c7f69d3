//! `wellcar install`: writes a signed Wellcar disk image onto a disk or a plain file.
//!
//! Contract ([`install`]):
//! 1. the image manifest's signature is checked against the trusted release keys
//!    ([`signature`]); an unsigned or wrongly signed image is refused unless `insecure`;
//! 2. the target is checked ([`target`]): not mounted, not holding the running system, not
//!    held by another device, not smaller than the image; a missing file is created;
//! 3. the image is streamed, decompressed on the fly, hashed, with its partition table kept
//!    back, after the target's own partition table was wiped ([`write`]); a short, long or
//!    altered image is refused and leaves no partition table;
//! 4. `config.ign`, the OEM id and kernel arguments go onto the OEM partition ([`oem`]);
//! 5. last, the protective MBR and the GPT, its backup moved to the end of the target.
//!
//! The library prints nothing: it reports [`InstallEvent`]s to a callback.

#![deny(missing_docs)]

pub mod args;
pub mod error;
pub mod oem;
pub mod signature;
pub mod source;
pub mod target;
pub mod unattended;
pub mod write;

use std::path::{Path, PathBuf};

pub use error::InstallError;
pub use oem::OemSettings;
pub use signature::{sign_build, verify_manifest, CheckedManifest};
pub use source::{Compression, IgnitionSource, ImageSource, Location};
use wellcar_payload::TrustedKeys;

/// What to install where.
#[derive(Debug, Clone)]
pub struct InstallRequest {
    /// The device or file to write.
    pub target: PathBuf,
    /// The image.
    pub image: ImageSource,
    /// The keys a signature must verify with.
    pub trusted_keys: TrustedKeys,
    /// Accept an unsigned or wrongly signed image (its hashes are still checked).
    pub insecure: bool,
    /// What goes onto the OEM partition.
    pub oem: OemSettings,
}

/// Progress of an installation, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallEvent {
    /// The manifest was checked; writing starts.
    Verified {
        /// OS version.
        version: String,
        /// Which key signed it (`None`: unchecked, `--insecure`).
        signed_by: Option<String>,
        /// The image file.
        image: PathBuf,
        /// Its compression.
        compression: Compression,
        /// Raw image size.
        size: u64,
    },
    /// Bytes of the raw image streamed so far.
    Writing {
        /// Done.
        written: u64,
        /// Total.
        total: u64,
    },
    /// The whole image was written and matched the signed size and sha256.
    Written {
        /// Bytes.
        bytes: u64,
        /// Its sha256.
        sha256: String,
    },
    /// The OEM partition was configured.
    OemConfigured,
    /// The partition table was written: the target is bootable.
    Done,
}

impl std::fmt::Display for InstallEvent {
    /// One line for people.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstallEvent::Verified {
                version,
                signed_by,
                image,
                compression,
                size,
            } => write!(
                f,
                "image {} ({compression:?}, {size} bytes raw): Wellcar {version}, {}",
                image.display(),
                signed_by.as_ref().map_or_else(
                    || "NOT signature-checked (--insecure)".to_string(),
                    |k| format!("signed by {k}")
                )
            ),
            InstallEvent::Writing { written, total } => {
                write!(f, "writing: {} / {} MiB", written >> 20, total >> 20)
            }
            InstallEvent::Written { bytes, sha256 } => write!(
                f,
                "written: {bytes} bytes, sha256 {sha256} matches the signed manifest"
            ),
            InstallEvent::OemConfigured => f.write_str("OEM partition configured"),
            InstallEvent::Done => f.write_str("partition table written: the target is bootable"),
        }
    }
}

/// The outcome of [`install`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// The target.
    pub target: PathBuf,
    /// The version installed.
    pub version: String,
    /// The target's size.
    pub target_size: u64,
}

/// Installs as the module documentation says.
pub fn install(
    request: &InstallRequest,
    progress: &dyn Fn(InstallEvent),
) -> Result<InstallReport, InstallError> {
    request.oem.validate()?;
    let checked = verify_manifest(
        &request.image.manifest_location(),
        &request.trusted_keys,
        request.insecure,
    )?;
    let manifest = &checked.manifest;
    let candidates = request.image.image_candidates(&manifest.disk_image)?;
    let (mut stream, compression, image) = source::open_image(&candidates)?;
    let image_path = image.name();
    let mut target = target::open_target(&request.target, manifest.disk_image_size)?;
    progress(InstallEvent::Verified {
        version: manifest.version.clone(),
        signed_by: checked.signed_by.clone(),
        image: image_path.clone(),
        compression,
        size: manifest.disk_image_size,
    });
    write::wipe_partition_table(&mut target)?;
    let head = write::stream_image(
        &mut stream,
        &image_path,
        &mut target,
        manifest.disk_image_size,
        &manifest.disk_image_sha256,
        progress,
    )?;
    let gpt = write::image_gpt(&head, &image_path)?;
    if !request.oem.is_empty() {
        let oem = oem_offset(&gpt, &image_path)?;
        oem::configure(&target.path, oem, &request.oem)?;
        progress(InstallEvent::OemConfigured);
    }
    write::gpt_last(&mut target, &head, gpt)?;
    progress(InstallEvent::Done);
    Ok(InstallReport {
        target: target.path,
        version: manifest.version.clone(),
        target_size: target.size,
    })
}

/// Byte offset of the OEM partition in a partition table.
fn oem_offset(gpt: &gptman::GPT, image: &Path) -> Result<u64, InstallError> {
    gpt.iter()
        .find(|(_, e)| e.is_used() && e.partition_name.as_str() == "OEM")
        .map(|(_, e)| e.starting_lba * gpt.sector_size)
        .ok_or_else(|| InstallError::NoOemPartition { path: image.into() })
}

#[cfg(test)]
mod install_tests;
