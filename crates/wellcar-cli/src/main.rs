//! `wellcar`: a thin front end over the Wellcar library crates.
//!
//! Each subcommand lives in `cmd/<name>.rs` as an `Opts` struct plus `run(opts)`; all logic is
//! in the library crates.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod progress;

/// Wellcar Container Linux: build, boot, sign and serve an immutable, self-updating OS.
#[derive(Debug, Parser)]
#[command(name = "wellcar", version, about)]
struct Cli {
    /// More logging (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the OS image from the OS definition.
    Build(cmd::build::Opts),
    /// Boot a built image in QEMU.
    Run(cmd::run::Opts),
    /// Manage update-payload signing keys.
    #[command(subcommand)]
    Key(cmd::key::Command),
    /// Create, inspect and verify signed update payloads.
    #[command(subcommand)]
    Payload(cmd::payload::Command),
    /// The Omaha update server.
    #[command(subcommand)]
    Server(Box<cmd::server::Command>),
    /// Install Wellcar onto a disk or a file from a signed image.
    Install(cmd::install::Opts),
    /// Validate and inspect Ignition configs.
    #[command(subcommand)]
    Ignition(cmd::ignition::Command),
    /// Translate a Butane config (YAML) to an Ignition config (JSON).
    Butane(cmd::butane::Opts),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Build(o) => cmd::build::run(o),
        Command::Run(o) => cmd::run::run(o),
        Command::Key(c) => cmd::key::run(c),
        Command::Payload(c) => cmd::payload::run(c),
        Command::Server(c) => cmd::server::run(*c),
        Command::Ignition(c) => cmd::ignition::run(c),
        Command::Butane(o) => cmd::butane::run(&o),
        Command::Install(o) => cmd::install::run(o),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| progress::LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
