//! How the Parquet sink starts: the flusher (and the listing of a shared
//! prefix), then the jobs over what it stored: compaction with its rollups,
//! and the scrub. Each is a `Component`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tally_pipeline::component::{Component, Context, Handle};
use tally_pipeline::dedup::Dedup;
use tally_pipeline::metrics::Metrics;
use tally_pipeline::rollup::{RollupBuilder, Rollups};
use tally_pipeline::store::Store;
use tally_pipeline::wal::Wal;
use tally_pipeline::Dataset;

use super::compact::Compactor;
use super::scrub::Scrub;
use super::verify::FileDoctor;
use super::SinkError;

/// The running Parquet sink: the flusher, the listing of a shared prefix,
/// and the manifest of stored rollups the compactor fills.
pub struct ParquetSink {
    pub flusher: Arc<super::flusher::Flusher>,
    pub listing: Arc<super::listing::SharedListing>,
    pub rollups: Arc<Rollups>,
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

/// The Parquet sink: its settings and what it writes from.
pub struct Parquet {
    pub settings: super::config::ParquetSettings,
    pub parts: SinkParts,
}

#[async_trait]
impl Component for Parquet {
    const NAME: &'static str = "parquet sink";
    type Running = ParquetSink;
    type Error = Infallible;

    /// Starts the flusher (its task is awaited at shutdown, before the last
    /// flush) and, on a shared location, the listing.
    async fn start(self, ctx: &Context) -> Result<(Handle, ParquetSink), Infallible> {
        let (settings, parts) = (self.settings, self.parts);
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
        let sink = ParquetSink {
            flusher,
            listing,
            rollups: Arc::new(Rollups::new()),
        };
        Ok((handle, sink))
    }
}

/// Compaction of closed hours, with the rollups `builder` derives from
/// each; started after the stored rollups are registered again.
pub struct Compaction {
    pub settings: super::config::ParquetSettings,
    pub target: super::flusher::FlushTarget,
    pub store: Arc<Store>,
    pub rollups: Arc<Rollups>,
    pub builder: Arc<dyn RollupBuilder>,
    pub metrics: Arc<Metrics>,
    pub doctor: Arc<FileDoctor>,
    /// The compacted files recovery found.
    pub compacted: Vec<(Dataset, PathBuf)>,
}

#[async_trait]
impl Component for Compaction {
    const NAME: &'static str = "compaction";
    type Running = ();
    type Error = SinkError;

    async fn start(self, ctx: &Context) -> Result<(Handle, ()), SinkError> {
        let compactor = Arc::new(
            Compactor::new(
                self.target,
                self.store,
                self.rollups,
                self.builder,
                self.settings.compaction.clone(),
                self.metrics,
            )
            .with_file_check(self.doctor),
        );
        let (c, compacted) = (compactor.clone(), self.compacted);
        let n = tokio::task::spawn_blocking(move || c.recover(&compacted))
            .await
            .map_err(|e| SinkError::Rollup(format!("loading the stored rollups: {e}")))??;
        tracing::info!(hours = n, "stored rollups registered");
        let task = tokio::spawn(compactor.run(ctx.stop.clone()));
        Ok((Handle::Background(task), ()))
    }
}

/// The scrub: every file read again each interval, at a set pace.
pub struct Scrubbing {
    pub settings: super::config::ParquetSettings,
    pub doctor: Arc<FileDoctor>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl Component for Scrubbing {
    const NAME: &'static str = "scrub";
    type Running = ();
    type Error = Infallible;

    async fn start(self, ctx: &Context) -> Result<(Handle, ()), Infallible> {
        let scrub = Arc::new(Scrub::new(self.doctor, self.metrics, self.settings.scrub));
        let task = tokio::spawn(scrub.run(ctx.stop.clone()));
        Ok((Handle::Background(task), ()))
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
