//! `wellcar server`: the update server and its admin client; all logic is in `wellcar-server`.

use std::process::ExitCode;

/// Subcommands of `wellcar server`.
pub use wellcar_server::cli::Command;

/// Runs `wellcar server`.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    wellcar_server::cli::run_with_progress(cmd, crate::progress::upload())
}
