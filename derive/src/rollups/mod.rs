//! The rollups of a compacted hour: the compactor hands each closed hour's
//! merged file here, and stores what comes back next to it.
//!
//! The rules are `tally_pipeline::rules` (the SQL files and the VM fold),
//! the same the read side applies to hours without a stored rollup. What a
//! VM hour's rollup depends on besides its samples (the reported gaps) is
//! read through `History`, like any other reader.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tally_pipeline::background;
use tally_pipeline::metrics::Metrics;
use tally_pipeline::rollup::{
    hour_of_path, RollupBuilder, RollupError, RollupMemory, RollupOutput,
};
use tally_pipeline::rules::meter::{meters_fingerprint, Meter};
use tally_pipeline::rules::meter_hourly::DayFold;
use tally_pipeline::rules::{self, gap_fingerprint, meter_hourly, vm};
use tally_pipeline::store::FileEntry;
use tally_pipeline::Dataset;
use tally_queries::api_v1::meters::MeterBook;
use tally_queries::history::History;
use tally_queries::prices::PriceCatalogue;

mod stream;

/// Builds the rollups of closed hours for the compactor.
#[derive(Clone)]
pub struct HourRollups {
    history: History,
    prices: Arc<PriceCatalogue>,
    /// The meters an `events` hour is rolled up for (none: no rows).
    meters: Option<Arc<dyn MeterBook>>,
    metrics: Option<Arc<Metrics>>,
    /// Unreadable events per rolled-up hour and meter, for
    /// `tally_meter_unreadable_events`; `None` until read from the stored
    /// hours (at the first pass, and again after rollups were replaced).
    unreadable: Arc<Mutex<Option<UnreadableByHour>>>,
}

/// Hour → meter slug → unreadable events.
type UnreadableByHour = BTreeMap<i64, HashMap<String, u64>>;

impl HourRollups {
    pub fn new(history: History, prices: Arc<PriceCatalogue>) -> Self {
        Self {
            history,
            prices,
            meters: None,
            metrics: None,
            unreadable: Arc::default(),
        }
    }

    /// Rolls `events` hours up for the meters of `book`; a change of its
    /// meters makes every hour stale, and each is rolled up again.
    pub fn with_meters(mut self, book: Arc<dyn MeterBook>, metrics: Arc<Metrics>) -> Self {
        self.meters = Some(book);
        self.metrics = Some(metrics);
        self
    }

    /// Reads the unreadable counts of every stored `events` hour (only the
    /// two columns), when not read yet.
    async fn load_unreadable(&self) -> Result<(), RollupError> {
        if self.unreadable.lock().is_some() {
            return Ok(());
        }
        let cov = self
            .history
            .coverage_as_stored(Dataset::Events, i64::MIN / 2, i64::MAX / 2);
        let mut by_hour = BTreeMap::new();
        for (h, rolled) in cov.rolled {
            if let Some(entry) = rolled.tables.get(meter_hourly::TABLE) {
                let batch = self
                    .history
                    .load_columns(entry, &["meter", "unreadable"])
                    .await
                    .map_err(query_error)?;
                by_hour.insert(h, meter_hourly::unreadable_of(&batch).map_err(query_error)?);
            }
        }
        *self.unreadable.lock() = Some(by_hour);
        self.publish();
        Ok(())
    }

    /// Sets `tally_meter_unreadable_events` from the hours' counts.
    fn publish(&self) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let mut total: BTreeMap<String, u64> = BTreeMap::new();
        if let Some(by_hour) = self.unreadable.lock().as_ref() {
            for counts in by_hour.values() {
                for (m, n) in counts {
                    *total.entry(m.clone()).or_default() += n;
                }
            }
        }
        // Every meter has a series, 0 when it reads all of its events.
        for m in self.meters() {
            total.entry(m.def.slug).or_default();
        }
        *metrics.meter_unreadable.lock() = total;
    }

    fn meters(&self) -> Vec<Meter> {
        self.meters
            .as_ref()
            .map(|b| b.list().iter().map(|s| s.meter.clone()).collect())
            .unwrap_or_default()
    }
}

fn query_error(e: impl std::fmt::Display) -> RollupError {
    RollupError::Query(e.to_string())
}

