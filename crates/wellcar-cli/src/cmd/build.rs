//! `wellcar build` (in progress).

use std::process::ExitCode;

/// Options of `wellcar build`.
#[derive(Debug, clap::Args)]
pub struct Opts {}

/// Runs `wellcar build`.
pub fn run(_opts: Opts) -> anyhow::Result<ExitCode> {
    anyhow::bail!("wellcar build is not built yet")
}
