//! `wellcar server locks …`: FleetLock reboot locks through the admin API, printed as JSON.
//!
//! Contract:
//! - `list`: every lock group with max_holders and holders (grant and lease expiry times in
//!   unix ms); needs a read token.
//! - `release GROUP ID`: frees ID's slot of GROUP (an error if it holds none); admin token.
//! - `set-max GROUP N`: sets GROUP's slots, creating the group; admin token.

use hyper::Method;

use super::{print, ServerArgs};
use crate::fleetlock::admin::{group_path, holder_path, SetMaxBody};

/// `wellcar server locks …`.
#[derive(Debug, clap::Subcommand)]
pub enum LocksCommand {
    /// List lock groups, their max_holders and holders.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Release a holder's slot (a node that will not come back).
    Release {
        #[command(flatten)]
        server: ServerArgs,
        /// Lock group.
        group: String,
        /// Holder id (the node's FleetLock id).
        id: String,
    },
    /// Set how many holders a group allows at once (creates the group).
    SetMax {
        #[command(flatten)]
        server: ServerArgs,
        /// Lock group.
        group: String,
        /// Holders allowed at once (0 closes the group).
        max: i64,
    },
}

/// Runs `wellcar server locks …`.
pub(crate) async fn locks(cmd: LocksCommand) -> anyhow::Result<()> {
    let v: serde_json::Value = match cmd {
        LocksCommand::List { server } => server.client()?.get("/api/v1/fleetlock/groups").await?,
        LocksCommand::Release { server, group, id } => {
            server
                .client()?
                .call(Method::DELETE, &holder_path(&group, &id), &())
                .await?
        }
        LocksCommand::SetMax { server, group, max } => {
            let body = SetMaxBody { max_holders: max };
            server
                .client()?
                .call(Method::PUT, &group_path(&group), &body)
                .await?
        }
    };
    print(&v)
}