#[async_trait]
impl RollupBuilder for HourRollups {
    fn tables(&self, d: Dataset) -> &'static [&'static str] {
        rules::tables_of(d)
    }

    async fn build(
        &self,
        d: Dataset,
        hour: i64,
        file: &Path,
        memory: RollupMemory,
    ) -> Result<(Vec<RollupOutput>, u64), RollupError> {
        let path = file.to_path_buf();
        if d == Dataset::Events {
            let meters = self.meters();
            let fingerprint = meters_fingerprint(meters.iter().map(|m| &m.def));
            let batch = background::run("tally-rollup", move || {
                stream::fold_meter_file(&path, &meters, hour, &memory)
            })
            .await?;
            if let Some(by_hour) = self.unreadable.lock().as_mut() {
                by_hour.insert(
                    hour,
                    meter_hourly::unreadable_of(&batch).map_err(query_error)?,
                );
            }
            self.publish();
            return Ok((
                vec![RollupOutput {
                    table: meter_hourly::TABLE,
                    batch,
                }],
                fingerprint,
            ));
        }
        let Some((table, sql)) = rules::rollup_of(d) else {
            return Ok((Vec::new(), 0));
        };
        if d == Dataset::VmMetrics {
            let spans = self.history.gap_spans().await.map_err(query_error)?;
            let fingerprint = gap_fingerprint(&spans, hour);
            let limit = self.history.gap_limit_ns;
            let rows = background::run("tally-rollup", move || {
                stream::fold_vm_file(&path, &spans, limit, &memory)
            })
            .await?;
            return Ok((
                vec![RollupOutput {
                    table,
                    batch: vm::to_batch(&rows),
                }],
                fingerprint,
            ));
        }
        let prices = self.prices.clone();
        let batch = background::run("tally-rollup", move || {
            stream::sql_over_file(prices, &path, sql, memory)
        })
        .await?;
        Ok((vec![RollupOutput { table, batch }], 0))
    }

    fn day_tables(&self, d: Dataset) -> &'static [(&'static str, &'static str)] {
        rules::day_tables_of(d)
    }

    async fn build_day(
        &self,
        d: Dataset,
        day: i64,
        mut hours: BTreeMap<&'static str, Vec<FileEntry>>,
        memory: RollupMemory,
    ) -> Result<Vec<RollupOutput>, RollupError> {
        let Some(files) = hours
            .remove(meter_hourly::DAY_TABLE)
            .filter(|_| d == Dataset::Events)
        else {
            return Ok(Vec::new());
        };
        let mut fold = Some(DayFold::new(self.meters(), day));
        for f in &files {
            // A damaged hour is dropped (and rolled up again), not merged.
            let hour = hour_of_path(&f.path).unwrap_or(day);
            if !self.history.rollup_intact(d, hour, f) {
                return Err(RollupError::Read {
                    path: f.path.clone(),
                    detail:
                        "the hour's rollup is damaged; the day waits for it to be rolled up again"
                            .into(),
                });
            }
            let rows = self
                .history
                .meter_hour(f, false)
                .await
                .map_err(query_error)?;
            let mut day_fold = fold.take().expect("the fold comes back after each hour");
            let (memory, path) = (memory.clone(), f.path.clone());
            fold = Some(
                background::run("tally-rollup", move || {
                    day_fold.push(&rows);
                    stream::within(&memory, day_fold.memory(), "day's meter rollup", &path)
                        .map(|()| day_fold)
                })
                .await?,
            );
        }
        let fold = fold.expect("the fold comes back after each hour");
        let batch = background::run("tally-rollup", move || fold.finish()).await;
        Ok(vec![RollupOutput {
            table: meter_hourly::DAY_TABLE,
            batch,
        }])
    }

    fn forget(&self, files: &[PathBuf]) {
        self.history.forget(files);
        // A meters' rollup replaced or expired: the counts are read again.
        if files
            .iter()
            .any(|f| f.iter().any(|part| part == meter_hourly::TABLE))
        {
            *self.unreadable.lock() = None;
        }
    }

    async fn fingerprints(&self, d: Dataset, hours: &[i64]) -> Result<Vec<u64>, RollupError> {
        if d == Dataset::Events {
            self.load_unreadable().await?;
            let meters = self.meters();
            let fp = meters_fingerprint(meters.iter().map(|m| &m.def));
            return Ok(vec![fp; hours.len()]);
        }
        if d != Dataset::VmMetrics {
            return Ok(vec![0; hours.len()]);
        }
        let spans = self.history.gap_spans().await.map_err(query_error)?;
        Ok(hours.iter().map(|h| gap_fingerprint(&spans, *h)).collect())
    }
}

#[cfg(test)]
mod sql_tests;
