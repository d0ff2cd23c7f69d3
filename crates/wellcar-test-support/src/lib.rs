//! Fixtures and helpers shared by the tests of more than one crate. **For tests only**: crates
//! take it as a `[dev-dependencies]` entry, never as a normal dependency, and nothing here is
//! part of Wellcar. It is test code: helpers panic with a message that says what went wrong
//! instead of returning errors.
//!
//! - [`build`]: a small build output directory shaped like `wellcar build`'s, and signed
//!   payloads made from it (the payload and agent tests);
//! - [`pg_cluster`]: a private, throw-away PostgreSQL cluster (the server's tests and
//!   benchmark);
//! - [`tools`]: running host tools; a missing one fails the test naming its Debian package;
//! - [`wait`]: waiting on a condition with a deadline, never on a fixed sleep.
//!
//! A fixture that only one crate's tests use stays in that crate.

pub mod build;
pub mod pg_cluster;
pub mod tools;
pub mod wait;
