//! The on-host `wellcar-update` command: the A/B boot state as the running machine sees it.
//!
//! | command | effect |
//! |---|---|
//! | `status [--json]` | booted slot; each slot's version, priority, tries, successful flag, verity hash; the staged update |
//! | `mark-good` | the booted slot becomes successful and top priority (run by `wellcar-mark-good.service` once `boot-complete.target` is reached) |
//! | `rollback` | the other slot boots next; refused unless it holds a verified, previously good version |
//! | `cancel` | a staged update that has not booted is dropped; refused if there is none |
//! | `stage SLOT --root-hash H --version V` | after a verified write of SLOT: one try, not successful, top priority |
//! | `install -V VERSION \| -P FILE [-A]` | install a chosen version or a local payload through the agent; also `flatcar-update` ([`install`]) |
//! | `reset [-K REGEX...] [-M] [-F FILE\|-U URL] \| -S \| -P \| -W` | re-provision on the next boot keeping the named paths; also `flatcar-reset` ([`reset`]) |
//! | `check-usr` | health check: `/usr` is the dm-verity device over the booted slot with the recorded root hash |
//! | `check-containerd` | health check: containerd's gRPC socket answers as an HTTP/2 server |
//! | `lock status\|lock [ID]\|unlock [ID]\|set-max N` | locksmith's reboot lock in etcd, as `locksmithctl` ([`lock`]) |
//! | `trial-timeout` | `wellcar-trial-timeout.timer`: reboots a trial boot that was never marked good |
//!
//! The state lives on the ESP mounted at `/boot` (`--esp`); the booted slot comes from
//! `/proc/cmdline` (`--cmdline`). Refusals exit with status 2 and the reason, other errors with 1.
//!
//! Contract: the library prints nothing. [`run`] reports what a command did or found as
//! [`Event`]s to its caller, in order; the `wellcar-update` binary prints
//! [`Event::Warning`]s on stderr (`wellcar-update: warning: …`) and every other event on stdout,
//! one `Display` each.
//!
//! **Extending** (the update agent, issue 8): add one variant to [`Command`] and one module
//! file (e.g. `check.rs` with `Opts` + `run`, reporting through its own [`Event`] variant), and
//! fill [`status::Status::update`] for the update section of `status`.

#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod containerd;
pub mod install;
pub mod lock;
pub mod ops;
pub mod reset;
pub mod status;
pub mod update;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use wellcar_bootstate::{Esp, Slot, StoreError};

/// Global options and the subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "wellcar-update",
    version,
    about = "Wellcar A/B update state: status, mark-good, rollback, cancel, stage"
)]
pub struct Cli {
    /// Where the ESP (EFI-SYSTEM) is mounted.
    #[arg(long, global = true, default_value = wellcar_contract::esp::MOUNT_POINT)]
    pub esp: PathBuf,
    /// The kernel command line that names the booted slot.
    #[arg(long, global = true, default_value = "/proc/cmdline")]
    pub cmdline: PathBuf,
    /// Also write the state into the GPT attribute bits 48-56 of this disk (cgpt/Flatcar tools).
    /// Off by default: a GPT rewrite is not tear-safe the way the ESP copies are, and GRUB reads
    /// the ESP, not these bits.
    #[arg(long, global = true)]
    pub mirror_gpt: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. The update agent adds its own variant here (one line + one module).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the booted slot, both slots' state and the staged update.
    Status(status::Opts),
    /// Mark the booted slot successful and give it the top priority.
    MarkGood,
    /// Make the other slot boot next (it must hold a previously good version).
    Rollback,
    /// Drop a staged update that has not booted yet.
    Cancel,
    /// Stage SLOT after a verified write: one try, not successful, top priority.
    Stage(ops::StageOpts),
    /// Health check: /usr is the verity device of the booted slot.
    CheckUsr,
    /// Health check: containerd answers on its gRPC socket.
    CheckContainerd(containerd::Opts),
    /// Reboot if this is a trial boot (booted slot not marked good); run by a timer.
    TrialTimeout,
    /// Ask the update agent to check for an update now and wait for the result.
    Check(update::CheckOpts),
    /// Install a chosen version or a local payload file now (as `flatcar-update`).
    Install(install::InstallOpts),
    /// Re-provision on the next boot, keeping the paths named (as `flatcar-reset`).
    Reset(reset::ResetOpts),
    /// The cluster-wide reboot lock in etcd (locksmith's): status, lock, unlock, set-max.
    Lock(lock::Opts),
}

