//! What the agent's binaries (`wellcar-update-agent`, `locksmithd`) share on their command
//! line: where the system layout is (moved for tests and chroots) and how they log.
//!
//! Contract: without options the layout is [`HostPaths::system`]; `--root DIR` puts the whole
//! layout below `DIR` ([`HostPaths::under_root`]) and the single-path options override it after
//! that. Logs go to stderr (the journal, under systemd), filtered by `RUST_LOG` (default `info`).

use std::path::PathBuf;

use crate::host::HostPaths;

/// The layout options.
#[derive(Debug, Clone, clap::Args)]
pub struct LayoutArgs {
    /// Use the system layout below this directory (tests, chroots).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// The mounted ESP.
    #[arg(long)]
    pub esp: Option<PathBuf>,
    /// The update agent's state directory.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl LayoutArgs {
    /// The paths these options describe.
    pub fn paths(&self) -> HostPaths {
        let mut paths = match &self.root {
            Some(root) => HostPaths::under_root(root),
            None => HostPaths::system(),
        };
        if let Some(esp) = &self.esp {
            paths.esp = esp.clone();
        }
        if let Some(dir) = &self.state_dir {
            paths.state_dir = dir.clone();
        }
        paths
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Runs a binary's body: an error is logged with its causes and exits 1.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Opts {
        #[command(flatten)]
        layout: LayoutArgs,
    }

    #[test]
    fn root_moves_the_layout_and_single_paths_override_it() {
        let opts = Opts::try_parse_from(["x", "--root", "/r", "--esp", "/e"]).unwrap();
        let paths = opts.layout.paths();
        assert_eq!(paths.esp, PathBuf::from("/e"));
        assert_eq!(
            paths.state_dir,
            PathBuf::from("/r/var/lib/wellcar/update-agent")
        );
        assert_eq!(paths.machine_id, PathBuf::from("/r/etc/machine-id"));
        let system = Opts::try_parse_from(["x"]).unwrap().layout.paths();
        assert_eq!(system.state_dir, HostPaths::system().state_dir);
    }
}
