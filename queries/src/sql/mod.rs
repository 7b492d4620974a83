//! The read-only SQL engine.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionContext};
use object_store::ObjectStore;
use tally_pipeline::store::FileCheck;
use tally_pipeline::store::Store;
use tally_pipeline::Dataset;
use url::Url;

pub mod catalog;
pub mod format;
pub mod json;
pub mod meter_table;
pub mod route;

use catalog::DatasetTable;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The statement is not a read-only query, or does not plan.
    #[error("{0}")]
    Invalid(String),
    /// It planned but failed while running.
    #[error("{0}")]
    Execution(String),
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => QueryError::Invalid(e.to_string()),
            _ => QueryError::Execution(e.to_string()),
        }
    }
}

/// The `otel_metric_deltas` view: OTLP metric streams as deltas, cumulative
/// ones with their resets.
pub const OTEL_METRIC_DELTAS: &str = include_str!("otel_metric_deltas.sql");

/// A DataFusion session with every dataset registered as a table.
#[derive(Clone)]
pub struct SqlEngine {
    ctx: Arc<SessionContext>,
    /// Run when a query fails while reading: takes unreadable files out.
    file_check: Option<Arc<dyn FileCheck>>,
}

impl SqlEngine {
    /// A session with every dataset as a table and the named queries as views.
    pub async fn new(store: Arc<Store>) -> Result<Self, QueryError> {
        Self::with_object_store(store, None).await
    }

    /// Like [`SqlEngine::new`], for files on object storage: `object` is the
    /// store and its root URL (`s3://bucket`), which file URLs start with.
    pub async fn with_object_store(
        store: Arc<Store>,
        object: Option<(Url, Arc<dyn ObjectStore>)>,
    ) -> Result<Self, QueryError> {
        let ctx = SessionContext::new();
        if let Some((url, object_store)) = object {
            ctx.register_object_store(&url, object_store);
        }
        for d in Dataset::ALL {
            ctx.register_table(d.name(), Arc::new(DatasetTable::new(d, store.clone())))?;
        }
        for udf in json::json_udfs() {
            ctx.register_udf(udf);
        }
        let engine = Self {
            ctx: Arc::new(ctx),
            file_check: None,
        };
        engine
            .create_view("otel_metric_deltas", OTEL_METRIC_DELTAS)
            .await?;
        Ok(engine)
    }

    /// Adds (or replaces) a table under `name`.
    pub fn register_table(
        &self,
        name: &str,
        table: Arc<dyn datafusion::catalog::TableProvider>,
    ) -> Result<(), QueryError> {
        self.ctx.deregister_table(name)?;
        self.ctx.register_table(name, table)?;
        Ok(())
    }

    /// Adds a view: `name` is the query `sql`.
    pub async fn create_view(&self, name: &str, sql: &str) -> Result<(), QueryError> {
        self.ctx
            .sql(&format!("CREATE OR REPLACE VIEW {name} AS {sql}"))
            .await?
            .collect()
            .await?;
        Ok(())
    }

    /// Adds `meter('slug')`: each meter's events as a table
    /// ([`meter_table`]), the meters found by `meters`.
    pub async fn register_meters(
        &self,
        meters: meter_table::MeterLookup,
    ) -> Result<(), QueryError> {
        let events = self.ctx.table_provider(Dataset::Events.name()).await?;
        self.ctx.register_udtf(
            "meter",
            Arc::new(meter_table::MeterFunction {
                events,
                meters,
                json: json::json_udfs(),
            }),
        );
        Ok(())
    }

    /// Adds a SQL function.
    pub fn register_udf(&self, udf: datafusion::logical_expr::ScalarUDF) {
        self.ctx.register_udf(udf);
    }

    /// A query that fails while running makes `check` read the registered
    /// files; when it quarantines any, the query runs once more without
    /// them, so one bad file never fails a query over the others.
    pub fn with_file_check(mut self, check: Arc<dyn FileCheck>) -> Self {
        self.file_check = Some(check);
        self
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Runs one read-only statement: DDL, DML and other statements are refused.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        self.query_with_params(sql, Vec::new()).await
    }

    /// [`SqlEngine::query`] with `$1`, `$2`, … bound to `params`: values
    /// from a request never become SQL text.
    pub async fn query_with_params(
        &self,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        if sql.trim().is_empty() {
            return Err(QueryError::Invalid(
                "the request body must hold a SQL query".into(),
            ));
        }
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let plan = |ctx: Arc<SessionContext>, params: Vec<ScalarValue>| async move {
            let df = ctx.sql_with_options(sql, options).await?;
            if params.is_empty() {
                Ok::<_, DataFusionError>(df)
            } else {
                df.with_param_values(ParamValues::List(
                    params.into_iter().map(Into::into).collect(),
                ))
            }
        };
        let df = plan(self.ctx.clone(), params.clone()).await?;
        match df.collect().await {
            Ok(batches) => Ok(batches),
            Err(e) if !reads_files(&e) => Err(e.into()),
            Err(e) => {
                let Some(check) = self.file_check.clone() else {
                    return Err(e.into());
                };
                let moved = tokio::task::spawn_blocking(move || check.quarantine_unreadable())
                    .await
                    .unwrap_or(0);
                if moved == 0 {
                    return Err(e.into());
                }
                tracing::error!(files = moved, error = %e, "a query hit unreadable files; they are in quarantine and the query ran again without them");
                // Planned again: the scan takes a new snapshot of the files.
                let df = plan(self.ctx.clone(), params).await?;
                Ok(df.collect().await?)
            }
        }
    }
}

/// Whether an error can come from reading a data file (decoding Parquet,
/// I/O, the object store), rather than from the query itself (a division by
/// zero, a bad cast): only those make the engine check the files.
fn reads_files(e: &DataFusionError) -> bool {
    use arrow::error::ArrowError;
    match e {
        DataFusionError::ParquetError(_)
        | DataFusionError::IoError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::External(_) => true,
        DataFusionError::ArrowError(a, _) => matches!(
            a.as_ref(),
            ArrowError::ParquetError(_) | ArrowError::IoError(..) | ArrowError::ExternalError(_)
        ),
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            reads_files(inner)
        }
        DataFusionError::Shared(inner) => reads_files(inner),
        DataFusionError::Collection(all) => all.iter().any(reads_files),
        _ => false,
    }
}

#[cfg(test)]
mod file_error_tests {
    use super::*;
    use arrow::error::ArrowError;
    use datafusion::parquet::errors::ParquetError;

    #[test]
    fn only_errors_of_reading_files_make_the_engine_check_them() {
        let parquet = DataFusionError::ParquetError(Box::new(ParquetError::EOF("short".into())));
        assert!(reads_files(&parquet));
        assert!(reads_files(&DataFusionError::Context(
            "scanning".into(),
            Box::new(parquet)
        )));
        assert!(reads_files(&DataFusionError::IoError(
            std::io::Error::other("bad sector")
        )));
        assert!(!reads_files(&DataFusionError::Execution(
            "Divide by zero error".into()
        )));
        assert!(!reads_files(&DataFusionError::ArrowError(
            Box::new(ArrowError::CastError("'x' is not an integer".into())),
            None
        )));
    }
}

#[cfg(test)]
mod otel_metric_deltas_tests;
