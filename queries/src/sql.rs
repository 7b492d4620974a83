//! The read-only SQL engine.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionContext};
use tally_pipeline::store::Store;
use tally_pipeline::Dataset;

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
}

impl SqlEngine {
    pub fn new(store: Arc<Store>) -> Self {
        let ctx = SessionContext::new();
        for d in Dataset::ALL {
            ctx.register_table(d.name(), Arc::new(DatasetTable::new(d, store.clone())))
                .expect("dataset names are unique");
        }
        Self { ctx: Arc::new(ctx) }
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
        Ok(df.collect().await?)
    }
}
