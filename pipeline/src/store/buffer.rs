//! The live buffer: records durable in the WAL, not yet in a Parquet file.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::dataset::Dataset;
use crate::record::Record;
use crate::rollup::HOUR_NS;

use super::{BufferStats, Chunk, Store};

impl Store {
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

    /// Chunks up to `seq`, for the Parquet writer.
    pub fn chunks_through(&self, dataset: Dataset, seq: u64) -> Vec<Arc<Chunk>> {
        let s = self.state(dataset).lock();
        s.chunks
            .iter()
            .take_while(|c| c.seq <= seq)
            .cloned()
            .collect()
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
