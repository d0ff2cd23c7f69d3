//! `locksmithctl`: manage the cluster-wide reboot lock (locksmith's etcd semaphore). The
//! commands live in [`wellcar_locksmith::ctl`]; this parses arguments (Go-style `-flag` too),
//! prints the report on stdout and errors on stderr (exit 1).

use std::path::PathBuf;

use clap::Parser;
use wellcar_locksmith::ctl::{self, CtlCommand, EtcdArgs};

/// Manage the cluster wide reboot lock.
#[derive(Debug, Parser)]
#[command(name = "locksmithctl", version)]
struct Cli {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Print debug information to stderr.
    #[arg(long, env = "LOCKSMITHCTL_DEBUG", global = true)]
    debug: bool,
    /// The root whose etc/machine-id is the default machine ID.
    #[arg(long, value_name = "DIR", default_value = "/", global = true)]
    root: PathBuf,
    #[command(subcommand)]
    command: CtlCommand,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(ctl::go_style_args(std::env::args_os()));
    tracing_subscriber::fmt()
        .with_env_filter(if cli.debug { "debug" } else { "warn" })
        .with_writer(std::io::stderr)
        .init();
    match ctl::run(&cli.etcd.settings(), &cli.command, &cli.root) {
        Ok(report) => {
            let text = report.to_string();
            if !text.is_empty() {
                println!("{text}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{:#}", anyhow::Error::new(e));
            std::process::ExitCode::FAILURE
        }
    }
}
