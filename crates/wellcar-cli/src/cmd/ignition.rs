//! `wellcar ignition` (in progress; replaced by the owning crate's wiring).

use std::process::ExitCode;

/// Subcommands of `wellcar ignition`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Not built yet.
    Pending,
}

/// Runs `wellcar ignition`.
pub fn run(_cmd: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("wellcar ignition is not built yet")
}
