//! `wellcar server` (in progress; replaced by the owning crate's wiring).

use std::process::ExitCode;

/// Subcommands of `wellcar server`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Not built yet.
    Pending,
}

/// Runs `wellcar server`.
pub fn run(_cmd: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("wellcar server is not built yet")
}