/// What every command needs: the store and the booted slot.
#[derive(Debug, Clone)]
pub struct Context {
    /// The boot state store.
    pub esp: Esp,
    /// The booted slot, if the command line names one.
    pub booted: Option<Slot>,
    /// The kernel command line.
    pub cmdline: String,
    /// GPT to mirror the state into.
    pub mirror_gpt: Option<PathBuf>,
}

impl Context {
    /// Reads the command line and opens the store.
    pub fn new(cli: &Cli) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let cmdline = std::fs::read_to_string(&cli.cmdline).with_context(|| {
            format!("reading the kernel command line {}", cli.cmdline.display())
        })?;
        Ok(Context {
            esp: Esp::new(&cli.esp),
            booted: wellcar_bootstate::booted_slot(&cmdline),
            cmdline,
            mirror_gpt: cli.mirror_gpt.clone(),
        })
    }

    /// The booted slot, or an error saying why it is unknown.
    pub fn require_booted(&self) -> anyhow::Result<Slot> {
        self.booted.ok_or_else(|| {
            anyhow::anyhow!(
                "cannot tell the booted slot: the kernel command line has no verity.usr=PARTUUID=<USR-A or USR-B GUID>"
            )
        })
    }
}

/// What a command reports while it runs; [`run`] hands each to its caller as it happens.
#[derive(Debug)]
pub enum Event {
    /// `status`: the report.
    Status(status::Report),
    /// A state change or health check of [`ops`] done, or `trial-timeout`'s decision.
    Done(ops::Outcome),
    /// `check-containerd` passed.
    ContainerdAnswers {
        /// The socket that answered.
        socket: PathBuf,
    },
    /// `check`: the update agent's progress.
    Check(update::Progress),
    /// `reset`: flatcar-reset's output.
    Reset(reset::Line),
    /// `lock`: locksmithctl's output.
    Lock(wellcar_locksmith::ctl::Report),
    /// Something the command survives (its result stands); shown on stderr.
    Warning(Warning),
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Status(r) => r.fmt(f),
            Event::Done(o) => o.fmt(f),
            Event::ContainerdAnswers { socket } => {
                write!(f, "containerd answers on {}", socket.display())
            }
            Event::Check(p) => p.fmt(f),
            Event::Lock(r) => r.fmt(f),
            Event::Reset(l) => l.fmt(f),
            Event::Warning(w) => w.fmt(f),
        }
    }
}

/// A failure that does not fail the command.
#[derive(Debug, thiserror::Error)]
pub enum Warning {
    /// `--mirror-gpt`: the state is on the ESP (authoritative) but not in the GPT of the disk
    /// the error names.
    #[error("not mirrored into the GPT: {0}")]
    GptNotMirrored(#[source] wellcar_bootstate::gptprio::MirrorError),
}

/// Runs one command, reporting to `on_event`.
pub fn run(cli: Cli, mut on_event: impl FnMut(Event)) -> anyhow::Result<()> {
    let ctx = Context::new(&cli)?;
    match cli.command {
        Command::Status(opts) => status::run(&ctx, &opts, &mut on_event),
        Command::MarkGood => ops::mark_good(&ctx, &mut on_event),
        Command::Rollback => ops::rollback(&ctx, &mut on_event),
        Command::Cancel => ops::cancel(&ctx, &mut on_event),
        Command::Stage(opts) => ops::stage(&ctx, &opts, &mut on_event),
        Command::CheckUsr => ops::check_usr(&ctx, &mut on_event),
        Command::CheckContainerd(opts) => containerd::run(&opts, &mut on_event),
        Command::TrialTimeout => ops::trial_timeout(&ctx, &mut on_event),
        Command::Check(opts) => update::check(&opts, &mut on_event),
        Command::Install(opts) => install::install(&opts, &mut on_event),
        Command::Reset(opts) => reset::run(&opts, &cli.esp, &mut |l| on_event(Event::Reset(l))),
        Command::Lock(opts) => lock::run(&opts, &mut on_event),
    }
}

/// The host commands' logging: stderr, filtered by `WELLCAR_LOG` (default `warn`, so a
/// command's own output stays readable).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WELLCAR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// 2 for a refusal (nothing changed), 1 for anything else.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| {
        matches!(c.downcast_ref::<StoreError>(), Some(StoreError::Refused(_)))
            || c.downcast_ref::<wellcar_bootstate::Refusal>().is_some()
    }) {
        2
    } else {
        1
    }
}
