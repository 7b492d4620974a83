//! Damage as the store sees it: the check reads run on the files they are
//! about to use, and the hours whose raw rows were lost.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::file::FileCheck;
use super::{FileEntry, Store};
use crate::dataset::Dataset;
use crate::rollup::Rollups;

impl Store {
    /// Installs the check reads call on files (once; later calls are
    /// ignored).
    pub fn set_file_check(&self, check: Arc<dyn FileCheck>) {
        let _ = self.file_check.set(check);
    }

    pub fn file_check(&self) -> Option<Arc<dyn FileCheck>> {
        self.file_check.get().cloned()
    }

    /// `files` of `dataset`, each checked the first time it is used (a
    /// blocking thread reads it): the damaged ones are taken out.
    pub async fn checked_files(&self, dataset: Dataset, files: Vec<FileEntry>) -> Vec<FileEntry> {
        match self.file_check() {
            Some(check) if !files.is_empty() => {
                tokio::task::spawn_blocking(move || check.ensure(dataset, files))
                    .await
                    .expect("a file check does not panic")
            }
            _ => files,
        }
    }

    /// Records that the raw rows of `hour` of `dataset` were (partly) lost.
    pub fn mark_lost(&self, dataset: Dataset, hour: i64) {
        self.lost.write().insert((dataset, hour));
    }

    /// A file restored from a copy: its hour is whole again.
    pub fn unmark_lost(&self, dataset: Dataset, hour: i64) {
        self.lost.write().remove(&(dataset, hour));
    }

    /// Hours of `dataset` in `[from, to)` whose answers are incomplete: raw
    /// rows were lost and no stored rollup holds the hour.
    pub fn incomplete_hours(
        &self,
        dataset: Dataset,
        rollups: &Rollups,
        from: i64,
        to: i64,
    ) -> BTreeSet<i64> {
        self.lost
            .read()
            .iter()
            .filter(|(d, h)| *d == dataset && *h >= from && *h < to)
            .filter(|(_, h)| rollups.get(dataset, *h).is_none())
            .map(|(_, h)| *h)
            .collect()
    }

    /// Every (dataset, hour) whose answers are incomplete.
    pub fn all_incomplete(&self, rollups: &Rollups) -> Vec<(Dataset, i64)> {
        self.lost
            .read()
            .iter()
            .filter(|(d, h)| rollups.get(*d, *h).is_none())
            .copied()
            .collect()
    }

    /// Every (dataset, hour) whose raw rows were lost, whether or not a
    /// rollup holds the hour: what reads of raw rows miss.
    pub fn all_lost(&self) -> Vec<(Dataset, i64)> {
        self.lost.read().iter().copied().collect()
    }
}
