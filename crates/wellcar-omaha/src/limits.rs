//! Bounds on every document this crate parses, so neither the server (parsing requests from
//! anyone) nor the update agent (parsing responses from a server it may reach over plain
//! `http://`, through a man in the middle) can be made to overflow its stack, allocate without
//! bound, or spend superlinear CPU on one body.
//!
//! Contract:
//! - Every limit is checked while the document is read, before the offending element is kept, and
//!   a document over any of them is refused with a [`ParseError`](crate::ParseError) naming the
//!   limit (and the element and byte offset where it was reached).
//! - Each limit has large headroom over what real peers send. The captured corpus of Flatcar's
//!   `update_engine`, Nebraska, go-omaha and Google's Omaha (`shared/corpus/omaha`) peaks at
//!   depth 6, 21 elements, 13 attributes on one element, 2 apps per request and 3 events per app,
//!   and 1.2 KB per document.
//! - Work per document is linear in its size: attributes are checked for duplicates with a hash
//!   set, looked up by hash, and the element tree is freed without recursion.
//! - The byte bounds are [`MAX_REQUEST_BYTES`](crate::MAX_REQUEST_BYTES) (64 KiB, Nebraska's) for
//!   requests and [`MAX_RESPONSE_BYTES`] for responses. Callers reading a body from the network
//!   should stop reading at those bounds rather than rely on the parser to refuse it afterwards.

/// Largest response body a client should read and [`Response::parse`](crate::Response::parse)
/// accepts: 256 KiB. Real responses are under 2 KB; a Wellcar server's answer to the largest
/// request the limits allow (every app offered an update with a 2 KB URL, every event acked) is
/// about 25 KB. The update agent stops reading a response body at this many bytes.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Deepest element nesting accepted (the root is depth 1). Omaha documents are at most 6 deep
/// (`response/app/updatecheck/manifest/packages/package`).
pub const MAX_DEPTH: usize = 32;

/// Most elements accepted in one document. The largest request the app and event limits allow
/// has under 200; real documents have under 25.
pub const MAX_ELEMENTS: usize = 1024;

/// Most attributes accepted on one element. `update_engine`'s `<app>` carries 13, the most in
/// the corpus.
pub const MAX_ATTRIBUTES_PER_ELEMENT: usize = 64;

/// Most `<app>` elements accepted in one request. `update_engine`, Nebraska's syncer and the
/// Wellcar agent send 1; the corpus's largest multi-app request (go-omaha's client) sends 2.
pub const MAX_APPS_PER_REQUEST: usize = 8;

/// Most `<event>` elements accepted in one `<app>` of a request. `update_engine` sends at most 1
/// per request and the Omaha spec's event report example 3. The Wellcar agent sends its queued
/// events in one request (at most about 5 build up between two answered requests); a client
/// with more queued should send them over several requests, this many at a time.
pub const MAX_EVENTS_PER_APP: usize = 16;
