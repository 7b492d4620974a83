//! The live buffer: records durable in the WAL, not yet in a Parquet file.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::batch::{times, Columns};
use crate::clock::HOUR_NS;
use crate::dataset::Dataset;

use super::prepared::Prepared;
use super::{BufferStats, Chunk, Store};

impl Store {
    /// Adds the rows of WAL entry `seq` to the buffer. Called in sequence
    /// order by replay at start-up. `reserved` says whether the rows were
    /// admitted through [`Store::reserve`].
    pub fn apply(&self, seq: u64, parts: Vec<Columns>, reserved: bool) {
        self.apply_prepared(seq, Prepared::new(parts), reserved);
    }

    /// Adds an entry's chunks, split and measured beforehand (by the
    /// appender), so that the WAL writer, which calls this after each fsync
    /// in sequence order, only takes each lock to push.
    pub fn apply_prepared(&self, seq: u64, prepared: Prepared, reserved: bool) {
        let now = Instant::now();
        for part in prepared.parts {
            let rows = part.batch.num_rows();
            let mut s = self.datasets[part.dataset.index()].lock();
            s.buffered_rows += rows;
            s.buffered_bytes += part.bytes;
            if !reserved {
                s.queued_rows += rows;
            }
            s.oldest.get_or_insert(now);
            s.chunks.push_back(Arc::new(Chunk {
                seq,
                batch: part.batch,
                bytes: part.bytes,
                min_ts: part.min_ts,
                max_ts: part.max_ts,
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
            if c.rows() == 0 {
                continue;
            }
            let (lo, hi) = (c.min_ts.div_euclid(HOUR_NS), c.max_ts.div_euclid(HOUR_NS));
            if hi - lo > 48 {
                // Times far apart: name the hours one by one.
                for t in times(dataset, &c.batch).values() {
                    hours.insert(t.div_euclid(HOUR_NS) * HOUR_NS);
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
