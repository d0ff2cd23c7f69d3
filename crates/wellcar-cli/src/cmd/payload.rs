//! `wellcar payload` (in progress; replaced by the owning crate's wiring).

use std::process::ExitCode;

/// Subcommands of `wellcar payload`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Not built yet.
    Pending,
}

/// Runs `wellcar payload`.
pub fn run(_cmd: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("wellcar payload is not built yet")
}
