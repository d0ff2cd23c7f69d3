//! `wellcar build`: OS definition in, disk image and manifest out (crate `wellcar-image`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Options of `wellcar build`.
#[derive(Debug, clap::Args)]
pub struct Opts {
    /// Output directory.
    #[arg(long, short, default_value = "out")]
    pub output: PathBuf,
    /// The OS definition.
    #[arg(long, default_value = "os/wellcar.toml")]
    pub definition: PathBuf,
    /// Version to build (default: the definition's `os.version`).
    #[arg(long = "os-version")]
    pub os_version: Option<String>,
    /// The static initramfs `/init` (default: the one `scripts/build-guest.sh` builds).
    #[arg(long)]
    pub init_binary: Option<PathBuf>,
    /// A program installed into the image's /usr/bin (repeatable; default: Wellcar's on-host
    /// programs found next to this executable).
    #[arg(long = "usr-binary")]
    pub usr_binaries: Vec<PathBuf>,
    /// Private key that signs the update payload (default: a development key under
    /// ~/.config/wellcar, created on first use).
    #[arg(long)]
    pub signing_key: Option<PathBuf>,
    /// Another public key the image trusts for updates (repeatable; for key rotation).
    #[arg(long = "trust-key")]
    pub trusted_keys: Vec<PathBuf>,
    /// zstd level of the update payload (1-22): 3 builds fast, 19 makes the smallest payload.
    #[arg(long, default_value_t = 3)]
    pub payload_compression_level: i32,
    /// A directory whose contents are laid over /usr (repeatable, later ones win): how to add
    /// or replace files in an image.
    #[arg(long = "usr-overlay")]
    pub usr_overlays: Vec<PathBuf>,
    /// Also write the image for a platform, with its OEM settings (repeatable): qemu, metal,
    /// openstack, vmware, azure, aws, gcp.
    #[arg(long = "platform", value_name = "ID")]
    pub platforms: Vec<String>,
    /// Also make a delta payload from this earlier build directory
    /// (`wellcar_delta_from_<ITS VERSION>.bin` next to the full payload).
    #[arg(long)]
    pub delta_from: Option<PathBuf>,
}

/// Runs `wellcar build`.
pub fn run(opts: Opts) -> anyhow::Result<ExitCode> {
    let platforms = opts
        .platforms
        .iter()
        .map(|p| p.parse::<wellcar_image::platform::Platform>())
        .collect::<Result<Vec<_>, _>>()?;
    let init_binary = match opts.init_binary {
        Some(p) => p,
        None => default_init_binary()?,
    };
    let build = wellcar_image::BuildOptions {
        source_date_epoch: wellcar_image::default_source_date_epoch(&opts.definition),
        definition: opts.definition,
        output: opts.output.clone(),
        version: opts.os_version,
        init_binary,
        usr_binaries: if opts.usr_binaries.is_empty() {
            default_usr_binaries()?
        } else {
            opts.usr_binaries
        },
        usr_overlays: opts.usr_overlays,
        signing_key: opts.signing_key.clone(),
        trusted_keys: opts.trusted_keys,
        payload_compression_level: opts.payload_compression_level,
        delta_from: opts.delta_from,
    };
    let progress = crate::progress::BuildProgress::for_stderr();
    let manifest = wellcar_image::build_with_progress(&build, &|e| progress.event(e))
        .context("building the image")?;
    sign_image(&opts.output, opts.signing_key.as_deref())?;
    for platform in platforms {
        let raw = opts.output.join(&manifest.disk_image);
        let image = wellcar_image::platform::write_platform_image(&raw, platform, &opts.output)
            .with_context(|| format!("making the {} image", platform.id()))?;
        println!("{}: {}", platform.id(), image.display());
    }
    println!(
        "built Wellcar {} in {}: {} (verity root {})",
        manifest.version,
        opts.output.display(),
        manifest.disk_image,
        manifest.verity_root_hash
    );
    for delta in &manifest.deltas {
        println!(
            "delta from {}: {} ({} bytes)",
            delta.source_version,
            opts.output.join(&delta.file).display(),
            delta.size
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Signs the disk image (`image-manifest.json` + `.sig`, what `wellcar install` checks) with
/// the key that signed the payload.
fn sign_image(output: &std::path::Path, key: Option<&std::path::Path>) -> anyhow::Result<()> {
    let key = match key {
        Some(path) => wellcar_payload::load_signing_key(path)
            .with_context(|| format!("loading the signing key {}", path.display()))?,
        None => {
            wellcar_payload::dev_signing_key()
                .context("loading the development signing key")?
                .0
        }
    };
    wellcar_install::sign_build(output, &[&key])
        .with_context(|| format!("signing the disk image in {}", output.display()))?;
    Ok(())
}

/// `$WELLCAR_INIT_BINARY`, else the static build next to this executable's target directory.
fn default_init_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("WELLCAR_INIT_BINARY") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the wellcar executable")?;
    // target/<profile>/wellcar -> target/x86_64-unknown-linux-gnu/initramfs/wellcar-init
    let target = exe
        .parent()
        .and_then(|p| p.parent())
        .context("wellcar is not inside a cargo target directory")?;
    Ok(target.join("x86_64-unknown-linux-gnu/initramfs/wellcar-init"))
}

/// The on-host programs built next to this executable (`cargo build --release` puts them there);
/// names not built yet are skipped with a warning.
fn default_usr_binaries() -> anyhow::Result<Vec<PathBuf>> {
    let exe = std::env::current_exe().context("locating the wellcar executable")?;
    let dir = exe.parent().context("wellcar has no parent directory")?;
    let mut found = Vec::new();
    for name in wellcar_image::USR_BINARIES {
        let p = dir.join(name);
        if p.is_file() {
            found.push(p);
        } else {
            tracing::warn!("{} not built; the image will not contain it", p.display());
        }
    }
    Ok(found)
}
