//! Admission: the bound on records queued for the Parquet writer, per
//! dataset. A sender past it is refused with a retry hint.

use crate::dataset::Dataset;

use super::{QueueFull, Store};

impl Store {
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

    /// Admits rows past the bound: a row that moves from one dataset's
    /// reservation to another's (a record rejected for its schema).
    pub fn reserve_unbounded(&self, dataset: Dataset, rows: usize) {
        self.state(dataset).lock().queued_rows += rows;
    }

    /// How full the fullest dataset's queue is: queued rows over the bound
    /// (0 with no bound).
    pub fn queue_fill(&self) -> f64 {
        if self.max_queued_rows == 0 {
            return 0.0;
        }
        Dataset::ALL
            .iter()
            .map(|d| self.state(*d).lock().queued_rows)
            .max()
            .unwrap_or(0) as f64
            / self.max_queued_rows as f64
    }

    /// Gives back rows admitted by [`Store::reserve`] that will not be buffered.
    pub fn release(&self, dataset: Dataset, rows: usize) {
        let mut s = self.state(dataset).lock();
        s.queued_rows = s.queued_rows.saturating_sub(rows);
    }
}
