//! `wellcar install`: a signed image onto a disk or a file (crate `wellcar-install`; the image
//! ships the same command as `wellcar-install`).

use std::process::ExitCode;

use anyhow::Context as _;

/// Options of `wellcar install` (shared with `wellcar-install`).
#[derive(Debug, clap::Args)]
pub struct Opts {
    #[command(flatten)]
    args: wellcar_install::args::Args,
}

/// Runs `wellcar install`.
pub fn run(opts: Opts) -> anyhow::Result<ExitCode> {
    let request = opts.args.request().context("preparing the installation")?;
    let report = wellcar_install::install(&request, &|event| eprintln!("{event}"))
        .with_context(|| format!("installing onto {}", opts.args.target.display()))?;
    println!(
        "installed Wellcar {} onto {} ({} bytes)",
        report.version,
        report.target.display(),
        report.target_size
    );
    Ok(ExitCode::SUCCESS)
}
