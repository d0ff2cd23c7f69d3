//! `wellcar-update`: the on-host A/B update command. All logic lives in the library
//! ([`wellcar_host`]); this only parses arguments and maps errors to exit codes.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WELLCAR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = wellcar_host::Cli::parse();
    match wellcar_host::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wellcar-update: {e:#}");
            std::process::ExitCode::from(wellcar_host::exit_code(&e))
        }
    }
}
