//! `wellcar server …`: run the server, create API tokens, and drive the admin API (publish,
//! groups, instances, activity) from scripts. The `wellcar` binary re-exports [`Command`] and
//! [`run`].
//!
//! Client subcommands take `--server URL` (default `$WELLCAR_SERVER_URL`, else
//! `http://127.0.0.1:8080`) and `--token T` (default `$WELLCAR_SERVER_TOKEN`), and print JSON.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use hyper::Method;
use serde_json::json;
use sha2::Digest as _;

use crate::client::{ApiClient, OnUpload};
use crate::model::{GroupPatch, Policy, Window};
use crate::store::Role;

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
}

const DEFAULT_DATABASE: &str = "sqlite:wellcar-server.db";

/// `wellcar server serve`.
#[derive(Debug, clap::Args)]
pub struct ServeOpts {
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long)]
    pub listen: SocketAddr,
    /// `sqlite:PATH` or `postgres://user@host/db`.
    #[arg(long, default_value = DEFAULT_DATABASE)]
    pub database: String,
    /// Directory for hosted payloads (served at /packages/).
    #[arg(long, default_value = "wellcar-payloads")]
    pub payload_dir: PathBuf,
    /// Base URL clients reach this server at (default: taken from each request's Host header).
    #[arg(long)]
    pub public_url: Option<String>,
    /// PollInterval (seconds) sent with every update check.
    #[arg(long, default_value_t = 2700)]
    pub poll_interval: u32,
    /// Persist an unchanged instance's last check at most this often (seconds).
    #[arg(long, default_value_t = 900)]
    pub last_seen_resolution: u64,
    /// Write queued instance sightings this often (milliseconds).
    #[arg(long, default_value_t = 1000)]
    pub flush_interval_ms: u64,
    /// Delete events older than this many days.
    #[arg(long, default_value_t = 90)]
    pub event_retention_days: u64,
    /// Delete instances not seen for this many days.
    #[arg(long, default_value_t = 30)]
    pub instance_retention_days: u64,
    /// Delete activity older than this many days.
    #[arg(long, default_value_t = 365)]
    pub activity_retention_days: u64,
    /// Look for timed-out updates this often (seconds).
    #[arg(long, default_value_t = 10)]
    pub sweep_interval: u64,
}

/// `wellcar server token …`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (stored hashed; shown once).
    Create {
        /// Database URL, as given to `serve`.
        #[arg(long, default_value = DEFAULT_DATABASE)]
        database: String,
        /// A name for the token (shown as the actor in the activity log).
        #[arg(long)]
        name: String,
        /// `admin` or `read-only`.
        #[arg(long, default_value = "admin")]
        role: String,
    },
}

/// Where the admin API is.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Server base URL (default $WELLCAR_SERVER_URL or http://127.0.0.1:8080).
    #[arg(long)]
    pub server: Option<String>,
    /// API token (default $WELLCAR_SERVER_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
    /// Application id (default: Wellcar's).
    #[arg(long, default_value = wellcar_omaha::WELLCAR_APP_ID)]
    pub app: String,
}

impl ServerArgs {
    fn client(&self) -> ApiClient {
        let server = self
            .server
            .clone()
            .or_else(|| std::env::var("WELLCAR_SERVER_URL").ok())
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let token = self
            .token
            .clone()
            .or_else(|| std::env::var("WELLCAR_SERVER_TOKEN").ok());
        ApiClient::new(&server, token.as_deref())
    }

    fn app_path(&self) -> String {
        format!(
            "/api/v1/apps/{}",
            wellcar_omaha::normalize_app_id(&self.app)
        )
    }
}

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

/// `wellcar server package …`.
#[derive(Debug, clap::Subcommand)]
pub enum PackageCommand {
    /// Upload (or register, with --url) a payload and point a channel at it.
    Publish(PublishOpts),
    /// List packages.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Make an uploaded version a mandatory intermediate step (floor) of a channel.
    Floor {
        #[command(flatten)]
        server: ServerArgs,
        /// Channel.
        #[arg(long)]
        channel: String,
        /// Version (must be uploaded already).
        #[arg(long)]
        version: String,
        /// Architecture.
        #[arg(long, default_value = "amd64")]
        arch: String,
        /// Why machines must pass through this version.
        #[arg(long)]
        reason: String,
    },
}

