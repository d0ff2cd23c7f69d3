//! `wellcar-update lock …`: locksmith's reboot lock in etcd, the same commands and output as
//! `locksmithctl` (`status`, `lock [ID]`, `unlock [ID]`, `set-max N`) with its flags
//! (`--endpoint`, `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`, `--etcd-username`,
//! `--etcd-password`, `--group`, and the `LOCKSMITHCTL_*` variables). The commands live in
//! [`wellcar_locksmith::ctl`]; this only reports their output as an [`Event::Lock`].

use std::path::Path;

use wellcar_locksmith::ctl::{self, CtlCommand, EtcdArgs};

use crate::Event;

/// `lock` options.
#[derive(Debug, clap::Args)]
pub struct Opts {
    /// How to reach etcd.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// Runs the command; reports locksmithctl's output (`status`, `set-max`) as one event.
pub fn run(opts: &Opts, on_event: &mut impl FnMut(Event)) -> anyhow::Result<()> {
    let report = ctl::run(&opts.etcd.settings(), &opts.command, Path::new("/"))?;
    if !report.to_string().is_empty() {
        on_event(Event::Lock(report));
    }
    Ok(())
}
