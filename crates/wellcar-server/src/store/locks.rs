//! FleetLock reboot semaphores (`fleetlock_groups`, `fleetlock_holders`): one counting semaphore
//! per lock group, each hold a lease.
//!
//! Contract:
//! - A lock group is a row of `fleetlock_groups`. Its `max_holders` is NULL until an admin sets
//!   it ([`fleetlock_set_max`]); NULL means "the server's default" (`--fleetlock-default-slots`),
//!   passed in by the caller as `default_max`. Groups the caller calls *implicit* (the server
//!   treats `default` and the Omaha groups' tracks so) get their row on first use; any other
//!   group must have been created by [`fleetlock_set_max`], else it is [`LockError::UnknownGroup`]
//!   and nothing is written.
//! - Every change to a group's holders (grant, release, expiry, force-release) and to its max
//!   first locks the group's row (`SELECT … FOR UPDATE` on PostgreSQL; SQLite's write
//!   transaction is already the single writer), then counts and changes holders, in the same
//!   transaction. So server processes sharing one database never hold more than `max_holders`
//!   holders of a group, and transactions that touch several groups lock them in name order.
//! - A hold is a lease: it ends `lease_ms` after its grant or its latest re-entrant renewal
//!   ([`fleetlock_acquire`] by the same id renews it). An overdue lease is deleted by the sweep
//!   ([`fleetlock_expire_leases`]) or by the next acquire in its group, whichever runs first,
//!   and logged once (`fleetlock-lease-expired`, warning): the delete is conditional, so two
//!   sweeping processes never both log it.
//! - Grants, releases, expiries, force-releases and max changes go to the activity log (kinds
//!   `fleetlock-granted`, `fleetlock-released`, `fleetlock-lease-expired`,
//!   `fleetlock-force-released`, `fleetlock-max-set`). Renewals do not (retries would flood it).
//! - Every grant takes the next value of its group's `grants` counter (`grant_seq`) and records
//!   how many holders the group had with it (`holders_at_grant`), both under the group lock.
//! - Group names and holder ids are checked as the FleetLock contract says
//!   ([`wellcar_contract::fleetlock::check_group`], [`wellcar_contract::fleetlock::check_id`]).

use super::{log_activity, NewActivity};
use crate::db::{query_one, Conn, Row};
use crate::params;
use crate::StoreError;

/// Largest `max_holders` an admin may set.
pub const MAX_MAX_HOLDERS: i64 = 100_000;

/// One holder of a reboot lock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RebootLockHolder {
    /// The client's id (FleetLock `client_params.id`).
    pub id: String,
    /// When the hold was granted (unix ms).
    pub acquired_at: i64,
    /// When it was last granted or renewed (unix ms).
    pub renewed_at: i64,
    /// When the lease ends unless renewed or released (unix ms).
    pub expires_at: i64,
    /// The group's grant counter at this grant (1, 2, …).
    pub grant_seq: i64,
    /// Holders the group had right after this grant, this one included.
    pub holders_at_grant: i64,
}

/// A lock group with its holders.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RebootLockGroup {
    /// Group name (FleetLock `client_params.group`).
    pub name: String,
    /// Holders allowed at once (the configured value, or the server default).
    pub max_holders: i64,
    /// Whether `max_holders` was set by an admin (else it follows the server default).
    pub max_configured: bool,
    /// Grants so far (the last `grant_seq`).
    pub grants: i64,
    /// Current holders, oldest grant first.
    pub holders: Vec<RebootLockHolder>,
}

/// A FleetLock lock or unlock request, as the store sees it.
#[derive(Debug, Clone)]
pub struct LockRequest {
    /// Lock group.
    pub group: String,
    /// Holder id.
    pub id: String,
    /// Whether the group exists even without a row (`default`, Omaha tracks).
    pub implicit_group: bool,
    /// `max_holders` of a group no admin configured.
    pub default_max: i64,
    /// Lease length (ms).
    pub lease_ms: i64,
}

/// What [`fleetlock_acquire`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOutcome {
    /// The id holds the lock now.
    Granted {
        /// Whether this was a new grant (else a re-entrant renewal).
        new: bool,
        /// When the lease ends (unix ms).
        expires_at: i64,
    },
    /// Every slot is taken.
    Full {
        /// Holders now.
        holders: i64,
        /// Slots.
        max_holders: i64,
    },
}

