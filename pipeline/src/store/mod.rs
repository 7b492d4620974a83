//! What a query sees of each dataset: the file manifest (the Parquet files
//! committed so far) and the live buffer (chunks of records durable in the
//! WAL but not yet in a file), and the admission bound on what is queued.
//!
//! All three change under one lock per dataset, so a query's snapshot holds
//! every acknowledged record exactly once, flushed or not. The operations
//! are split by what they touch: `admission.rs`, `buffer.rs`,
//! `manifest.rs`, `prepared.rs`.

mod admission;
mod buffer;
mod damage;
mod file;
mod manifest;
mod prepared;

pub use file::{FileCheck, FileEntry};
pub use prepared::Prepared;

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use arrow::record_batch::RecordBatch;

use crate::dataset::Dataset;

/// Rows of one dataset from one WAL entry, as Arrow columns of the
/// dataset's schema: what SQL over the open hour reads as it is, and what
/// the flush gathers into files.
#[derive(Debug)]
pub struct Chunk {
    pub seq: u64,
    pub batch: RecordBatch,
    /// Bytes the batch holds (its buffers).
    pub bytes: usize,
    /// Earliest and latest record time (ns): the hours a chunk touches.
    pub min_ts: i64,
    pub max_ts: i64,
}

impl Chunk {
    pub fn rows(&self) -> usize {
        self.batch.num_rows()
    }
}

#[derive(Debug, Default)]
struct DatasetState {
    files: Vec<FileEntry>,
    /// Paths of `files`, so a listing adds each file once.
    paths: HashSet<PathBuf>,
    /// Files a compaction replaced, and when: a listing that still finds
    /// them on disk (they are deleted a little later) must not add them back.
    retired: std::collections::HashMap<PathBuf, Instant>,
    chunks: VecDeque<Arc<Chunk>>,
    /// Rows in `chunks`.
    buffered_rows: usize,
    buffered_bytes: usize,
    /// Rows admitted (reserved) or buffered: what the row bound applies to.
    queued_rows: usize,
    oldest: Option<Instant>,
}

/// What a query reads of one dataset.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub files: Vec<FileEntry>,
    pub chunks: Vec<Arc<Chunk>>,
}

/// Buffer sizes of one dataset, for the flush policy and `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BufferStats {
    pub buffered_rows: usize,
    pub buffered_bytes: usize,
    pub queued_rows: usize,
    pub oldest: Option<Instant>,
    pub files: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("{dataset} queue is full: {queued} rows waiting for the Parquet writer (limit {limit})")]
pub struct QueueFull {
    pub dataset: Dataset,
    pub queued: usize,
    pub limit: usize,
}

#[derive(Debug)]
pub struct Store {
    datasets: Vec<Mutex<DatasetState>>,
    /// Highest WAL sequence whose records are all in the buffer.
    applied_seq: AtomicU64,
    max_queued_rows: usize,
    /// What reads call to check a file's checksum the first time they use
    /// it (see `damage.rs`).
    file_check: std::sync::OnceLock<Arc<dyn FileCheck>>,
    /// Hours whose raw rows were lost to damage, by dataset.
    lost: parking_lot::RwLock<std::collections::BTreeSet<(Dataset, i64)>>,
}

impl Store {
    pub fn new(max_queued_rows: usize) -> Self {
        Self {
            datasets: Dataset::ALL
                .iter()
                .map(|_| Mutex::new(DatasetState::default()))
                .collect(),
            applied_seq: AtomicU64::new(0),
            max_queued_rows,
            file_check: std::sync::OnceLock::new(),
            lost: Default::default(),
        }
    }

    fn state(&self, d: Dataset) -> &Mutex<DatasetState> {
        &self.datasets[d.index()]
    }

    pub fn snapshot(&self, dataset: Dataset) -> Snapshot {
        let s = self.state(dataset).lock();
        Snapshot {
            files: s.files.clone(),
            chunks: s.chunks.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Columns;
    use crate::record::{Record, Value};

    fn rejected(ns: &[i64]) -> Vec<Columns> {
        Columns::of_records(ns.iter().map(|&n| rejected_record(n)).collect())
    }

    fn rejected_record(n: i64) -> Record {
        Record::from_columns(
            Dataset::Rejected,
            vec![
                Value::Ts(n),
                Value::Str("test".into()),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Str("r".into()),
                Value::Str("p".into()),
            ],
        )
    }

    #[test]
    fn reserve_is_bounded_and_flush_frees_room() {
        let store = Store::new(3);
        store.reserve(Dataset::Rejected, 2).unwrap();
        let err = store.reserve(Dataset::Rejected, 2).unwrap_err();
        assert_eq!((err.queued, err.limit), (2, 3));
        store.apply(1, rejected(&[1, 2]), true);
        assert_eq!(store.stats(Dataset::Rejected).buffered_rows, 2);
        let _ = store.commit_files(Dataset::Rejected, 1, vec![]);
        assert_eq!(store.stats(Dataset::Rejected).queued_rows, 0);
        store.reserve(Dataset::Rejected, 3).unwrap();
    }

    #[test]
    fn queue_fill_is_the_fullest_dataset_over_the_bound() {
        let store = Store::new(4);
        assert_eq!(store.queue_fill(), 0.0);
        store.reserve(Dataset::Rejected, 1).unwrap();
        store.reserve(Dataset::VmMetrics, 3).unwrap();
        assert_eq!(store.queue_fill(), 3.0 / 4.0);
        store.release(Dataset::VmMetrics, 3);
        store.release(Dataset::Rejected, 1);
        assert_eq!(store.queue_fill(), 0.0);
    }

    #[test]
    fn a_file_is_registered_once_however_often_it_is_listed() {
        let store = Store::new(100);
        let file = |p: &str| FileEntry {
            path: p.into(),
            rows: 1,
            bytes: 1,
        };
        let _ = store.commit_files(Dataset::Rejected, 0, vec![file("a")]);
        let added = store.add_unknown_files(Dataset::Rejected, vec![file("a"), file("b")]);
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].path, PathBuf::from("b"));
        assert!(store
            .add_unknown_files(Dataset::Rejected, vec![file("b")])
            .is_empty());
        assert_eq!(store.snapshot(Dataset::Rejected).files.len(), 2);
    }

    #[test]
    fn commit_drops_only_chunks_through_the_sequence() {
        let store = Store::new(100);
        store.apply(1, rejected(&[1]), false);
        store.apply(2, rejected(&[2]), false);
        assert_eq!(store.applied_seq(), 2);
        assert_eq!(store.chunks_through(Dataset::Rejected, 1).len(), 1);
        let taken = store.commit_files(
            Dataset::Rejected,
            1,
            vec![FileEntry {
                path: "x".into(),
                rows: 1,
                bytes: 1,
            }],
        );
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].seq, 1);
        let snap = store.snapshot(Dataset::Rejected);
        assert_eq!(snap.files.len(), 1);
        assert_eq!(snap.chunks.len(), 1);
        assert_eq!(snap.chunks[0].seq, 2);
    }
}
