//! The running Parquet sink and how it starts.

use std::sync::Arc;

use tally_pipeline::component::{Context, Handle};
use tally_pipeline::dedup::Dedup;
use tally_pipeline::metrics::Metrics;
use tally_pipeline::rollup::Rollups;
use tally_pipeline::store::Store;
use tally_pipeline::wal::Wal;

/// The running Parquet sink: the flusher, the listing of a shared prefix,
/// and the manifest of stored rollups the compactor fills.
pub struct ParquetSink {
    pub flusher: Arc<super::flusher::Flusher>,
    pub listing: Arc<super::listing::SharedListing>,
    pub rollups: Arc<Rollups>,
    /// The flusher's task: awaited at shutdown before the last flush.
    pub handle: Handle,
}

/// What the Parquet sink is started with besides its settings.
pub struct SinkParts {
    pub target: super::flusher::FlushTarget,
    pub store: Arc<Store>,
    pub wal: Wal,
    pub dedup: Arc<Dedup>,
    pub metrics: Arc<Metrics>,
    pub checkpoint: super::checkpoint::Checkpoint,
    /// Other nodes write under the data location too: list it.
    pub shared: bool,
}

/// Starts the flusher and, on a shared location, the listing.
pub fn start(
    settings: &super::config::ParquetSettings,
    parts: SinkParts,
    ctx: &Context,
) -> ParquetSink {
    let flusher = Arc::new(super::flusher::Flusher::new(
        parts.target.clone(),
        parts.store.clone(),
        parts.wal,
        parts.metrics,
        settings.flush.clone(),
        parts.checkpoint,
    ));
    let handle = Handle::Task(tokio::spawn(flusher.clone().run(ctx.stop.clone())));
    let listing = Arc::new(super::listing::SharedListing::new(
        parts.target,
        parts.store,
        parts.dedup,
    ));
    if parts.shared {
        tokio::spawn(
            listing
                .clone()
                .run(settings.list_interval, ctx.stop.clone()),
        );
    }
    ParquetSink {
        flusher,
        listing,
        rollups: Arc::new(Rollups::new()),
        handle,
    }
}

impl ParquetSink {
    /// What a Kafka source may ask of this sink.
    pub fn control(&self) -> Arc<super::control::ParquetControl> {
        Arc::new(super::control::ParquetControl {
            flusher: self.flusher.clone(),
            listing: self.listing.clone(),
        })
    }
}