/// A FleetLock request the store refuses.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The group is neither implicit nor created by an admin.
    #[error("unknown lock group {0:?}")]
    UnknownGroup(String),
    /// Storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LockError {
    /// As a [`StoreError`], an unknown group becoming [`StoreError::NotFound`] with the group's
    /// name (so a transaction closure can return it and roll back).
    pub fn into_store(self) -> StoreError {
        match self {
            LockError::UnknownGroup(g) => StoreError::NotFound(g),
            LockError::Store(s) => s,
        }
    }
}

impl From<crate::db::DbError> for LockError {
    fn from(e: crate::db::DbError) -> Self {
        LockError::Store(e.into())
    }
}

const HOLDER_COLUMNS: &str =
    "holder_id, acquired_at, renewed_at, expires_at, grant_seq, holders_at_grant";

fn holder(r: &Row) -> Result<RebootLockHolder, StoreError> {
    Ok(RebootLockHolder {
        id: r.text(0)?,
        acquired_at: r.int(1)?,
        renewed_at: r.int(2)?,
        expires_at: r.int(3)?,
        grant_seq: r.int(4)?,
        holders_at_grant: r.int(5)?,
    })
}

/// The locked group row: (configured max or NULL, grants). Creates it first when `create`.
fn lock_group_row(
    conn: &mut dyn Conn,
    group: &str,
    create: bool,
    now: i64,
) -> Result<Option<(Option<i64>, i64)>, StoreError> {
    if create {
        conn.execute(
            "INSERT INTO fleetlock_groups (name, max_holders, grants, created_at, updated_at)
             VALUES ($1, NULL, 0, $2, $2) ON CONFLICT (name) DO NOTHING",
            &params![group, now],
        )?;
    }
    let sql = format!(
        "SELECT max_holders, grants FROM fleetlock_groups WHERE name = $1{}",
        conn.for_update()
    );
    query_one(conn, &sql, &params![group])?
        .map(|r| Ok((r.opt_int(0)?, r.int(1)?)))
        .transpose()
}

fn log(
    conn: &mut dyn Conn,
    now: i64,
    actor: &str,
    kind: &str,
    severity: &str,
    message: &str,
) -> Result<(), StoreError> {
    log_activity(
        conn,
        now,
        &NewActivity {
            actor,
            kind,
            app_id: None,
            group_id: None,
            severity,
            message,
        },
    )
}

/// Deletes the group's overdue leases (its row must be locked) and logs each one deleted.
fn expire_locked_group(
    conn: &mut dyn Conn,
    group: &str,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let overdue = conn.query(
        "SELECT holder_id, expires_at FROM fleetlock_holders
         WHERE group_name = $1 AND expires_at <= $2 ORDER BY holder_id",
        &params![group, now],
    )?;
    let mut expired = Vec::new();
    for r in overdue {
        let (id, expires_at) = (r.text(0)?, r.int(1)?);
        let deleted = conn.execute(
            "DELETE FROM fleetlock_holders
             WHERE group_name = $1 AND holder_id = $2 AND expires_at <= $3",
            &params![group, id.as_str(), now],
        )?;
        if deleted == 1 {
            let message = format!(
                "reboot lock {group}: lease of {id:?} expired at {expires_at} without steady-state; slot released"
            );
            log(
                conn,
                now,
                "system",
                "fleetlock-lease-expired",
                "warning",
                &message,
            )?;
            expired.push(id);
        }
    }
    Ok(expired)
}

fn count_holders(conn: &mut dyn Conn, group: &str) -> Result<i64, StoreError> {
    Ok(query_one(
        conn,
        "SELECT COUNT(*) FROM fleetlock_holders WHERE group_name = $1",
        &params![group],
    )?
    .map(|r| r.int(0))
    .transpose()?
    .unwrap_or(0))
}

