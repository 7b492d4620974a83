//! The pipeline of tally: records and their Arrow schemas, admission into
//! bounded queues, exact dedup, the write-ahead log and the live buffer.
//!
//! It depends on nothing else of tally; sources feed it, sinks drain it and
//! queries read it.

pub mod access;
pub mod background;
pub mod batch;
pub mod checksum;
pub mod clock;
pub mod component;
pub mod config;
pub mod dataset;
pub mod dedup;
pub mod duration;
pub mod host;
pub mod http_reply;
pub mod metrics;
pub mod pipeline;
pub mod quarantine;
pub mod record;
pub mod rollup;
pub mod rules;
pub mod sink;
pub mod size;
pub mod state_file;
pub mod store;
pub mod tap;
pub mod waiting;
pub mod wal;

pub use batch::RecordBuilder;
pub use clock::now_ns;
pub use dataset::{Column, ColumnType, Dataset};
pub use pipeline::{IngestError, IngestReport, Pipeline, Rejection, Relay, RelayError};
pub use record::{Record, RowLayout, SchemaError, Value};
