//! The shared prefix: files that other nodes write under the same data
//! location become visible to this node's queries and dedup.
//!
//! Writers of one Kafka consumer group share a prefix. Each registers its own
//! files when it commits them; a periodic listing adds everyone else's. The
//! keys of a foreign file written within the dedup window go into this
//! node's dedup index too, so a record that a dead writer had already put in
//! Parquet (but whose Kafka offset it had not committed yet) is a duplicate
//! when its partition's new owner reads it again.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tally_pipeline::dedup::Dedup;
use tally_pipeline::store::Store;
use tally_pipeline::Dataset;
use tokio::sync::watch;

use super::flusher::FlushTarget;
use super::layout::node_of;
use super::recovery::restore_recent_keys;
use super::SinkError;

/// What one listing found.
#[derive(Debug, Default, Clone, Copy)]
pub struct ListingReport {
    pub new_files: usize,
    pub dedup_keys_restored: usize,
}

pub struct SharedListing {
    target: FlushTarget,
    store: Arc<Store>,
    dedup: Arc<Dedup>,
    /// One listing at a time.
    running: tokio::sync::Mutex<()>,
}

impl SharedListing {
    pub fn new(target: FlushTarget, store: Arc<Store>, dedup: Arc<Dedup>) -> Self {
        Self {
            target,
            store,
            dedup,
            running: tokio::sync::Mutex::new(()),
        }
    }

    fn is_own(&self, path: &Path) -> bool {
        path.file_name()
            .and_then(|n| n.to_str())
            .and_then(node_of)
            .is_some_and(|n| n == self.target.node)
    }

    /// Lists the prefix once (blocking I/O): registers the files of other
    /// nodes not seen before and loads their recent keys into dedup.
    pub fn refresh_blocking(&self) -> Result<ListingReport, SinkError> {
        let mut report = ListingReport::default();
        for d in Dataset::ALL {
            let listed = self.target.destination.list(&self.target.data, d)?;
            let foreign: Vec<_> = listed
                .into_iter()
                .filter(|f| !self.is_own(&f.entry.path))
                .collect();
            let added: HashSet<_> = self
                .store
                .add_unknown_files(d, foreign.iter().map(|f| f.entry.clone()).collect())
                .into_iter()
                .map(|f| f.path)
                .collect();
            if added.is_empty() {
                continue;
            }
            let new: Vec<_> = foreign
                .into_iter()
                .filter(|f| added.contains(&f.entry.path))
                .collect();
            report.new_files += new.len();
            // Keys first would be safer for dedup, but a file that fails to
            // read must not stay invisible either: it is registered, and the
            // error is reported.
            report.dedup_keys_restored +=
                restore_recent_keys(&self.target.destination, d, &new, &self.dedup)?;
        }
        if report.new_files > 0 {
            tracing::debug!(
                files = report.new_files,
                keys = report.dedup_keys_restored,
                "registered files of other nodes"
            );
        }
        Ok(report)
    }

    /// [`SharedListing::refresh_blocking`] on a blocking thread.
    pub async fn refresh(self: &Arc<Self>) -> Result<ListingReport, SinkError> {
        let _one = self.running.lock().await;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.refresh_blocking())
            .await
            .expect("listing does not panic")
    }

    /// Lists every `interval` until `stop` turns true.
    pub async fn run(self: Arc<Self>, interval: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "listing the shared data prefix failed");
            }
        }
    }
}
