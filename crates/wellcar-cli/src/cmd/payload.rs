//! `wellcar payload`: create, inspect and verify signed update payloads (crate
//! `wellcar-payload`).

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
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
    /// Install a full or delta payload into a USR image file or partition (air-gapped
    /// updates, tests); resumable: an interrupted apply continues from TARGET.checkpoint.
    Apply(ApplyOpts),
}

/// Options of `wellcar payload apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyOpts {
    /// The payload.
    pub file: PathBuf,
    /// Trusted public key file, or directory of *.pub files; repeatable (any one may verify).
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// The USR image or partition to write (an existing file: `truncate -s 1G new-usr.img`).
    #[arg(long)]
    pub target: PathBuf,
    /// For a delta: the USR image or partition it was made from; read only, and verified
    /// against the delta's source root hash before any byte of it is used.
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// For a delta that copies an unchanged kernel: the source's kernel (default:
    /// SOURCE.vmlinuz, where an earlier `payload apply` put it); checked by sha256.
    #[arg(long, requires = "source")]
    pub source_kernel: Option<PathBuf>,
    /// Likewise the source's initramfs (default: SOURCE.initramfs).
    #[arg(long, requires = "source")]
    pub source_initramfs: Option<PathBuf>,
    /// Where the kernel goes (default: TARGET.vmlinuz).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Where the initramfs goes (default: TARGET.initramfs).
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// The version the source runs: a delta must be from it, a payload newer than it.
    #[arg(long)]
    pub running_version: Option<String>,
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
    /// Make a delta against this earlier build directory (written as
    /// wellcar_delta_from_<VERSION>.bin unless --output says otherwise).
    #[arg(long)]
    pub delta_from: Option<PathBuf>,
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
        Command::Apply(opts) => apply(opts),
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
        delta_from: opts.delta_from.clone(),
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
    if let Some(source) = &summary.source_version {
        println!("delta: applies only to a slot running {source}");
    }
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

fn apply(opts: ApplyOpts) -> anyhow::Result<ExitCode> {
    use std::io::{Seek, SeekFrom};
    use wellcar_payload::{
        ApplyPolicy, Checkpoint, InstallTargets, Installer, PayloadHead, SourceReader, UsrPartition,
    };
    let trusted = TrustedKeys::from_paths(&opts.keys).context("loading trusted keys")?;
    let path = &opts.file;
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let file_len = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let head = PayloadHead::read(&mut BufReader::new(&mut file))
        .and_then(|head| head.authenticate(&trusted))
        .with_context(|| format!("{} is not an authentic payload", path.display()))?;
    let manifest = head.manifest();
    let complete_len = head.data_start() + manifest.data_len;
    if file_len != complete_len {
        anyhow::bail!(
            "{} is {file_len} bytes, its manifest says {complete_len}: {}; nothing written",
            path.display(),
            if file_len < complete_len {
                "truncated"
            } else {
                "trailing data"
            }
        );
    }
    let mut policy = ApplyPolicy::new(manifest.board.clone(), opts.running_version.clone());
    policy.force = opts.running_version.is_none();
    let with_suffix = |suffix: &str| suffixed(&opts.target, suffix);
    let targets = InstallTargets {
        usr: UsrPartition::open(&opts.target)
            .with_context(|| format!("opening target {}", opts.target.display()))?,
        kernel: opts
            .kernel
            .clone()
            .unwrap_or_else(|| with_suffix(".vmlinuz")),
        initramfs: opts
            .initramfs
            .clone()
            .unwrap_or_else(|| with_suffix(".initramfs")),
    };
    let source = match &opts.source {
        Some(usr) => {
            let beside = |suffix: &str| suffixed(usr, suffix);
            let kernel = opts
                .source_kernel
                .clone()
                .unwrap_or_else(|| beside(".vmlinuz"));
            let initramfs = opts
                .source_initramfs
                .clone()
                .unwrap_or_else(|| beside(".initramfs"));
            Some(
                SourceReader::open(usr)
                    .context("opening the source")?
                    .with_boot_files(kernel, initramfs),
            )
        }
        None => None,
    };
    let checkpoint_path = with_suffix(".checkpoint");
    let saved = Checkpoint::load(&checkpoint_path)
        .ok()
        .filter(|c| c.payload_digest == head.digest());
    let mut installer = match saved {
        Some(checkpoint) => {
            eprintln!(
                "resuming at operation {} (payload byte {})",
                checkpoint.next_operation, checkpoint.payload_offset
            );
            Installer::resume_with_source(head, &policy, targets, checkpoint, source)
        }
        None => Installer::new_with_source(head, &policy, targets, source),
    }
    .with_context(|| format!("refusing {}; nothing written", path.display()))?;
    file.seek(SeekFrom::Start(installer.checkpoint().payload_offset))
        .with_context(|| format!("seeking in {}", path.display()))?;
    let mut save_error = None;
    installer
        .write_from_with_progress(&mut BufReader::with_capacity(1 << 20, file), &mut |c| {
            if let Err(e) = c.save(&checkpoint_path) {
                save_error.get_or_insert(e);
            }
        })
        .with_context(|| format!("applying {}", path.display()))?;
    if let Some(e) = save_error {
        return Err(e).context("saving the checkpoint");
    }
    let report = installer
        .finish()
        .with_context(|| format!("verifying what {} wrote", path.display()))?;
    let _ = std::fs::remove_file(&checkpoint_path);
    println!(
        "{}: installed version {} (dm-verity root {}), kernel {}, initramfs {}",
        opts.target.display(),
        report.version,
        report.verity_root_hash,
        report.kernel.display(),
        report.initramfs.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `path` with `suffix` appended to its file name (`usr.img` → `usr.img.vmlinuz`).
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
