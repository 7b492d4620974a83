//! Stored hourly rollups: what a compaction derives from a closed hour, and
//! the manifest that tells a reader which hours it may read from them.
//!
//! A rollup file is written from one compacted file (its *source*) and names
//! it in its metadata. An hour of a dataset is *rolled up* when its rollups'
//! source is the only raw file of the hour (or the raw files expired), no
//! buffered record falls in it, and what else the rollup depended on (the
//! reported gaps of VM billing) has not changed: its fingerprint still
//! matches. Anything else makes the hour dirty, and readers compute it from
//! raw records until the compactor rolls it up again.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use parking_lot::RwLock;

use crate::dataset::Dataset;
use crate::store::FileEntry;

/// Two VM samples further apart than this are a gap and count nothing
/// (the billing rules, README "billing.v1 (VM metering)"): the billing
/// source's gap detection and the
/// rules of `crate::rules::vm` use this one value.
pub const VM_GAP_LIMIT_SECS: u64 = 120;

/// The hour (nanoseconds since the epoch, a multiple of [`crate::clock::HOUR_NS`]) of a
/// path under `…/date=YYYY-MM-DD/hour=HH/…`.
pub fn hour_of_path(path: &Path) -> Option<i64> {
    let mut date = None;
    let mut hour = None;
    for part in path.iter() {
        let part = part.to_str()?;
        if let Some(d) = part.strip_prefix("date=") {
            date = chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok();
        } else if let Some(h) = part.strip_prefix("hour=") {
            hour = h.parse::<u32>().ok().filter(|h| *h < 24);
        }
    }
    let t = date?.and_hms_opt(hour?, 0, 0)?.and_utc();
    t.timestamp_nanos_opt()
}

/// The UTC day (nanoseconds since the epoch) of a path under
/// `…/date=YYYY-MM-DD/…`.
pub fn day_of_path(path: &Path) -> Option<i64> {
    let date = path.iter().find_map(|part| {
        let d = part.to_str()?.strip_prefix("date=")?;
        chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()
    })?;
    date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_nanos_opt()
}

/// What a day's rollup was merged from: a fingerprint (FNV-1a) of the
/// file names of its hours' rollups, in hour order. A reader that finds
/// the same hours uses the day; any other set (an hour rolled up again, a
/// new hour, an expired one) makes it stale.
pub fn day_sources<'a>(names: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for name in names {
        for b in name.bytes().chain([b'\n']) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The file name of a path (rollups name their source by it).
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One rollup table's rows for one hour.
#[derive(Debug, Clone)]
pub struct RollupOutput {
    pub table: &'static str,
    pub batch: RecordBatch,
}

/// The stored rollups of one hour of one dataset.
#[derive(Debug, Clone)]
pub struct RolledHour {
    /// File name of the compacted file they were computed from.
    pub source: String,
    pub fingerprint: u64,
    /// Table name → its file.
    pub tables: BTreeMap<&'static str, FileEntry>,
}

/// The stored rollup of one UTC day of a dataset, merged from the
/// day's hourly rollups.
#[derive(Debug, Clone)]
pub struct RolledDay {
    /// [`day_sources`] of the hourly rollup files it was merged from.
    pub sources: u64,
    /// Table name → its file.
    pub tables: BTreeMap<&'static str, FileEntry>,
}

/// What a rollup build may hold, and where it says how much it holds now.
#[derive(Clone)]
pub struct RollupMemory {
    /// Bytes the build may hold at once (its aggregation state and the
    /// batch it is reading); past it the build fails, it does not grow.
    pub limit: usize,
    pub report: Arc<dyn Fn(u64) + Send + Sync>,
}

impl RollupMemory {
    /// A limit with nobody listening (tests, tools).
    pub fn unreported(limit: usize) -> Self {
        Self {
            limit,
            report: Arc::new(|_| {}),
        }
    }
}

impl std::fmt::Debug for RollupMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RollupMemory")
            .field("limit", &self.limit)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    #[error("rollup query failed: {0}")]
    Query(String),
    #[error("reading {path}: {detail}")]
    Read { path: PathBuf, detail: String },
}

