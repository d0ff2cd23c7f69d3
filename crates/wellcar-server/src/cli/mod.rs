//! `wellcar server …`: run the server, create API tokens, and drive the admin API (publish,
//! groups, instances, activity) from scripts. The `wellcar` binary re-exports [`Command`] and
//! [`run`].
//!
//! Contract:
//! - Client subcommands take `--server URL` (default `$WELLCAR_SERVER_URL`, else
//!   `http://127.0.0.1:8080`), `--token T` (default `$WELLCAR_SERVER_TOKEN`) and, for an https
//!   server with a private CA, `--ca-file PEM` (default `$WELLCAR_SERVER_CA_FILE`; trusted besides
//!   the system store), and print JSON on stdout; a closed pipe is not an error.
//! - `serve` and `token` open the database themselves; every other subcommand goes through the
//!   admin API.
//! - What a subcommand says while it runs (`serve`'s address, `group create` on an existing
//!   track) goes to stderr; `token create` prints only the secret, on stdout; `token list` and
//!   `token revoke` print JSON.
//!
//! Layout: [`Command`], the shared [`ServerArgs`], the printing (JSON and the token's secret on
//! stdout, `Note`s on stderr) and the dispatch are here; the command modules print only through
//! these. Each command group is its own module: `serve`, `token` (directly in the database),
//! `app`, `package` (upload, register, publish, floors), `group` (groups and policy flags) and
//! `fleet` (instances and the activity log), `locks` (FleetLock reboot locks). Every public argument type is re-exported here, so
//! `cli::…` paths do not name the modules.

mod app;
mod fleet;
mod group;
mod locks;
mod package;
mod serve;
mod token;

use std::process::ExitCode;

use anyhow::Context as _;

use crate::client::{ApiClient, OnUpload};

pub use app::AppCommand;
pub use fleet::{ActivityOpts, InstancesOpts};
pub use group::{GroupCommand, PolicyArgs};
#[cfg(test)]
pub(crate) use locks::locks as run_locks;
pub use locks::LocksCommand;
pub use package::{PackageCommand, PublishOpts};
pub use serve::ServeOpts;
pub use token::TokenCommand;

/// Subcommands of `wellcar server`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the update server.
    Serve(ServeOpts),
    /// Manage API tokens (directly in the database).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Applications.
    #[command(subcommand)]
    App(AppCommand),
    /// Packages: upload or register, and publish to a channel.
    #[command(subcommand)]
    Package(PackageCommand),
    /// Groups and their rollout policies.
    #[command(subcommand)]
    Group(GroupCommand),
    /// List instances and their update status.
    Instances(InstancesOpts),
    /// Show the activity log.
    Activity(ActivityOpts),
    /// FleetLock reboot locks: list, release a holder, set a group's max.
    #[command(subcommand)]
    Locks(LocksCommand),
}

const DEFAULT_DATABASE: &str = "sqlite:wellcar-server.db";

/// Where the admin API is.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Server base URL (default $WELLCAR_SERVER_URL or http://127.0.0.1:8080).
    #[arg(long)]
    pub server: Option<String>,
    /// API token (default $WELLCAR_SERVER_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
    /// PEM CA certificates to trust for an https server, besides the system store (default
    /// $WELLCAR_SERVER_CA_FILE).
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Application id (default: Wellcar's).
    #[arg(long, default_value = wellcar_omaha::WELLCAR_APP_ID)]
    pub app: String,
}

impl ServerArgs {
    fn client(&self) -> anyhow::Result<ApiClient> {
        let server = self
            .server
            .clone()
            .or_else(|| std::env::var("WELLCAR_SERVER_URL").ok())
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let token = self
            .token
            .clone()
            .or_else(|| std::env::var("WELLCAR_SERVER_TOKEN").ok());
        let ca_file = self
            .ca_file
            .clone()
            .or_else(|| std::env::var_os("WELLCAR_SERVER_CA_FILE").map(Into::into));
        match ca_file {
            Some(ca) => ApiClient::with_ca_file(&server, token.as_deref(), &ca)
                .with_context(|| format!("a client for {server}")),
            None => Ok(ApiClient::new(&server, token.as_deref())),
        }
    }

    fn app_path(&self) -> String {
        crate::client::app_path(&self.app)
    }
}

fn print(v: &serde_json::Value) -> anyhow::Result<()> {
    use std::io::Write as _;
    let text = serde_json::to_string_pretty(v)?;
    match writeln!(std::io::stdout(), "{text}") {
        // A closed pipe (`| head`) is not an error of this command.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Prints a token's secret on stdout. Unlike JSON, failing to write it is an error: it is
/// shown only once.
fn print_secret(secret: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    writeln!(std::io::stdout(), "{secret}").context("writing the token's secret to stdout")
}

/// What a subcommand tells the user while it runs; [`run`] prints it on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Note {
    /// `serve`: the server accepts connections at `url`.
    Listening {
        /// `http://ADDR:PORT`.
        url: String,
    },
    /// `group create`: a group with `track` exists; the settings are applied to it instead.
    GroupExists {
        /// The existing group's track.
        track: String,
    },
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Note::Listening { url } => write!(f, "wellcar server listening on {url}"),
            Note::GroupExists { track } => {
                write!(f, "group {track} exists; applying the settings to it")
            }
        }
    }
}

/// Runs a `wellcar server` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    run_with_progress(cmd, std::sync::Arc::new(|_| {}))
}

/// Runs a `wellcar server` subcommand; `package publish` reports its upload to `upload`.
pub fn run_with_progress(cmd: Command, upload: OnUpload) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(cmd, upload))?;
    Ok(ExitCode::SUCCESS)
}

async fn run_async(cmd: Command, upload: OnUpload) -> anyhow::Result<()> {
    let mut note = |n: Note| eprintln!("{n}");
    match cmd {
        Command::Serve(o) => serve::serve(o, &mut note).await,
        Command::Token(t) => match token::token(t).await? {
            token::TokenOutput::Secret(secret) => print_secret(&secret),
            token::TokenOutput::Json(v) => print(&v),
        },
        Command::App(a) => app::app(a).await,
        Command::Package(p) => package::package(p, upload).await,
        Command::Group(g) => print(&group::group(g, &mut note).await?),
        Command::Instances(o) => fleet::instances(o).await,
        Command::Activity(o) => fleet::activity(o).await,
        Command::Locks(l) => locks::locks(l).await,
    }
}
