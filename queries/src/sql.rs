//! The read-only SQL engine.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionContext};
use object_store::ObjectStore;
use tally_pipeline::quarantine::FileCheck;
use tally_pipeline::store::Store;
use tally_pipeline::Dataset;
use url::Url;

use crate::catalog::DatasetTable;

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

/// A DataFusion session with every dataset registered as a table.
#[derive(Clone)]
pub struct SqlEngine {
    ctx: Arc<SessionContext>,
    /// Run when a query fails while reading: takes unreadable files out.
    file_check: Option<Arc<dyn FileCheck>>,
}

/// The named queries in `queries/sql/`, registered as views.
const VM_USAGE_SQL: &str = include_str!("../sql/vm_usage.sql");

/// Rollup windows: view suffix and `date_trunc` unit.
pub const VM_USAGE_WINDOWS: [(&str, &str); 3] =
    [("hourly", "hour"), ("daily", "day"), ("monthly", "month")];

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
        for (suffix, unit) in VM_USAGE_WINDOWS {
            let body = VM_USAGE_SQL.replace("{window}", unit);
            ctx.sql(&format!("CREATE VIEW vm_usage_{suffix} AS {body}"))
                .await?
                .collect()
                .await?;
        }
        Ok(Self {
            ctx: Arc::new(ctx),
            file_check: None,
        })
    }

    /// Registers the stored rollup tables (`usage_llm_hourly`, …,
    /// `vm_usage_hours`, `vm_gap_spans`): the rolled-up hours only.
    pub async fn with_rollups(
        self,
        rollups: Arc<tally_pipeline::rollup::Rollups>,
    ) -> Result<Self, QueryError> {
        for d in Dataset::ALL {
            let Some((table, _)) = crate::history::rollup_of(d) else {
                continue;
            };
            let schema = crate::history::rollup_schema(d).await?;
            self.ctx.register_table(
                table,
                Arc::new(crate::catalog::RollupTable::new(
                    d,
                    table,
                    schema,
                    rollups.clone(),
                )),
            )?;
        }
        Ok(self)
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
        if sql.trim().is_empty() {
            return Err(QueryError::Invalid(
                "the request body must hold a SQL query".into(),
            ));
        }
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = self.ctx.sql_with_options(sql, options).await?;
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
                let df = self.ctx.sql_with_options(sql, options).await?;
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