/// `wellcar server package publish`.
#[derive(Debug, clap::Args)]
pub struct PublishOpts {
    #[command(flatten)]
    server: ServerArgs,
    /// A `wellcar build` output directory: version, board and payload file are read from its
    /// `manifest.json` (`version`, `board`, `payload`).
    #[arg(long, conflicts_with_all = ["file", "version"])]
    build: Option<PathBuf>,
    /// The payload file (a `wellcar payload create` output).
    #[arg(long, required_unless_present = "build")]
    file: Option<PathBuf>,
    /// Version of the payload (an OS version: MAJOR.MINOR.PATCH[+build]).
    #[arg(long, required_unless_present = "build")]
    version: Option<String>,
    /// Channel to publish to; omit to only upload.
    #[arg(long)]
    channel: Option<String>,
    /// Architecture (default amd64, or from the build's board).
    #[arg(long)]
    arch: Option<String>,
    /// Host the payload elsewhere: the base URL clients download `<url>/<file name>` from.
    #[arg(long)]
    url: Option<String>,
    /// Reuse the package if this version is already uploaded.
    #[arg(long)]
    allow_existing: bool,
}

/// Policy flags shared by `group create` and `group update`.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Channel the group follows.
    #[arg(long)]
    channel: Option<String>,
    /// Safe mode: one instance first; any failure or timeout halts the group
    /// (`--safe-mode` alone means true).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    safe_mode: Option<bool>,
    /// Grants per period (0 = unlimited).
    #[arg(long)]
    max_updates_per_period: Option<i64>,
    /// Period length in seconds.
    #[arg(long)]
    period_secs: Option<i64>,
    /// Updates in progress at once (0 = unlimited).
    #[arg(long)]
    max_concurrent: Option<i64>,
    /// Seconds before an unfinished update counts as timed out.
    #[arg(long)]
    update_timeout_secs: Option<i64>,
    /// Serve older versions too (`--allow-downgrade` alone means true).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    allow_downgrade: Option<bool>,
    /// IANA time zone of the windows.
    #[arg(long)]
    timezone: Option<String>,
    /// Maintenance window `DAYS HH:MM MINUTES`, e.g. "sat,sun 22:00 240"; repeatable.
    /// `--window none` clears the windows.
    #[arg(long)]
    window: Vec<String>,
}

