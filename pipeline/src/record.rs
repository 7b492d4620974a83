//! A record is one row of a dataset: its values in the dataset's column order.
//!
//! Records are what sources hand to the pipeline, what the WAL stores and what
//! the live buffer holds until the Parquet writer turns them into files.

use crate::dataset::{ColumnType, Dataset};

/// One cell. The variant matches the column's [`ColumnType`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Str(String),
    I32(i32),
    I64(i64),
    F64(f64),
    Bool(bool),
    /// Nanoseconds since the Unix epoch, UTC.
    Ts(i64),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::I32(v) => Some(*v as i64),
            Value::I64(v) | Value::Ts(v) => Some(*v),
            _ => None,
        }
    }

    /// Whether the value may be stored in a column of this type.
    pub fn fits(&self, ty: ColumnType, nullable: bool) -> bool {
        self.kind().fits(ty, nullable)
    }

    pub(crate) fn kind(&self) -> Kind {
        match self {
            Value::Null => Kind::Null,
            Value::Str(_) => Kind::Str,
            Value::I32(_) => Kind::I32,
            Value::I64(_) => Kind::I64,
            Value::F64(_) => Kind::F64,
            Value::Bool(_) => Kind::Bool,
            Value::Ts(_) => Kind::Ts,
        }
    }
}

/// What a value is, for the schema check shared by records and by rows
/// decoded into columns ([`crate::batch::Row`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Str,
    I32,
    I64,
    F64,
    Bool,
    Ts,
}

impl Kind {
    fn fits(self, ty: ColumnType, nullable: bool) -> bool {
        matches!(
            (self, ty),
            (Kind::Null, _) if nullable
        ) || matches!(
            (self, ty),
            (Kind::Str, ColumnType::Utf8 | ColumnType::Dict)
                | (Kind::I32, ColumnType::Int32)
                | (Kind::I64, ColumnType::Int64)
                | (Kind::F64, ColumnType::Float64)
                | (Kind::Bool, ColumnType::Bool)
                | (Kind::Ts, ColumnType::TimestampNs)
        )
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Str => "a string",
            Kind::I32 => "a 32-bit integer",
            Kind::I64 => "a 64-bit integer",
            Kind::F64 => "a float",
            Kind::Bool => "a boolean",
            Kind::Ts => "a timestamp",
        }
    }
}

/// Whether values of these kinds, one per column in order, fit the
/// dataset's schema: the one schema check of a row, whatever holds it.
pub(crate) fn check_kinds(
    dataset: Dataset,
    kinds: impl ExactSizeIterator<Item = Kind>,
) -> Result<(), SchemaError> {
    let columns = dataset.columns();
    if kinds.len() != columns.len() {
        return Err(SchemaError::Arity {
            dataset,
            expected: columns.len(),
            got: kinds.len(),
        });
    }
    for (k, c) in kinds.zip(columns) {
        if k.fits(c.ty, c.nullable) {
            continue;
        }
        return Err(match k {
            Kind::Null => SchemaError::Null {
                dataset,
                column: c.name,
            },
            _ => SchemaError::Type {
                dataset,
                column: c.name,
                expected: c.ty.describe(),
                got: k.describe(),
            },
        });
    }
    Ok(())
}

