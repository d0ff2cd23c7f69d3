//! The SQLite backend (rusqlite): a connection opened in WAL mode with `synchronous=FULL`,
//! foreign keys on, a 30 s busy timeout and a prepared-statement cache. Statements are written
//! once with `$n` placeholders and rewritten to SQLite's `?n` here; values map to INTEGER and
//! TEXT (a REAL column is truncated to an integer, a BLOB read as lossy UTF-8 text).

use std::sync::Arc;

use rusqlite::types::{ToSqlOutput, ValueRef};

use super::{sql_error, Backend, Conn, DbError, Row, Value};

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
