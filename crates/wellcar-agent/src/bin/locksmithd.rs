//! `locksmithd`: the reboot manager (run by `locksmithd.service`), see
//! [`wellcar_agent::locksmithd`]. `--root` and the path options move the system layout for tests,
//! as the agent's do. SIGTERM needs no handler: it holds no state of its own.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use clap::Parser;
use wellcar_agent::locksmithd::{self, ConfigSource, Start};
use wellcar_agent::reboot_lock::host::RebootHost;
use wellcar_agent::HostPaths;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Wellcar reboot manager: reboots into a staged update by REBOOT_STRATEGY"
)]
struct Opts {
    /// Use the system layout below this directory (tests, chroots).
    #[arg(long)]
    root: Option<PathBuf>,
    /// The mounted ESP.
    #[arg(long)]
    esp: Option<PathBuf>,
    /// The update agent's state directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The reboot command, split on whitespace.
    #[arg(long)]
    reboot_command: Option<String>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Opts::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(opts: Opts) -> anyhow::Result<()> {
    let mut paths = match &opts.root {
        Some(root) => HostPaths::under_root(root),
        None => HostPaths::system(),
    };
    if let Some(esp) = opts.esp {
        paths.esp = esp;
    }
    if let Some(dir) = opts.state_dir {
        paths.state_dir = dir;
    }
    if let Some(cmd) = &opts.reboot_command {
        paths.reboot_command = cmd.split_whitespace().map(str::to_owned).collect();
        anyhow::ensure!(
            !paths.reboot_command.is_empty(),
            "--reboot-command is empty"
        );
    }
    let mut host = RebootHost::open(paths).context("reading the update agent's state")?;
    let source = ConfigSource::new(&host, std::env::vars());
    match locksmithd::start(&source).context("reading update.conf")? {
        Start::Off => Ok(()),
        Start::Run(config) => {
            locksmithd::run(&mut host, &source, *config, &AtomicBool::new(false));
            Ok(())
        }
    }
}
