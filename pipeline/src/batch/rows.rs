//! Rows decoded straight into a dataset's column builders.
//!
//! A decoder stages one row's values by column name in a [`Row`],
//! borrowing strings from the payload it reads. [`Rows::push`] checks the
//! row once against the dataset's schema and appends it to the columns, or
//! refuses it whole (nothing of it is appended): a bad field rejects only
//! its record. [`Rows::finish`] gives the [`Columns`].

use std::borrow::Cow;

use super::columns::Columns;
use super::convert::{schema, ColumnBuilder};
use crate::dataset::Dataset;
use arrow::error::ArrowError;

use crate::record::{check_kinds, Kind, Record, SchemaError, Value};

/// One value of a staged row; strings may borrow from the payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Null,
    Str(Cow<'a, str>),
    I32(i32),
    I64(i64),
    F64(f64),
    Bool(bool),
    /// Nanoseconds since the Unix epoch, UTC.
    Ts(i64),
}

impl Cell<'_> {
    fn kind(&self) -> Kind {
        match self {
            Cell::Null => Kind::Null,
            Cell::Str(_) => Kind::Str,
            Cell::I32(_) => Kind::I32,
            Cell::I64(_) => Kind::I64,
            Cell::F64(_) => Kind::F64,
            Cell::Bool(_) => Kind::Bool,
            Cell::Ts(_) => Kind::Ts,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Cell::Str(s) => Some(s),
            _ => None,
        }
    }

    fn into_value(self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Str(s) => Value::Str(s.into_owned()),
            Cell::I32(v) => Value::I32(v),
            Cell::I64(v) => Value::I64(v),
            Cell::F64(v) => Value::F64(v),
            Cell::Bool(v) => Value::Bool(v),
            Cell::Ts(v) => Value::Ts(v),
        }
    }
}

impl From<Value> for Cell<'static> {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => Cell::Null,
            Value::Str(s) => Cell::Str(Cow::Owned(s)),
            Value::I32(v) => Cell::I32(v),
            Value::I64(v) => Cell::I64(v),
            Value::F64(v) => Cell::F64(v),
            Value::Bool(v) => Cell::Bool(v),
            Value::Ts(v) => Cell::Ts(v),
        }
    }
}

impl<'a> From<&'a str> for Cell<'a> {
    fn from(s: &'a str) -> Self {
        Cell::Str(Cow::Borrowed(s))
    }
}
impl From<String> for Cell<'_> {
    fn from(s: String) -> Self {
        Cell::Str(Cow::Owned(s))
    }
}
impl<'a> From<Cow<'a, str>> for Cell<'a> {
    fn from(s: Cow<'a, str>) -> Self {
        Cell::Str(s)
    }
}
impl From<i32> for Cell<'_> {
    fn from(v: i32) -> Self {
        Cell::I32(v)
    }
}
impl From<i64> for Cell<'_> {
    fn from(v: i64) -> Self {
        Cell::I64(v)
    }
}
impl From<f64> for Cell<'_> {
    fn from(v: f64) -> Self {
        Cell::F64(v)
    }
}
impl From<bool> for Cell<'_> {
    fn from(v: bool) -> Self {
        Cell::Bool(v)
    }
}
impl<'a, T: Into<Cell<'a>>> From<Option<T>> for Cell<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Cell::Null, Into::into)
    }
}

/// One row being decoded: a cell per column of the dataset, set by column
/// name, every cell null until set.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    dataset: Dataset,
    cells: Vec<Cell<'a>>,
    /// Where the next `set` most likely goes: names usually come in schema
    /// order, so the lookup is one comparison.
    next: usize,
    error: Option<SchemaError>,
}

impl<'a> Row<'a> {
    pub fn new(dataset: Dataset) -> Self {
        Self {
            dataset,
            cells: vec![Cell::Null; dataset.columns().len()],
            next: 0,
            error: None,
        }
    }

    pub fn dataset(&self) -> Dataset {
        self.dataset
    }

    /// Every cell null again, to decode the next row into the same space.
    pub fn clear(&mut self) {
        self.cells.fill(Cell::Null);
        self.next = 0;
        self.error = None;
    }