/// Computes the rollups of a dataset's closed hour by the rules of
/// `crate::rules`. Implemented by the derive side (`tally_derive::rollups`);
/// the compactor calls it.
#[async_trait]
pub trait RollupBuilder: Send + Sync {
    /// The rollup tables derived from `dataset` (empty: none).
    fn tables(&self, dataset: Dataset) -> &'static [&'static str];

    /// The rollups of `hour` computed from `file`, a local Parquet file that
    /// holds every record of the hour once, sorted by the dataset's key and
    /// time. The file is read as a stream, off the runtime's workers, within
    /// `memory`: an hour of any size is rolled up in the same memory.
    /// Also returns the fingerprint of what they depended on besides the
    /// file (see [`RollupBuilder::fingerprints`]).
    async fn build(
        &self,
        dataset: Dataset,
        hour: i64,
        file: &Path,
        memory: RollupMemory,
    ) -> Result<(Vec<RollupOutput>, u64), RollupError>;

    /// What the rollups of each hour depend on besides its raw records (0
    /// when nothing): a rollup whose stored fingerprint differs is stale.
    async fn fingerprints(&self, dataset: Dataset, hours: &[i64]) -> Result<Vec<u64>, RollupError>;

    /// Rollup files that were replaced or expired: whatever was kept of
    /// them may go.
    fn forget(&self, _files: &[PathBuf]) {}

    /// The tables rolled up by UTC day from `dataset`'s hourly rollups, as
    /// `(day table, the hourly table it is merged from)` (empty: none).
    fn day_tables(&self, dataset: Dataset) -> &'static [(&'static str, &'static str)] {
        let _ = dataset;
        &[]
    }

    /// The rollups of the UTC day `day`, merged from `hours`: each day
    /// table's hourly files of the day, in hour order (read one at a time,
    /// within `memory`).
    async fn build_day(
        &self,
        dataset: Dataset,
        day: i64,
        hours: BTreeMap<&'static str, Vec<FileEntry>>,
        memory: RollupMemory,
    ) -> Result<Vec<RollupOutput>, RollupError> {
        let _ = (dataset, day, hours, memory);
        Ok(Vec::new())
    }
}

/// Which hours of which dataset have stored rollups.
#[derive(Debug, Default)]
pub struct Rollups {
    hours: RwLock<HashMap<Dataset, BTreeMap<i64, Arc<RolledHour>>>>,
    days: RwLock<HashMap<Dataset, BTreeMap<i64, Arc<RolledDay>>>>,
}

impl Rollups {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the rollups of an hour; returns the ones they replace.
    pub fn set(&self, dataset: Dataset, hour: i64, rolled: RolledHour) -> Option<Arc<RolledHour>> {
        self.hours
            .write()
            .entry(dataset)
            .or_default()
            .insert(hour, Arc::new(rolled))
    }

    pub fn remove(&self, dataset: Dataset, hour: i64) -> Option<Arc<RolledHour>> {
        self.hours.write().get_mut(&dataset)?.remove(&hour)
    }

    pub fn get(&self, dataset: Dataset, hour: i64) -> Option<Arc<RolledHour>> {
        self.hours.read().get(&dataset)?.get(&hour).cloned()
    }

    /// The rolled hours of `dataset` in `[from, to)`.
    pub fn range(&self, dataset: Dataset, from: i64, to: i64) -> Vec<(i64, Arc<RolledHour>)> {
        match self.hours.read().get(&dataset) {
            Some(m) if from < to => m.range(from..to).map(|(h, r)| (*h, r.clone())).collect(),
            _ => Vec::new(),
        }
    }

    /// Sets the rollup of a UTC day; returns the one it replaces.
    pub fn set_day(&self, dataset: Dataset, day: i64, rolled: RolledDay) -> Option<Arc<RolledDay>> {
        self.days
            .write()
            .entry(dataset)
            .or_default()
            .insert(day, Arc::new(rolled))
    }

    pub fn remove_day(&self, dataset: Dataset, day: i64) -> Option<Arc<RolledDay>> {
        self.days.write().get_mut(&dataset)?.remove(&day)
    }

    pub fn day(&self, dataset: Dataset, day: i64) -> Option<Arc<RolledDay>> {
        self.days.read().get(&dataset)?.get(&day).cloned()
    }

    /// Every rolled-up day of `dataset`.
    pub fn days(&self, dataset: Dataset) -> Vec<(i64, Arc<RolledDay>)> {
        self.days
            .read()
            .get(&dataset)
            .map(|m| m.iter().map(|(d, r)| (*d, r.clone())).collect())
            .unwrap_or_default()
    }

    /// Every rolled hour of `dataset`.
    pub fn hours(&self, dataset: Dataset) -> Vec<i64> {
        self.hours
            .read()
            .get(&dataset)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::HOUR_NS;

    #[test]
    fn hours_are_read_from_partition_paths() {
        let p = Path::new("/d/usage_llm/date=2025-11-24/hour=12/a.parquet");
        assert_eq!(hour_of_path(p), Some(1_763_985_600_000_000_000));
        assert_eq!(hour_of_path(p).unwrap() % HOUR_NS, 0);
        assert_eq!(
            hour_of_path(Path::new("s3://b/p/x/date=1970-01-01/hour=01/f.parquet")),
            Some(HOUR_NS)
        );
        assert_eq!(hour_of_path(Path::new("x/date=2025-11-24/a.parquet")), None);
        assert_eq!(hour_of_path(Path::new("x/date=2025-11-24/hour=24/a")), None);
    }
}
