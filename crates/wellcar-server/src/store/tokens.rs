//! API tokens (`api_tokens`): scopes, expiry, revocation.
//!
//! Contract:
//! - A token's secret is shown once, at creation; only its SHA-256 is stored, and a bearer
//!   token is resolved by hashing it. Listings ([`list_tokens`]) never include secrets or hashes.
//! - A token has one [`Scope`]: `read` < `publish` < `admin`; a higher scope includes the lower
//!   ones. Tokens created before scopes existed keep their old role: `admin` stays admin,
//!   `read-only` becomes `read` (migration 4).
//! - A token may expire (`expires_at`, unix ms) and may be revoked (`revoked_at`); an expired or
//!   revoked token resolves to nothing, exactly like an unknown one. Revocation is permanent.
//! - Token names are unique (revoked tokens keep theirs); creating and revoking a token is
//!   logged in the activity log.
//! - `last_used_at` is refreshed at most every [`LAST_USED_RESOLUTION_MS`], so authenticating
//!   does not write on every request.

use super::{check_name, log_activity, NewActivity};
use crate::db::{query_one, Conn, Row};
use crate::params;
use crate::StoreError;

/// How stale `last_used_at` may get before a use of the token writes it again.
pub const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// What an API token may do. Ordered: each scope includes the ones before it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// May read everything (admin API `GET`s, `/metrics`).
    Read,
    /// May also create and upload packages and move channels (publish, floors).
    Publish,
    /// May also change apps, channels, groups, tokens and run retention.
    Admin,
}

/// The name `wellcar-server` used for [`Scope`] before scopes had three levels; kept so callers
/// written against it (`Role::Admin`) keep compiling.
pub type Role = Scope;

impl Scope {
    /// `read`, `publish` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Publish => "publish",
            Scope::Admin => "admin",
        }
    }

    /// Parses `read` (also the old `read-only`), `publish` or `admin`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" | "read-only" | "readonly" | "viewer" => Some(Scope::Read),
            "publish" => Some(Scope::Publish),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    /// Whether a token of this scope may do what `needed` guards.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored token as listings show it: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ApiToken {
    /// Row id (what `token revoke` takes).
    pub id: String,
    /// Unique name, the actor in the activity log.
    pub name: String,
    /// What the token may do.
    pub scope: Scope,
    /// Created at (unix ms).
    pub created_at: i64,
    /// Expires at (unix ms), if ever.
    pub expires_at: Option<i64>,
    /// Revoked at (unix ms), if revoked.
    pub revoked_at: Option<i64>,
    /// Last authenticated use (unix ms, at [`LAST_USED_RESOLUTION_MS`] resolution), if any.
    pub last_used_at: Option<i64>,
}

/// A token to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken<'a> {
    /// Unique name ([`check_name`] rules).
    pub name: &'a str,
    /// Its scope.
    pub scope: Scope,
    /// When it expires (unix ms), if ever.
    pub expires_at: Option<i64>,
    /// Who creates it (activity log actor).
    pub actor: &'a str,
}

/// A token just created: its record and its secret (shown once).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// The stored record.
    pub token: ApiToken,
    /// The bearer secret; only its hash is stored.
    pub secret: String,
}

const TOKEN_COLUMNS: &str = "id, name, scope, created_at, expires_at, revoked_at, last_used_at";

fn token_from(r: &Row) -> Result<ApiToken, StoreError> {
    let scope_text = r.text(2)?;
    let scope = Scope::parse(&scope_text).ok_or_else(|| {
        StoreError::Invalid(format!("api_tokens.scope {scope_text:?} is not a scope"))
    })?;
    Ok(ApiToken {
        id: r.text(0)?,
        name: r.text(1)?,
        scope,
        created_at: r.int(3)?,
        expires_at: r.opt_int(4)?,
        revoked_at: r.opt_int(5)?,
        last_used_at: r.opt_int(6)?,
    })
}

