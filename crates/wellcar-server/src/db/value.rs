//! The values and rows that cross the SQL layer: a [`Value`] is NULL, a BIGINT (booleans as 0/1)
//! or TEXT, the only column types the schema uses; [`params!`](crate::params) builds parameter
//! arrays from mixed Rust values. A [`Row`] hands out typed columns and names the statement,
//! the column and what it held when a column is not the type the caller asked for.

use std::sync::Arc;

use super::DbError;

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
    pub(super) values: Vec<Value>,
    pub(super) sql: Arc<str>,
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
