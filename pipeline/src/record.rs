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

    /// Rough heap + inline size, used to bound buffers by bytes.
    pub fn approx_size(&self) -> usize {
        match self {
            Value::Str(s) => 24 + s.len(),
            _ => 16,
        }
    }

    /// Whether the value may be stored in a column of this type.
    pub fn fits(&self, ty: ColumnType, nullable: bool) -> bool {
        matches!(
            (self, ty),
            (Value::Null, _) if nullable
        ) || matches!(
            (self, ty),
            (Value::Str(_), ColumnType::Utf8 | ColumnType::Dict)
                | (Value::I32(_), ColumnType::Int32)
                | (Value::I64(_), ColumnType::Int64)
                | (Value::F64(_), ColumnType::Float64)
                | (Value::Bool(_), ColumnType::Bool)
                | (Value::Ts(_), ColumnType::TimestampNs)
        )
    }
}

/// A row of one dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub dataset: Dataset,
    pub values: Vec<Value>,
}

impl Record {
    pub fn new(dataset: Dataset, values: Vec<Value>) -> Self {
        debug_assert_eq!(values.len(), dataset.columns().len());
        Self { dataset, values }
    }

    /// The record's event time in nanoseconds; it picks the file partition.
    pub fn timestamp_ns(&self) -> i64 {
        self.values[self.dataset.time_column()]
            .as_i64()
            .unwrap_or_default()
    }

    /// The dedup key, or `None` for datasets without one (`rejected`).
    pub fn key(&self) -> Option<Vec<u8>> {
        let cols = self.dataset.key_columns();
        if cols.is_empty() {
            return None;
        }
        let mut key = Vec::with_capacity(40);
        for &c in cols {
            encode_key_part(&self.values[c], &mut key);
        }
        Some(key)
    }

    /// The order of rows inside a Parquet file: key columns, then time.
    pub fn sort_key(&self) -> Vec<u8> {
        let mut key = self.key().unwrap_or_default();
        encode_key_part(&self.values[self.dataset.time_column()], &mut key);
        key
    }

    pub fn approx_size(&self) -> usize {
        32 + self.values.iter().map(Value::approx_size).sum::<usize>()
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
