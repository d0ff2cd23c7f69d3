//! `wellcar server instances` and `wellcar server activity`: read-only views of the fleet and
//! of the activity log, printed as the admin API returns them.
//!
//! Contract:
//! - `instances` lists up to 100000 instances, filtered by group track and status on the server.

use super::{print, ServerArgs};

/// `wellcar server instances`.
#[derive(Debug, clap::Args)]
pub struct InstancesOpts {
    #[command(flatten)]
    server: ServerArgs,
    /// Only this group (track).
    #[arg(long)]
    group: Option<String>,
    /// Only this status (granted, downloading, downloaded, installed, complete, error, timeout).
    #[arg(long)]
    status: Option<String>,
}

/// `wellcar server activity`.
#[derive(Debug, clap::Args)]
pub struct ActivityOpts {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// Most recent entries to show.
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: i64,
    /// Every entry, not only the app's: other apps and server-wide ones such as reboot locks.
    #[arg(long)]
    pub(crate) all: bool,
}

impl ActivityOpts {
    /// The admin API path these options read.
    pub(crate) fn path(&self) -> String {
        if self.all {
            format!("/api/v1/activity?limit={}", self.limit)
        } else {
            format!(
                "/api/v1/activity?app={}&limit={}",
                wellcar_omaha::normalize_app_id(&self.server.app),
                self.limit
            )
        }
    }
}

/// Runs `wellcar server instances`.
pub(super) async fn instances(o: InstancesOpts) -> anyhow::Result<()> {
    let mut q = vec!["limit=100000".to_owned()];
    if let Some(g) = &o.group {
        q.push(format!("group={g}"));
    }
    if let Some(s) = &o.status {
        q.push(format!("status={s}"));
    }
    print(
        &o.server
            .client()?
            .get(&format!(
                "{}/instances?{}",
                o.server.app_path(),
                q.join("&")
            ))
            .await?,
    )
}

/// Runs `wellcar server activity`.
pub(super) async fn activity(o: ActivityOpts) -> anyhow::Result<()> {
    print(&o.server.client()?.get(&o.path()).await?)
}
