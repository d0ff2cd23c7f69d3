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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

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

/// A parameter or column value: the only types the schema uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// BIGINT (booleans are 0/1).
    Int(i64),
    /// TEXT.
    Text(String),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int(_) => "integer",
            Value::Text(_) => "text",
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(i64::from(v))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Builds an array of [`Value`]s from mixed parameters.
#[macro_export]
macro_rules! params {
    ($($v:expr),* $(,)?) => { [$($crate::db::Value::from($v)),*] };
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row {
    values: Vec<Value>,
    sql: Arc<str>,
}

impl Row {
    fn column_error(&self, index: usize, expected: &'static str) -> DbError {
        DbError::Column {
            index,
            expected,
            found: self.values.get(index).map_or("missing", Value::type_name),
            sql: self.sql.to_string(),
        }
    }

    /// A non-null integer column.
    pub fn int(&self, index: usize) -> Result<i64, DbError> {
        match self.values.get(index) {
            Some(Value::Int(v)) => Ok(*v),
            _ => Err(self.column_error(index, "integer")),
        }
    }

    /// A nullable integer column.
    pub fn opt_int(&self, index: usize) -> Result<Option<i64>, DbError> {
        match self.values.get(index) {
            Some(Value::Int(v)) => Ok(Some(*v)),
            Some(Value::Null) => Ok(None),
            _ => Err(self.column_error(index, "integer or null")),
        }
    }

    /// A boolean stored as 0/1.
    pub fn bool(&self, index: usize) -> Result<bool, DbError> {
        self.int(index).map(|v| v != 0)
    }

    /// A non-null text column.
    pub fn text(&self, index: usize) -> Result<String, DbError> {
        match self.values.get(index) {
            Some(Value::Text(v)) => Ok(v.clone()),
            _ => Err(self.column_error(index, "text")),
        }
    }

    /// A nullable text column.
    pub fn opt_text(&self, index: usize) -> Result<Option<String>, DbError> {
        match self.values.get(index) {
            Some(Value::Text(v)) => Ok(Some(v.clone())),
            Some(Value::Null) => Ok(None),
            _ => Err(self.column_error(index, "text or null")),
        }
    }
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

mod sqlite {
    use super::*;
    use rusqlite::types::{ToSqlOutput, ValueRef};

    impl rusqlite::ToSql for Value {
        fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
            Ok(match self {
                Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
                Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
                Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            })
        }
    }

    /// Rewrites `$n` placeholders to SQLite's `?n`.
    pub(super) fn rewrite(sql: &str) -> String {
        let mut out = String::with_capacity(sql.len());
        let mut chars = sql.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                out.push('?');
            } else {
                out.push(c);
            }
        }
        out
    }

    pub(super) struct SqliteConn {
        pub conn: rusqlite::Connection,
        pub rows_written: u64,
    }

    impl SqliteConn {
        pub fn open(path: &str) -> Result<Self, DbError> {
            let connect_err = |e: rusqlite::Error| DbError::Connect {
                url: format!("sqlite:{path}"),
                source: Box::new(e),
            };
            let conn = rusqlite::Connection::open(path).map_err(connect_err)?;
            conn.busy_timeout(std::time::Duration::from_secs(30))
                .map_err(connect_err)?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(connect_err)?;
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(connect_err)?;
            conn.pragma_update(None, "foreign_keys", "ON")
                .map_err(connect_err)?;
            conn.set_prepared_statement_cache_capacity(128);
            Ok(Self {
                conn,
                rows_written: 0,
            })
        }
    }

    impl Conn for SqliteConn {
        fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
            let mut stmt = self
                .conn
                .prepare_cached(&rewrite(sql))
                .map_err(|e| sql_error(sql, e))?;
            let n = stmt
                .execute(rusqlite::params_from_iter(params))
                .map_err(|e| sql_error(sql, e))? as u64;
            self.rows_written += n;
            Ok(n)
        }

        fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
            let mut stmt = self
                .conn
                .prepare_cached(&rewrite(sql))
                .map_err(|e| sql_error(sql, e))?;
            let columns = stmt.column_count();
            let shared: Arc<str> = Arc::from(sql);
            let mut rows = stmt
                .query(rusqlite::params_from_iter(params))
                .map_err(|e| sql_error(sql, e))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(|e| sql_error(sql, e))? {
                let mut values = Vec::with_capacity(columns);
                for i in 0..columns {
                    values.push(match row.get_ref(i).map_err(|e| sql_error(sql, e))? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(v) => Value::Int(v),
                        ValueRef::Real(v) => Value::Int(v as i64),
                        ValueRef::Text(t) | ValueRef::Blob(t) => {
                            Value::Text(String::from_utf8_lossy(t).into_owned())
                        }
                    });
                }
                out.push(Row {
                    values,
                    sql: shared.clone(),
                });
            }
            Ok(out)
        }

        fn batch(&mut self, sql: &str) -> Result<(), DbError> {
            self.conn.execute_batch(sql).map_err(|e| sql_error(sql, e))
        }

        fn backend(&self) -> Backend {
            Backend::Sqlite
        }

        fn rows_written(&self) -> u64 {
            self.rows_written
        }
    }
}

