//! `wellcar-install`: the installer shipped in the image (for the live system), the same
//! options as `wellcar install`, progress as plain lines on stderr.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use wellcar_install::{args::Args, install};

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
    let report = install(&request, &|event| eprintln!("{event}"))
        .with_context(|| format!("installing onto {}", args.target.display()))?;
    println!(
        "installed Wellcar {} onto {} ({} bytes)",
        report.version,
        report.target.display(),
        report.target_size
    );
    Ok(())
}
