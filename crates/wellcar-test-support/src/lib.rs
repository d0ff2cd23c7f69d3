//! Fixtures and helpers shared by the tests of more than one crate. **For tests only**: crates
//! take it as a `[dev-dependencies]` entry, never as a normal dependency, and nothing here is
//! part of Wellcar. Test code: helpers panic with a message that says what went wrong instead
//! of returning errors.
//!
//! - [`pg_cluster`]: a private, throw-away PostgreSQL cluster (the server's tests and
//!   benchmark).
//!
//! A fixture that only one crate's tests use stays in that crate.

pub mod pg_cluster;
