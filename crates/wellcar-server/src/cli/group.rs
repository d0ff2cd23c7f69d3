//! `wellcar server group …`: groups and their rollout policies through the admin API.
//!
//! Contract:
//! - `group create` sends a full policy: the flags given, defaults for the rest. If the track
//!   exists already (e.g. a seeded `stable`), it patches that group instead, with the flags
//!   given and the name and channel.
//! - `group update` changes only what its flags name; `--window none` clears the windows.
//! - `--safe-mode-failures N` (N ≥ 1) sets how many distinct granted instances must fail before
//!   safe mode halts the group.

use anyhow::{bail, Context as _};
use hyper::Method;
use serde_json::json;

use super::{Note, ServerArgs};
use crate::model::{GroupPatch, Policy, Window};

/// Policy flags shared by `group create` and `group update`.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Channel the group follows.
    #[arg(long)]
    channel: Option<String>,
    /// Safe mode: one instance first; failures or timeouts of granted instances halt the
    /// group (`--safe-mode` alone means true).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    safe_mode: Option<bool>,
    /// Safe mode halts the group once this many distinct granted instances failed or timed out
    /// on the target version (default 1).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    safe_mode_failures: Option<i64>,
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
            safe_mode_failures: self.safe_mode_failures,
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

/// Runs `wellcar server group …`; returns the group(s) as the admin API answered (the caller
/// prints them). `group create` on an existing track reports [`Note::GroupExists`] before it
/// patches that group.
pub(super) async fn group(
    cmd: GroupCommand,
    on_note: &mut dyn FnMut(Note),
) -> anyhow::Result<serde_json::Value> {
    Ok(match cmd {
        GroupCommand::List { server } => {
            server
                .client()?
                .get(&format!("{}/groups", server.app_path()))
                .await?
        }
        GroupCommand::Show { server, group } => {
            server
                .client()?
                .get(&format!("{}/groups/{group}", server.app_path()))
                .await?
        }
        GroupCommand::Create {
            server,
            name,
            track,
            policy,
        } => {
            let api = server.client()?;
            let patch = policy.patch()?;
            let track = track.unwrap_or_else(|| name.clone());
            let defaults = Policy::default();
            let full = Policy {
                updates_enabled: true,
                safe_mode: patch.safe_mode.unwrap_or(defaults.safe_mode),
                safe_mode_failures: patch
                    .safe_mode_failures
                    .unwrap_or(defaults.safe_mode_failures),
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
                Ok(g) => g,
                Err(crate::client::ClientError::Status { status, .. })
                    if status == hyper::StatusCode::CONFLICT =>
                {
                    on_note(Note::GroupExists {
                        track: track.clone(),
                    });
                    let patch = GroupPatch {
                        channel: Some(channel),
                        name: Some(name),
                        ..patch
                    };
                    api.call(
                        Method::PATCH,
                        &format!("{}/groups/{track}", server.app_path()),
                        &patch,
                    )
                    .await?
                }
                Err(e) => return Err(e.into()),
            }
        }
        GroupCommand::Update {
            server,
            group,
            policy,
        } => {
            server
                .client()?
                .call(
                    Method::PATCH,
                    &format!("{}/groups/{group}", server.app_path()),
                    &policy.patch()?,
                )
                .await?
        }
        GroupCommand::Pause { server, group } => {
            server
                .client()?
                .call(
                    Method::POST,
                    &format!("{}/groups/{group}/pause", server.app_path()),
                    &json!({}),
                )
                .await?
        }
        GroupCommand::Resume { server, group } => {
            server
                .client()?
                .call(
                    Method::POST,
                    &format!("{}/groups/{group}/resume", server.app_path()),
                    &json!({}),
                )
                .await?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Args {
        #[command(subcommand)]
        cmd: GroupCommand,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_on_an_existing_track_notes_it_and_applies_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let (server, token) = crate::test_server::sqlite_with_admin(dir.path()).await;
        let url = server.url();
        let cmd = |args: &[&str]| {
            let mut argv = vec!["group"];
            argv.extend_from_slice(args);
            argv.extend_from_slice(&["--server", &url, "--token", &token]);
            Args::try_parse_from(argv).unwrap().cmd
        };

        // `stable` is seeded: the create becomes a patch, and says so.
        let mut notes = Vec::new();
        let g = group(
            cmd(&["create", "--name", "stable", "--max-concurrent", "3"]),
            &mut |n| notes.push(n),
        )
        .await
        .unwrap();
        assert_eq!(
            notes,
            [Note::GroupExists {
                track: "stable".into()
            }]
        );
        assert_eq!(
            notes[0].to_string(),
            "group stable exists; applying the settings to it"
        );
        assert_eq!(
            (g["track"].as_str(), g["policy"]["max_concurrent"].as_i64()),
            (Some("stable"), Some(3))
        );

        // A new track is created without a note.
        notes.clear();
        let g = group(
            cmd(&[
                "create",
                "--name",
                "canary",
                "--channel",
                "stable",
                "--safe-mode",
                "--safe-mode-failures",
                "2",
            ]),
            &mut |n| notes.push(n),
        )
        .await
        .unwrap();
        assert_eq!(notes, []);
        assert_eq!(g["track"], "canary");
        assert_eq!(
            (
                &g["policy"]["safe_mode"],
                &g["policy"]["safe_mode_failures"]
            ),
            (&json!(true), &json!(2))
        );
        // `group update` changes it alone; zero is refused before anything is sent.
        let g = group(
            cmd(&["update", "--group", "canary", "--safe-mode-failures", "3"]),
            &mut |_| {},
        )
        .await
        .unwrap();
        assert_eq!(
            (
                &g["policy"]["safe_mode"],
                &g["policy"]["safe_mode_failures"]
            ),
            (&json!(true), &json!(3))
        );
        assert!(Args::try_parse_from([
            "group",
            "update",
            "--group",
            "canary",
            "--safe-mode-failures",
            "0"
        ])
        .is_err());
        server.shutdown().await.unwrap();
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
