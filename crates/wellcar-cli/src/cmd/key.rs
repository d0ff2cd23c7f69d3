//! `wellcar key` (in progress; replaced by the owning crate's wiring).

use std::process::ExitCode;

/// Subcommands of `wellcar key`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Not built yet.
    Pending,
}

/// Runs `wellcar key`.
pub fn run(_cmd: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("wellcar key is not built yet")
}
