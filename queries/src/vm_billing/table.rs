//! `vm_usage_hourly`, `vm_usage_daily` and `vm_usage_monthly` as SQL
//! tables: the bill of every VM over all history, by the same code as
//! `/v1/billing/vm-usage` (stored hours where rolled up, raw samples for the
//! others), one row per VM and window.

use std::fmt;
use std::sync::Arc;

use arrow::array::TimestampNanosecondArray;
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::{MemTable, TableType};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use super::{bill, Window, WindowRow};
use crate::history::History;

/// The SQL name of each window's table.
pub const TABLES: [(&str, Window); 3] = [
    ("vm_usage_hourly", Window::Hour),
    ("vm_usage_daily", Window::Day),
    ("vm_usage_monthly", Window::Month),
];

/// The columns of the tables: the fields of `/v1/billing/vm-usage`.
pub fn schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    let f = |n: &str| Field::new(n, DataType::Float64, false);
    let i = |n: &str| Field::new(n, DataType::Int64, false);
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("vm_id", DataType::Utf8, false),
        Field::new("window_start", ts(), false),
        Field::new("window_end", ts(), false),
        f("cpu_seconds"),
        f("memory_gib_hours"),
        i("disk_read_bytes"),
        i("disk_write_bytes"),
        i("network_rx_bytes"),
        i("network_tx_bytes"),
        f("observed_seconds"),
        i("samples"),
        i("gaps"),
    ]))
}

/// Bill rows as a batch of [`schema`].
pub fn to_batch(rows: &[WindowRow]) -> Result<RecordBatch> {
    let floats = |f: &dyn Fn(&WindowRow) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(f)))
    };
    let ints = |f: &dyn Fn(&WindowRow) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(rows.iter().map(f)))
    };
    let times = |f: &dyn Fn(&WindowRow) -> i64| -> ArrayRef {
        Arc::new(
            TimestampNanosecondArray::from_iter_values(rows.iter().map(f)).with_timezone("UTC"),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.customer_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.vm_id.as_str()),
        )),
        times(&|r| r.start),
        times(&|r| r.end),
        floats(&|r| r.usage.cpu_seconds()),
        floats(&|r| r.usage.memory_gib_hours()),
        ints(&|r| r.usage.disk_read),
        ints(&|r| r.usage.disk_write),
        ints(&|r| r.usage.rx),
        ints(&|r| r.usage.tx),
        floats(&|r| r.usage.observed_seconds()),
        ints(&|r| r.usage.samples),
        ints(&|r| r.usage.gaps),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// Registers the server's `vm_usage_hourly`, `vm_usage_daily` and
/// `vm_usage_monthly`: the bills, from stored hours and raw samples.
pub fn register(
    engine: &crate::sql::SqlEngine,
    history: &History,
) -> Result<(), crate::sql::QueryError> {
    for (name, window) in TABLES {
        engine.register_table(name, Arc::new(BillTable::new(history.clone(), window)))?;
    }
    Ok(())
}

/// One window's bill table.
pub struct BillTable {
    history: History,
    window: Window,
}

impl BillTable {
    pub fn new(history: History, window: Window) -> Self {
        Self { history, window }
    }
}

impl fmt::Debug for BillTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BillTable")
            .field("window", &self.window)
            .finish()
    }
}

/// `customer_id = '…'` or `vm_id = '…'`: the column and the value.
fn equality(e: &Expr) -> Option<(&str, &str)> {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Eq,
        right,
    }) = e
    else {
        return None;
    };
    let (Expr::Column(c), Expr::Literal(v, _)) = (left.as_ref(), right.as_ref()) else {
        return None;
    };
    let value = match v {
        ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => s.as_str(),
        _ => return None,
    };
    matches!(c.name.as_str(), "customer_id" | "vm_id").then_some((c.name.as_str(), value))
}

#[async_trait]
impl TableProvider for BillTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // A customer or VM bills only its own hours; the filter still runs.
        Ok(filters
            .iter()
            .map(|f| match equality(f) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (mut customer, mut vm) = (None, None);
        for (column, value) in filters.iter().filter_map(equality) {
            let slot = if column == "customer_id" {
                &mut customer
            } else {
                &mut vm
            };
            *slot = Some(value.to_string());
        }
        let keep = move |c: &str, v: &str| {
            customer.as_deref().is_none_or(|x| x == c) && vm.as_deref().is_none_or(|x| x == v)
        };
        let rows = bill(
            &self.history,
            self.window,
            i64::MIN / 2,
            i64::MAX / 2,
            &keep,
        )
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let batch = to_batch(&rows)?;
        MemTable::try_new(schema(), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}