impl ColumnType {
    /// How a schema error names the type.
    pub fn describe(self) -> &'static str {
        match self {
            ColumnType::Utf8 | ColumnType::Dict => "a string",
            ColumnType::Int32 => "a 32-bit integer",
            ColumnType::Int64 => "a 64-bit integer",
            ColumnType::Float64 => "a float",
            ColumnType::Bool => "a boolean",
            ColumnType::TimestampNs => "a timestamp",
        }
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::I32(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::I64(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::F64(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// A record that does not fit its dataset's schema.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemaError {
    #[error("{dataset} has no column {column:?}")]
    UnknownColumn { dataset: Dataset, column: String },
    #[error("{dataset} rows have {expected} columns, this one has {got}")]
    Arity {
        dataset: Dataset,
        expected: usize,
        got: usize,
    },
    #[error("{dataset}.{column} must be {expected}, got {got}")]
    Type {
        dataset: Dataset,
        column: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    #[error("{dataset}.{column} is required (NOT NULL), got null")]
    Null {
        dataset: Dataset,
        column: &'static str,
    },
    /// A column given as Arrow (see [`crate::batch::Columns`]) of another
    /// type than the schema's.
    #[error("{dataset}.{column} must be a column of {expected}, got {got}")]
    ArrowType {
        dataset: Dataset,
        column: &'static str,
        expected: String,
        got: String,
    },
    #[error("{dataset}.{column} holds {got} rows where the others hold {expected}")]
    Length {
        dataset: Dataset,
        column: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{dataset} columns do not make a batch: {reason}")]
    Arrow { dataset: Dataset, reason: String },
}

/// A row of one dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub dataset: Dataset,
    pub values: Vec<Value>,
}

/// Column positions resolved once from names, for hot paths: a row is then
/// placed without looking names up, and checked like any other.
///
/// ```
/// use std::sync::LazyLock;
/// use tally_pipeline::{Dataset, Value};
/// use tally_pipeline::record::RowLayout;
/// static HOSTS: LazyLock<RowLayout<2>> = LazyLock::new(|| {
///     RowLayout::new(Dataset::HostUsage, ["timestamp", "hostname"]).expect("columns exist")
/// });
/// let err = HOSTS.row([Value::Ts(1), "h".into()]).unwrap_err();
/// assert_eq!(err.to_string(), "host_usage.cpu_percent is required (NOT NULL), got null");
/// ```
#[derive(Debug, Clone)]
pub struct RowLayout<const N: usize> {
    dataset: Dataset,
    index: [usize; N],
    /// The names are the dataset's columns, in order: values go as they are.
    in_order: bool,
}

impl<const N: usize> RowLayout<N> {
    pub fn new(dataset: Dataset, names: [&str; N]) -> Result<Self, SchemaError> {
        let mut index = [0; N];
        for (slot, name) in index.iter_mut().zip(names) {
            *slot = dataset
                .column_index(name)
                .ok_or_else(|| SchemaError::UnknownColumn {
                    dataset,
                    column: name.to_string(),
                })?;
        }
        let in_order =
            N == dataset.columns().len() && index.iter().enumerate().all(|(i, &c)| i == c);
        Ok(Self {
            dataset,
            index,
            in_order,
        })
    }

    /// A record of these values (in the layout's order), checked.
    pub fn row(&self, values: [Value; N]) -> Result<Record, SchemaError> {
        let values = if self.in_order {
            Vec::from(values)
        } else {
            let mut row = vec![Value::Null; self.dataset.columns().len()];
            for (&i, v) in self.index.iter().zip(values) {
                row[i] = v;
            }
            row
        };
        let record = Record {
            dataset: self.dataset,
            values,
        };
        record.check()?;
        Ok(record)
    }
}

impl Record {
    /// A record from values in the dataset's column order, for decoders of
    /// tally's own formats (WAL, Arrow); everything else uses
    /// `RecordBuilder` (`batch/rows.rs`). Checked when admitted, like every
    /// record.
    pub fn from_columns(dataset: Dataset, values: Vec<Value>) -> Self {
        Self { dataset, values }
    }

    /// Whether the record fits its dataset's schema: one value per column,
    /// each of the column's type, no null in a required column.
    pub fn check(&self) -> Result<(), SchemaError> {
        check_kinds(self.dataset, self.values.iter().map(Value::kind))
    }

    /// The value of a column, by name.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.values.get(self.dataset.column_index(column)?)
    }

    /// The record's event time in nanoseconds; it picks the file partition.
    pub fn timestamp_ns(&self) -> i64 {
        self.values[self.dataset.time_column()]
            .as_i64()
            .unwrap_or_default()
    }

    /// The dedup key, or `None` for datasets without one (`rejected`).
    pub fn key(&self) -> Option<Vec<u8>> {
        let mut key = Vec::with_capacity(40);
        self.key_into(&mut key).then_some(key)
    }

    /// Appends the dedup key to `out`; `false` (nothing appended) for
    /// datasets without one.
    pub fn key_into(&self, out: &mut Vec<u8>) -> bool {
        let cols = self.dataset.key_columns();
        for &c in cols {
            encode_key_part(&self.values[c], out);
        }
        !cols.is_empty()
    }

    /// Appends the key of the order of rows inside a Parquet file (key
    /// columns, then time) to `out`, and returns the length of its series
    /// part: the key parts before the record's time (all of the key
    /// when the time is not part of it). Rows of one series (one VM's
    /// samples) share it and differ in what follows.
    pub fn sort_key_into(&self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        let time = self.dataset.time_column();
        let mut series = None;
        for &c in self.dataset.key_columns() {
            if c == time && series.is_none() {
                series = Some(out.len() - start);
            }
            encode_key_part(&self.values[c], out);
        }
        let series = series.unwrap_or(out.len() - start);
        encode_key_part(&self.values[time], out);
        series
    }
}

/// Appends one key part so that byte order equals value order: strings end in
/// 0x00 (keys never hold NUL: sources reject it), integers are big-endian
/// with the sign bit flipped.
pub fn encode_key_part(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Str(s) => {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        Value::I32(v) => out.extend_from_slice(&((*v as i64 as u64) ^ (1 << 63)).to_be_bytes()),
        Value::I64(v) | Value::Ts(v) => {
            out.extend_from_slice(&((*v as u64) ^ (1 << 63)).to_be_bytes())
        }
        Value::Bool(b) => out.push(*b as u8),
        Value::F64(f) => out.extend_from_slice(&f.to_bits().to_be_bytes()),
        Value::Null => out.push(0xff),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_the_column_and_the_rule() {
        let mut r = Record::from_columns(
            Dataset::Rejected,
            vec![
                Value::Ts(0),
                Value::Str("http".into()),
                Value::Null,
                Value::Null,
                Value::Str("three".into()),
                Value::Str("reason".into()),
                Value::Str("{}".into()),
            ],
        );
        assert_eq!(
            r.check().unwrap_err().to_string(),
            "rejected.index must be a 32-bit integer, got a string"
        );
        r.values[4] = Value::I32(3);
        assert!(r.check().is_ok());
        r.values.pop();
        assert!(matches!(r.check(), Err(SchemaError::Arity { got: 6, .. })));
    }
}
