//! An entry's columns measured before the WAL writer takes them, so that
//! the writer's buffering step stays short.

use arrow::record_batch::RecordBatch;

use crate::batch::Columns;
use crate::dataset::Dataset;

/// One entry's columns, per dataset, measured: what
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
    pub fn new(parts: Vec<Columns>) -> Self {
        let parts = parts
            .into_iter()
            .filter(|c| c.rows() > 0)
            .map(|c| {
                let (min_ts, max_ts) = c.time_range();
                Part {
                    dataset: c.dataset(),
                    bytes: c.bytes(),
                    min_ts,
                    max_ts,
                    batch: c.into_batch(),
                }
            })
            .collect();
        Prepared { parts }
    }
}
