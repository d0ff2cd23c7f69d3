//! HTTP headers Wellcar adds to the Omaha exchange, beyond what Nebraska and `update_engine`
//! speak. All are optional: a Flatcar client that sends none, and a server that sets none,
//! keep working.
//!
//! Contract:
//! - [`FLEET_TOKEN`] (request): the fleet's shared secret from update.conf's `FLEET_TOKEN`. A
//!   server started with a fleet token answers any Omaha request without it, or with a wrong one,
//!   with HTTP 401 and acts on nothing in it.
//! - [`REQUEST_NONCE`] (request): a fresh random value the Wellcar agent sends with every Omaha
//!   request (32 lowercase hex characters). The server never interprets it; it only enters the
//!   signed message, so a signed answer cannot be replayed for a later, identical request body.
//! - [`RESPONSE_SIGNATURE`] (response): set by a server started with `--response-key` on every
//!   200 answer to an Omaha request: standard base64 (with padding) of the 64-byte ed25519
//!   signature of [`signed_message`](crate::signature::signed_message) =
//!   `"wellcar-omaha-response-v1\0" || SHA-256(request body) || SHA-256(REQUEST_NONCE value, or
//!   "" if absent) || SHA-256(response body)`, each body exactly as sent on the wire. Error
//!   answers (4xx, 5xx) are not signed; agents never act on them. An agent whose update.conf
//!   names `SERVER_PUBLIC_KEY` rejects a 200 answer without a valid one and acts on nothing in it
//!   (see [`crate::signature`]).

/// Request header carrying the fleet token.
pub const FLEET_TOKEN: &str = "X-Wellcar-Fleet-Token";

/// Request header carrying the per-request nonce bound into the response signature.
pub const REQUEST_NONCE: &str = "X-Wellcar-Request-Nonce";

/// Response header carrying the server's ed25519 signature of the response.
pub const RESPONSE_SIGNATURE: &str = "X-Wellcar-Signature";
