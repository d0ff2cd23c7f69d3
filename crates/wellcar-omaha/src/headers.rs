//! HTTP headers Wellcar adds to the Omaha exchange, beyond what Nebraska and `update_engine`
//! speak. Both are optional: a Flatcar client that sends neither, and a server that sets neither,
//! keep working.
//!
//! Contract:
//! - [`FLEET_TOKEN`] (request): the fleet's shared secret from update.conf's `FLEET_TOKEN`. A
//!   server started with a fleet token answers any Omaha request without it, or with a wrong one,
//!   with HTTP 401 and acts on nothing in it.
//! - [`RESPONSE_SIGNATURE`] (response): set by a server started with a response key, on every
//!   Omaha response. An agent whose update.conf names `SERVER_PUBLIC_KEY` rejects a response
//!   without a valid one.

/// Request header carrying the fleet token.
pub const FLEET_TOKEN: &str = "X-Wellcar-Fleet-Token";

/// Response header carrying the server's ed25519 signature of the response.
pub const RESPONSE_SIGNATURE: &str = "X-Wellcar-Signature";
