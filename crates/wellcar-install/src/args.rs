//! The command line of `wellcar install` and of the image's `wellcar-install` (one definition,
//! two front ends), turned into an [`InstallRequest`].

use std::path::PathBuf;

use crate::{source, IgnitionSource, ImageSource, InstallError, InstallRequest, OemSettings};

/// `wellcar install` / `wellcar-install` options.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("image_source").required(true).args(["image", "build", "image_url", "server"])))]
pub struct Args {
    /// The device or file to write (a missing file is created with the image's size).
    #[arg(short = 'd', long = "device", value_name = "DEVICE_OR_FILE")]
    pub target: PathBuf,
    /// Ignition config to put on the OEM partition as config.ign.
    #[arg(short = 'i', long, conflicts_with = "ignition_url")]
    pub ignition: Option<PathBuf>,
    /// Ignition config to fetch (http or https) and put on the OEM partition.
    #[arg(long)]
    pub ignition_url: Option<String>,
    /// The raw disk image (optionally .zst or .gz), next to its image-manifest.json(.sig).
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// A `wellcar build` output directory.
    #[arg(long, value_name = "DIR")]
    pub build: Option<PathBuf>,
    /// The raw disk image (optionally .zst or .gz) at an http(s) URL, next to its
    /// image-manifest.json(.sig).
    #[arg(long, value_name = "URL")]
    pub image_url: Option<String>,
    /// A release server (Flatcar's layout): the image is fetched from
    /// URL/CHANNEL/VERSION/ (the image as .zst, .gz or raw, with its image-manifest.json(.sig)).
    #[arg(long, value_name = "URL", requires = "channel")]
    pub server: Option<String>,
    /// The release server's channel (with --server).
    #[arg(short = 'C', long, value_name = "CHANNEL", requires = "server")]
    pub channel: Option<String>,
    /// The release to install from the channel (with --server).
    #[arg(short = 'V', long = "release-version", value_name = "VERSION", requires = "server", default_value = source::CURRENT_VERSION)]
    pub release_version: String,
    /// OEM (platform) id written into the OEM grub.cfg (`wellcar.oem.id=` at boot).
    #[arg(long = "oem", value_name = "ID")]
    pub oem_id: Option<String>,
    /// A kernel argument added to the OEM grub.cfg's linux_append (repeatable).
    #[arg(long = "kernel-arg", value_name = "ARG")]
    pub kernel_args: Vec<String>,
    /// A public key (or a directory of *.pub keys) the image's signature must verify with
    /// (repeatable; default: the keys the running system trusts for updates).
    #[arg(long = "trust-key", value_name = "PATH")]
    pub trust_keys: Vec<PathBuf>,
    /// Install an unsigned or wrongly signed image (its size and sha256 are still checked
    /// against its manifest).
    #[arg(long)]
    pub insecure: bool,
}

impl Args {
    /// The request these options describe (reads the keys and the Ignition config).
    pub fn request(&self) -> Result<InstallRequest, InstallError> {
        let image = match (&self.image, &self.build, &self.image_url, &self.server) {
            (Some(file), ..) => ImageSource::File(file.clone()),
            (None, Some(dir), ..) => ImageSource::Build(dir.clone()),
            (None, None, Some(url), _) => ImageSource::Url(url.clone()),
            (None, None, None, Some(server)) => ImageSource::Release {
                server: server.clone(),
                channel: self.channel.clone().unwrap_or_default(),
                version: self.release_version.clone(),
            },
            (None, None, None, None) => {
                unreachable!("clap requires --image, --build, --image-url or --server")
            }
        };
        let key_paths = if self.trust_keys.is_empty() {
            vec![PathBuf::from(wellcar_payload::SYSTEM_TRUSTED_KEYS_DIR)]
        } else {
            self.trust_keys.clone()
        };
        let trusted_keys = match wellcar_payload::TrustedKeys::from_paths(&key_paths) {
            Ok(keys) => keys,
            // --insecure does not need keys.
            Err(_) if self.insecure => wellcar_payload::TrustedKeys::default(),
            Err(e) => return Err(e.into()),
        };
        let ignition = match (&self.ignition, &self.ignition_url) {
            (Some(path), _) => Some(source::read_ignition(&IgnitionSource::File(path.clone()))?),
            (None, Some(url)) => Some(source::read_ignition(&IgnitionSource::Url(url.clone()))?),
            (None, None) => None,
        };
        Ok(InstallRequest {
            target: self.target.clone(),
            image,
            trusted_keys,
            insecure: self.insecure,
            oem: OemSettings {
                ignition,
                oem_id: self.oem_id.clone(),
                kernel_args: self.kernel_args.clone(),
            },
        })
    }
}
