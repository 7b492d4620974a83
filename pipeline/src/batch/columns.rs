//! Rows of one dataset as Arrow columns of its schema: what a decoder
//! builds, what a WAL entry logs, what dedup keys are read from and what
//! the live buffer holds. They are checked once, when made, against the
//! dataset's schema by column name; nothing downstream checks them again.

use arrow::array::{new_null_array, Array, ArrayRef, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

use super::convert::{batch_to_records, data_type, records_to_batch, schema, times};
use crate::dataset::Dataset;
use crate::record::{Record, SchemaError};

/// Rows of one dataset, as columns that fit its schema.
#[derive(Debug, Clone)]
pub struct Columns {
    dataset: Dataset,
    batch: RecordBatch,
}

impl Columns {
    /// Columns given by name, `rows` long. Each name must be a column of
    /// the dataset, each array of that column's Arrow type and length and
    /// without nulls when the column is required. Columns not given are
    /// null (an error for a required one).
    pub fn assemble<S: AsRef<str>>(
        dataset: Dataset,
        rows: usize,
        given: impl IntoIterator<Item = (S, ArrayRef)>,
    ) -> Result<Self, SchemaError> {
        let columns = dataset.columns();
        let mut arrays: Vec<Option<ArrayRef>> = vec![None; columns.len()];
        for (name, array) in given {
            let name = name.as_ref();
            let i = dataset
                .column_index(name)
                .ok_or_else(|| SchemaError::UnknownColumn {
                    dataset,
                    column: name.to_string(),
                })?;
            arrays[i] = Some(array);
        }
        let mut checked = Vec::with_capacity(columns.len());
        for (c, array) in columns.iter().zip(arrays) {
            let expected = data_type(c.ty);
            let array = match array {
                Some(a) => a,
                None if c.nullable => new_null_array(&expected, rows),
                None => {
                    return Err(SchemaError::Null {
                        dataset,
                        column: c.name,
                    })
                }
            };
            if array.data_type() != &expected {
                return Err(SchemaError::ArrowType {
                    dataset,
                    column: c.name,
                    expected: expected.to_string(),
                    got: array.data_type().to_string(),
                });
            }
            if array.len() != rows {
                return Err(SchemaError::Length {
                    dataset,
                    column: c.name,
                    expected: rows,
                    got: array.len(),
                });
            }
            if !c.nullable && array.logical_null_count() > 0 {
                return Err(SchemaError::Null {
                    dataset,
                    column: c.name,
                });
            }
            checked.push(array);
        }
        let batch = RecordBatch::try_new_with_options(
            schema(dataset),
            checked,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| SchemaError::Arrow {
            dataset,
            reason: e.to_string(),
        })?;
        Ok(Columns { dataset, batch })
    }

    /// A batch read back (from a WAL entry), checked as
    /// [`Columns::assemble`] checks columns: by name, type, length and
    /// nulls.
    pub fn of_batch(dataset: Dataset, batch: RecordBatch) -> Result<Self, SchemaError> {
        let rows = batch.num_rows();
        let schema = batch.schema();
        if schema.fields().len() != dataset.columns().len() {
            return Err(SchemaError::Arity {
                dataset,
                expected: dataset.columns().len(),
                got: schema.fields().len(),
            });
        }
        let named = schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .zip(batch.columns().iter().cloned());
        Self::assemble(dataset, rows, named)
    }

    /// Admitted records (each checked against the schema), in the order
    /// given, split by dataset: one `Columns` per dataset present, in the
    /// order of [`Dataset::ALL`].
    pub fn of_records(records: Vec<Record>) -> Vec<Columns> {
        // Nearly every request holds one dataset: keep its vector as it is.
        let first = records.first().map(|r| r.dataset);
        let by_dataset: Vec<(Dataset, Vec<Record>)> =
            if records.iter().all(|r| Some(r.dataset) == first) {
                first.map(|d| vec![(d, records)]).unwrap_or_default()
            } else {
                let mut split: Vec<Vec<Record>> = Dataset::ALL.iter().map(|_| Vec::new()).collect();
                for r in records {
                    split[r.dataset.index()].push(r);
                }
                Dataset::ALL
                    .iter()
                    .zip(split)
                    .filter(|(_, rs)| !rs.is_empty())
                    .map(|(d, rs)| (*d, rs))
                    .collect()
            };
        by_dataset
            .into_iter()
            .map(|(dataset, records)| {
                // The records were admitted against this schema; building
                // fails only past 2^31 distinct strings of one column,
                // far beyond a request's bound.
                let batch = records_to_batch(dataset, records.iter())
                    .expect("admitted records make a batch of their dataset");
                Columns { dataset, batch }
            })
            .collect()
    }

    /// Columns built by this module's builders from checked rows.
    pub(crate) fn checked(dataset: Dataset, batch: RecordBatch) -> Self {
        Columns { dataset, batch }
    }

    pub fn dataset(&self) -> Dataset {
        self.dataset
    }

    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    pub fn into_batch(self) -> RecordBatch {
        self.batch
    }

    pub fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// Bytes the columns hold (their buffers).
    pub fn bytes(&self) -> usize {
        self.batch.get_array_memory_size()
    }

    /// Earliest and latest record time (ns); `(i64::MAX, i64::MIN)` for
    /// no rows.
    pub fn time_range(&self) -> (i64, i64) {
        let t = times(self.dataset, &self.batch);
        (
            arrow::compute::min(t).unwrap_or(i64::MAX),
            arrow::compute::max(t).unwrap_or(i64::MIN),
        )
    }

    /// The rows where `keep` is true, in order.
    pub fn filter(&self, keep: &BooleanArray) -> Columns {
        let batch =
            filter_record_batch(&self.batch, keep).expect("a mask as long as the batch filters it");
        Columns {
            dataset: self.dataset,
            batch,
        }
    }

    /// The rows as records (for the Kafka relay, which sends records).
    pub fn to_records(&self) -> Vec<Record> {
        batch_to_records(self.dataset, &self.batch)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{DictionaryArray, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::Int32Type;

    use super::*;
    use crate::record::Value;

    fn dict(v: &str, n: usize) -> ArrayRef {
        Arc::new(DictionaryArray::<Int32Type>::new(
            Int32Array::from(vec![0; n]),
            Arc::new(StringArray::from(vec![v])),
        ))
    }

    fn ts(v: Vec<i64>) -> ArrayRef {
        Arc::new(arrow::array::TimestampNanosecondArray::from(v).with_timezone("UTC"))
    }

    fn vm(n: usize) -> Vec<(&'static str, ArrayRef)> {
        let mut cols = vec![
            ("vm_id", dict("vm-1", n)),
            ("customer_id", dict("c", n)),
            ("timestamp", ts((0..n as i64).collect())),
        ];
        for c in &Dataset::VmMetrics.columns()[3..] {
            cols.push((c.name, Arc::new(Int64Array::from(vec![7; n])) as ArrayRef));
        }
        cols
    }

    #[test]
    fn columns_are_placed_by_name_and_read_back_as_the_records_they_hold() {
        let c = Columns::assemble(Dataset::VmMetrics, 3, vm(3)).unwrap();
        let records = c.to_records();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].get("vm_id"), Some(&Value::Str("vm-1".into())));
        assert_eq!(records[2].get("customer_id"), Some(&Value::Str("c".into())));
        assert_eq!(records[2].get("timestamp"), Some(&Value::Ts(2)));
        assert!(records.iter().all(|r| r.check().is_ok()));
        assert_eq!(c.time_range(), (0, 2));
        let kept = c.filter(&BooleanArray::from(vec![true, false, true]));
        assert_eq!(kept.time_range(), (0, 2));
        assert_eq!(kept.rows(), 2);
    }

    #[test]
    fn a_column_that_breaks_the_schema_is_named_with_the_rule() {
        let err = |cols: Vec<(&'static str, ArrayRef)>, rows| {
            Columns::assemble(Dataset::VmMetrics, rows, cols)
                .unwrap_err()
                .to_string()
        };
        let mut unknown = vm(2);
        unknown.push(("vmid", dict("x", 2)));
        assert_eq!(err(unknown, 2), "vm_metrics has no column \"vmid\"");
        let missing: Vec<_> = vm(2).into_iter().filter(|(n, _)| *n != "vm_id").collect();
        assert_eq!(
            err(missing, 2),
            "vm_metrics.vm_id is required (NOT NULL), got null"
        );
        let mut typed = vm(2);
        typed[0].1 = Arc::new(StringArray::from(vec!["a", "b"]));
        assert_eq!(
            err(typed, 2),
            "vm_metrics.vm_id must be a column of Dictionary(Int32, Utf8), got Utf8"
        );
        let mut short = vm(2);
        short[2].1 = ts(vec![1]);
        assert_eq!(
            err(short, 2),
            "vm_metrics.timestamp holds 1 rows where the others hold 2"
        );
        let mut null = vm(2);
        null[3].1 = Arc::new(Int64Array::from(vec![Some(1), None]));
        assert_eq!(
            err(null, 2),
            "vm_metrics.cpu_time_nanos is required (NOT NULL), got null"
        );
    }

    #[test]
    fn records_split_by_dataset_keep_their_order() {
        let rejected = |n: i64| {
            Record::from_columns(
                Dataset::Rejected,
                vec![
                    Value::Ts(n),
                    Value::Str("s".into()),
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Str("r".into()),
                    Value::Str("p".into()),
                ],
            )
        };
        let vm_rows = Columns::assemble(Dataset::VmMetrics, 2, vm(2))
            .unwrap()
            .to_records();
        let mixed = vec![
            rejected(1),
            vm_rows[0].clone(),
            rejected(2),
            vm_rows[1].clone(),
        ];
        let parts = Columns::of_records(mixed);
        let got: Vec<(Dataset, Vec<Record>)> = parts
            .iter()
            .map(|c| (c.dataset(), c.to_records()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Dataset::VmMetrics, vm_rows.clone()),
                (Dataset::Rejected, vec![rejected(1), rejected(2)]),
            ]
        );
        // A batch read back is checked as assembled columns are.
        let back = Columns::of_batch(Dataset::VmMetrics, parts[0].batch().clone()).unwrap();
        assert_eq!(back.to_records(), vm_rows);
        assert!(Columns::of_batch(Dataset::Rejected, parts[0].batch().clone()).is_err());
    }
}