fn token_hash(token: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Creates an admin-chosen-scope token that never expires and returns its secret; only its
/// SHA-256 is stored.
pub fn create_token(
    conn: &mut dyn Conn,
    name: &str,
    scope: Scope,
    now: i64,
) -> Result<String, StoreError> {
    let new = NewToken {
        name,
        scope,
        expires_at: None,
        actor: "system",
    };
    Ok(create_scoped_token(conn, &new, now)?.secret)
}

/// Creates a token; returns its record and secret. An expiry not after `now` is refused.
pub fn create_scoped_token(
    conn: &mut dyn Conn,
    new: &NewToken<'_>,
    now: i64,
) -> Result<CreatedToken, StoreError> {
    check_name("token", new.name)?;
    if let Some(at) = new.expires_at.filter(|at| *at <= now) {
        return Err(StoreError::Invalid(format!(
            "token {:?} would expire at {at}, which is not in the future",
            new.name
        )));
    }
    let secret = format!(
        "wct_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let token = ApiToken {
        id: uuid::Uuid::new_v4().to_string(),
        name: new.name.to_owned(),
        scope: new.scope,
        created_at: now,
        expires_at: new.expires_at,
        revoked_at: None,
        last_used_at: None,
    };
    // `role` is the pre-scope column; it mirrors the scope for old readers.
    let n = conn.execute(
        "INSERT INTO api_tokens (id, name, role, scope, token_sha256, created_at, expires_at)
         VALUES ($1, $2, $3, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        &params![
            &token.id,
            &token.name,
            token.scope.as_str(),
            token_hash(&secret),
            now,
            token.expires_at
        ],
    )?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "token {:?} already exists",
            new.name
        )));
    }
    let expiry = match token.expires_at {
        Some(at) => format!(", expires at {at}"),
        None => String::new(),
    };
    log_activity(
        conn,
        now,
        &NewActivity {
            actor: new.actor,
            kind: "token-created",
            app_id: None,
            group_id: None,
            severity: "info",
            message: &format!(
                "api token {:?} ({}{expiry}) created",
                token.name, token.scope
            ),
        },
    )?;
    Ok(CreatedToken { token, secret })
}

/// Resolves a bearer token that is neither expired nor revoked at `now`.
pub fn check_token(
    conn: &mut dyn Conn,
    token: &str,
    now: i64,
) -> Result<Option<ApiToken>, StoreError> {
    let sql = format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_sha256 = $1
         AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)"
    );
    query_one(conn, &sql, &params![token_hash(token), now])?
        .map(|r| token_from(&r))
        .transpose()
}

/// Records a use of token `id` at `now`, unless one was recorded in the last
/// [`LAST_USED_RESOLUTION_MS`].
pub fn touch_token(conn: &mut dyn Conn, id: &str, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE api_tokens SET last_used_at = $2
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3)",
        &params![id, now, now - LAST_USED_RESOLUTION_MS],
    )?;
    Ok(())
}

/// Every token, revoked and expired ones included, oldest first.
pub fn list_tokens(conn: &mut dyn Conn) -> Result<Vec<ApiToken>, StoreError> {
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, name");
    conn.query(&sql, &[])?.iter().map(token_from).collect()
}

/// Revokes the token with id (or, failing that, name) `id_or_name`; returns its record.
/// Revoking a revoked token changes nothing and is not an error.
pub fn revoke_token(
    conn: &mut dyn Conn,
    id_or_name: &str,
    actor: &str,
    now: i64,
) -> Result<ApiToken, StoreError> {
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1 OR name = $1");
    let rows = conn.query(&sql, &params![id_or_name])?;
    // An id match wins over a (different) token whose name happens to equal it.
    let row = rows
        .iter()
        .map(token_from)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .min_by_key(|t| t.id != id_or_name)
        .ok_or_else(|| StoreError::NotFound(format!("api token {id_or_name:?}")))?;
    if row.revoked_at.is_some() {
        return Ok(row);
    }
    conn.execute(
        "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        &params![&row.id, now],
    )?;
    log_activity(
        conn,
        now,
        &NewActivity {
            actor,
            kind: "token-revoked",
            app_id: None,
            group_id: None,
            severity: "info",
            message: &format!("api token {:?} ({}) revoked", row.name, row.id),
        },
    )?;
    Ok(ApiToken {
        revoked_at: Some(now),
        ..row
    })
}
