//! Day rollups: once every hour of a closed UTC day is rolled up, the
//! day's hourly rollups are merged into one file per day table, under
//! `<day table>/date=YYYY-MM-DD/<sources>[.crc32-…].parquet`. `sources` is
//! [`day_sources`] of the hourly files it was merged from, in hour order:
//! a reader uses the day only when it finds the same hourly files. When an
//! hour is rolled up again (late events, a meter changed) the day is stale
//! until the next pass merges it again; readers merge its hours meanwhile.
//!
//! The days are merged after the hours of a pass, oldest first, each within
//! the compactor's memory. At start-up the day files whose sources are the
//! hours registered now are kept; the others are deleted (and merged again).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::Arc;

use parquet::file::metadata::KeyValue;
use tally_pipeline::checksum;
use tally_pipeline::clock::HOUR_NS;
use tally_pipeline::rollup::{
    day_of_path, day_sources, file_name, RolledDay, RolledHour, RollupMemory, RollupOutput,
};
use tally_pipeline::store::FileEntry;
use tally_pipeline::Dataset;

use super::super::destination::{list_local_table, Destination};
use super::super::flusher::FlushTarget;
use super::super::layout::partition_of;
use super::super::{io_err, SinkError};
use super::{write_rollup, Compactor};

const DAY_NS: i64 = 24 * HOUR_NS;

fn day_name(sources: u64) -> String {
    format!("{sources:016x}.parquet")
}

/// `<sources>[.crc32-XXXXXXXX].parquet` → sources.
fn parse_day_name(name: &str) -> Option<u64> {
    let (name, _) = checksum::split_name(name);
    u64::from_str_radix(name.strip_suffix(".parquet")?, 16).ok()
}

/// A day's rolled hours.
type DayHours = Vec<(i64, Arc<RolledHour>)>;

