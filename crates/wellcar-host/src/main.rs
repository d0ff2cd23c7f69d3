//! `wellcar-update`: the on-host A/B update command. All logic lives in the library
//! ([`wellcar_host`]); this only parses arguments, prints what the command reports (warnings on
//! stderr, the rest on stdout) and maps errors to exit codes.

use clap::Parser;

fn main() -> std::process::ExitCode {
    wellcar_host::init_logging();
    let cli = wellcar_host::Cli::parse();
    let result = wellcar_host::run(cli, |event| match event {
        wellcar_host::Event::Warning(w) => eprintln!("wellcar-update: warning: {w}"),
        other => println!("{other}"),
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wellcar-update: {e:#}");
            std::process::ExitCode::from(wellcar_host::exit_code(&e))
        }
    }
}
