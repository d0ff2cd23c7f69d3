//! `wellcar payload`: create, inspect and verify signed update payloads (crate
//! `wellcar-payload`).

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use wellcar_payload::{CreateOptions, PayloadInfo, TrustedKeys};

/// Subcommands of `wellcar payload`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make wellcar_update.bin (+ .sha256) from an existing build output directory.
    Create(CreateOpts),
    /// Describe a payload (signatures are not checked; use `verify`).
    Info(InfoOpts),
    /// Check signature, every blob and every image hash; exit 0 only if authentic and intact.
    Verify(VerifyOpts),
}

/// Options of `wellcar payload create`.
#[derive(Debug, clap::Args)]
pub struct CreateOpts {
    /// Build output directory holding manifest.json.
    #[arg(long)]
    pub build: PathBuf,
    /// Private key to sign with; repeat to sign with several (key rotation). Default: the
    /// development key under the user's config directory, created on first use.
    #[arg(long = "signing-key")]
    pub signing_keys: Vec<PathBuf>,
    /// Payload file to write (default: BUILD/wellcar_update.bin).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Oldest running version allowed to install this payload.
    #[arg(long)]
    pub min_source_version: Option<String>,
    /// zstd compression level (1-22).
    #[arg(long, default_value_t = wellcar_payload::create::DEFAULT_COMPRESSION_LEVEL,
          value_parser = clap::value_parser!(i32).range(1..=22))]
    pub compression_level: i32,
}

/// Options of `wellcar payload info`.
#[derive(Debug, clap::Args)]
pub struct InfoOpts {
    /// The payload.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `wellcar payload verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyOpts {
    /// The payload.
    pub file: PathBuf,
    /// Trusted public key file, or directory of *.pub files; repeatable (any one may verify).
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
}

/// Runs `wellcar payload`.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Create(opts) => create(opts),
        Command::Info(opts) => info(opts),
        Command::Verify(opts) => verify(opts),
    }
}

fn create(opts: CreateOpts) -> anyhow::Result<ExitCode> {
    let mut keys = Vec::new();
    for path in &opts.signing_keys {
        keys.push(
            wellcar_payload::load_signing_key(path)
                .with_context(|| format!("loading signing key {}", path.display()))?,
        );
    }
    if keys.is_empty() {
        let (key, path, created) =
            wellcar_payload::dev_signing_key().context("loading the development signing key")?;
        let verb = if created { "created" } else { "using" };
        eprintln!(
            "warning: no --signing-key given; {verb} the development key {} (public key {}.pub)",
            path.display(),
            path.display()
        );
        keys.push(key);
    }
    let key_refs: Vec<_> = keys.iter().collect();
    let out = opts.output.clone().unwrap_or_else(|| opts.build.clone());
    let options = CreateOptions {
        compression_level: opts.compression_level,
        min_source_version: opts.min_source_version,
        ..CreateOptions::default()
    };
    let summary = wellcar_payload::create_payload_with(
        &opts.build,
        &opts.build.join("manifest.json"),
        &key_refs,
        &out,
        &options,
    )
    .with_context(|| format!("creating a payload from {}", opts.build.display()))?;
    println!(
        "{}: {} bytes, sha256 {}",
        summary.path.display(),
        summary.size,
        summary.sha256
    );
    println!(
        "version {} for {}, /usr {} bytes ({} zero-filled), signed by {}",
        summary.version,
        summary.board,
        summary.usr_size,
        summary.usr_zero_bytes,
        summary.signers.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

fn info(opts: InfoOpts) -> anyhow::Result<ExitCode> {
    let file =
        File::open(&opts.file).with_context(|| format!("opening {}", opts.file.display()))?;
    let info = PayloadInfo::read(&mut BufReader::new(file))
        .with_context(|| format!("reading {}", opts.file.display()))?;
    let text = if opts.json {
        format!("{}\n", info.to_json())
    } else {
        info.to_string()
    };
    // A closed pipe (`| head`) is an error to report, not a panic.
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn verify(opts: VerifyOpts) -> anyhow::Result<ExitCode> {
    let trusted = TrustedKeys::from_paths(&opts.keys).context("loading trusted keys")?;
    let file =
        File::open(&opts.file).with_context(|| format!("opening {}", opts.file.display()))?;
    let report =
        wellcar_payload::verify_payload(&mut BufReader::with_capacity(1 << 20, file), &trusted)
            .with_context(|| {
                format!(
                    "{} is not an authentic, intact payload",
                    opts.file.display()
                )
            })?;
    println!(
        "{}: authentic and intact: version {} for {}, signed by {}",
        opts.file.display(),
        report.version,
        report.board,
        report.signer
    );
    Ok(ExitCode::SUCCESS)
}
