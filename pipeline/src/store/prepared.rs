//! An entry's records split by dataset, turned into Arrow columns and
//! measured before the WAL writer takes them, so that the writer's
//! buffering step stays short.

use arrow::record_batch::RecordBatch;

use crate::batch::records_to_batch;
use crate::dataset::Dataset;
use crate::record::Record;

/// One entry's records split by dataset and measured: what
/// [`super::Store::apply_prepared`] buffers.
#[derive(Debug, Default)]
pub struct Prepared {
    pub(super) parts: Vec<Part>,
}

#[derive(Debug)]
pub(super) struct Part {
    pub(super) dataset: Dataset,
    pub(super) batch: RecordBatch,
    pub(super) bytes: usize,
    pub(super) min_ts: i64,
    pub(super) max_ts: i64,
}

impl Prepared {
    pub fn new(records: Vec<Record>) -> Self {
        // Nearly every entry holds one dataset: keep its vector as it is.
        let first = records.first().map(|r| r.dataset);
        let by_dataset: Vec<(Dataset, Vec<Record>)> =
            if records.iter().all(|r| Some(r.dataset) == first) {
                first.map(|d| vec![(d, records)]).unwrap_or_default()
            } else {
                let mut split: Vec<Vec<Record>> = Dataset::ALL.iter().map(|_| Vec::new()).collect();
                for r in records {
                    split[r.dataset.index()].push(r);
                }
                Dataset::ALL
                    .iter()
                    .zip(split)
                    .filter(|(_, rs)| !rs.is_empty())
                    .map(|(d, rs)| (*d, rs))
                    .collect()
            };
        let parts = by_dataset
            .into_iter()
            .map(|(dataset, records)| {
                let (min_ts, max_ts) = records.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| {
                    let t = r.timestamp_ns();
                    (lo.min(t), hi.max(t))
                });
                // The records were admitted against this schema; building
                // fails only past 2^31 distinct strings of one column in
                // one entry, far beyond an entry's bound.
                let batch = records_to_batch(dataset, records.iter())
                    .expect("admitted records make a batch of their dataset");
                let bytes = batch.get_array_memory_size();
                Part {
                    dataset,
                    batch,
                    bytes,
                    min_ts,
                    max_ts,
                }
            })
            .collect();
        Prepared { parts }
    }
}