fn parse_windows(specs: &[String]) -> anyhow::Result<Option<Vec<Window>>> {
    if specs.is_empty() {
        return Ok(None);
    }
    if specs.len() == 1 && specs[0] == "none" {
        return Ok(Some(Vec::new()));
    }
    specs
        .iter()
        .map(|spec| {
            let parts: Vec<&str> = spec.split_whitespace().collect();
            let [days, start, minutes] = parts[..] else {
                bail!("window {spec:?} must be \"DAYS HH:MM MINUTES\"");
            };
            Ok(Window {
                days: days.split(',').map(str::to_owned).collect(),
                start: start.to_owned(),
                minutes: minutes
                    .parse()
                    .with_context(|| format!("window {spec:?}: minutes {minutes:?}"))?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Some)
}

impl PolicyArgs {
    fn patch(&self) -> anyhow::Result<GroupPatch> {
        Ok(GroupPatch {
            channel: self.channel.clone(),
            safe_mode: self.safe_mode,
            max_updates_per_period: self.max_updates_per_period,
            period_secs: self.period_secs,
            max_concurrent: self.max_concurrent,
            update_timeout_secs: self.update_timeout_secs,
            allow_downgrade: self.allow_downgrade,
            timezone: self.timezone.clone(),
            windows: parse_windows(&self.window)?,
            ..GroupPatch::default()
        })
    }
}

/// `wellcar server group …`.
#[derive(Debug, clap::Subcommand)]
pub enum GroupCommand {
    /// List groups.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one group.
    Show {
        #[command(flatten)]
        server: ServerArgs,
        /// Group track.
        #[arg(long)]
        group: String,
    },
    /// Create a group; if its track exists (e.g. a seeded `stable`), apply the settings to it.
    Create {
        #[command(flatten)]
        server: ServerArgs,
        /// Group name (also the track unless --track is given).
        #[arg(long)]
        name: String,
        /// Omaha track that selects the group.
        #[arg(long)]
        track: Option<String>,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Change a group's channel or policy.
    Update {
        #[command(flatten)]
        server: ServerArgs,
        /// Group track.
        #[arg(long)]
        group: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Pause updates for a group.
    Pause {
        #[command(flatten)]
        server: ServerArgs,
        /// Group track.
        #[arg(long)]
        group: String,
    },
    /// Resume updates (also releases a safe-mode halt).
    Resume {
        #[command(flatten)]
        server: ServerArgs,
        /// Group track.
        #[arg(long)]
        group: String,
    },
}

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
    server: ServerArgs,
    /// Most recent entries to show.
    #[arg(long, default_value_t = 50)]
    limit: i64,
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
    match cmd {
        Command::Serve(o) => {
            let mut s = crate::Settings::new(&o.database, o.listen);
            s.payload_dir = o.payload_dir;
            s.public_url = o.public_url;
            s.poll_interval_secs = o.poll_interval;
            s.last_seen_resolution = Duration::from_secs(o.last_seen_resolution);
            s.flush_interval = Duration::from_millis(o.flush_interval_ms.max(10));
            s.event_retention = Duration::from_secs(o.event_retention_days * 86_400);
            s.instance_retention = Duration::from_secs(o.instance_retention_days * 86_400);
            s.activity_retention = Duration::from_secs(o.activity_retention_days * 86_400);
            s.sweep_interval = Duration::from_secs(o.sweep_interval.max(1));
            crate::serve(s).await
        }
        Command::Token(TokenCommand::Create {
            database,
            name,
            role,
        }) => {
            let role = Role::parse(&role)
                .with_context(|| format!("role {role:?} is not admin or read-only"))?;
            let secret = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
                let db = crate::db::Db::open(&database, 1)
                    .with_context(|| format!("opening {}", crate::db::redact(&database)))?;
                let now = crate::now_ms();
                db.write_blocking(|c| crate::store::migrate(c, now))?;
                Ok(db.write_blocking(|c| crate::store::create_token(c, &name, role, now))?)
            })
            .await??;
            println!("{secret}");
            Ok(())
        }
        Command::App(AppCommand::List { server }) => {
            print(&server.client().get("/api/v1/apps").await?)
        }
        Command::App(AppCommand::Create {
            server,
            name,
            channels,
        }) => {
            let api = server.client();
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
        Command::Package(PackageCommand::List { server }) => print(
            &server
                .client()
                .get(&format!("{}/packages", server.app_path()))
                .await?,
        ),
        Command::Package(PackageCommand::Publish(o)) => publish(o, upload).await,
        Command::Package(PackageCommand::Floor {
            server,
            channel,
            version,
            arch,
            reason,
        }) => print(
            &server
                .client()
                .call(
                    Method::POST,
                    &format!("{}/channels/{channel}/floors", server.app_path()),
                    &json!({"version": version, "arch": arch, "reason": reason}),
                )
                .await?,
        ),
        Command::Group(g) => group(g).await,
        Command::Instances(o) => {
            let mut q = vec!["limit=100000".to_owned()];
            if let Some(g) = &o.group {
                q.push(format!("group={g}"));
            }
            if let Some(s) = &o.status {
                q.push(format!("status={s}"));
            }
            print(
                &o.server
                    .client()
                    .get(&format!(
                        "{}/instances?{}",
                        o.server.app_path(),
                        q.join("&")
                    ))
                    .await?,
            )
        }
        Command::Activity(o) => print(
            &o.server
                .client()
                .get(&format!(
                    "/api/v1/activity?app={}&limit={}",
                    wellcar_omaha::normalize_app_id(&o.server.app),
                    o.limit
                ))
                .await?,
        ),
    }
}

/// What to publish: payload file, version, arch.
#[derive(Debug, PartialEq, Eq)]
struct PublishTarget {
    file: PathBuf,
    version: String,
    arch: String,
}

/// Reads version, board and payload name from a `wellcar build` output's `manifest.json`.
fn target_from_build(dir: &std::path::Path, arch: Option<String>) -> anyhow::Result<PublishTarget> {
    let path = dir.join("manifest.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let m: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let field = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let version =
        field("version").with_context(|| format!("{} has no \"version\"", path.display()))?;
    let payload = field("payload").with_context(|| {
        format!(
            "{} names no \"payload\" (build with a signing key, or use --file)",
            path.display()
        )
    })?;
    let arch = match arch {
        Some(a) => a,
        None => match field("board").as_deref() {
            Some("arm64-usr") => "arm64".into(),
            Some("amd64-usr") | None => "amd64".into(),
            Some(other) => bail!("{}: unknown board {other:?}", path.display()),
        },
    };
    Ok(PublishTarget {
        file: dir.join(payload),
        version,
        arch,
    })
}

async fn publish(o: PublishOpts, upload: OnUpload) -> anyhow::Result<()> {
    let api = o.server.client();
    let target = match &o.build {
        Some(dir) => target_from_build(dir, o.arch.clone())?,
        None => PublishTarget {
            file: o
                .file
                .clone()
                .context("--file is required without --build")?,
            version: o
                .version
                .clone()
                .context("--version is required without --build")?,
            arch: o.arch.clone().unwrap_or_else(|| "amd64".into()),
        },
    };
    let PublishTarget {
        file,
        version,
        arch,
    } = target;
    let filename = file
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no file name", file.display()))?
        .to_owned();
    let created: Result<serde_json::Value, crate::client::ClientError> = match &o.url {
        Some(url) => {
            let file = file.clone();
            let (size, sha256, sha1) =
                tokio::task::spawn_blocking(move || hash_file(&file)).await??;
            api.call(
                Method::POST,
                &format!("{}/packages", o.server.app_path()),
                &json!({"version": version, "arch": arch, "filename": filename, "url": url,
                        "size": size, "sha256_hex": hex::encode(sha256),
                        "sha1_base64": base64::engine::general_purpose::STANDARD.encode(sha1)}),
            )
            .await
        }
        None => {
            api.put_file_with_progress(
                &format!(
                    "{}/packages/{}/{}/{}",
                    o.server.app_path(),
                    arch,
                    version,
                    filename
                ),
                &file,
                upload,
            )
            .await
        }
    };
    let package = match created {
        Ok(p) => p,
        Err(crate::client::ClientError::Status { status, .. })
            if status == hyper::StatusCode::CONFLICT && o.allow_existing =>
        {
            json!({"version": version, "arch": arch, "existing": true})
        }
        Err(e) => return Err(e).context("uploading the package"),
    };
    let mut out = json!({ "package": package });
    if let Some(channel) = &o.channel {
        let ch: serde_json::Value = api
            .call(
                Method::POST,
                &format!("{}/channels/{channel}/publish", o.server.app_path()),
                &json!({"version": version, "arch": arch}),
            )
            .await
            .with_context(|| format!("publishing {} to channel {channel}", version))?;
        out["channel"] = ch;
    }
    print(&out)
}

fn hash_file(path: &std::path::Path) -> anyhow::Result<(u64, [u8; 32], [u8; 20])> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut sha256 = sha2::Sha256::new();
    let mut sha1 = sha1::Sha1::new();
    let mut size = 0_u64;
    let mut buf = vec![0_u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        sha256.update(&buf[..n]);
        sha1.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, sha256.finalize().into(), sha1.finalize().into()))
}

async fn group(cmd: GroupCommand) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::List { server } => print(
            &server
                .client()
                .get(&format!("{}/groups", server.app_path()))
                .await?,
        ),
        GroupCommand::Show { server, group } => print(
            &server
                .client()
                .get(&format!("{}/groups/{group}", server.app_path()))
                .await?,
        ),
        GroupCommand::Create {
            server,
            name,
            track,
            policy,
        } => {
            let api = server.client();
            let patch = policy.patch()?;
            let track = track.unwrap_or_else(|| name.clone());
            let defaults = Policy::default();
            let full = Policy {
                updates_enabled: true,
                safe_mode: patch.safe_mode.unwrap_or(defaults.safe_mode),
                max_updates_per_period: patch
                    .max_updates_per_period
                    .unwrap_or(defaults.max_updates_per_period),
                period_secs: patch.period_secs.unwrap_or(defaults.period_secs),
                max_concurrent: patch.max_concurrent.unwrap_or(defaults.max_concurrent),
                update_timeout_secs: patch
                    .update_timeout_secs
                    .unwrap_or(defaults.update_timeout_secs),
                allow_downgrade: patch.allow_downgrade.unwrap_or(defaults.allow_downgrade),
                timezone: patch.timezone.clone().unwrap_or(defaults.timezone),
                windows: patch.windows.clone().unwrap_or_default(),
            };
            let channel = patch.channel.clone().unwrap_or_else(|| name.clone());
            let created: Result<serde_json::Value, _> = api
                .call(
                    Method::POST,
                    &format!("{}/groups", server.app_path()),
                    &json!({"name": name, "track": track, "channel": channel, "policy": full}),
                )
                .await;
            match created {
                Ok(g) => print(&g),
                Err(crate::client::ClientError::Status { status, .. })
                    if status == hyper::StatusCode::CONFLICT =>
                {
                    eprintln!("group {track} exists; applying the settings to it");
                    let patch = GroupPatch {
                        channel: Some(channel),
                        name: Some(name),
                        ..patch
                    };
                    print(
                        &api.call(
                            Method::PATCH,
                            &format!("{}/groups/{track}", server.app_path()),
                            &patch,
                        )
                        .await?,
                    )
                }
                Err(e) => Err(e.into()),
            }
        }
        GroupCommand::Update {
            server,
            group,
            policy,
        } => print(
            &server
                .client()
                .call(
                    Method::PATCH,
                    &format!("{}/groups/{group}", server.app_path()),
                    &policy.patch()?,
                )
                .await?,
        ),
        GroupCommand::Pause { server, group } => print(
            &server
                .client()
                .call(
                    Method::POST,
                    &format!("{}/groups/{group}/pause", server.app_path()),
                    &json!({}),
                )
                .await?,
        ),
        GroupCommand::Resume { server, group } => print(
            &server
                .client()
                .call(
                    Method::POST,
                    &format!("{}/groups/{group}/resume", server.app_path()),
                    &json!({}),
                )
                .await?,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_manifest_names_version_board_and_payload() {
        let dir = tempfile::tempdir().unwrap();
        let manifest =
            json!({"version": "4.5.6", "board": "arm64-usr", "payload": "wellcar_update.bin"});
        std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
        let t = target_from_build(dir.path(), None).unwrap();
        assert_eq!(
            t,
            PublishTarget {
                file: dir.path().join("wellcar_update.bin"),
                version: "4.5.6".into(),
                arch: "arm64".into()
            }
        );
        std::fs::write(dir.path().join("manifest.json"), r#"{"version": "1.0.0"}"#).unwrap();
        let err = target_from_build(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("names no \"payload\""), "{err}");
    }

    #[test]
    fn windows_parse_from_flags() {
        let w = parse_windows(&["sat,sun 22:00 240".into()])
            .unwrap()
            .unwrap();
        assert_eq!(w[0].days, ["sat", "sun"]);
        assert_eq!((w[0].start.as_str(), w[0].minutes), ("22:00", 240));
        assert_eq!(parse_windows(&["none".into()]).unwrap(), Some(vec![]));
        assert_eq!(parse_windows(&[]).unwrap(), None);
        let err = parse_windows(&["sat 22:00".into()]).unwrap_err();
        assert!(err.to_string().contains("DAYS HH:MM MINUTES"), "{err}");
    }
}
