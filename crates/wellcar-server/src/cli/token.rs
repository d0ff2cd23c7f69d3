//! `wellcar server token …`: API tokens, managed directly in the database (no server needed).
//!
//! Contract:
//! - The database is migrated (and seeded if empty) first, so a token can be created before the
//!   server first runs.
//! - `token create --name N [--scope read|publish|admin] [--expires-in 30d]`: the scope
//!   defaults to `admin` (`--role` is the old spelling, `read-only` the old `read`); the
//!   lifetime is a whole number with a unit `s`, `m`, `h`, `d` or `w`. The secret is returned
//!   once, and printed once on stdout by the dispatch; only its hash is stored.
//! - `token list` prints every token as JSON (id, name, scope, created, expiry, revocation,
//!   last use; never secrets). `token revoke ID` (an id, or a name) revokes it for good and
//!   prints its record.

use std::time::Duration;

use anyhow::Context as _;

use super::DEFAULT_DATABASE;
use crate::store::{self, Scope};

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
        /// `read`, `publish` or `admin` (each includes the ones before).
        #[arg(long, alias = "role", default_value = "admin")]
        scope: String,
        /// Lifetime, e.g. `90m`, `12h`, `30d`, `8w` (default: never expires).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List tokens as JSON (never their secrets).
    List {
        /// Database URL, as given to `serve`.
        #[arg(long, default_value = DEFAULT_DATABASE)]
        database: String,
    },
    /// Revoke a token, by id (or name), for good.
    Revoke {
        /// Database URL, as given to `serve`.
        #[arg(long, default_value = DEFAULT_DATABASE)]
        database: String,
        /// The token's id (from `token list`) or name.
        id: String,
    },
}

/// What a `token` subcommand produced; the dispatch prints it.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenOutput {
    /// A new token's secret (printed alone, once).
    Secret(String),
    /// A listing or record (printed as JSON).
    Json(serde_json::Value),
}

/// Parses a lifetime such as `30d`: a whole positive number and one unit of `s`, `m`, `h`, `d`
/// (24 h) or `w` (7 d).
pub fn parse_lifetime(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .with_context(|| format!("lifetime {text:?} has no unit (use s, m, h, d or w)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .with_context(|| format!("lifetime {text:?} does not start with a whole number"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => anyhow::bail!("lifetime {text:?} has unit {other:?}; use s, m, h, d or w"),
    };
    let secs = n
        .checked_mul(unit_secs)
        .with_context(|| format!("lifetime {text:?} is too long"))?;
    anyhow::ensure!(secs > 0, "lifetime {text:?} must be longer than zero");
    Ok(Duration::from_secs(secs))
}

fn open_migrated(database: &str) -> anyhow::Result<std::sync::Arc<crate::db::Db>> {
    let db = crate::db::Db::open(database, 1)
        .with_context(|| format!("opening {}", crate::db::redact(database)))?;
    let now = crate::now_ms();
    db.write_blocking(|c| store::migrate(c, now))?;
    Ok(db)
}

/// Runs `wellcar server token …`; returns what to print.
pub(super) async fn token(cmd: TokenCommand) -> anyhow::Result<TokenOutput> {
    tokio::task::spawn_blocking(move || run_blocking(cmd)).await?
}

fn run_blocking(cmd: TokenCommand) -> anyhow::Result<TokenOutput> {
    match cmd {
        TokenCommand::Create {
            database,
            name,
            scope,
            expires_in,
        } => {
            let scope = Scope::parse(&scope)
                .with_context(|| format!("scope {scope:?} is not read, publish or admin"))?;
            let lifetime = expires_in.as_deref().map(parse_lifetime).transpose()?;
            let db = open_migrated(&database)?;
            let now = crate::now_ms();
            let expires_at = match lifetime {
                Some(l) => Some(
                    crate::admin::expiry_after(now, l.as_secs())
                        .context("the token's lifetime is too long")?,
                ),
                None => None,
            };
            let created = db.write_blocking(|c| {
                let new = store::NewToken {
                    name: &name,
                    scope,
                    expires_at,
                    actor: "cli",
                };
                store::create_scoped_token(c, &new, now)
            })?;
            Ok(TokenOutput::Secret(created.secret))
        }
        TokenCommand::List { database } => {
            let db = open_migrated(&database)?;
            let tokens = db.write_blocking(store::list_tokens)?;
            Ok(TokenOutput::Json(serde_json::to_value(tokens)?))
        }
        TokenCommand::Revoke { database, id } => {
            let db = open_migrated(&database)?;
            let now = crate::now_ms();
            let revoked = db.write_blocking(|c| store::revoke_token(c, &id, "cli", now))?;
            Ok(TokenOutput::Json(serde_json::to_value(revoked)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(out: TokenOutput) -> String {
        match out {
            TokenOutput::Secret(s) => s,
            other => panic!("expected a secret, got {other:?}"),
        }
    }

    /// Finding "tokens cannot be listed, revoked, scoped or expired": the CLI creates scoped,
    /// expiring tokens, lists them without secrets and revokes them.
    #[tokio::test]
    async fn create_list_and_revoke_scoped_expiring_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite:{}", dir.path().join("server.db").display());
        let create = |name: &str, scope: &str, expires_in: Option<&str>| TokenCommand::Create {
            database: database.clone(),
            name: name.into(),
            scope: scope.into(),
            expires_in: expires_in.map(str::to_owned),
        };
        let publisher = secret(token(create("ci", "publish", Some("30d"))).await.unwrap());
        let viewer = secret(token(create("me", "read-only", None)).await.unwrap());
        let db = crate::db::Db::open(&database, 1).unwrap();
        let now = crate::now_ms();
        let found = db
            .write_blocking(|c| store::check_token(c, &publisher, now))
            .unwrap()
            .unwrap();
        assert_eq!((found.name.as_str(), found.scope), ("ci", Scope::Publish));
        let expires = found.expires_at.unwrap();
        assert!(
            (now + 29 * 86_400_000..=now + 30 * 86_400_000).contains(&expires),
            "{expires} vs {now}"
        );

        let TokenOutput::Json(list) = token(TokenCommand::List {
            database: database.clone(),
        })
        .await
        .unwrap() else {
            panic!("list prints JSON")
        };
        let text = list.to_string();
        assert!(
            !text.contains(&publisher) && !text.contains(&viewer),
            "{text}"
        );
        let names: Vec<_> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["name"].as_str().unwrap(), t["scope"].as_str().unwrap()))
            .collect();
        assert_eq!(names, [("ci", "publish"), ("me", "read")]);

        token(TokenCommand::Revoke {
            database: database.clone(),
            id: found.id.clone(),
        })
        .await
        .unwrap();
        let after = db
            .write_blocking(|c| store::check_token(c, &publisher, crate::now_ms()))
            .unwrap();
        assert_eq!(after, None, "a revoked token no longer authenticates");

        let err = token(create("x", "root", None)).await.unwrap_err();
        assert!(err.to_string().contains("\"root\""), "{err}");
        let err = token(create("y", "read", Some("30 days")))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("\"30 days\""), "{err}");
    }

    #[test]
    fn lifetimes_need_a_number_and_a_unit() {
        assert_eq!(parse_lifetime("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_lifetime("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        for bad in ["30", "d", "0d", "5y", "-1d"] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }
}
