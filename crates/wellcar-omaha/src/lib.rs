//! Omaha v3 XML in the dialect spoken by Flatcar's `update_engine` and Nebraska.
//!
//! Contract:
//! - [`Request::parse`] accepts what `update_engine`, Nebraska's tests and Google's Omaha clients send
//!   (leading whitespace, no XML declaration, unknown elements and attributes, `<updatecheck>` and
//!   `<event>` in one `<app>`). It rejects input that is not well-formed XML, whose root is not
//!   `<request>`, or whose `protocol` is not `3.0`, with a [`ParseError`] naming what was wrong.
//! - Both parsers are bounded ([`limits`]): a request body is at most [`MAX_REQUEST_BYTES`], a
//!   response body at most [`MAX_RESPONSE_BYTES`]; every document at most [`MAX_DEPTH`] deep, with
//!   at most [`MAX_ELEMENTS`] elements and [`MAX_ATTRIBUTES_PER_ELEMENT`] attributes per element,
//!   none repeated; a request at most [`MAX_APPS_PER_REQUEST`] apps of at most
//!   [`MAX_EVENTS_PER_APP`] events each. Parsing is linear in the body's size and never recurses,
//!   so the server and the update agent, which share these parsers, share the bounds.
//! - [`Response::to_xml`] writes the shape Nebraska writes (explicit end tags, children in the order
//!   `ping`, `updatecheck`, `event`), which both `update_engine` and `ue-rs` accept.
//! - [`Response::parse`] plus [`Response::update_decision`] read a response the way `update_engine`
//!   does (first app, first `updatecheck`, first manifest, first package, the `postinstall` action),
//!   so the update agent and the server's tests share one interpretation.
//!
//! This crate does no I/O and has no HTTP dependencies.

mod codes;
#[cfg(test)]
mod corpus;
pub mod headers;
pub mod limits;
mod request;
mod response;
pub mod signature;
mod xml;

pub use codes::{event_result, event_type, status, ErrorCode};
pub use limits::{
    MAX_APPS_PER_REQUEST, MAX_ATTRIBUTES_PER_ELEMENT, MAX_DEPTH, MAX_ELEMENTS, MAX_EVENTS_PER_APP,
    MAX_RESPONSE_BYTES,
};
pub use request::{AppRequest, Event, OsInfo, Request, UpdateCheckRequest};
pub use response::{
    Action, AppResponse, InterpretError, Manifest, Package, Response, UpdateCheckResponse,
    UpdateDecision, UpdateInfo,
};
pub use xml::ParseError;

/// The Omaha application ids (Wellcar's, and Flatcar's so a Wellcar server can also serve a
/// Flatcar fleet); their home is the release-file contract.
pub use wellcar_contract::{FLATCAR_APP_ID, WELLCAR_APP_ID};

/// Largest request body a server should accept (Nebraska's limit, 64 KiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Normalizes an Omaha application id for comparison: trims whitespace, strips `{}` and lowercases,
/// as Nebraska matches appids case-insensitively with or without braces.
pub fn normalize_app_id(app_id: &str) -> String {
    app_id
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_compare_without_braces_and_case() {
        assert_eq!(
            normalize_app_id("{E96281A6-D1AF-4BDE-9A0A-97B76E56DC57}"),
            FLATCAR_APP_ID
        );
        assert_eq!(normalize_app_id(WELLCAR_APP_ID), WELLCAR_APP_ID);
        assert_ne!(normalize_app_id(WELLCAR_APP_ID), FLATCAR_APP_ID);
    }
}
