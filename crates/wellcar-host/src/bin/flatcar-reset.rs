//! `flatcar-reset`: Flatcar's name for `wellcar-update reset` (same flags, same code:
//! [`wellcar_host::reset`]). Output on stdout, errors on stderr as `Error: …`, exit 1 on any
//! failure, as Flatcar's script.

use clap::Parser;

/// Re-provision on the next boot, keeping the paths named (Flatcar's `flatcar-reset`).
#[derive(Debug, Parser)]
#[command(
    name = "flatcar-reset",
    version,
    about = "Resets Wellcar Container Linux through a (selective) cleanup of the root filesystem during the next boot; Ignition runs again."
)]
struct Cli {
    /// Where the ESP is mounted.
    #[arg(long, hide = true, default_value = wellcar_contract::esp::MOUNT_POINT)]
    esp: std::path::PathBuf,
    #[command(flatten)]
    opts: wellcar_host::reset::ResetOpts,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match wellcar_host::reset::run(&cli.opts, &cli.esp, &mut |line| println!("{line}")) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
