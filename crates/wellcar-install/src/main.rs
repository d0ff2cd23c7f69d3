//! `wellcar-install`: the installer shipped in the image (for the live system), the same
//! options as `wellcar install`, progress as plain lines on stderr.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use wellcar_install::{args::Args, install, InstallEvent};

/// Install Wellcar onto a disk or a file from a signed image.
#[derive(Debug, clap::Parser)]
#[command(name = "wellcar-install", version)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(&cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let request = args.request().context("preparing the installation")?;
    let report = install(&request, &print_event)
        .with_context(|| format!("installing onto {}", args.target.display()))?;
    println!(
        "installed Wellcar {} onto {} ({} bytes)",
        report.version,
        report.target.display(),
        report.target_size
    );
    Ok(())
}

/// One line per event.
pub fn print_event(event: InstallEvent) {
    match event {
        InstallEvent::Verified {
            version,
            signed_by,
            image,
            compression,
            size,
        } => eprintln!(
            "image {} ({compression:?}, {size} bytes raw): Wellcar {version}, {}",
            image.display(),
            signed_by.map_or("NOT signature-checked (--insecure)".into(), |k| format!("signed by {k}"))
        ),
        InstallEvent::Writing { written, total } => {
            eprintln!("writing: {} / {} MiB", written >> 20, total >> 20)
        }
        InstallEvent::Written { bytes, sha256 } => {
            eprintln!("written: {bytes} bytes, sha256 {sha256} matches the signed manifest")
        }
        InstallEvent::OemConfigured => eprintln!("OEM partition configured"),
        InstallEvent::Done => eprintln!("partition table written"),
    }
}
