//! The Parquet sink as the [`SinkControl`] a Kafka source drives.

use std::sync::Arc;

use async_trait::async_trait;
use tally_pipeline::sink::{SinkControl, SinkControlError};
use tokio::sync::watch;

use super::flusher::Flusher;
use super::listing::SharedListing;

pub struct ParquetControl {
    pub flusher: Arc<Flusher>,
    pub listing: Arc<SharedListing>,
}

#[async_trait]
impl SinkControl for ParquetControl {
    fn flushed(&self) -> watch::Receiver<u64> {
        self.flusher.flushed()
    }

    async fn flush_now(&self) -> Result<u64, SinkControlError> {
        self.flusher.flush().await.map_err(|e| SinkControlError {
            action: "flushing to Parquet",
            source: Box::new(e),
        })?;
        let flushed = *self.flusher.flushed().borrow();
        Ok(flushed)
    }

    async fn refresh(&self) -> Result<(), SinkControlError> {
        self.listing
            .refresh()
            .await
            .map(|_| ())
            .map_err(|e| SinkControlError {
                action: "listing the shared prefix",
                source: Box::new(e),
            })
    }
}
