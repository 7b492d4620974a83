//! Arrow schemas of the datasets (`convert.rs`, with records to
//! `RecordBatch` and back), rows as checked columns ([`Columns`]), rows
//! decoded straight into columns ([`Rows`], `rows.rs`), and keys read from
//! columns (`keys.rs`).

mod columns;
pub(crate) mod convert;
pub mod keys;
mod rows;

pub use columns::Columns;
pub use convert::{batch_to_records, data_type, records_to_batch, schema, times, value_at};
pub use rows::{Cell, RecordBuilder, Row, Rows, RowsByDataset};
