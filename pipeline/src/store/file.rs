//! A committed file as the store lists it, and the check reads run on it.

use std::path::PathBuf;

use crate::dataset::Dataset;

/// A committed Parquet file.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// A local path, or an object URL (`s3://bucket/key`) when the data
    /// lives on object storage.
    pub path: PathBuf,
    pub rows: u64,
    pub bytes: u64,
}

/// A check of the registered data files that the SQL engine runs when a
/// query fails: it moves unreadable files to the quarantine and out of the
/// store, so that the query can run again over the others.
pub trait FileCheck: Send + Sync {
    /// Returns how many files it took out.
    fn quarantine_unreadable(&self) -> usize;

    /// Checks, the first time each is used since start-up, the checksums
    /// of the files of `dataset` a read is about to use (blocking I/O).
    /// The damaged ones go to the quarantine and out of the store; the
    /// others come back.
    fn ensure(&self, dataset: Dataset, files: Vec<FileEntry>) -> Vec<FileEntry> {
        let _ = dataset;
        files
    }

    /// Checks a rollup file of `hour` of `dataset` the first time it is
    /// used: `false` when it is damaged (then it went to the quarantine and
    /// the hour's rollups were dropped: readers use raw rows, and the
    /// compactor builds the rollups again).
    fn ensure_rollup(&self, dataset: Dataset, hour: i64, file: &FileEntry) -> bool {
        let _ = (dataset, hour, file);
        true
    }

    /// [`FileCheck::ensure_rollup`] for the rollup file of a UTC day: when
    /// it is damaged, the day's rollup is dropped (readers merge its hours,
    /// and the compactor builds it again).
    fn ensure_day_rollup(&self, dataset: Dataset, day: i64, file: &FileEntry) -> bool {
        let _ = (dataset, day, file);
        true
    }
}

impl std::fmt::Debug for dyn FileCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileCheck")
    }
}
