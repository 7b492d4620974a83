//! The pipeline of tally: records and their Arrow schemas, admission into
//! bounded queues, exact dedup, the write-ahead log and the live buffer.
//!
//! It depends on nothing else of tally; sources feed it, sinks drain it and
//! queries read it.

pub mod batch;
pub mod dataset;
pub mod dedup;
pub mod ingest;
pub mod metrics;
pub mod quarantine;
pub mod record;
pub mod rollup;
pub mod store;
pub mod tap;
pub mod wal;

pub use dataset::{Column, ColumnType, Dataset};
pub use ingest::{now_ns, IngestError, IngestReport, Pipeline, Rejection, Relay};
pub use record::{Record, RecordBuilder, RowLayout, SchemaError, Value};