/// FleetLock `RecursiveLock`: grants `req.id` a slot of `req.group`, or renews its lease if it
/// holds one already. Also returns how many overdue leases of the group it expired.
pub fn fleetlock_acquire(
    conn: &mut dyn Conn,
    req: &LockRequest,
    now: i64,
) -> Result<(LockOutcome, usize), LockError> {
    let (group, id) = (req.group.as_str(), req.id.as_str());
    let (implicit_group, default_max, lease_ms) =
        (req.implicit_group, req.default_max, req.lease_ms);
    let (configured, grants) = lock_group_row(conn, group, implicit_group, now)?
        .ok_or_else(|| LockError::UnknownGroup(group.to_owned()))?;
    let expired = expire_locked_group(conn, group, now)?.len();
    let expires_at = now.saturating_add(lease_ms);
    let renewed = conn.execute(
        "UPDATE fleetlock_holders SET renewed_at = $3, expires_at = $4
         WHERE group_name = $1 AND holder_id = $2",
        &params![group, id, now, expires_at],
    )?;
    if renewed == 1 {
        let outcome = LockOutcome::Granted {
            new: false,
            expires_at,
        };
        return Ok((outcome, expired));
    }
    let max_holders = configured.unwrap_or(default_max);
    let holders = count_holders(conn, group)?;
    if holders >= max_holders {
        let outcome = LockOutcome::Full {
            holders,
            max_holders,
        };
        return Ok((outcome, expired));
    }
    let seq = grants + 1;
    conn.execute(
        "UPDATE fleetlock_groups SET grants = $2 WHERE name = $1",
        &params![group, seq],
    )?;
    conn.execute(
        "INSERT INTO fleetlock_holders
           (group_name, holder_id, acquired_at, renewed_at, expires_at, grant_seq, holders_at_grant)
         VALUES ($1, $2, $3, $3, $4, $5, $6)",
        &params![group, id, now, expires_at, seq, holders + 1],
    )?;
    let message = format!(
        "reboot lock {group} granted to {id:?} (slot {} of {max_holders}, lease until {expires_at})",
        holders + 1
    );
    log(conn, now, "system", "fleetlock-granted", "info", &message)?;
    let outcome = LockOutcome::Granted {
        new: true,
        expires_at,
    };
    Ok((outcome, expired))
}

/// FleetLock `UnlockIfHeld`: releases `req.id`'s slot of `req.group` if it holds one. Returns
/// whether it did; not holding one is not an error.
pub fn fleetlock_release(
    conn: &mut dyn Conn,
    req: &LockRequest,
    now: i64,
) -> Result<bool, LockError> {
    let (group, id) = (req.group.as_str(), req.id.as_str());
    if lock_group_row(conn, group, false, now)?.is_none() {
        return if req.implicit_group {
            Ok(false)
        } else {
            Err(LockError::UnknownGroup(group.to_owned()))
        };
    }
    let deleted = conn.execute(
        "DELETE FROM fleetlock_holders WHERE group_name = $1 AND holder_id = $2",
        &params![group, id],
    )?;
    if deleted == 1 {
        let message = format!("reboot lock {group} released by {id:?} (steady state)");
        log(conn, now, "system", "fleetlock-released", "info", &message)?;
    }
    Ok(deleted == 1)
}

/// Expires every overdue lease, group by group in name order. Returns (group, id) of each.
pub fn fleetlock_expire_leases(
    conn: &mut dyn Conn,
    now: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    let groups = conn.query(
        "SELECT DISTINCT group_name FROM fleetlock_holders WHERE expires_at <= $1
         ORDER BY group_name",
        &params![now],
    )?;
    let mut out = Vec::new();
    for g in groups {
        let group = g.text(0)?;
        lock_group_row(conn, &group, false, now)?;
        for id in expire_locked_group(conn, &group, now)? {
            out.push((group.clone(), id));
        }
    }
    Ok(out)
}