    pub fn set(&mut self, column: &str, cell: impl Into<Cell<'a>>) -> &mut Self {
        let columns = self.dataset.columns();
        let i = if columns
            .get(self.next)
            .is_some_and(|c| crate::dataset::same_name(c.name, column))
        {
            Some(self.next)
        } else {
            self.dataset.column_index(column)
        };
        match i {
            Some(i) => {
                self.cells[i] = cell.into();
                self.next = i + 1;
            }
            None => {
                self.error.get_or_insert(SchemaError::UnknownColumn {
                    dataset: self.dataset,
                    column: column.to_string(),
                });
            }
        }
        self
    }

    /// The cell of a column, by its position in the schema.
    pub fn cell(&self, column: usize) -> &Cell<'a> {
        &self.cells[column]
    }

    /// The row's tenant (see [`Dataset::tenant_column`]), when it has one.
    pub fn tenant(&self) -> Option<&str> {
        self.cells[self.dataset.tenant_column()?].as_str()
    }

    /// Whether every column holds a value of its type and every required
    /// column a value; names an unknown column set first.
    pub fn check(&self) -> Result<(), SchemaError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        check_kinds(self.dataset, self.cells.iter().map(Cell::kind))
    }

    /// The row as a record, checked (for paths that still carry records).
    pub fn into_record(self) -> Result<Record, SchemaError> {
        self.check()?;
        let values = self.cells.into_iter().map(Cell::into_value).collect();
        Ok(Record::from_columns(self.dataset, values))
    }
}

impl ColumnBuilder {
    /// Appends one cell of a checked row (a cell of another type than
    /// the column's is appended as null; checked rows have none).
    pub(crate) fn append_cell(&mut self, v: &Cell<'_>) -> Result<(), ArrowError> {
        match (self, v) {
            (Self::Utf8(b), Cell::Str(s)) => b.append_value(s),
            (Self::Utf8(b), _) => b.append_null(),
            (Self::Dict(b), Cell::Str(s)) => {
                b.append(s.as_ref())?;
            }
            (Self::Dict(b), _) => b.append_null(),
            (Self::Int32(b), Cell::I32(x)) => b.append_value(*x),
            (Self::Int32(b), _) => b.append_null(),
            (Self::Int64(b), Cell::I64(x)) => b.append_value(*x),
            (Self::Int64(b), _) => b.append_null(),
            (Self::Float64(b), Cell::F64(x)) => b.append_value(*x),
            (Self::Float64(b), _) => b.append_null(),
            (Self::Bool(b), Cell::Bool(x)) => b.append_value(*x),
            (Self::Bool(b), _) => b.append_null(),
            (Self::Ts(b), Cell::Ts(x)) => b.append_value(*x),
            (Self::Ts(b), _) => b.append_null(),
        }
        Ok(())
    }
}

/// Builds a record by column name against the dataset's schema; `build`
/// checks every value's type and nullability. A [`Row`] that owns its
/// values, for the records still made one at a time (the host sampler,
/// Stripe's meter events, derived alerts).
///
/// ```
/// use tally_pipeline::{Dataset, RecordBuilder, Value};
/// let mut b = RecordBuilder::new(Dataset::UsageMessage);
/// b.set("event_id", "m-1")
///     .set("timestamp", Value::Ts(0))
///     .set("actor_id", "user:1")
///     .set("actor_type", "human")
///     .set("microdao_id", "dao:1")
///     .set("channel_id", "c")
///     .set("message_length", 5);
/// let record = b.build().unwrap();
/// assert_eq!(record.get("message_length"), Some(&Value::I32(5)));
/// ```
#[derive(Debug, Clone)]
pub struct RecordBuilder {
    row: Row<'static>,
}

impl RecordBuilder {
    /// Every column null until set.
    pub fn new(dataset: Dataset) -> Self {
        Self {
            row: Row::new(dataset),
        }
    }

    pub fn set(&mut self, column: &str, value: impl Into<Value>) -> &mut Self {
        self.row.set(column, Cell::from(value.into()));
        self
    }

    /// The record, if every column holds a value of its type and every
    /// required column a value.
    pub fn build(self) -> Result<Record, SchemaError> {
        self.row.into_record()
    }
}

/// Rows of one dataset appended into its column builders.
pub struct Rows {
    dataset: Dataset,
    builders: Vec<ColumnBuilder>,
    len: usize,
}

