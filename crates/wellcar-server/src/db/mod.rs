//! One SQL layer over two backends: embedded SQLite (rusqlite) and PostgreSQL (postgres).
//!
//! Contract:
//! - Callers write SQL once, with `$1…$n` placeholders, BIGINT and TEXT columns only, and
//!   `CAST(… AS …)` instead of `::`; the SQLite side rewrites `$n` to `?n`.
//! - All work runs on blocking threads (`spawn_blocking`) through [`Db::read`] and [`Db::write`],
//!   each one transaction. SQLite write transactions are `BEGIN IMMEDIATE` (one writer, no upgrade
//!   deadlocks); PostgreSQL callers lock rows with [`Conn::for_update`].
//! - SQLite runs in WAL mode with `synchronous=FULL`: a committed transaction survives `kill -9`
//!   and power loss.
//! - Every committed write transaction and every written row is counted ([`Db::write_counts`]),
//!   so the server can prove how many writes a request caused.
//!
//! Layout: [`Value`] and [`Row`] are the only types crossing the layer (`value`); each backend
//! adapts them and implements [`Conn`] (`sqlite`, `pg`); [`Db`] here is the pool and runs the
//! transactions; the SQLite write combiner (`combiner`, [`Db::write_combined`]) and the write
//! accounting (`counts`, [`WriteCounts`]) are their own modules.

mod combiner;
mod counts;
mod pg;
pub mod pg_tls;
mod sqlite;
mod value;

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use combiner::{combiner_loop, Job};
use counts::Counters;
pub use counts::WriteCounts;
pub use value::{Row, Value};

/// A database failure, naming the backend operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database URL is not `sqlite:PATH` or `postgres://…`.
    #[error("unsupported database url {0:?} (use sqlite:PATH or postgres://…)")]
    BadUrl(String),
    /// Opening a connection failed.
    #[error("cannot connect to {url}")]
    Connect {
        /// The URL (without password).
        url: String,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The URL's TLS parameters are wrong, or its root certificates cannot be read.
    #[error("TLS to {url}: {reason}")]
    Tls {
        /// The URL (without password).
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// A statement failed.
    #[error("sql failed: {sql}")]
    Sql {
        /// The statement.
        sql: String,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A column held a different type than the caller asked for.
    #[error("column {index} of {sql:?} is {found}, expected {expected}")]
    Column {
        /// Column index.
        index: usize,
        /// What the caller wanted.
        expected: &'static str,
        /// What was there.
        found: &'static str,
        /// The statement (for context).
        sql: String,
    },
    /// The blocking worker panicked or was cancelled.
    #[error("database worker failed: {0}")]
    Worker(String),
}

/// Which backend a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// One open connection. Statements run inside the transaction [`Db`] opened.
pub trait Conn: Send {
    /// Runs a statement that returns no rows; returns the number of rows changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError>;
    /// Runs a query and returns all rows.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError>;
    /// Runs one or more statements without parameters.
    fn batch(&mut self, sql: &str) -> Result<(), DbError>;
    /// The backend.
    fn backend(&self) -> Backend;
    /// `" FOR UPDATE"` on PostgreSQL (row lock), empty on SQLite (the write lock is already held).
    fn for_update(&self) -> &'static str {
        match self.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }
    /// Rows written by `execute` since the connection was opened.
    fn rows_written(&self) -> u64;
}

/// Convenience for single-row queries.
pub fn query_one(conn: &mut dyn Conn, sql: &str, params: &[Value]) -> Result<Option<Row>, DbError> {
    Ok(conn.query(sql, params)?.into_iter().next())
}

fn sql_error(sql: &str, e: impl std::error::Error + Send + Sync + 'static) -> DbError {
    DbError::Sql {
        sql: sql.to_owned(),
        source: Box::new(e),
    }
}

/// Removes a password from a URL for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

enum Target {
    Sqlite(String),
    Postgres(String),
}

/// A small pool of connections to one database, with write accounting.
pub struct Db {
    target: Target,
    idle: Mutex<Vec<Box<dyn Conn>>>,
    permits: Semaphore,
    counters: Arc<Counters>,
    combiner: Option<std::sync::mpsc::Sender<Job>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend())
            .finish()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // The postgres client blocks on its own runtime when closed, which must not happen on an
        // async worker thread: close idle connections on a plain thread.
        let idle = match self.idle.get_mut() {
            Ok(v) => std::mem::take(v),
            Err(p) => std::mem::take(p.into_inner()),
        };
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("db-close".into())
                .spawn(move || drop(idle));
        }
    }
}

