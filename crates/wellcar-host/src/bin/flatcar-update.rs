//! `flatcar-update`: Flatcar's name for `wellcar-update install` (same flags, same code:
//! [`wellcar_host::install`]). Progress on stdout, errors on stderr as `Error: …`, exit 1 on
//! any failure, as Flatcar's script.

use clap::Parser;

/// Install a chosen version or a local payload file (Flatcar's `flatcar-update`).
#[derive(Debug, Parser)]
#[command(
    name = "flatcar-update",
    version,
    about = "Updates Wellcar Container Linux to a chosen version or from a local payload file, through update-engine.service. Reboot afterwards, manually or through your reboot manager."
)]
struct Cli {
    #[command(flatten)]
    opts: wellcar_host::install::InstallOpts,
}

fn main() -> std::process::ExitCode {
    wellcar_host::init_logging();
    let cli = Cli::parse();
    let result = wellcar_host::install::install(&cli.opts, &mut |event| println!("{event}"));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