impl Rows {
    pub fn new(dataset: Dataset, capacity: usize) -> Self {
        Self {
            dataset,
            builders: dataset
                .columns()
                .iter()
                .map(|c| ColumnBuilder::new(c.ty, capacity))
                .collect(),
            len: 0,
        }
    }

    pub fn dataset(&self) -> Dataset {
        self.dataset
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks the row against the schema and appends it; a row that does
    /// not fit (or is of another dataset) is refused and nothing of it is
    /// appended.
    pub fn push(&mut self, row: &Row<'_>) -> Result<(), SchemaError> {
        self.append(
            row.dataset,
            row.check(),
            &row.cells,
            ColumnBuilder::append_cell,
        )
    }

    /// Checks a record against the schema and appends it (records that
    /// arrive already decoded: a Kafka topic of tally records, records a
    /// source builds one at a time); one that does not fit is refused and
    /// nothing of it is appended.
    pub fn push_record(&mut self, record: &Record) -> Result<(), SchemaError> {
        self.append(
            record.dataset,
            record.check(),
            &record.values,
            ColumnBuilder::append,
        )
    }

    /// Appends one row's values, one per column, once `checked` says they
    /// fit the schema of `of` (this rows' dataset).
    fn append<T>(
        &mut self,
        of: Dataset,
        checked: Result<(), SchemaError>,
        values: &[T],
        append: impl Fn(&mut ColumnBuilder, &T) -> Result<(), ArrowError>,
    ) -> Result<(), SchemaError> {
        if of != self.dataset {
            return Err(SchemaError::Arrow {
                dataset: self.dataset,
                reason: format!("a row of {of} cannot join its columns"),
            });
        }
        checked?;
        for (b, v) in self.builders.iter_mut().zip(values) {
            // Only a dictionary column can refuse a value, past 2^31
            // distinct strings: far beyond a request's bound.
            append(b, v).expect("a checked row appends to its columns");
        }
        self.len += 1;
        Ok(())
    }

    /// The columns of every row pushed, in order.
    pub fn finish(self) -> Columns {
        let arrays = self
            .builders
            .into_iter()
            .map(ColumnBuilder::finish)
            .collect();
        let batch = arrow::record_batch::RecordBatch::try_new_with_options(
            schema(self.dataset),
            arrays,
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(self.len)),
        )
        .expect("checked rows make a batch of their dataset");
        Columns::checked(self.dataset, batch)
    }
}

/// Rows of several datasets decoded for one request (a NATS batch, a Kafka
/// poll), each dataset's in its own columns.
pub struct RowsByDataset {
    rows: Vec<Option<Rows>>,
    /// Columns a decoder built whole (a `vm.metrics` batch).
    built: Vec<Columns>,
}

impl Default for RowsByDataset {
    fn default() -> Self {
        Self {
            rows: Dataset::ALL.iter().map(|_| None).collect(),
            built: Vec::new(),
        }
    }
}

impl RowsByDataset {
    /// The rows of `dataset`, made on first use.
    pub fn of(&mut self, dataset: Dataset) -> &mut Rows {
        self.rows[dataset.index()].get_or_insert_with(|| Rows::new(dataset, 64))
    }

    /// Checks the row and appends it to its dataset's rows (see
    /// [`Rows::push`]).
    pub fn push(&mut self, row: &Row<'_>) -> Result<(), SchemaError> {
        self.of(row.dataset).push(row)
    }

    /// Checks the record and appends it to its dataset's rows (see
    /// [`Rows::push_record`]).
    pub fn push_record(&mut self, record: &Record) -> Result<(), SchemaError> {
        self.of(record.dataset).push_record(record)
    }

    /// Columns built whole, kept as they are.
    pub fn push_columns(&mut self, columns: Columns) {
        self.built.push(columns);
    }

