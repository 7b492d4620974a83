//! The shared prefix: files that other nodes write under the same data
//! location become visible to this node's queries and dedup.
//!
//! Writers of one Kafka consumer group share a prefix. Each registers its own
//! files when it commits them; a periodic listing adds everyone else's. The
//! keys of a foreign file written within the dedup window go into this
//! node's dedup index too, so a record that a dead writer had already put in
//! Parquet (but whose Kafka offset it had not committed yet) is a duplicate
//! when its partition's new owner reads it again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tally_pipeline::dedup::Dedup;
use tally_pipeline::store::Store;
use tally_pipeline::Dataset;
use tokio::sync::watch;

use super::flusher::FlushTarget;
use super::layout::node_of;
use super::recovery::{admit_files, restore_recent_keys};
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
            let new = self.store.unknown_files(d, foreign);
            if new.is_empty() {
                continue;
            }
            // A file that cannot be read goes to quarantine; the others are
            // registered and their keys remembered.
            let (good, _bad) = admit_files(&self.target, d, new);
            // Another node's compaction replaces files this node may have
            // registered: they leave the manifest in the same step as the
            // new file arrives (the compacting node deletes them).
            let replaced: Vec<_> = super::compact::superseded(&good).into_iter().collect();
            let good: Vec<_> = good
                .into_iter()
                .filter(|f| !replaced.contains(&f.entry.path))
                .collect();
            let (keys, unreadable) = restore_recent_keys(&self.target, d, &good, &self.dedup);
            let entries: Vec<_> = good
                .iter()
                .filter(|f| !unreadable.contains(&f.entry.path))
                .map(|f| f.entry.clone())
                .collect();
            report.new_files += entries.len();
            self.store.replace_files(d, &replaced, entries);
            report.dedup_keys_restored += keys;
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::parquet::writer::write_partition;
    use tally_pipeline::metrics::Metrics;
    use tally_pipeline::{Record, RecordBuilder, Value};

    /// A `vm_metrics` row with every counter at zero.
    pub(crate) fn vm_sample(customer: &str, vm: &str, ts: i64) -> Record {
        let mut r = RecordBuilder::new(Dataset::VmMetrics);
        r.set("customer_id", customer)
            .set("vm_id", vm)
            .set("timestamp", Value::Ts(ts));
        for c in &Dataset::VmMetrics.columns()[3..] {
            r.set(c.name, 0i64);
        }
        r.build().unwrap()
    }

    fn sample(vm: &str, ts: i64) -> Record {
        vm_sample("cust", vm, ts)
    }

    /// Writes one committed file of `node` into the shared directory.
    fn commit_file(shared: &Path, node: &str, records: &[Record]) {
        let batch =
            tally_pipeline::batch::records_to_batch(Dataset::VmMetrics, records.iter()).unwrap();
        let f = write_partition(
            shared,
            node,
            Dataset::VmMetrics,
            ("2026-11-20", 10),
            (1, 1),
            &[batch],
        )
        .unwrap();
        std::fs::rename(shared.join(&f.tmp), shared.join(&f.final_path)).unwrap();
    }

    #[test]
    fn a_listing_registers_other_nodes_files_once_and_remembers_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path();
        commit_file(shared, "writer-1", &[sample("vm-1", 1), sample("vm-1", 2)]);
        commit_file(shared, "writer-2", &[sample("vm-2", 1)]);

        let store = Arc::new(Store::new(1000));
        let dedup = Arc::new(Dedup::new(86_400, 1_000_000, Arc::new(Metrics::default())));
        let listing = SharedListing::new(
            FlushTarget {
                data: shared.to_path_buf(),
                state: shared.to_path_buf(),
                destination: Arc::new(crate::parquet::destination::Destination::Local),
                node: "writer-2".into(),
                quarantine: None,
            },
            store.clone(),
            dedup.clone(),
        );
        let report = listing.refresh_blocking().unwrap();
        // writer-2's own file is registered by its flusher, not by a listing.
        assert_eq!(report.new_files, 1);
        assert_eq!(report.dedup_keys_restored, 2);
        let files = store.snapshot(Dataset::VmMetrics).files;
        assert_eq!(files.len(), 1);
        assert!(files[0]
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("writer-1-"));
        // A record writer-1 stored is a duplicate here now.
        let key = sample("vm-1", 2).key().unwrap();
        assert!(!dedup.insert(Dataset::VmMetrics, &key, 0));
        let fresh = sample("vm-1", 3).key().unwrap();
        assert!(dedup.insert(Dataset::VmMetrics, &fresh, 0));

        // Listing again adds nothing; a new foreign file is picked up.
        assert_eq!(listing.refresh_blocking().unwrap().new_files, 0);
        commit_file(shared, "writer-3", &[sample("vm-3", 1)]);
        assert_eq!(listing.refresh_blocking().unwrap().new_files, 1);
        assert_eq!(store.snapshot(Dataset::VmMetrics).files.len(), 2);
    }
}