/// A day's hourly files by day table, and their [`day_sources`].
type DayInputs = (BTreeMap<&'static str, Vec<FileEntry>>, u64);

impl Compactor {
    /// What each day table of a day would be merged from: the hourly
    /// tables' files of its rolled hours, in hour order; `None` when an
    /// hour lacks one.
    fn day_inputs(&self, d: Dataset, hours: &[(i64, Arc<RolledHour>)]) -> Option<DayInputs> {
        let mut inputs: BTreeMap<&'static str, Vec<FileEntry>> = BTreeMap::new();
        let mut names = Vec::new();
        for &(day_table, hour_table) in self.builder.day_tables(d) {
            for (_, r) in hours {
                let f = r.tables.get(hour_table)?;
                names.push(file_name(&f.path));
                inputs.entry(day_table).or_default().push(f.clone());
            }
        }
        let sources = day_sources(names.iter().map(String::as_str));
        Some((inputs, sources))
    }

    /// Merges every closed day whose hours are all rolled up (current, from
    /// their only file, nothing buffered) and whose stored day is missing
    /// or stale. Returns the days written.
    pub(super) async fn roll_days(&self, closed_before: i64) -> Result<usize, SinkError> {
        let mut written = 0;
        for d in Dataset::ALL {
            if self.builder.day_tables(d).is_empty() {
                continue;
            }
            let raw = self.raw_by_hour(d);
            let busy = self.store.buffered_hours(d);
            let rolled = self.rollups.range(d, i64::MIN, i64::MAX);
            let hours: Vec<i64> = rolled.iter().map(|(h, _)| *h).collect();
            let fingerprints = self
                .builder
                .fingerprints(d, &hours)
                .await
                .map_err(|e| SinkError::Rollup(e.to_string()))?;
            // day → its rolled hours; `false` when one of them is stale.
            let mut by_day: BTreeMap<i64, (bool, DayHours)> = BTreeMap::new();
            for ((h, r), fp) in rolled.into_iter().zip(fingerprints) {
                let from_its_file = raw
                    .get(&h)
                    .is_none_or(|files| files.len() == 1 && r.source == file_name(&files[0].path));
                let day = by_day
                    .entry(h.div_euclid(DAY_NS) * DAY_NS)
                    .or_insert((true, Vec::new()));
                day.0 &= r.fingerprint == fp && from_its_file;
                day.1.push((h, r));
            }
            for (day, (current, hours)) in by_day {
                // On a shared prefix, the node that compacts all of the
                // day's hours merges the day.
                let waits = (0..24).map(|i| day + i * HOUR_NS).any(|h| {
                    busy.contains(&h)
                        || raw.get(&h).is_some_and(|files| {
                            !self.owns(files) || !hours.iter().any(|(x, _)| *x == h)
                        })
                });
                if day + DAY_NS > closed_before || waits || !current {
                    continue;
                }
                let Some((inputs, sources)) = self.day_inputs(d, &hours) else {
                    continue;
                };
                if self
                    .rollups
                    .day(d, day)
                    .is_some_and(|r| r.sources == sources)
                {
                    continue;
                }
                match self.roll_day(d, day, inputs, sources).await {
                    Ok(()) => written += 1,
                    Err(e) => {
                        // One day's failure does not stop the others; its
                        // hours answer meanwhile.
                        self.metrics.compaction_errors.add(1);
                        tracing::error!(%d, day, error = %e, "merging a day's rollups failed; its hours are read instead and it is tried again");
                    }
                }
            }
        }
        Ok(written)
    }

    async fn roll_day(
        &self,
        d: Dataset,
        day: i64,
        inputs: BTreeMap<&'static str, Vec<FileEntry>>,
        sources: u64,
    ) -> Result<(), SinkError> {
        let started = std::time::Instant::now();
        let metrics = self.metrics.clone();
        let memory = RollupMemory {
            limit: self.policy.memory,
            report: Arc::new(move |bytes| metrics.compaction_memory.set(bytes)),
        };
        let built = self.builder.build_day(d, day, inputs, memory).await;
        self.metrics.compaction_memory.set(0);
        let outputs = built.map_err(|e| SinkError::Rollup(e.to_string()))?;
        let rows: usize = outputs.iter().map(|o| o.batch.num_rows()).sum();
        let target = self.target.clone();
        let tables =
            tokio::task::spawn_blocking(move || commit_day(&target, d, day, sources, &outputs))
                .await
                .expect("commit does not panic")?;
        let old = self.rollups.set_day(d, day, RolledDay { sources, tables });
        if let Some(old) = old {
            let paths: Vec<PathBuf> = old.tables.values().map(|f| f.path.clone()).collect();
            let dest = &self.target.destination;
            tokio::task::block_in_place(|| paths.iter().try_for_each(|p| dest.delete(p)))?;
            self.builder.forget(&paths);
        }
        tracing::info!(%d, day, rows, seconds = started.elapsed().as_secs_f64(), "day rolled up");
        Ok(())
    }

    /// Start-up: registers the stored days merged from the hours registered
    /// now; deletes the others and temporary files.
    pub(super) fn recover_days(&self) -> Result<usize, SinkError> {
        let data = self.target.data.as_path();
        let dest = &*self.target.destination;
        let mut registered = 0;
        for d in Dataset::ALL {
            let pairs = self.builder.day_tables(d);
            // day → sources → table → file
            type Found = BTreeMap<i64, BTreeMap<u64, BTreeMap<&'static str, FileEntry>>>;
            let mut found: Found = BTreeMap::new();
            let mut stale: Vec<PathBuf> = Vec::new();
            for &(table, _) in pairs {
                let (_, tmps) = list_local_table(data, table)?;
                for t in tmps {
                    fs::remove_file(&t).map_err(io_err(&t))?;
                }
                for f in dest.list_table(data, table)? {
                    let sources = parse_day_name(&file_name(&f.entry.path));
                    match (day_of_path(&f.entry.path), sources) {
                        (Some(day), Some(sources)) => {
                            found
                                .entry(day)
                                .or_default()
                                .entry(sources)
                                .or_default()
                                .insert(table, f.entry);
                        }
                        _ => stale.push(f.entry.path),
                    }
                }
            }
            for (day, by_sources) in found {
                let hours = self.rollups.range(d, day, day + DAY_NS);
                let now = self.day_inputs(d, &hours).map(|(_, s)| s);
                for (sources, tables) in by_sources {
                    if Some(sources) == now && tables.len() == pairs.len() {
                        self.rollups.set_day(d, day, RolledDay { sources, tables });
                        registered += 1;
                    } else {
                        stale.extend(tables.into_values().map(|f| f.path));
                    }
                }
            }
            for p in stale {
                dest.delete(&p)?;
            }
        }
        Ok(registered)
    }

    /// Days none of whose hours are rolled up any more (their rollups
    /// expired) go too. Returns the files deleted.
    pub(super) fn expire_days(&self) -> Result<usize, SinkError> {
        let mut deleted = 0;
        for d in Dataset::ALL {
            for (day, _) in self.rollups.days(d) {
                if !self.rollups.range(d, day, day + DAY_NS).is_empty() {
                    continue;
                }
                if let Some(old) = self.rollups.remove_day(d, day) {
                    let paths: Vec<PathBuf> = old.tables.values().map(|f| f.path.clone()).collect();
                    for p in &paths {
                        self.target.destination.delete(p)?;
                    }
                    deleted += paths.len();
                    self.builder.forget(&paths);
                }
            }
        }
        Ok(deleted)
    }
}

/// Writes a day's rollup files, fsync'd, and moves them in place.
fn commit_day(
    target: &FlushTarget,
    d: Dataset,
    day: i64,
    sources: u64,
    outputs: &[RollupOutput],
) -> Result<BTreeMap<&'static str, FileEntry>, SinkError> {
    let data = target.data.as_path();
    let dest = &*target.destination;
    let (date, _) = partition_of(day);
    let mut tables = BTreeMap::new();
    for out in outputs {
        let dir = PathBuf::from(out.table).join(format!("date={date}"));
        let meta = vec![
            KeyValue::new("tally.day_of".into(), format!("{sources:016x}")),
            KeyValue::new("tally.dataset".into(), d.name().to_string()),
        ];
        let (tmp, fin, bytes) = write_rollup(data, &dir, &day_name(sources), out, meta)?;
        dest.finish(data, &tmp, &fin)?;
        if matches!(dest, Destination::Local) {
            let abs = data.join(&dir);
            for p in [abs.clone(), abs.join("..")] {
                File::open(&p)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err(&p))?;
            }
        }
        tables.insert(
            out.table,
            FileEntry {
                path: dest.location(data, &fin),
                rows: out.batch.num_rows() as u64,
                bytes,
            },
        );
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_names_carry_their_sources() {
        let n = day_name(0x00ab_cdef_0123_4567);
        assert_eq!(parse_day_name(&n), Some(0x00ab_cdef_0123_4567));
        assert_eq!(
            parse_day_name(&checksum::sealed_name(&n, 9)),
            Some(0x00ab_cdef_0123_4567)
        );
        assert_eq!(parse_day_name("x.parquet"), None);
    }
}