    /// Every dataset's columns, in the order of [`Dataset::ALL`], then the
    /// columns pushed whole, in their order; none empty.
    pub fn finish(self) -> Vec<Columns> {
        self.rows
            .into_iter()
            .flatten()
            .map(Rows::finish)
            .chain(self.built)
            .filter(|c| c.rows() > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::convert::tests::records_of_every_type;
    use crate::batch::records_to_batch;

    /// A record's values as cells of a row (strings borrowed).
    fn row_of(r: &Record) -> Row<'_> {
        let mut row = Row::new(r.dataset);
        for (c, v) in r.dataset.columns().iter().zip(&r.values) {
            let cell = match v {
                Value::Null => Cell::Null,
                Value::Str(s) => Cell::from(s.as_str()),
                Value::I32(x) => Cell::I32(*x),
                Value::I64(x) => Cell::I64(*x),
                Value::F64(x) => Cell::F64(*x),
                Value::Bool(x) => Cell::Bool(*x),
                Value::Ts(x) => Cell::Ts(*x),
            };
            row.set(c.name, cell);
        }
        row
    }

    /// Rows pushed into columns give the batch the records give, for every
    /// dataset and column type; a row that does not fit is refused whole
    /// and the rows around it are kept.
    #[test]
    fn rows_make_the_batch_records_make_and_a_bad_row_leaves_nothing() {
        for dataset in Dataset::ALL {
            let records = records_of_every_type(dataset, 4);
            let mut rows = Rows::new(dataset, 4);
            for r in &records {
                rows.push(&row_of(r)).unwrap();
                // A row with a required column left null, between the good ones.
                if let Some(required) = dataset.columns().iter().find(|c| !c.nullable) {
                    let mut bad = row_of(r);
                    bad.set(required.name, Cell::Null);
                    let err = rows.push(&bad).unwrap_err();
                    assert_eq!(
                        err,
                        SchemaError::Null {
                            dataset,
                            column: required.name
                        }
                    );
                }
            }
            let expected = records_to_batch(dataset, records.iter()).unwrap();
            let got = rows.finish();
            assert_eq!(got.rows(), records.len(), "{dataset}");
            assert_eq!(got.batch(), &expected, "{dataset}");
            for (r, back) in records.iter().zip(row_of_each(&records)) {
                assert_eq!(&back, r);
            }
        }
    }

    fn row_of_each(records: &[Record]) -> Vec<Record> {
        records
            .iter()
            .map(|r| row_of(r).into_record().unwrap())
            .collect()
    }

    /// The check names the column and the rule, as a record's check does.
    #[test]
    fn a_cell_of_another_type_or_an_unknown_column_is_named() {
        let mut row = Row::new(Dataset::HostUsage);
        row.set("hostname", "h")
            .set("timestamp", Cell::Ts(1))
            .set("cpu_percent", "12.5");
        assert_eq!(
            row.check().unwrap_err().to_string(),
            "host_usage.cpu_percent must be a float, got a string"
        );
        let mut rows = Rows::new(Dataset::HostUsage, 1);
        assert!(rows.push(&row).is_err());
        row.clear();
        row.set("no_such_column", 1i64);
        assert_eq!(
            row.check().unwrap_err(),
            SchemaError::UnknownColumn {
                dataset: Dataset::HostUsage,
                column: "no_such_column".into()
            }
        );
        assert!(rows.is_empty());
    }

    #[test]
    fn the_builder_places_values_by_name_and_checks_them() {
        let mut b = RecordBuilder::new(Dataset::VmMetrics);
        // Out of schema order on purpose.
        b.set("vm_id", "vm-1")
            .set("customer_id", "c")
            .set("timestamp", Value::Ts(5));
        for c in &Dataset::VmMetrics.columns()[3..] {
            b.set(c.name, 1i64);
        }
        let r = b.build().unwrap();
        assert_eq!(r.values[0], Value::Str("c".into()));
        assert_eq!(r.values[1], Value::Str("vm-1".into()));
        assert_eq!(r.get("timestamp"), Some(&Value::Ts(5)));

        let mut missing = RecordBuilder::new(Dataset::VmMetrics);
        missing.set("customer_id", "c");
        assert_eq!(
            missing.build().unwrap_err().to_string(),
            "vm_metrics.vm_id is required (NOT NULL), got null"
        );
        let mut typo = RecordBuilder::new(Dataset::VmMetrics);
        typo.set("vmid", "x");
        assert!(matches!(
            typo.build(),
            Err(SchemaError::UnknownColumn { column, .. }) if column == "vmid"
        ));
    }
}
