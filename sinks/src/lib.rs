//! Where records go after the WAL: Parquet files in the Hive layout
//! (`parquet/layout.rs`), written by the flusher, and recovered at start-up.

pub mod control_plane;
pub mod kafka_relay;
pub mod parquet;
#[cfg(test)]
mod test_rng;

pub use parquet::checkpoint::Checkpoint;
pub use parquet::compact::{CompactionPolicy, CompactionReport, Compactor};
pub use parquet::config::{ParquetArgs, ParquetSettings};
pub use parquet::destination::Destination;
pub use parquet::flusher::{FlushPolicy, FlushTarget, Flusher};
pub use parquet::listing::SharedListing;
pub use parquet::recovery::{open_files, recover, Recovered};
pub use parquet::SinkError;
