//! Who may talk to the server at all, checked before any request is acted on: the optional
//! fleet token, rate limits, and how much one Omaha request may ask for.
//!
//! Contract:
//! - Omaha requests, in this order: the client IP's rate limit (HTTP 429), then the fleet token
//!   (HTTP 401), then parsing, whose bounds ([`wellcar_omaha::limits`]: apps per request, events
//!   per app, size, depth) give HTTP 400, then each machine id's rate limit (HTTP 429). A refused request is acted on in no way: nothing is stored.
//! - With a fleet token set (`--fleet-token-file`, or `WELLCAR_FLEET_TOKEN`), an Omaha request
//!   must carry header [`wellcar_omaha::headers::FLEET_TOKEN`] equal to it. The comparison
//!   hashes both sides and compares the digests in constant time, so it leaks neither content
//!   nor length. Without a fleet token set, the header is ignored.
//! - Admin API requests are limited per client IP ([`admin_rate_limit`], a layer over the admin
//!   routes); `/health`, `/metrics` and payload downloads are not limited here.
//! - Every 429 carries `Retry-After` (seconds). Refusals are counted by reason
//!   ([`Refusal::as_str`], a fixed set of metrics labels).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::rate_limit::{ip_key, KeyedLimiter, RateLimits};
use crate::server::ServerState;

/// Why a request was refused before it was acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The Omaha request lacked the fleet token or had a wrong one.
    FleetToken,
    /// Too many Omaha requests from this client IP.
    OmahaIpRate,
    /// Too many Omaha requests for this machine id.
    OmahaInstanceRate,
    /// Too many admin API requests from this client IP.
    AdminIpRate,
}

impl Refusal {
    /// Every reason, in [`Refusal::index`] order.
    pub const ALL: [Refusal; 4] = [
        Refusal::FleetToken,
        Refusal::OmahaIpRate,
        Refusal::OmahaInstanceRate,
        Refusal::AdminIpRate,
    ];

    /// Short machine-readable reason (metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::FleetToken => "fleet-token",
            Refusal::OmahaIpRate => "omaha-ip-rate",
            Refusal::OmahaInstanceRate => "omaha-instance-rate",
            Refusal::AdminIpRate => "admin-ip-rate",
        }
    }

    /// Position in [`Refusal::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A refused request: why, and when to retry (seconds; 0 for a missing fleet token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub why: Refusal,
    /// Seconds until a retry may pass.
    pub retry_after_secs: u64,
}

/// The fleet's shared secret, kept only as its SHA-256.
#[derive(Clone)]
pub struct FleetToken {
    sha256: [u8; 32],
}

impl std::fmt::Debug for FleetToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetToken(..)")
    }
}

impl FleetToken {
    /// A token from its text (surrounding whitespace, e.g. a file's final newline, dropped).
    /// `None` if nothing is left.
    pub fn new(text: &str) -> Option<Self> {
        let text = text.trim();
        (!text.is_empty()).then(|| Self {
            sha256: Sha256::digest(text.as_bytes()).into(),
        })
    }

    /// Whether `headers` carry this token, compared in constant time.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let sent = headers
            .get(wellcar_omaha::headers::FLEET_TOKEN)
            .map(|v| v.as_bytes().trim_ascii())
            .unwrap_or_default();
        let digest: [u8; 32] = Sha256::digest(sent).into();
        bool::from(digest.ct_eq(&self.sha256))
    }
}

/// The in-memory rate limiters of one server process.
#[derive(Debug)]
pub struct Limiters {
    omaha_ip: KeyedLimiter<IpAddr>,
    omaha_instance: KeyedLimiter<u64>,
    admin_ip: KeyedLimiter<IpAddr>,
}

impl Limiters {
    /// Limiters for `limits`.
    pub fn new(limits: &RateLimits) -> Self {
        Self {
            omaha_ip: KeyedLimiter::new(limits.omaha_per_ip, limits.max_keys),
            omaha_instance: KeyedLimiter::new(limits.omaha_per_instance, limits.max_keys),
            admin_ip: KeyedLimiter::new(limits.admin_per_ip, limits.max_keys),
        }
    }
}

/// The response to a refused request (also counted).
pub fn refuse(state: &ServerState, refused: Refused) -> Response {
    let Refused {
        why,
        retry_after_secs,
    } = refused;
    state.metrics.refused(why);
    tracing::debug!(reason = why.as_str(), "request refused");
    match why {
        Refusal::FleetToken => (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!(
                "omaha request without the fleet token: send header {}\n",
                wellcar_omaha::headers::FLEET_TOKEN
            ),
        )
            .into_response(),
        _ => (
            StatusCode::TOO_MANY_REQUESTS,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                (header::RETRY_AFTER, retry_after_secs.to_string()),
            ],
            format!(
                "too many requests ({}); retry after {retry_after_secs} s\n",
                why.as_str()
            ),
        )
            .into_response(),
    }
}

/// The checks an Omaha request passes before it is parsed: its IP's rate limit, then the fleet
/// token.
pub fn admit_omaha(state: &ServerState, ip: IpAddr, headers: &HeaderMap) -> Result<(), Refused> {
    let now = state.now();
    state
        .limiters
        .omaha_ip
        .check(ip_key(ip), now)
        .map_err(|secs| Refused {
            why: Refusal::OmahaIpRate,
            retry_after_secs: secs,
        })?;
    match &state.settings.fleet_token {
        Some(token) if !token.admits(headers) => Err(Refused {
            why: Refusal::FleetToken,
            retry_after_secs: 0,
        }),
        _ => Ok(()),
    }
}

/// Each machine id's rate limit, for a parsed Omaha request (each distinct id once).
pub fn admit_instances(
    state: &ServerState,
    request: &wellcar_omaha::Request,
) -> Result<(), Refused> {
    let now = state.now();
    let limiter = &state.limiters.omaha_instance;
    let mut keys: Vec<u64> = request
        .apps
        .iter()
        .filter(|a| !a.machine_id.is_empty())
        .map(|a| limiter.hash_key(&a.machine_id))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        limiter.check(key, now).map_err(|secs| Refused {
            why: Refusal::OmahaInstanceRate,
            retry_after_secs: secs,
        })?;
    }
    Ok(())
}

/// Middleware over the admin routes: the per-IP admin rate limit, checked before the request
/// (and its body) is looked at.
pub async fn admin_rate_limit(
    State(state): State<Arc<ServerState>>,
    request: HttpRequest,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(ip) = peer {
        if let Err(secs) = state.limiters.admin_ip.check(ip_key(ip), state.now()) {
            let refused = Refused {
                why: Refusal::AdminIpRate,
                retry_after_secs: secs,
            };
            return refuse(&state, refused);
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn fleet_token_must_match_exactly() {
        let token = FleetToken::new("s3cret\n").unwrap();
        let mut h = HeaderMap::new();
        assert!(!token.admits(&h), "missing");
        h.insert(
            wellcar_omaha::headers::FLEET_TOKEN,
            HeaderValue::from_static("s3cre"),
        );
        assert!(!token.admits(&h), "prefix");
        h.insert(
            wellcar_omaha::headers::FLEET_TOKEN,
            HeaderValue::from_static("s3cret"),
        );
        assert!(token.admits(&h));
        assert!(FleetToken::new(" \n").is_none());
        assert_eq!(format!("{token:?}"), "FleetToken(..)");
    }
}
