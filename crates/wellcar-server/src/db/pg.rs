//! The PostgreSQL backend (postgres; TLS as the URL's `sslmode` says, see [`super::pg_tls`]): one
//! client per connection, statements prepared
//! once per connection and cached by their text. An integer parameter is sent as the type the
//! server expects (INT8, INT4, INT2 or BOOL, else as decimal text); result columns of those types
//! come back as integers, every other type as text. Connection errors name the URL with its
//! password redacted.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::pg_tls::PgTarget;
use super::{redact, sql_error, Backend, Conn, DbError, Row, Value};

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
        let target = PgTarget::parse(url)?;
        let connect_err = |e: postgres::Error| DbError::Connect {
            url: redact(url),
            source: Box::new(e),
        };
        let mut config: postgres::Config = target.driver_url.parse().map_err(connect_err)?;
        config.ssl_mode(target.driver_ssl_mode());
        let client = match target.connector(url)? {
            Some(tls) => config.connect(tls),
            None => config.connect(postgres::NoTls),
        }
        .map_err(connect_err)?;
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
