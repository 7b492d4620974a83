//! The Arrow schemas of the datasets, and records to `RecordBatch` and
//! back.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, StringDictionaryBuilder, TimestampNanosecondBuilder,
};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit,
    TimestampNanosecondType,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::dataset::{ColumnType, Dataset};
use crate::record::{Record, Value};

pub fn data_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Utf8 => DataType::Utf8,
        ColumnType::Dict => {
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
        }
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::TimestampNs => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
    }
}

/// The Arrow schema of a dataset (built once, shared).
pub fn schema(dataset: Dataset) -> SchemaRef {
    static SCHEMAS: OnceLock<Vec<SchemaRef>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        Dataset::ALL
            .iter()
            .map(|d| {
                let fields: Vec<Field> = d
                    .columns()
                    .iter()
                    .map(|c| Field::new(c.name, data_type(c.ty), c.nullable))
                    .collect();
                Arc::new(Schema::new(fields))
            })
            .collect()
    })[dataset.index()]
    .clone()
}

/// One column's builder while a batch is built row by row.
pub(crate) enum ColumnBuilder {
    Utf8(StringBuilder),
    Dict(StringDictionaryBuilder<Int32Type>),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Bool(BooleanBuilder),
    Ts(TimestampNanosecondBuilder),
}

impl ColumnBuilder {
    pub(crate) fn new(ty: ColumnType, rows: usize) -> Self {
        match ty {
            ColumnType::Utf8 => Self::Utf8(StringBuilder::with_capacity(rows, rows * 16)),
            ColumnType::Dict => Self::Dict(StringDictionaryBuilder::new()),
            ColumnType::Int32 => Self::Int32(Int32Builder::with_capacity(rows)),
            ColumnType::Int64 => Self::Int64(Int64Builder::with_capacity(rows)),
            ColumnType::Float64 => Self::Float64(Float64Builder::with_capacity(rows)),
            ColumnType::Bool => Self::Bool(BooleanBuilder::with_capacity(rows)),
            ColumnType::TimestampNs => {
                Self::Ts(TimestampNanosecondBuilder::with_capacity(rows).with_timezone("UTC"))
            }
        }
    }

