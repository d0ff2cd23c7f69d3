//! API tokens (`api_tokens`) and their roles.
//!
//! Contract:
//! - A token's secret is shown once, at creation; only its SHA-256 is stored, and a bearer
//!   token is resolved by hashing it.
//! - Token names are unique; creating a token is logged in the activity log.

use super::{check_name, log_activity, NewActivity};
use crate::db::{query_one, Conn};
use crate::params;
use crate::StoreError;

/// A role an API token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// May read and change everything.
    Admin,
    /// May only read.
    ReadOnly,
}

impl Role {
    /// `admin` or `read-only`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }

    /// Parses `admin` / `read-only`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "read-only" | "readonly" | "viewer" => Some(Role::ReadOnly),
            _ => None,
        }
    }
}

fn token_hash(token: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Creates an API token and returns its secret; only its SHA-256 is stored.
pub fn create_token(
    conn: &mut dyn Conn,
    name: &str,
    role: Role,
    now: i64,
) -> Result<String, StoreError> {
    check_name("token", name)?;
    let secret = format!(
        "wct_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let n = conn.execute(
        "INSERT INTO api_tokens (id, name, role, token_sha256, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        &params![
            uuid::Uuid::new_v4().to_string(),
            name,
            role.as_str(),
            token_hash(&secret),
            now
        ],
    )?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "token {name:?} already exists"
        )));
    }
    log_activity(
        conn,
        now,
        &NewActivity {
            actor: "system",
            kind: "token-created",
            app_id: None,
            group_id: None,
            severity: "info",
            message: &format!("api token {name:?} ({}) created", role.as_str()),
        },
    )?;
    Ok(secret)
}

/// Resolves a bearer token to its name and role.
pub fn check_token(conn: &mut dyn Conn, token: &str) -> Result<Option<(String, Role)>, StoreError> {
    let row = query_one(
        conn,
        "SELECT name, role FROM api_tokens WHERE token_sha256 = $1",
        &params![token_hash(token)],
    )?;
    match row {
        Some(r) => Ok(Role::parse(&r.text(1)?).map(|role| (r.text(0).unwrap_or_default(), role))),
        None => Ok(None),
    }
}
