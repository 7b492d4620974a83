//! Arrow schemas of the datasets, and records to `RecordBatch` and back.

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

/// Builds one batch from records of `dataset`, in the order given.
pub fn records_to_batch<'a>(
    dataset: Dataset,
    records: impl ExactSizeIterator<Item = &'a Record> + Clone,
) -> Result<RecordBatch, ArrowError> {
    let n = records.len();
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(dataset.columns().len());
    for (i, column) in dataset.columns().iter().enumerate() {
        let values = records.clone().map(move |r| &r.values[i]);
        let array: ArrayRef = match column.ty {
            ColumnType::Utf8 => {
                let mut b = StringBuilder::with_capacity(n, n * 16);
                for v in values {
                    b.append_option(v.as_str());
                }
                Arc::new(b.finish())
            }
            ColumnType::Dict => {
                let mut b = StringDictionaryBuilder::<Int32Type>::new();
                for v in values {
                    match v.as_str() {
                        Some(s) => {
                            b.append(s)?;
                        }
                        None => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnType::Int32 => {
                let mut b = Int32Builder::with_capacity(n);
                for v in values {
                    b.append_option(match v {
                        Value::I32(x) => Some(*x),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ColumnType::Int64 => {
                let mut b = Int64Builder::with_capacity(n);
                for v in values {
                    b.append_option(match v {
                        Value::I64(x) => Some(*x),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ColumnType::Float64 => {
                let mut b = Float64Builder::with_capacity(n);
                for v in values {
                    b.append_option(match v {
                        Value::F64(x) => Some(*x),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ColumnType::Bool => {
                let mut b = BooleanBuilder::with_capacity(n);
                for v in values {
                    b.append_option(match v {
                        Value::Bool(x) => Some(*x),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ColumnType::TimestampNs => {
                let mut b = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
                for v in values {
                    b.append_option(match v {
                        Value::Ts(x) => Some(*x),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
        };
        arrays.push(array);
    }
    RecordBatch::try_new(schema(dataset), arrays)
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
mod tests {
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