mod pg {
    use std::collections::HashMap;

    use bytes::BytesMut;
    use postgres::types::{to_sql_checked, IsNull, ToSql, Type};

    use super::*;

    impl ToSql for Value {
        fn to_sql(
            &self,
            ty: &Type,
            out: &mut BytesMut,
        ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
            match self {
                Value::Null => Ok(IsNull::Yes),
                Value::Int(v) => match *ty {
                    Type::INT8 => v.to_sql(ty, out),
                    Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                    Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                    Type::BOOL => (*v != 0).to_sql(ty, out),
                    _ => v.to_string().to_sql(ty, out),
                },
                Value::Text(s) => s.to_sql(ty, out),
            }
        }

        fn accepts(_ty: &Type) -> bool {
            true
        }

        to_sql_checked!();
    }

    pub(super) struct PgConn {
        pub client: postgres::Client,
        pub statements: HashMap<String, postgres::Statement>,
        pub rows_written: u64,
    }

    impl PgConn {
        pub fn open(url: &str) -> Result<Self, DbError> {
            let client =
                postgres::Client::connect(url, postgres::NoTls).map_err(|e| DbError::Connect {
                    url: redact(url),
                    source: Box::new(e),
                })?;
            Ok(Self {
                client,
                statements: HashMap::new(),
                rows_written: 0,
            })
        }

        fn statement(&mut self, sql: &str) -> Result<postgres::Statement, DbError> {
            if let Some(s) = self.statements.get(sql) {
                return Ok(s.clone());
            }
            let s = self.client.prepare(sql).map_err(|e| sql_error(sql, e))?;
            self.statements.insert(sql.to_owned(), s.clone());
            Ok(s)
        }
    }

    fn params_ref(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
        params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
    }

    impl Conn for PgConn {
        fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
            let stmt = self.statement(sql)?;
            let n = self
                .client
                .execute(&stmt, &params_ref(params))
                .map_err(|e| sql_error(sql, e))?;
            self.rows_written += n;
            Ok(n)
        }

        fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
            let stmt = self.statement(sql)?;
            let rows = self
                .client
                .query(&stmt, &params_ref(params))
                .map_err(|e| sql_error(sql, e))?;
            let shared: Arc<str> = Arc::from(sql);
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let mut values = Vec::with_capacity(row.len());
                for (i, col) in row.columns().iter().enumerate() {
                    let get_err = |e| sql_error(sql, e);
                    let v = match *col.type_() {
                        Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(get_err)?.into(),
                        Type::INT4 => row
                            .try_get::<_, Option<i32>>(i)
                            .map_err(get_err)?
                            .map(i64::from)
                            .into(),
                        Type::INT2 => row
                            .try_get::<_, Option<i16>>(i)
                            .map_err(get_err)?
                            .map(i64::from)
                            .into(),
                        Type::BOOL => row.try_get::<_, Option<bool>>(i).map_err(get_err)?.into(),
                        _ => row.try_get::<_, Option<String>>(i).map_err(get_err)?.into(),
                    };
                    values.push(v);
                }
                out.push(Row {
                    values,
                    sql: shared.clone(),
                });
            }
            Ok(out)
        }

        fn batch(&mut self, sql: &str) -> Result<(), DbError> {
            self.client
                .batch_execute(sql)
                .map_err(|e| sql_error(sql, e))
        }

        fn backend(&self) -> Backend {
            Backend::Postgres
        }

        fn rows_written(&self) -> u64 {
            self.rows_written
        }
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

