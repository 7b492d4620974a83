//! What a source may ask of the sink that makes its records durable in
//! files: a source that commits its own offsets (Kafka) needs to know when
//! records are in Parquet, to flush before it gives partitions away, and
//! to see the files other nodes wrote before it takes partitions over.

use async_trait::async_trait;
use tokio::sync::watch;

/// A sink request that failed; `action` says which.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct SinkControlError {
    pub action: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

#[async_trait]
pub trait SinkControl: Send + Sync {
    /// The WAL sequence up to which every record is in Parquet.
    fn flushed(&self) -> watch::Receiver<u64>;

    /// Writes every buffered record now; returns the sequence flushed through.
    async fn flush_now(&self) -> Result<u64, SinkControlError>;

    /// Lists the shared data prefix for files other nodes wrote.
    async fn refresh(&self) -> Result<(), SinkControlError>;
}
