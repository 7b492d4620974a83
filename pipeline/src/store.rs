//! The live buffer and the file manifest: what a query sees.
//!
//! Each dataset holds the Parquet files committed so far and the chunks of
//! records that are durable in the WAL but not yet in a file. Both change
//! under one lock, so a query's snapshot holds every acknowledged record
//! exactly once, whether it has been flushed or not.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::dataset::Dataset;
use crate::record::Record;
use crate::rollup::HOUR_NS;

/// Records of one dataset from one WAL entry.
#[derive(Debug)]
pub struct Chunk {
    pub seq: u64,
    pub records: Vec<Record>,
    pub bytes: usize,
    /// Earliest and latest record time (ns): the hours a chunk touches.
    pub min_ts: i64,
    pub max_ts: i64,
}

/// A committed Parquet file.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// A local path, or an object URL (`s3://bucket/key`) when the data
    /// lives on object storage.
    pub path: PathBuf,
    pub rows: u64,
    pub bytes: u64,
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
        }
    }

    fn state(&self, d: Dataset) -> &Mutex<DatasetState> {
        &self.datasets[d.index()]
    }

    /// Admits `rows` more rows of `dataset`, or refuses when the bound is hit.
    pub fn reserve(&self, dataset: Dataset, rows: usize) -> Result<(), QueueFull> {
        let mut s = self.state(dataset).lock();
        if s.queued_rows + rows > self.max_queued_rows && rows > 0 {
            return Err(QueueFull {
                dataset,
                queued: s.queued_rows,
                limit: self.max_queued_rows,
            });
        }
        s.queued_rows += rows;
        Ok(())
    }

    /// Gives back rows admitted by [`Store::reserve`] that will not be buffered.
    pub fn release(&self, dataset: Dataset, rows: usize) {
        let mut s = self.state(dataset).lock();
        s.queued_rows = s.queued_rows.saturating_sub(rows);
    }

    /// Adds the records of WAL entry `seq` to the buffer. Called in sequence
    /// order by the WAL writer after the fsync, and by replay at start-up.
    /// `reserved` says whether the rows were admitted through [`Store::reserve`].
    pub fn apply(&self, seq: u64, records: Vec<Record>, reserved: bool) {
        let mut by_dataset: Vec<Vec<Record>> = Dataset::ALL.iter().map(|_| Vec::new()).collect();
        for r in records {
            by_dataset[r.dataset.index()].push(r);
        }
        let now = Instant::now();
        for (i, records) in by_dataset.into_iter().enumerate() {
            if records.is_empty() {
                continue;
            }
            let bytes = records.iter().map(Record::approx_size).sum();
            let rows = records.len();
            let mut s = self.datasets[i].lock();
            s.buffered_rows += rows;
            s.buffered_bytes += bytes;
            if !reserved {
                s.queued_rows += rows;
            }
            s.oldest.get_or_insert(now);
            let (min_ts, max_ts) = records.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| {
                let t = r.timestamp_ns();
                (lo.min(t), hi.max(t))
            });
            s.chunks.push_back(Arc::new(Chunk {
                seq,
                records,
                bytes,
                min_ts,
                max_ts,
            }));
        }
        self.applied_seq.fetch_max(seq, Ordering::Release);
    }

    pub fn applied_seq(&self) -> u64 {
        self.applied_seq.load(Ordering::Acquire)
    }

    /// Raises the applied sequence without records (start-up, after replay).
    pub fn set_applied_seq(&self, seq: u64) {
        self.applied_seq.fetch_max(seq, Ordering::Release);
    }

    pub fn snapshot(&self, dataset: Dataset) -> Snapshot {
        let s = self.state(dataset).lock();
        Snapshot {
            files: s.files.clone(),
            chunks: s.chunks.iter().cloned().collect(),
        }
    }

    /// Chunks up to `seq`, for the Parquet writer.
    pub fn chunks_through(&self, dataset: Dataset, seq: u64) -> Vec<Arc<Chunk>> {
        let s = self.state(dataset).lock();
        s.chunks
            .iter()
            .take_while(|c| c.seq <= seq)
            .cloned()
            .collect()
    }

    /// Makes files visible and drops the chunks they hold, in one step.
    pub fn commit_files(&self, dataset: Dataset, through_seq: u64, files: Vec<FileEntry>) {
        let mut s = self.state(dataset).lock();
        for f in files {
            if s.paths.insert(f.path.clone()) {
                s.files.push(f);
            }
        }
        while s.chunks.front().is_some_and(|c| c.seq <= through_seq) {
            let c = s.chunks.pop_front().expect("front checked");
            s.buffered_rows -= c.records.len();
            s.buffered_bytes -= c.bytes;
            s.queued_rows = s.queued_rows.saturating_sub(c.records.len());
        }
        s.oldest = if s.chunks.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
    }

    /// Registers files found on disk at start-up.
    pub fn add_existing_files(&self, dataset: Dataset, files: Vec<FileEntry>) {
        self.add_unknown_files(dataset, files);
    }

    /// The listed items whose files are neither registered nor retired.
    pub fn unknown_files<T>(&self, dataset: Dataset, listed: Vec<T>) -> Vec<T>
    where
        T: AsRef<std::path::Path>,
    {
        let s = self.state(dataset).lock();
        listed
            .into_iter()
            .filter(|f| {
                let p = f.as_ref();
                !s.paths.contains(p) && !s.retired.contains_key(p)
            })
            .collect()
    }

    /// Registers the files not registered yet and returns them: what a
    /// listing of the shared prefix found that other nodes wrote.
    pub fn add_unknown_files(&self, dataset: Dataset, files: Vec<FileEntry>) -> Vec<FileEntry> {
        let mut s = self.state(dataset).lock();
        let mut added = Vec::new();
        for f in files {
            if !s.retired.contains_key(&f.path) && s.paths.insert(f.path.clone()) {
                added.push(f.clone());
                s.files.push(f);
            }
        }
        added
    }

    /// Swaps files in one step (a compaction: its inputs out, its output
    /// in), so a snapshot holds either the inputs or the output.
    pub fn replace_files(&self, dataset: Dataset, remove: &[PathBuf], add: Vec<FileEntry>) {
        let mut s = self.state(dataset).lock();
        if !remove.is_empty() {
            let gone: HashSet<&PathBuf> = remove.iter().collect();
            s.files.retain(|f| !gone.contains(&f.path));
        }
        let now = Instant::now();
        s.retired
            .retain(|_, at| now.duration_since(*at) < std::time::Duration::from_secs(600));
        for p in remove {
            s.paths.remove(p);
            s.retired.insert(p.clone(), now);
        }
        for f in add {
            if s.paths.insert(f.path.clone()) {
                s.files.push(f);
            }
        }
    }

    /// The hours (ns, floored) that buffered records of `dataset` fall in.
    pub fn buffered_hours(&self, dataset: Dataset) -> std::collections::BTreeSet<i64> {
        let s = self.state(dataset).lock();
        let mut hours = std::collections::BTreeSet::new();
        for c in &s.chunks {
            if c.records.is_empty() {
                continue;
            }
            let (lo, hi) = (c.min_ts.div_euclid(HOUR_NS), c.max_ts.div_euclid(HOUR_NS));
            if hi - lo > 48 {
                // Times far apart: name the hours one by one.
                for r in &c.records {
                    hours.insert(r.timestamp_ns().div_euclid(HOUR_NS) * HOUR_NS);
                }
            } else {
                hours.extend((lo..=hi).map(|h| h * HOUR_NS));
            }
        }
        hours
    }

    /// Takes files out of the manifest (moved to the quarantine).
    pub fn remove_files(&self, dataset: Dataset, paths: &[PathBuf]) {
        if paths.is_empty() {
            return;
        }
        let mut s = self.state(dataset).lock();
        s.files.retain(|f| !paths.contains(&f.path));
        for p in paths {
            s.paths.remove(p);
        }
    }

    pub fn stats(&self, dataset: Dataset) -> BufferStats {
        let s = self.state(dataset).lock();
        BufferStats {
            buffered_rows: s.buffered_rows,
            buffered_bytes: s.buffered_bytes,
            queued_rows: s.queued_rows,
            oldest: s.oldest,
            files: s.files.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Value;

    fn rejected(n: i64) -> Record {
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
        store.apply(1, vec![rejected(1), rejected(2)], true);
        assert_eq!(store.stats(Dataset::Rejected).buffered_rows, 2);
        store.commit_files(Dataset::Rejected, 1, vec![]);
        assert_eq!(store.stats(Dataset::Rejected).queued_rows, 0);
        store.reserve(Dataset::Rejected, 3).unwrap();
    }

    #[test]
    fn a_file_is_registered_once_however_often_it_is_listed() {
        let store = Store::new(100);
        let file = |p: &str| FileEntry {
            path: p.into(),
            rows: 1,
            bytes: 1,
        };
        store.commit_files(Dataset::Rejected, 0, vec![file("a")]);
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
        store.apply(1, vec![rejected(1)], false);
        store.apply(2, vec![rejected(2)], false);
        assert_eq!(store.applied_seq(), 2);
        assert_eq!(store.chunks_through(Dataset::Rejected, 1).len(), 1);
        store.commit_files(
            Dataset::Rejected,
            1,
            vec![FileEntry {
                path: "x".into(),
                rows: 1,
                bytes: 1,
            }],
        );
        let snap = store.snapshot(Dataset::Rejected);
        assert_eq!(snap.files.len(), 1);
        assert_eq!(snap.chunks.len(), 1);
        assert_eq!(snap.chunks[0].seq, 2);
    }
}
