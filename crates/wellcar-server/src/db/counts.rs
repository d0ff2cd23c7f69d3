//! Write accounting: every committed write transaction that changed at least one row, and every
//! row it inserted, updated or deleted, counted since the pool was opened. Read transactions,
//! rolled-back work and writes that changed nothing are not counted, so the server can prove how
//! many writes a request caused.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Db;

#[derive(Debug, Default)]
pub(super) struct Counters {
    write_transactions: AtomicU64,
    rows_written: AtomicU64,
}

impl Counters {
    pub(super) fn add(&self, rows: u64) {
        if rows > 0 {
            self.write_transactions.fetch_add(1, Ordering::Relaxed);
            self.rows_written.fetch_add(rows, Ordering::Relaxed);
        }
    }
}

/// Counts of committed write transactions and rows written, since the pool was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteCounts {
    /// Committed write transactions.
    pub transactions: u64,
    /// Rows inserted, updated or deleted.
    pub rows: u64,
}

impl Db {
    /// Write accounting since the pool was opened.
    pub fn write_counts(&self) -> WriteCounts {
        WriteCounts {
            transactions: self.counters.write_transactions.load(Ordering::Relaxed),
            rows: self.counters.rows_written.load(Ordering::Relaxed),
        }
    }
}
