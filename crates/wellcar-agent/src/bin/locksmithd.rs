//! `locksmithd`: the reboot manager (run by `locksmithd.service`), see
//! [`wellcar_agent::locksmithd`]. `--root` and the path options move the system layout for tests,
//! as the agent's do. SIGTERM needs no handler: it holds no state of its own.

use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use clap::Parser;
use wellcar_agent::cli::{self, LayoutArgs};
use wellcar_agent::locksmithd::{self, ConfigSource, Start};
use wellcar_agent::reboot_lock::host::RebootHost;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Wellcar reboot manager: reboots into a staged update by REBOOT_STRATEGY"
)]
struct Opts {
    #[command(flatten)]
    layout: LayoutArgs,
    /// The reboot command, split on whitespace.
    #[arg(long)]
    reboot_command: Option<String>,
}

fn main() -> std::process::ExitCode {
    cli::init_logging();
    cli::exit_code(run(Opts::parse()))
}

fn run(opts: Opts) -> anyhow::Result<()> {
    let mut paths = opts.layout.paths();
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
