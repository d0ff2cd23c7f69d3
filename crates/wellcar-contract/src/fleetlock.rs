//! The FleetLock protocol (Zincati's `docs/development/fleetlock/protocol.md`) as Wellcar's
//! agent (client) and server share it: paths, header, request body, error body, and the limits
//! on `id` and `group`.
//!
//! Contract:
//! - Requests are `POST <base>/v1/pre-reboot` (RecursiveLock) and `POST <base>/v1/steady-state`
//!   (UnlockIfHeld), with header [`PROTOCOL_HEADER`]`: true` and the JSON body
//!   [`FleetLockRequest`] `{"client_params":{"id":…,"group":…}}`.
//! - 200 is success; any other status is a failure, whose body should be [`ErrorBody`]
//!   `{"kind":…,"value":…}` (`kind` from a small fixed set, e.g. [`KIND_SEMAPHORE_FULL`]).
//! - `id`: 1 to [`MAX_ID_LEN`] bytes, no control characters ([`check_id`]); `group`: 1 to
//!   [`MAX_GROUP_LEN`] bytes of `[a-zA-Z0-9.-]` ([`check_group`], the protocol's regexp
//!   `^[a-zA-Z0-9.-]+$`).

use serde::{Deserialize, Serialize};

/// The header every FleetLock request carries, with value `true`.
pub const PROTOCOL_HEADER: &str = "fleet-lock-protocol";

/// RecursiveLock, relative to the base URL.
pub const PRE_REBOOT_PATH: &str = "v1/pre-reboot";

/// UnlockIfHeld, relative to the base URL.
pub const STEADY_STATE_PATH: &str = "v1/steady-state";

/// The `kind` a server answers when every slot of the group is taken.
pub const KIND_SEMAPHORE_FULL: &str = "failed_lock_semaphore_full";

/// Longest `id`, in bytes.
pub const MAX_ID_LEN: usize = 255;

/// Longest `group`, in bytes.
pub const MAX_GROUP_LEN: usize = 64;

/// The request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetLockRequest {
    /// Who asks, for which group.
    pub client_params: ClientParams,
}

/// `client_params`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientParams {
    /// The lock holder's id (Wellcar's agent sends the machine id).
    pub id: String,
    /// The reboot group.
    pub group: String,
}

/// A failure's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable error type.
    pub kind: String,
    /// Human-readable description.
    pub value: String,
}

/// Checks a group name against the protocol's `^[a-zA-Z0-9.-]+$` and [`MAX_GROUP_LEN`].
pub fn check_group(group: &str) -> Result<(), String> {
    if group.is_empty() || group.len() > MAX_GROUP_LEN {
        return Err(format!(
            "a FleetLock group is 1 to {MAX_GROUP_LEN} bytes, not {}",
            group.len()
        ));
    }
    match group
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '-'))
    {
        Some(bad) => Err(format!(
            "a FleetLock group may hold only letters, digits, '.' and '-' (^[a-zA-Z0-9.-]+$), found {bad:?}"
        )),
        None => Ok(()),
    }
}

/// Checks a client id: 1 to [`MAX_ID_LEN`] bytes without control characters.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!(
            "a FleetLock id is 1 to {MAX_ID_LEN} bytes, not {}",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("a FleetLock id may not hold control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_body_is_the_protocols_json() {
        let body = FleetLockRequest {
            client_params: ClientParams {
                id: "c988d2509fdf5cdcbed39037c56406fb".into(),
                group: "workers".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"client_params": {"id": "c988d2509fdf5cdcbed39037c56406fb", "group": "workers"}})
        );
    }

    #[test]
    fn groups_and_ids_are_checked() {
        assert_eq!(check_group("stable"), Ok(()));
        assert_eq!(check_group("a.b-C9"), Ok(()));
        assert!(check_group("").is_err());
        assert!(check_group("under_score").unwrap_err().contains("'_'"));
        assert!(check_group(&"g".repeat(MAX_GROUP_LEN + 1)).is_err());
        assert_eq!(check_id("0f6a2d3b9c8e4f1aa7b6c5d4e3f2a1b0"), Ok(()));
        assert!(check_id("").is_err());
        assert!(check_id("a\nb").is_err());
        assert!(check_id(&"i".repeat(MAX_ID_LEN + 1)).is_err());
    }
}
