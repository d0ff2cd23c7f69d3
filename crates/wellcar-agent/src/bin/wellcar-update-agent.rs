//! `wellcar-update-agent`: the update daemon (run by `update-engine.service`).
//!
//! Every path can be moved for tests: `--root` places the whole system layout below a
//! directory (disk image at `<root>/disk.img`), and single paths can be overridden after it.
//! SIGTERM/SIGKILL need no handler: every state change is already durable.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use clap::Parser;
use wellcar_agent::cli::{self, LayoutArgs};
use wellcar_agent::{Agent, InstallSource};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Wellcar update agent: Omaha checks and A/B installs (locksmithd reboots)"
)]
struct Opts {
    #[command(flatten)]
    layout: LayoutArgs,
    /// The disk (or disk image) holding USR-A and USR-B.
    #[arg(long)]
    disk: Option<PathBuf>,
    /// Bytes written between durable download checkpoints.
    #[arg(long)]
    sync_interval: Option<u64>,
    /// Seconds between transfer retries within one install.
    #[arg(long)]
    transfer_retry_secs: Option<u64>,
    /// Serve update_engine's `com.coreos.update1` D-Bus API on this bus address instead of the
    /// system bus; `none` serves nothing. Without a reachable bus the daemon runs on, warning.
    #[arg(long)]
    dbus_address: Option<String>,
    /// Run one on-demand check (and install) and exit instead of running the daemon.
    #[arg(long)]
    once: bool,
}

fn main() -> std::process::ExitCode {
    cli::init_logging();
    cli::exit_code(run(Opts::parse()))
}

fn run(opts: Opts) -> anyhow::Result<()> {
    let mut paths = opts.layout.paths();
    if let Some(disk) = opts.disk {
        paths.disk = Some(disk);
    }
    let mut agent = Agent::open(paths).context("starting the update agent")?;
    if let Some(n) = opts.sync_interval {
        agent.set_sync_interval(n);
    }
    if let Some(s) = opts.transfer_retry_secs {
        agent.set_transfer_retry_delay(std::time::Duration::from_secs(s));
    }
    if opts.once {
        let outcome = agent
            .resume_pending()
            .and_then(|_| agent.check(InstallSource::OnDemand))
            .context("update check")?;
        println!("{outcome:?}");
        return Ok(());
    }
    let config = wellcar_agent::daemon::start_config(&agent).context("reading update.conf")?;
    let stop = AtomicBool::new(false);
    let (requests, loop_requests) = std::sync::mpsc::channel();
    let _service = match opts.dbus_address.as_deref() {
        Some("none") => None,
        address => {
            match wellcar_agent::dbus::Service::start(address, agent.store().clone(), requests) {
                Ok(service) => Some(service),
                Err(e) => {
                    tracing::warn!("{e:#}; running without the D-Bus API");
                    None
                }
            }
        }
    };
    wellcar_agent::daemon::run_with_requests(&mut agent, config, &stop, &loop_requests);
    Ok(())
}