    /// Appends one value; a value of another type than the column's is
    /// appended as null (records are checked when admitted, so this does
    /// not happen to admitted rows).
    pub(crate) fn append(&mut self, v: &Value) -> Result<(), ArrowError> {
        match (self, v) {
            (Self::Utf8(b), Value::Str(s)) => b.append_value(s),
            (Self::Utf8(b), _) => b.append_null(),
            (Self::Dict(b), Value::Str(s)) => {
                b.append(s)?;
            }
            (Self::Dict(b), _) => b.append_null(),
            (Self::Int32(b), Value::I32(x)) => b.append_value(*x),
            (Self::Int32(b), _) => b.append_null(),
            (Self::Int64(b), Value::I64(x)) => b.append_value(*x),
            (Self::Int64(b), _) => b.append_null(),
            (Self::Float64(b), Value::F64(x)) => b.append_value(*x),
            (Self::Float64(b), _) => b.append_null(),
            (Self::Bool(b), Value::Bool(x)) => b.append_value(*x),
            (Self::Bool(b), _) => b.append_null(),
            (Self::Ts(b), Value::Ts(x)) => b.append_value(*x),
            (Self::Ts(b), _) => b.append_null(),
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> ArrayRef {
        match self {
            Self::Utf8(mut b) => Arc::new(b.finish()),
            Self::Dict(mut b) => Arc::new(b.finish()),
            Self::Int32(mut b) => Arc::new(b.finish()),
            Self::Int64(mut b) => Arc::new(b.finish()),
            Self::Float64(mut b) => Arc::new(b.finish()),
            Self::Bool(mut b) => Arc::new(b.finish()),
            Self::Ts(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Builds one batch from records of `dataset`, in the order given. The
/// records are walked once, row by row: each record's values sit together
/// on the heap, so one pass reads each of them once instead of once per
/// column.
pub fn records_to_batch<'a>(
    dataset: Dataset,
    records: impl ExactSizeIterator<Item = &'a Record>,
) -> Result<RecordBatch, ArrowError> {
    let n = records.len();
    let columns = dataset.columns();
    let mut builders: Vec<ColumnBuilder> = columns
        .iter()
        .map(|c| ColumnBuilder::new(c.ty, n))
        .collect();
    for r in records {
        for (b, v) in builders.iter_mut().zip(&r.values) {
            b.append(v)?;
        }
        // A record with fewer values than columns (never admitted) gets
        // nulls, as a column-by-column build would give it.
        for b in builders.iter_mut().skip(r.values.len()) {
            b.append(&Value::Null)?;
        }
    }
    let arrays = builders.into_iter().map(ColumnBuilder::finish).collect();
    RecordBatch::try_new(schema(dataset), arrays)
}

/// The time column of a batch of `dataset`'s schema.
pub fn times(dataset: Dataset, batch: &RecordBatch) -> &arrow::array::TimestampNanosecondArray {
    batch
        .column(dataset.time_column())
        .as_primitive::<TimestampNanosecondType>()
}

/// Reads one cell of an array of a dataset column back into a [`Value`].
pub fn value_at(array: &dyn Array, ty: ColumnType, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match ty {
        ColumnType::Utf8 => match array.data_type() {
            DataType::Utf8View => Value::Str(array.as_string_view().value(row).to_string()),
            DataType::LargeUtf8 => Value::Str(array.as_string::<i64>().value(row).to_string()),
            _ => Value::Str(array.as_string::<i32>().value(row).to_string()),
        },
        ColumnType::Dict => match array.data_type() {
            DataType::Dictionary(_, _) => {
                let dict = array.as_dictionary::<Int32Type>();
                let key = dict.keys().value(row) as usize;
                value_at(dict.values().as_ref(), ColumnType::Utf8, key)
            }
            _ => value_at(array, ColumnType::Utf8, row),
        },
        ColumnType::Int32 => Value::I32(array.as_primitive::<Int32Type>().value(row)),
        ColumnType::Int64 => Value::I64(array.as_primitive::<Int64Type>().value(row)),
        ColumnType::Float64 => Value::F64(array.as_primitive::<Float64Type>().value(row)),
        ColumnType::Bool => Value::Bool(array.as_boolean().value(row)),
        ColumnType::TimestampNs => {
            Value::Ts(array.as_primitive::<TimestampNanosecondType>().value(row))
        }
    }
}

/// Turns a batch of a dataset's schema back into records.
pub fn batch_to_records(dataset: Dataset, batch: &RecordBatch) -> Vec<Record> {
    let columns = dataset.columns();
    (0..batch.num_rows())
        .map(|row| {
            let values = columns
                .iter()
                .map(|c| match batch.column_by_name(c.name) {
                    Some(array) => value_at(array.as_ref(), c.ty, row),
                    None => Value::Null,
                })
                .collect();
            Record::from_columns(dataset, values)
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_arrow() {
        let d = Dataset::VmMetrics;
        let records: Vec<Record> = (0..5)
            .map(|i| {
                Record::from_columns(
                    d,
                    vec![
                        Value::Str("cust".into()),
                        Value::Str(format!("vm-{}", i % 2)),
                        Value::Ts(1_700_000_000_000_000_000 + i),
                        Value::I64(i * 10),
                        Value::I64(1 << 30),
                        Value::I64(0),
                        Value::I64(1),
                        Value::I64(2),
                        Value::I64(3),
                    ],
                )
            })
            .collect();
        let batch = records_to_batch(d, records.iter()).unwrap();
        assert_eq!(batch.num_rows(), 5);
        assert_eq!(batch.schema(), schema(d));
        assert_eq!(batch_to_records(d, &batch), records);
    }

    /// `rows` records of `dataset` with a value of every column's type:
    /// nulls in every nullable column of every third row (from row 2),
    /// negative and positive numbers, strings that repeat (so dictionaries
    /// hold fewer values than rows).
    pub(crate) fn records_of_every_type(dataset: Dataset, rows: i64) -> Vec<Record> {
        (0..rows)
            .map(|row| {
                let values = dataset
                    .columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        if c.nullable && row % 3 == 2 {
                            return Value::Null;
                        }
                        let n = (row - 3) * 1000 + i as i64;
                        match c.ty {
                            ColumnType::Utf8 | ColumnType::Dict => {
                                Value::Str(format!("{}-{}", c.name, row % 2))
                            }
                            ColumnType::Int32 => Value::I32(n as i32 - 7),
                            ColumnType::Int64 => Value::I64(n << 33),
                            ColumnType::Float64 => Value::F64(n as f64 / 3.0),
                            ColumnType::Bool => Value::Bool(row % 2 == 1),
                            ColumnType::TimestampNs => Value::Ts(1_700_000_000_000_000_000 + n),
                        }
                    })
                    .collect();
                Record::from_columns(dataset, values)
            })
            .collect()
    }

    /// Every dataset, every column type, nulls in the nullable columns of
    /// some rows: the batch reads back (by `value_at`, column by column) as
    /// the records it was built from.
    #[test]
    fn every_column_type_round_trips_with_nulls() {
        for d in Dataset::ALL {
            let records = records_of_every_type(d, 4);
            let batch = records_to_batch(d, records.iter()).unwrap();
            assert_eq!(batch.num_rows(), records.len(), "{d}");
            assert_eq!(batch_to_records(d, &batch), records, "{d}");
        }
    }

    #[test]
    fn every_dataset_has_a_schema_matching_its_columns() {
        for d in Dataset::ALL {
            let s = schema(d);
            assert_eq!(s.fields().len(), d.columns().len());
            let empty = records_to_batch(
                d,
                std::iter::empty::<&Record>()
                    .collect::<Vec<_>>()
                    .into_iter(),
            )
            .unwrap();
            assert_eq!(empty.num_rows(), 0);
        }
    }
}
