//! `wellcar-install`: the installer shipped in the image (for the live system), the same
//! options as `wellcar install`, progress as plain lines on stderr. `wellcar-install unattended` installs as
//! the kernel command line's `wellcar.inst.*` arguments say and reboots
//! (`wellcar-install-unattended.service` on the live system).

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use wellcar_install::{args::Args, install, unattended};

/// Install Wellcar onto a disk or a file from a signed image.
#[derive(Debug, clap::Parser)]
#[command(
    name = "wellcar-install",
    version,
    disable_version_flag = true,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Print version (`-V` is the release to install, as in flatcar-install).
    #[arg(long, action = clap::ArgAction::Version)]
    version: Option<bool>,
    #[command(subcommand)]
    unattended: Option<Unattended>,
    #[command(flatten)]
    args: Option<Args>,
}

#[derive(Debug, clap::Subcommand)]
enum Unattended {
    /// Install as the kernel command line's wellcar.inst.* arguments say (nothing without
    /// wellcar.inst.install_dev=), then reboot unless wellcar.inst.skip_reboot.
    Unattended,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match (cli.unattended, &cli.args) {
        (Some(Unattended::Unattended), _) => run_unattended(),
        (None, Some(args)) => run(args),
        (None, None) => unreachable!("clap requires the options without a command"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let request = args.request().context("preparing the installation")?;
    let report = install(&request, &|event| eprintln!("{event}"))
        .with_context(|| format!("installing onto {}", args.target.display()))?;
    println!(
        "installed Wellcar {} onto {} ({} bytes)",
        report.version,
        report.target.display(),
        report.target_size
    );
    Ok(())
}

fn run_unattended() -> anyhow::Result<()> {
    let extra = wellcar_contract::fw_cfg_kernel_args_file();
    let (cmdline, _) = wellcar_platform::id::read_cmdline(Path::new("/proc/cmdline"), &extra)
        .context("reading /proc/cmdline")?;
    let Some(job) = unattended::from_cmdline(&cmdline).context("reading wellcar.inst.*")? else {
        println!("no wellcar.inst.install_dev= on the kernel command line: nothing to install");
        return Ok(());
    };
    run(&job.args)?;
    if job.reboot {
        println!("rebooting into the installed system");
        let status = Command::new("systemctl")
            .arg("reboot")
            .status()
            .context("running systemctl reboot")?;
        anyhow::ensure!(status.success(), "systemctl reboot: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