#[derive(Debug, Default)]
struct Counters {
    write_transactions: AtomicU64,
    rows_written: AtomicU64,
}

impl Counters {
    fn add(&self, rows: u64) {
        if rows > 0 {
            self.write_transactions.fetch_add(1, Ordering::Relaxed);
            self.rows_written.fetch_add(rows, Ordering::Relaxed);
        }
    }
}

/// Called once the combined transaction ended: `None` if it committed, else why not.
type Completion = Box<dyn FnOnce(Option<String>) + Send>;
/// A unit of work for the write combiner; `None` if no transaction could be opened.
/// Returns whether the work succeeded (else its savepoint is rolled back).
type Job = Box<dyn for<'a> FnOnce(Option<&'a mut dyn Conn>) -> (bool, Completion) + Send>;

/// Most jobs committed together by the write combiner.
const MAX_COMBINED: usize = 256;

/// The SQLite write combiner: runs queued write jobs back to back in one transaction (each in
/// its own savepoint), commits once (one fsync), then completes every job. Callers are
/// answered only after the commit, so durability is the same as one transaction each.
fn combiner_loop(
    mut conn: Box<dyn Conn>,
    rx: std::sync::mpsc::Receiver<Job>,
    counters: Arc<Counters>,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_COMBINED {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.batch("BEGIN IMMEDIATE") {
            tracing::error!("write combiner cannot begin: {e}");
            for job in jobs {
                let (_, done) = job(None);
                done(Some(e.to_string()));
            }
            continue;
        }
        let before = conn.rows_written();
        let mut rolled_back = 0;
        let mut completions = Vec::with_capacity(jobs.len());
        for job in jobs {
            if conn.batch("SAVEPOINT job").is_err() {
                completions.push(job(None).1);
                continue;
            }
            let job_before = conn.rows_written();
            let (ok, done) = job(Some(conn.as_mut()));
            let end = if ok {
                conn.batch("RELEASE job")
            } else {
                rolled_back += conn.rows_written() - job_before;
                conn.batch("ROLLBACK TO job; RELEASE job")
            };
            if let Err(e) = end {
                tracing::error!("write combiner savepoint: {e}");
            }
            completions.push(done);
        }
        match conn.batch("COMMIT") {
            Ok(()) => {
                counters.add(conn.rows_written() - before - rolled_back);
                for done in completions {
                    done(None);
                }
            }
            Err(e) => {
                let _ = conn.batch("ROLLBACK");
                let msg = e.to_string();
                for done in completions {
                    done(Some(msg.clone()));
                }
            }
        }
    }
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

/// Counts of committed write transactions and rows written, since the pool was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteCounts {
    /// Committed write transactions.
    pub transactions: u64,
    /// Rows inserted, updated or deleted.
    pub rows: u64,
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

    /// Write accounting since the pool was opened.
    pub fn write_counts(&self) -> WriteCounts {
        WriteCounts {
            transactions: self.counters.write_transactions.load(Ordering::Relaxed),
            rows: self.counters.rows_written.load(Ordering::Relaxed),
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

    /// Runs `f` as a write. On SQLite it goes through the write combiner (many requests, one
    /// commit); on PostgreSQL it is its own transaction, as [`Db::write`]. Either way this returns
    /// only after the work is committed (or failed and rolled back).
    pub async fn write_combined<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, crate::StoreError> + Send + 'static,
    ) -> Result<T, crate::StoreError> {
        let Some(queue) = &self.combiner else {
            return self.write(f).await;
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, crate::StoreError>>();
        let job: Job = Box::new(move |conn: Option<&mut dyn Conn>| -> (bool, Completion) {
            let Some(conn) = conn else {
                let done: Completion = Box::new(move |why| {
                    let why = why.unwrap_or_else(|| "no transaction".into());
                    let _ = tx.send(Err(DbError::Worker(why).into()));
                });
                return (false, done);
            };
            let result = f(conn);
            let ok = result.is_ok();
            let done: Completion = Box::new(move |commit_error| {
                let _ = tx.send(match commit_error {
                    None => result,
                    Some(e) => Err(DbError::Worker(format!("commit failed: {e}")).into()),
                });
            });
            (ok, done)
        });
        queue
            .send(job)
            .map_err(|_| DbError::Worker("the writer thread stopped".into()))?;
        rx.await
            .map_err(|_| DbError::Worker("the writer thread dropped a job".into()))?
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
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn combined_writes_commit_together_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("c.db").display());
        let db = Db::open(&url, 2).unwrap();
        db.write(|c| Ok(c.batch("CREATE TABLE t (a BIGINT PRIMARY KEY)")?))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..200_i64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.write_combined(move |c| {
                    c.execute("INSERT INTO t VALUES ($1)", &params![i])?;
                    if i % 50 == 0 {
                        // Fails after writing: only this job's row must disappear.
                        c.execute("INSERT INTO t VALUES ($1)", &params![i])?;
                    }
                    Ok(i)
                })
                .await
            }));
        }
        let mut failed = 0;
        for t in tasks {
            if t.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 4);
        let rows = db
            .read(|c| Ok(c.query("SELECT COUNT(*), MIN(a) FROM t", &[])?))
            .await
            .unwrap();
        assert_eq!(rows[0].int(0).unwrap(), 196);
        assert_eq!(rows[0].int(1).unwrap(), 1);
        // Fewer commits than jobs: the writes were combined.
        assert!(
            db.write_counts().transactions < 200,
            "{:?}",
            db.write_counts()
        );
        assert_eq!(db.write_counts().rows, 196);
    }

    #[test]
    fn placeholders_are_rewritten_for_sqlite() {
        assert_eq!(
            sqlite::rewrite("SELECT $1, '$x', $12 WHERE a = $2"),
            "SELECT ?1, '$x', ?12 WHERE a = ?2"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:x.db"), "sqlite:x.db");
    }

    #[test]
    fn bad_urls_are_named() {
        let err = Db::open("mysql://x", 1).unwrap_err();
        assert!(err.to_string().contains("mysql://x"), "{err}");
        assert!(Db::open("sqlite:", 1).is_err());
    }

    #[test]
    fn sqlite_round_trip_and_write_counts() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("t.db").display());
        let db = Db::open(&url, 2).unwrap();
        db.write_blocking(|c| {
            c.batch("CREATE TABLE t (a BIGINT, b TEXT)")?;
            c.execute("INSERT INTO t VALUES ($1, $2)", &params![7_i64, "x"])?;
            c.execute(
                "INSERT INTO t VALUES ($1, $2)",
                &params![8_i64, None::<String>],
            )?;
            Ok(())
        })
        .unwrap();
        assert_eq!(
            db.write_counts(),
            WriteCounts {
                transactions: 1,
                rows: 2
            }
        );
        let rows = db
            .write_blocking(|c| Ok(c.query("SELECT a, b FROM t ORDER BY a", &[])?))
            .unwrap();
        assert_eq!(rows[0].int(0).unwrap(), 7);
        assert_eq!(rows[0].text(1).unwrap(), "x");
        assert_eq!(rows[1].opt_text(1).unwrap(), None);
        assert!(rows[1].text(1).is_err());
        // A read-only transaction does not count as a write.
        assert_eq!(db.write_counts().transactions, 1);
    }
}
