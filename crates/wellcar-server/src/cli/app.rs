//! `wellcar server app …`: list and create applications through the admin API.
//!
//! Contract:
//! - `app create --channels a,b` also creates each channel for amd64 and arm64 and a group of
//!   the same name following it; the first failing call stops the command.

use hyper::Method;
use serde_json::json;

use super::{print, ServerArgs};

/// `wellcar server app …`.
#[derive(Debug, clap::Subcommand)]
pub enum AppCommand {
    /// List applications.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Create an application (`--app` is its id; Flatcar's id is accepted).
    Create {
        #[command(flatten)]
        server: ServerArgs,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Channels to create for amd64 and arm64, with groups of the same names.
        #[arg(long, value_delimiter = ',')]
        channels: Vec<String>,
    },
}

/// Runs `wellcar server app …`.
pub(super) async fn app(cmd: AppCommand) -> anyhow::Result<()> {
    match cmd {
        AppCommand::List { server } => print(&server.client()?.get("/api/v1/apps").await?),
        AppCommand::Create {
            server,
            name,
            channels,
        } => {
            let api = server.client()?;
            let app: serde_json::Value = api
                .call(
                    Method::POST,
                    "/api/v1/apps",
                    &json!({"id": server.app, "name": name}),
                )
                .await?;
            for ch in &channels {
                for arch in ["amd64", "arm64"] {
                    let _: serde_json::Value = api
                        .call(
                            Method::POST,
                            &format!("{}/channels", server.app_path()),
                            &json!({"name": ch, "arch": arch}),
                        )
                        .await?;
                }
                let _: serde_json::Value = api
                    .call(
                        Method::POST,
                        &format!("{}/groups", server.app_path()),
                        &json!({"name": ch, "channel": ch}),
                    )
                    .await?;
            }
            print(&app)
        }
    }
}
