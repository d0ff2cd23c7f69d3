//! The process's open-file limit, and how many client connections it leaves room for.
//!
//! Contract:
//! - [`raise_to_hard_limit`] raises the soft `RLIMIT_NOFILE` to the hard limit (the server calls
//!   it at start) and returns the soft limit in force afterwards. An infinite limit counts as
//!   [`UNLIMITED_AS`].
//! - [`connection_budget`] is the most client connections a limit leaves room for: the limit
//!   minus [`RESERVED_FDS`] minus one eighth of it (database files and connections, payload files
//!   being served, TLS files, the listener, logging). The default cap is that budget, at most
//!   [`MAX_DEFAULT_CONNECTIONS`]; an explicit `--max-connections` above the budget is refused.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// File descriptors always kept free for things other than client connections.
pub const RESERVED_FDS: u64 = 64;

/// The default connection cap never exceeds this, however high the file limit is.
pub const MAX_DEFAULT_CONNECTIONS: usize = 16_384;

/// An infinite open-file limit is treated as this many.
pub const UNLIMITED_AS: u64 = 1 << 20;

/// Raises the soft open-file limit to the hard one; returns the soft limit now in force. If
/// raising fails the old limit stays, and is returned.
pub fn raise_to_hard_limit() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return limit.maximum.unwrap_or(UNLIMITED_AS),
            Err(e) => tracing::warn!("could not raise the open-file limit to the hard limit: {e}"),
        }
    }
    limit.current.unwrap_or(UNLIMITED_AS)
}

/// How many client connections an open-file limit of `soft_limit` leaves room for (0 if none).
pub fn connection_budget(soft_limit: u64) -> usize {
    let budget = soft_limit
        .saturating_sub(RESERVED_FDS)
        .saturating_sub(soft_limit / 8);
    usize::try_from(budget).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_headroom_under_the_limit() {
        assert_eq!(connection_budget(256), 256 - 64 - 32);
        assert_eq!(connection_budget(1024), 1024 - 64 - 128);
        assert_eq!(connection_budget(50), 0);
        assert_eq!(connection_budget(8 << 10), (8 << 10) - 64 - (1 << 10));
    }

    #[test]
    fn raising_leaves_soft_equal_to_hard() {
        let after = raise_to_hard_limit();
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(limit.current.unwrap_or(UNLIMITED_AS), after);
        assert_eq!(limit.current, limit.maximum);
    }
}
