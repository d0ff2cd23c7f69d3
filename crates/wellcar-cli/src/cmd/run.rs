//! `wellcar run` (in progress).

use std::process::ExitCode;

/// Options of `wellcar run`.
#[derive(Debug, clap::Args)]
pub struct Opts {}

/// Runs `wellcar run`.
pub fn run(_opts: Opts) -> anyhow::Result<ExitCode> {
    anyhow::bail!("wellcar run is not built yet")
}
