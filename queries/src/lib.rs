//! Reading tally with SQL: a DataFusion catalog where each dataset is one
//! table over its Parquet files and the live buffer, the output formats, and
//! the `/v1/sql` route.

pub mod agent_usage;
pub mod catalog;
pub mod format;
pub mod history;
pub mod http;
pub mod prices;
pub mod sql;
pub mod usage_api;

pub mod vm_billing;

pub use format::OutputFormat;
pub use sql::{QueryError, SqlEngine};
