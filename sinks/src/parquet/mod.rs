//! The Parquet sink.
//!
//! A flush round writes every buffered record up to a WAL sequence `S` into
//! temporary files, records `S` and the pending renames in the checkpoint,
//! renames, and only then drops the records from the live buffer and lets the
//! WAL delete what it holds up to `S`. A crash at any point either replays
//! from the WAL (before the checkpoint) or completes the renames (after it).

pub mod checkpoint;
pub mod compact;
pub mod config;
pub mod control;
pub mod destination;
pub mod flusher;
pub mod layout;
pub mod listing;
pub mod recovery;
pub mod verify;
pub mod writer;

use std::io;
use std::path::{Path, PathBuf};
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
    pub flusher: Arc<flusher::Flusher>,
    pub listing: Arc<listing::SharedListing>,
    pub rollups: Arc<Rollups>,
    /// The flusher's task: awaited at shutdown before the last flush.
    pub handle: Handle,
}

/// What the Parquet sink is started with besides its settings.
pub struct SinkParts {
    pub target: flusher::FlushTarget,
    pub store: Arc<Store>,
    pub wal: Wal,
    pub dedup: Arc<Dedup>,
    pub metrics: Arc<Metrics>,
    pub checkpoint: checkpoint::Checkpoint,
    /// Other nodes write under the data location too: list it.
    pub shared: bool,
}

/// Starts the flusher and, on a shared location, the listing.
pub fn start(settings: &config::ParquetSettings, parts: SinkParts, ctx: &Context) -> ParquetSink {
    let flusher = Arc::new(flusher::Flusher::new(
        parts.target.clone(),
        parts.store.clone(),
        parts.wal,
        parts.metrics,
        settings.flush.clone(),
        parts.checkpoint,
    ));
    let handle = Handle::Task(tokio::spawn(flusher.clone().run(ctx.stop.clone())));
    let listing = Arc::new(listing::SharedListing::new(
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
    pub fn control(&self) -> Arc<control::ParquetControl> {
        Arc::new(control::ParquetControl {
            flusher: self.flusher.clone(),
            listing: self.listing.clone(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("I/O error at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("Parquet error in {path}: {source}")]
    Parquet {
        path: PathBuf,
        source: ::parquet::errors::ParquetError,
    },
    #[error("Arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("checkpoint {path} is unreadable: {source}")]
    Checkpoint {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("WAL: {0}")]
    Wal(#[from] tally_pipeline::wal::WalError),
    #[error("the Parquet writer stopped after a failed round: {0}")]
    Halted(String),
    #[error("data location: {0}")]
    Location(String),
    #[error("object store: {0}")]
    Object(String),
    #[error("rollup: {0}")]
    Rollup(String),
    #[error("checkpoint lists {tmp} → {final_path}, but neither file exists")]
    MissingPending { tmp: PathBuf, final_path: PathBuf },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.to_path_buf(),
        source,
    }
}
