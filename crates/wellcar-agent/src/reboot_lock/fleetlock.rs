//! The FleetLock client ([`wellcar_contract::fleetlock`]): `POST <base>/v1/pre-reboot` to take
//! a reboot slot, `POST <base>/v1/steady-state` to give it back, over [`wellcar_http`].
//!
//! Contract:
//! - Every request carries `fleet-lock-protocol: true` and
//!   `{"client_params":{"id":<machine id>,"group":<FLEETLOCK_GROUP>}}`. The id is the
//!   machine id, as locksmith's holder id and the Omaha `machineid` (stable across reboots and
//!   updates; Zincati instead sends an app-specific id derived from it).
//! - `FLEET_TOKEN` is sent as `X-Wellcar-Fleet-Token` only when `FLEETLOCK_URL` has the same
//!   origin (scheme, host, port) as `SERVER` (the Wellcar server's own FleetLock, which
//!   requires it when the server has one); never to another server.
//! - 200 is success, anything else a [`FleetLockError::Rejected`] naming the URL, the status and
//!   the server's `kind`/`value` (or `generic_http_<status>` when the body is not the
//!   protocol's error, as Zincati does). At most [`MAX_ERROR_BODY`] bytes of an answer are
//!   read.

use wellcar_contract::fleetlock::{
    ClientParams, ErrorBody, FleetLockRequest, KIND_SEMAPHORE_FULL, PRE_REBOOT_PATH,
    PROTOCOL_HEADER, STEADY_STATE_PATH,
};

use super::{LockError, RebootLock};
use crate::config::Config;

/// Most bytes of an error answer read.
pub const MAX_ERROR_BODY: u64 = 64 * 1024;

/// A FleetLock request that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum FleetLockError {
    /// No answer (connection, TLS, timeout).
    #[error("FleetLock POST {url}: {reason}")]
    Transport {
        /// The endpoint.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The server answered with a failure.
    #[error("FleetLock POST {url}: HTTP {status}, {kind}: {value}")]
    Rejected {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's error kind (`failed_lock_semaphore_full` when the group is full).
        kind: String,
        /// The server's description.
        value: String,
    },
    /// The client cannot be set up (bad id or group).
    #[error("FleetLock at {url}: {reason}")]
    Setup {
        /// The base URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

impl FleetLockError {
    /// Whether the server refused because every slot of the group is taken.
    pub fn is_semaphore_full(&self) -> bool {
        matches!(self, Self::Rejected { kind, .. } if kind == KIND_SEMAPHORE_FULL)
    }
}

/// A FleetLock client for one machine and group.
#[derive(Debug)]
pub struct FleetLockClient {
    base: String,
    body: String,
    group: String,
    fleet_token: Option<String>,
    http: ureq::Agent,
}

/// `scheme://authority` of an http(s) URL, lowercased.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    Some(format!("{scheme}://{authority}").to_ascii_lowercase())
}

impl FleetLockClient {
    /// A client for `config`'s `FLEETLOCK_URL` and `FLEETLOCK_GROUP`, holder `machine_id`.
    pub fn from_config(config: &Config, machine_id: &str) -> Result<Self, FleetLockError> {
        let setup = |reason: String| FleetLockError::Setup {
            url: config.fleetlock.url.clone().unwrap_or_default(),
            reason,
        };
        let base = config
            .fleetlock
            .url
            .clone()
            .ok_or_else(|| setup("FLEETLOCK_URL is not set".into()))?;
        let group = config.fleetlock.group.clone();
        wellcar_contract::fleetlock::check_group(&group).map_err(setup)?;
        wellcar_contract::fleetlock::check_id(machine_id)
            .map_err(|r| setup(format!("machine id: {r}")))?;
        let same_origin = config
            .server
            .as_deref()
            .and_then(origin)
            .is_some_and(|server| origin(&base).as_deref() == Some(server.as_str()));
        let fleet_token = config
            .fleet_token
            .as_ref()
            .filter(|_| same_origin)
            .map(|t| t.expose().to_owned());
        let body = serde_json::to_string(&FleetLockRequest {
            client_params: ClientParams {
                id: machine_id.to_owned(),
                group: group.clone(),
            },
        })
        .map_err(|e| setup(e.to_string()))?;
        let options = wellcar_http::ClientOptions::new(concat!(
            "wellcar-update-agent/",
            env!("CARGO_PKG_VERSION")
        ));
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            body,
            group,
            fleet_token,
            http: wellcar_http::system_client(&options),
        })
    }

    /// `<base>/<path>`.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn post(&self, path: &str) -> Result<(), FleetLockError> {
        let url = self.endpoint(path);
        let mut request = self
            .http
            .post(&url)
            .header(PROTOCOL_HEADER, "true")
            .header("Content-Type", "application/json");
        if let Some(token) = &self.fleet_token {
            request = request.header(wellcar_omaha::headers::FLEET_TOKEN, token);
        }
        let response = request
            .send(self.body.as_str())
            .map_err(|e| FleetLockError::Transport {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let body = response
            .into_body()
            .into_with_config()
            .limit(MAX_ERROR_BODY)
            .read_to_vec()
            .unwrap_or_default();
        let ErrorBody { kind, value } =
            serde_json::from_slice(&body).unwrap_or_else(|_| ErrorBody {
                kind: format!("generic_http_{status}"),
                value: "(the answer holds no FleetLock error)".into(),
            });
        Err(FleetLockError::Rejected {
            url,
            status,
            kind,
            value,
        })
    }
}

impl RebootLock for FleetLockClient {
    fn acquire(&mut self) -> Result<(), LockError> {
        Ok(self.post(PRE_REBOOT_PATH)?)
    }

    fn release(&mut self) -> Result<(), LockError> {
        Ok(self.post(STEADY_STATE_PATH)?)
    }

    fn describe(&self) -> String {
        format!("FleetLock {} group {}", self.base, self.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert_eq!(
            origin("http://Srv:8080/fleetlock").as_deref(),
            Some("http://srv:8080")
        );
        assert_eq!(
            origin("https://a.example/v1/update/").as_deref(),
            Some("https://a.example")
        );
        assert_ne!(origin("http://a:1/x"), origin("http://a:2/x"));
    }

    /// The token goes to the update server's own FleetLock, never to another server.
    #[test]
    fn fleet_token_only_to_the_update_servers_origin() {
        let mut config = Config {
            server: Some("http://10.0.0.1:8080/v1/update/".into()),
            fleet_token: Some(crate::config::FleetToken::parse("t0k").unwrap()),
            ..Config::default()
        };
        config.fleetlock.url = Some("http://10.0.0.1:8080/fleetlock".into());
        let client = FleetLockClient::from_config(&config, "m1").unwrap();
        assert_eq!(client.fleet_token.as_deref(), Some("t0k"));
        assert_eq!(
            client.endpoint(PRE_REBOOT_PATH),
            "http://10.0.0.1:8080/fleetlock/v1/pre-reboot"
        );
        config.fleetlock.url = Some("http://airlock.example:3333".into());
        let client = FleetLockClient::from_config(&config, "m1").unwrap();
        assert_eq!(client.fleet_token, None);
        assert_eq!(
            client.body,
            r#"{"client_params":{"id":"m1","group":"stable"}}"#
        );
    }
}