impl Db {
    /// Opens a pool for `sqlite:PATH` or `postgres://…` and checks that a connection works.
    pub fn open(url: &str, max_connections: usize) -> Result<Arc<Self>, DbError> {
        let target = if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(DbError::BadUrl(url.to_owned()));
            }
            Target::Sqlite(path.to_owned())
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Target::Postgres(url.to_owned())
        } else {
            return Err(DbError::BadUrl(url.to_owned()));
        };
        let counters = Arc::new(Counters::default());
        let combiner = match &target {
            Target::Sqlite(path) => {
                let conn: Box<dyn Conn> = Box::new(sqlite::SqliteConn::open(path)?);
                let (tx, rx) = std::sync::mpsc::channel();
                let c = counters.clone();
                std::thread::Builder::new()
                    .name("sqlite-writer".into())
                    .spawn(move || combiner_loop(conn, rx, c))
                    .map_err(|e| DbError::Worker(format!("starting the writer thread: {e}")))?;
                Some(tx)
            }
            Target::Postgres(_) => None,
        };
        let db = Arc::new(Self {
            target,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(max_connections.max(1)),
            counters,
            combiner,
        });
        let first = db.connect()?;
        db.put_back(first);
        Ok(db)
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        match self.target {
            Target::Sqlite(_) => Backend::Sqlite,
            Target::Postgres(_) => Backend::Postgres,
        }
    }

    fn connect(&self) -> Result<Box<dyn Conn>, DbError> {
        Ok(match &self.target {
            Target::Sqlite(path) => Box::new(sqlite::SqliteConn::open(path)?),
            Target::Postgres(url) => Box::new(pg::PgConn::open(url)?),
        })
    }

    fn take(&self) -> Result<Box<dyn Conn>, DbError> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        match idle {
            Some(c) => Ok(c),
            None => self.connect(),
        }
    }

    fn put_back(&self, conn: Box<dyn Conn>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    /// Runs `f` in one transaction on a blocking thread; `write` selects a write transaction.
    fn transaction_blocking<T>(
        &self,
        write: bool,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, crate::StoreError>,
    ) -> Result<T, crate::StoreError> {
        let mut conn = self.take()?;
        let begin = match (conn.backend(), write) {
            (Backend::Sqlite, true) => "BEGIN IMMEDIATE",
            _ => "BEGIN",
        };
        conn.batch(begin)?;
        let before = conn.rows_written();
        match f(conn.as_mut()) {
            Ok(v) => {
                conn.batch("COMMIT")?;
                if write {
                    self.counters.add(conn.rows_written() - before);
                }
                self.put_back(conn);
                Ok(v)
            }
            Err(e) => {
                // A failed rollback means the connection is broken: drop it instead of reusing it.
                if conn.batch("ROLLBACK").is_ok() {
                    self.put_back(conn);
                }
                Err(e)
            }
        }
    }

    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        write: bool,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, crate::StoreError> + Send + 'static,
    ) -> Result<T, crate::StoreError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| DbError::Worker(e.to_string()))?;
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.transaction_blocking(write, f))
            .await
            .map_err(|e| DbError::Worker(e.to_string()))?
    }

    /// Runs `f` in a read transaction.
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, crate::StoreError> + Send + 'static,
    ) -> Result<T, crate::StoreError> {
        self.run(false, f).await
    }

    /// Runs `f` in a write transaction; it commits only if `f` returns `Ok`.
    pub async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, crate::StoreError> + Send + 'static,
    ) -> Result<T, crate::StoreError> {
        self.run(true, f).await
    }

    /// Synchronous write transaction, for command-line tools outside a runtime.
    pub fn write_blocking<T>(
        &self,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, crate::StoreError>,
    ) -> Result<T, crate::StoreError> {
        self.transaction_blocking(true, f)
    }
}

#[cfg(test)]
mod tests;
