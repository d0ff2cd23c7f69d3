//! `wellcar server token …`: API tokens, created directly in the database (no server needed).
//!
//! Contract:
//! - The database is migrated (and seeded if empty) first, so a token can be created before the
//!   server first runs.
//! - The secret is returned once, and printed once on stdout by the dispatch; only its hash is
//!   stored.

use anyhow::Context as _;

use super::DEFAULT_DATABASE;
use crate::store::Role;

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

/// Runs `wellcar server token …`; returns the secret of the token created (the caller prints
/// it).
pub(super) async fn token(cmd: TokenCommand) -> anyhow::Result<String> {
    match cmd {
        TokenCommand::Create {
            database,
            name,
            role,
        } => {
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
            Ok(secret)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn create_returns_the_secret_of_the_stored_token() {
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite:{}", dir.path().join("server.db").display());
        let create = |role: &str| TokenCommand::Create {
            database: database.clone(),
            name: "me".into(),
            role: role.into(),
        };
        let secret = token(create("read-only")).await.unwrap();
        let db = crate::db::Db::open(&database, 1).unwrap();
        let found = db
            .write_blocking(|c| crate::store::check_token(c, &secret))
            .unwrap();
        assert_eq!(found, Some(("me".into(), Role::ReadOnly)));
        let err = token(create("root")).await.unwrap_err();
        assert!(err.to_string().contains("\"root\""), "{err}");
    }
}
