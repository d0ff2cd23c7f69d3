//! Omaha v3 XML: what the server parses from every client ([`Request::parse`]) and what the
//! update agent parses from its server ([`Response::parse`], then
//! [`Response::update_decision`]). Both are reachable by anyone on the network path.
//!
//! Beyond "no panic": a parsed document written back with `to_xml` parses again to the same
//! value (the server's tests and the agent rely on reader and writer agreeing).

use wellcar_omaha::{Request, Response};

use crate::Target;

/// `Request::parse`, then a `to_xml` round trip.
pub const REQUEST: Target = Target {
    name: "omaha-request",
    exercises: "wellcar_omaha::Request::parse + to_xml round trip",
    run: request,
};

/// `Response::parse`, `update_decision`, then a `to_xml` round trip.
pub const RESPONSE: Target = Target {
    name: "omaha-response",
    exercises: "wellcar_omaha::Response::parse + update_decision + to_xml round trip",
    run: response,
};

fn request(data: &[u8]) {
    let Ok(request) = Request::parse(data) else {
        return;
    };
    let xml = request.to_xml();
    let again = Request::parse(xml.as_bytes())
        .unwrap_or_else(|e| panic!("Request::to_xml wrote XML that does not parse ({e}): {xml}"));
    assert_eq!(
        again, request,
        "request changed in a to_xml round trip: {xml}"
    );
}

fn response(data: &[u8]) {
    let Ok(response) = Response::parse(data) else {
        return;
    };
    let decision = response.update_decision();
    let xml = response.to_xml();
    let again = Response::parse(xml.as_bytes())
        .unwrap_or_else(|e| panic!("Response::to_xml wrote XML that does not parse ({e}): {xml}"));
    assert_eq!(
        again.update_decision(),
        decision,
        "update decision changed in a to_xml round trip: {xml}"
    );
}