/// Every lock group: those with a row, plus the implicit ones (`implicit`, no row yet, no
/// holders), by name.
pub fn fleetlock_list(
    conn: &mut dyn Conn,
    implicit: &[String],
    default_max: i64,
) -> Result<Vec<RebootLockGroup>, StoreError> {
    let mut groups: Vec<RebootLockGroup> = conn
        .query(
            "SELECT name, max_holders, grants FROM fleetlock_groups ORDER BY name",
            &[],
        )?
        .iter()
        .map(|r| {
            let configured = r.opt_int(1)?;
            Ok(RebootLockGroup {
                name: r.text(0)?,
                max_holders: configured.unwrap_or(default_max),
                max_configured: configured.is_some(),
                grants: r.int(2)?,
                holders: Vec::new(),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let sql = format!(
        "SELECT group_name, {HOLDER_COLUMNS} FROM fleetlock_holders ORDER BY group_name, grant_seq"
    );
    for r in conn.query(&sql, &[])? {
        let name = r.text(0)?;
        let h = RebootLockHolder {
            id: r.text(1)?,
            acquired_at: r.int(2)?,
            renewed_at: r.int(3)?,
            expires_at: r.int(4)?,
            grant_seq: r.int(5)?,
            holders_at_grant: r.int(6)?,
        };
        if let Some(g) = groups.iter_mut().find(|g| g.name == name) {
            g.holders.push(h);
        }
    }
    for name in implicit {
        if !groups.iter().any(|g| &g.name == name) {
            groups.push(RebootLockGroup {
                name: name.clone(),
                max_holders: default_max,
                max_configured: false,
                grants: 0,
                holders: Vec::new(),
            });
        }
    }
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(groups)
}

/// One group's holders (empty if it has no row).
pub fn fleetlock_holders(
    conn: &mut dyn Conn,
    group: &str,
) -> Result<Vec<RebootLockHolder>, StoreError> {
    let sql = format!(
        "SELECT {HOLDER_COLUMNS} FROM fleetlock_holders WHERE group_name = $1 ORDER BY grant_seq"
    );
    conn.query(&sql, &params![group])?
        .iter()
        .map(holder)
        .collect()
}

/// An admin releases `id`'s slot of `group`; [`StoreError::NotFound`] if it holds none.
pub fn fleetlock_force_release(
    conn: &mut dyn Conn,
    group: &str,
    id: &str,
    actor: &str,
    now: i64,
) -> Result<RebootLockHolder, StoreError> {
    let not_held = || StoreError::NotFound(format!("holder {id:?} of reboot lock group {group}"));
    lock_group_row(conn, group, false, now)?.ok_or_else(not_held)?;
    let sql = format!(
        "SELECT {HOLDER_COLUMNS} FROM fleetlock_holders WHERE group_name = $1 AND holder_id = $2"
    );
    let held = query_one(conn, &sql, &params![group, id])?
        .map(|r| holder(&r))
        .transpose()?
        .ok_or_else(not_held)?;
    conn.execute(
        "DELETE FROM fleetlock_holders WHERE group_name = $1 AND holder_id = $2",
        &params![group, id],
    )?;
    let message = format!("reboot lock {group}: slot of {id:?} released by an admin");
    log(
        conn,
        now,
        actor,
        "fleetlock-force-released",
        "warning",
        &message,
    )?;
    Ok(held)
}

/// Sets `group`'s `max_holders` (creating the group), returning the group. Lowering it below
/// the current holders keeps them; new grants wait until fewer than `max` hold the lock.
pub fn fleetlock_set_max(
    conn: &mut dyn Conn,
    group: &str,
    max: i64,
    actor: &str,
    now: i64,
) -> Result<RebootLockGroup, StoreError> {
    wellcar_contract::fleetlock::check_group(group).map_err(StoreError::Invalid)?;
    if !(0..=MAX_MAX_HOLDERS).contains(&max) {
        return Err(StoreError::Invalid(format!(
            "max_holders {max} must be 0 to {MAX_MAX_HOLDERS}"
        )));
    }
    let (old, grants) = lock_group_row(conn, group, true, now)?
        .ok_or_else(|| StoreError::NotFound(format!("reboot lock group {group}")))?;
    conn.execute(
        "UPDATE fleetlock_groups SET max_holders = $2, updated_at = $3 WHERE name = $1",
        &params![group, max, now],
    )?;
    let old = old.map_or_else(|| "the default".to_owned(), |m| m.to_string());
    let message = format!("reboot lock {group}: max_holders {old} -> {max}");
    log(conn, now, actor, "fleetlock-max-set", "info", &message)?;
    Ok(RebootLockGroup {
        name: group.to_owned(),
        max_holders: max,
        max_configured: true,
        grants,
        holders: fleetlock_holders(conn, group)?,
    })
}
