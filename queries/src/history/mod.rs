//! Reading history: stored rollups for the hours that have them, raw records
//! for the others, read by the rules of `tally_pipeline::rules` that built
//! the rollups (the derive side stores them).
//!
//! For a time range, [`History::coverage`] splits the hours into *rolled*
//! (their stored rollups hold them: the rollups' source is the hour's only
//! raw file, or its raw files expired; no buffered record falls in it; what
//! else they depended on is unchanged) and *raw* ranges. The read APIs run
//! the same SQL files over the raw ranges that built the stored rollups, so
//! an answer is the same whichever way an hour is read.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::Int64Type;
use bytes::Bytes;
use datafusion::common::ParamValues;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SessionContext;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;
use tally_pipeline::clock::HOUR_NS;
use tally_pipeline::rollup::{hour_of_path, RolledDay, RolledHour, Rollups};
use tally_pipeline::rules::meter_hourly::HourRows;
use tally_pipeline::store::{FileEntry, Store};
use tally_pipeline::Dataset;
use url::Url;

use crate::prices::{cost_udfs, PriceCatalogue};
use crate::sql::catalog::DatasetTable;
use crate::sql::QueryError;
use tally_pipeline::rules::vm::{self as hours, GapSpans};
use tally_pipeline::rules::{rollup_of, VM_GAP_SPANS};

const RAW_ONCE: &str = include_str!("sql/raw_once.sql");

/// `sql/raw_once.sql` for a dataset's key columns and a time condition.
fn raw_once(key: &[&str], within: &str) -> String {
    let order = if key.contains(&"timestamp") {
        ""
    } else {
        " ORDER BY timestamp"
    };
    RAW_ONCE
        .replace("{key}", &key.join(", "))
        .replace("{order}", order)
        .replace("{within}", within)
}

/// Which hours of a range read stored rollups, and which read raw records.
#[derive(Debug, Default)]
pub struct Coverage {
    pub rolled: Vec<(i64, Arc<RolledHour>)>,
    /// `[from, to)` in nanoseconds, merged: hours with copies possible.
    pub raw: Vec<(i64, i64)>,
    pub raw_hours: BTreeSet<i64>,
    /// Parts of compacted hours read raw (the range cuts the hour, or what
    /// the rollup depended on changed): each key is there once already.
    pub unique: Vec<(i64, i64)>,
    pub unique_hours: BTreeSet<i64>,
}

/// Stored hours of the meters' rollups kept decoded.
pub const METER_HOURS_KEPT: usize = 256;

/// Decoded rows, shared.
type Rows = Arc<RecordBatch>;

#[derive(Clone)]
pub struct History {
    store: Arc<Store>,
    rollups: Arc<Rollups>,
    object: Option<(Url, Arc<dyn ObjectStore>)>,
    /// Decoded rollup files: immutable, so kept by path.
    cache: Arc<Mutex<HashMap<PathBuf, Rows>>>,
    /// Rollup files regrouped by a SQL file, by (path, SQL).
    regrouped: Arc<Mutex<HashMap<(PathBuf, &'static str), Rows>>>,
    /// Decoded `meter_hourly` files, indexed by meter and tenant.
    meter_hours: Arc<Mutex<HashMap<PathBuf, Arc<HourRows>>>>,
    prices: Arc<PriceCatalogue>,
    pub gap_limit_ns: i64,
}

impl History {
    pub fn new(
        store: Arc<Store>,
        rollups: Arc<Rollups>,
        object: Option<(Url, Arc<dyn ObjectStore>)>,
        prices: Arc<PriceCatalogue>,
    ) -> Self {
        Self {
            store,
            rollups,
            object,
            prices,
            cache: Arc::new(Mutex::new(HashMap::new())),
            regrouped: Arc::new(Mutex::new(HashMap::new())),
            meter_hours: Arc::new(Mutex::new(HashMap::new())),
            gap_limit_ns: tally_pipeline::rollup::VM_GAP_LIMIT_SECS as i64
                * tally_pipeline::clock::NS_PER_SEC,
        }
    }

    /// Splits `[from, to)` of `dataset` into rolled hours and raw ranges.
    /// `fingerprints` gives the current fingerprint of an hour (VM usage).
    pub fn coverage(
        &self,
        d: Dataset,
        from: i64,
        to: i64,
        fingerprint: &dyn Fn(i64) -> u64,
    ) -> Coverage {
        let mut cov = Coverage::default();
        if from >= to {
            return cov;
        }
        let first = from.div_euclid(HOUR_NS) * HOUR_NS;
        let mut raw_files: HashMap<i64, Vec<String>> = HashMap::new();
        for f in self.store.snapshot(d).files {
            if let Some(h) = hour_of_path(&f.path) {
                if h + HOUR_NS > from && h < to {
                    raw_files
                        .entry(h)
                        .or_default()
                        .push(tally_pipeline::rollup::file_name(&f.path));
                }
            }
        }
        let busy = self.store.buffered_hours(d);
        // A rolled hour whose files fail their checksum (checked the first
        // time each is used) is read from raw rows; its rollups are built
        // again by the compactor.
        let rolled: HashMap<i64, Arc<RolledHour>> = self
            .rollups
            .range(d, first, to)
            .into_iter()
            .filter(|(h, r)| r.tables.values().all(|f| self.rollup_intact(d, *h, f)))
            .collect();
        let mut hours: BTreeSet<i64> = raw_files.keys().copied().collect();
        hours.extend(busy.range(first..to).copied());
        hours.extend(rolled.keys().copied());
        for h in hours {
            let whole = h >= from && h + HOUR_NS <= to;
            let files = raw_files.get(&h).map(Vec::as_slice).unwrap_or(&[]);
            let rolled_here = rolled.get(&h);
            // One compacted file and nothing buffered: its keys are unique.
            let compacted = !busy.contains(&h)
                && rolled_here.is_some_and(|r| files.is_empty() || files == [r.source.clone()]);
            if whole && compacted && rolled_here.is_some_and(|r| r.fingerprint == fingerprint(h)) {
                cov.rolled.push((h, rolled[&h].clone()));
                continue;
            }
            if files.is_empty() && !busy.contains(&h) {
                // Nothing raw to read: the hour is empty (or only rolled).
                if let Some(r) = rolled_here.filter(|_| whole) {
                    cov.rolled.push((h, r.clone()));
                }
                continue;
            }
            let (a, b) = (h.max(from), (h + HOUR_NS).min(to));
            let (ranges, set) = if compacted {
                (&mut cov.unique, &mut cov.unique_hours)
            } else {
                (&mut cov.raw, &mut cov.raw_hours)
            };
            set.insert(h);
            match ranges.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => ranges.push((a, b)),
            }
        }
        cov
    }

    /// [`History::coverage`] that takes each stored rollup as current,
    /// whatever it depended on: for readers that check that themselves
    /// (the meters' rows carry each meter's definition).
    pub fn coverage_as_stored(&self, d: Dataset, from: i64, to: i64) -> Coverage {
        let rollups = self.rollups.clone();
        self.coverage(d, from, to, &move |h| {
            rollups.get(d, h).map_or(0, |r| r.fingerprint)
        })
    }

    /// Whether a rollup file of `hour` is intact (its checksum is checked
    /// the first time it is used; a damaged one goes to the quarantine and
    /// its hour's rollups are dropped, to be built again).
    pub fn rollup_intact(&self, d: Dataset, hour: i64, entry: &FileEntry) -> bool {
        self.store
            .file_check()
            .is_none_or(|c| c.ensure_rollup(d, hour, entry))
    }

    /// The stored rollup of a UTC day of `d`, when there is one and its
    /// files are intact (checked as [`History::rollup_intact`]).
    pub fn stored_day(&self, d: Dataset, day: i64) -> Option<Arc<RolledDay>> {
        let rolled = self.rollups.day(d, day)?;
        let check = self.store.file_check();
        rolled
            .tables
            .values()
            .all(|f| {
                check
                    .as_ref()
                    .is_none_or(|c| c.ensure_day_rollup(d, day, f))
            })
            .then_some(rolled)
    }

    /// The rows of a rolled hour's table, decoded once.
    pub async fn load(&self, entry: &FileEntry) -> Result<Arc<RecordBatch>, QueryError> {
        if let Some(b) = self.cache.lock().get(&entry.path) {
            return Ok(b.clone());
        }
        let bytes = self.read_bytes(&entry.path).await?;
        let batch = read_parquet(bytes, &entry.path)?;
        let batch = Arc::new(batch);
        self.cache.lock().insert(entry.path.clone(), batch.clone());
        Ok(batch)
    }

    /// A stored hour of the meters' rollups, decoded and indexed; kept
    /// (the last [`METER_HOURS_KEPT`] used) when `keep`.
    pub async fn meter_hour(
        &self,
        entry: &FileEntry,
        keep: bool,
    ) -> Result<Arc<HourRows>, QueryError> {
        if let Some(rows) = self.meter_hours.lock().get(&entry.path) {
            return Ok(rows.clone());
        }
        let bytes = self.read_bytes(&entry.path).await?;
        let rows = HourRows::new(read_parquet(bytes, &entry.path)?)
            .map_err(|e| QueryError::Execution(format!("{}: {e}", entry.path.display())))?;
        let rows = Arc::new(rows);
        if keep {
            let mut kept = self.meter_hours.lock();
            if kept.len() >= METER_HOURS_KEPT {
                // Any one goes: the kept hours are a working set, not a
                // store (the days read by the meters hold months).
                if let Some(k) = kept.keys().next().cloned() {
                    kept.remove(&k);
                }
            }
            kept.insert(entry.path.clone(), rows.clone());
        }
        Ok(rows)
    }

    /// Some columns of a stored file, not kept.
    pub async fn load_columns(
        &self,
        entry: &FileEntry,
        columns: &[&str],
    ) -> Result<RecordBatch, QueryError> {
        let bytes = self.read_bytes(&entry.path).await?;
        let err = |e: &dyn std::fmt::Display| {
            QueryError::Execution(format!("reading {}: {e}", entry.path.display()))
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| err(&e))?;
        let mask = datafusion::parquet::arrow::ProjectionMask::columns(
            builder.parquet_schema(),
            columns.iter().copied(),
        );
        let reader = builder.with_projection(mask).build().map_err(|e| err(&e))?;
        let schema = arrow::record_batch::RecordBatchReader::schema(&reader);
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(|e| err(&e))?;
        concat_batches(&schema, &batches).map_err(|e| err(&e))
    }

    async fn read_bytes(&self, path: &Path) -> Result<Bytes, QueryError> {
        let text = path.to_string_lossy();
        match &self.object {
            Some((url, store)) if text.starts_with("s3://") => {
                let base = url.as_str().trim_end_matches('/');
                let key = object_store::path::Path::from(
                    text.strip_prefix(base)
                        .unwrap_or(&text)
                        .trim_start_matches('/'),
                );
                let got = async { store.get(&key).await?.bytes().await };
                got.await
                    .map_err(|e| QueryError::Execution(format!("reading {text}: {e}")))
            }
            _ => std::fs::read(path)
                .map(Bytes::from)
                .map_err(|e| QueryError::Execution(format!("reading {text}: {e}"))),
        }
    }

    /// Rows of the rolled hours' table for `dataset`.
    pub async fn rolled_rows(
        &self,
        d: Dataset,
        cov: &Coverage,
    ) -> Result<Vec<Arc<RecordBatch>>, QueryError> {
        let Some((table, _)) = rollup_of(d) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(cov.rolled.len());
        for (_, r) in &cov.rolled {
            if let Some(f) = r.tables.get(table) {
                out.push(self.load(f).await?);
            }
        }
        Ok(out)
    }

    /// Runs a rollup SQL file over the raw records of the coverage's raw
    /// ranges, each record once: rows with the same key count once, as
    /// compaction will make it, where copies are possible.
    pub async fn raw_rows(
        &self,
        d: Dataset,
        sql: &str,
        cov: &Coverage,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        self.raw_rows_with(d, sql, cov, Vec::new()).await
    }

    /// [`History::raw_rows`] with `$1`, `$2`, … of `sql` bound to `params`.
    pub async fn raw_rows_with(
        &self,
        d: Dataset,
        sql: &str,
        cov: &Coverage,
        mut params: Vec<ScalarValue>,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        if cov.raw.is_empty() && cov.unique.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = self.session();
        if let Some((url, store)) = &self.object {
            ctx.register_object_store(url, store.clone());
        }
        // `timestamp` in any of the ranges, bound as parameters.
        let mut within = |ranges: &[(i64, i64)]| {
            let cond: Vec<String> = ranges
                .iter()
                .map(|&(a, b)| {
                    params.push(ScalarValue::TimestampNanosecond(
                        Some(a),
                        Some("UTC".into()),
                    ));
                    params.push(ScalarValue::TimestampNanosecond(
                        Some(b),
                        Some("UTC".into()),
                    ));
                    format!(
                        "(timestamp >= ${} AND timestamp < ${})",
                        params.len() - 1,
                        params.len()
                    )
                })
                .collect();
            cond.join(" OR ")
        };
        let mut parts = Vec::new();
        if !cov.raw.is_empty() {
            ctx.register_table(
                "raw",
                Arc::new(
                    DatasetTable::new(d, self.store.clone()).only_hours(cov.raw_hours.clone()),
                ),
            )?;
            let columns = d.columns();
            let key: Vec<&str> = d.key_columns().iter().map(|&c| columns[c].name).collect();
            let cond = within(&cov.raw);
            parts.push(if key.is_empty() {
                format!("SELECT * FROM raw WHERE {cond}")
            } else {
                raw_once(&key, &cond)
            });
        }
        if !cov.unique.is_empty() {
            ctx.register_table(
                "compacted",
                Arc::new(
                    DatasetTable::new(d, self.store.clone()).only_hours(cov.unique_hours.clone()),
                ),
            )?;
            let cond = within(&cov.unique);
            parts.push(format!("SELECT * FROM compacted WHERE {cond}"));
        }
        let text = format!("WITH source AS ({})\n{sql}", parts.join(" UNION ALL "));
        let df = ctx.sql(&text).await?.with_param_values(ParamValues::List(
            params.into_iter().map(Into::into).collect(),
        ))?;
        Ok(df.collect().await?)
    }

    /// The hourly rollup rows of `dataset` over `[from, to)`: stored rows
    /// for rolled-up hours, the same SQL over raw records for the others.
    pub async fn hourly(
        &self,
        d: Dataset,
        from: i64,
        to: i64,
    ) -> Result<Vec<Arc<RecordBatch>>, QueryError> {
        let Some((_, sql)) = rollup_of(d) else {
            return Ok(Vec::new());
        };
        let cov = self.coverage(d, from, to, &|_| 0);
        let mut out = self.rolled_rows(d, &cov).await?;
        let raw = self.raw_rows(d, sql, &cov).await?;
        out.extend(raw.into_iter().map(Arc::new));
        Ok(out)
    }

    /// [`History::hourly`] with every row set regrouped by `regroup` (a
    /// SQL file over `source`, keeping the columns): fewer rows when a read
    /// API needs fewer dimensions. Stored hours are regrouped once and kept.
    pub async fn hourly_regrouped(
        &self,
        d: Dataset,
        from: i64,
        to: i64,
        regroup: &'static str,
    ) -> Result<Vec<Arc<RecordBatch>>, QueryError> {
        let Some((table, sql)) = rollup_of(d) else {
            return Ok(Vec::new());
        };
        let cov = self.coverage(d, from, to, &|_| 0);
        let mut out = Vec::with_capacity(cov.rolled.len() + 1);
        for (_, r) in &cov.rolled {
            let Some(f) = r.tables.get(table) else {
                continue;
            };
            let key = (f.path.clone(), regroup);
            let cached = self.regrouped.lock().get(&key).cloned();
            let batch = match cached {
                Some(b) => b,
                None => {
                    let rows = self.load(f).await?;
                    let b = Arc::new(self.regroup_batch(rows.as_ref().clone(), regroup).await?);
                    self.regrouped.lock().insert(key, b.clone());
                    b
                }
            };
            out.push(batch);
        }
        let raw = self.raw_rows(d, sql, &cov).await?;
        out.extend(raw.into_iter().map(Arc::new));
        Ok(out)
    }

    /// Every reported gap span: the stored spans of rolled `vm_events`
    /// hours and those in its raw records.
    pub async fn gap_spans(&self) -> Result<GapSpans, QueryError> {
        let cov = self.coverage(Dataset::VmEvents, i64::MIN / 2, i64::MAX / 2, &|_| 0);
        let mut batches: Vec<RecordBatch> = self
            .rolled_rows(Dataset::VmEvents, &cov)
            .await?
            .iter()
            .map(|b| b.as_ref().clone())
            .collect();
        batches.extend(self.raw_rows(Dataset::VmEvents, VM_GAP_SPANS, &cov).await?);
        let mut spans: GapSpans = HashMap::new();
        for b in &batches {
            let vm = b.column(0).as_string::<i32>();
            let (a, z) = (
                b.column(1).as_primitive::<Int64Type>(),
                b.column(2).as_primitive::<Int64Type>(),
            );
            for r in 0..b.num_rows() {
                spans
                    .entry(vm.value(r).to_string())
                    .or_default()
                    .push((a.value(r), z.value(r)));
            }
        }
        for v in spans.values_mut() {
            v.sort_unstable();
            v.dedup();
        }
        Ok(spans)
    }
}

impl History {
    /// The columns of a dataset's stored rollup table.
    pub async fn rollup_schema(
        &self,
        d: Dataset,
    ) -> Result<arrow::datatypes::SchemaRef, QueryError> {
        if d == Dataset::VmMetrics {
            return Ok(hours::schema());
        }
        let Some((_, sql)) = rollup_of(d) else {
            return Ok(Arc::new(arrow::datatypes::Schema::empty()));
        };
        let ctx = self.session();
        let empty = MemTable::try_new(tally_pipeline::batch::schema(d), vec![vec![]])?;
        ctx.register_table("source", Arc::new(empty))?;
        Ok(Arc::new(ctx.sql(sql).await?.schema().as_arrow().clone()))
    }

    /// Registers the stored rollup tables (`usage_llm_hourly`, …,
    /// `vm_usage_hours`, `vm_gap_spans`) with `engine`: the rolled-up hours
    /// only (the read APIs add the others from raw records).
    pub async fn register_rollup_tables(
        &self,
        engine: &crate::sql::SqlEngine,
    ) -> Result<(), QueryError> {
        for d in Dataset::ALL {
            let Some((table, _)) = rollup_of(d) else {
                continue;
            };
            let schema = self.rollup_schema(d).await?;
            engine.register_table(
                table,
                Arc::new(crate::sql::catalog::RollupTable::new(
                    self.store.clone(),
                    d,
                    table,
                    schema,
                    self.rollups.clone(),
                )),
            )?;
        }
        Ok(())
    }

    /// A session for the rollup SQL files: strings are `Utf8`, as stored,
    /// and `llm_cost_usd_at` prices tokens.
    fn session(&self) -> SessionContext {
        let mut config = datafusion::prelude::SessionConfig::new();
        config.options_mut().sql_parser.map_string_types_to_utf8view = false;
        let ctx = SessionContext::new_with_config(config);
        for udf in cost_udfs(self.prices.clone()) {
            ctx.register_udf(udf);
        }
        ctx
    }

    /// Runs `sql` over one batch as `source`, as one batch.
    async fn regroup_batch(
        &self,
        batch: RecordBatch,
        sql: &str,
    ) -> Result<RecordBatch, QueryError> {
        let ctx = self.session();
        let schema = batch.schema();
        ctx.register_table(
            "source",
            Arc::new(MemTable::try_new(schema, vec![vec![batch]])?),
        )?;
        let df = ctx.sql(sql).await?;
        let out_schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        concat_batches(&out_schema, &batches).map_err(|e| QueryError::Execution(e.to_string()))
    }
}

fn read_parquet(bytes: Bytes, path: &Path) -> Result<RecordBatch, QueryError> {
    let err = |e: &dyn std::fmt::Display| {
        QueryError::Execution(format!("reading {}: {e}", path.display()))
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| err(&e))?;
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(|e| err(&e))?;
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(|e| err(&e))?;
    concat_batches(&schema, &batches).map_err(|e| err(&e))
}

impl History {
    /// Rollup files that were replaced or expired: what was kept of them
    /// goes.
    pub fn forget(&self, files: &[PathBuf]) {
        let mut cache = self.cache.lock();
        for f in files {
            cache.remove(f);
        }
        self.regrouped.lock().retain(|(p, _), _| !files.contains(p));
        let mut meters = self.meter_hours.lock();
        for f in files {
            meters.remove(f);
        }
    }
}

#[cfg(test)]
mod raw_once_tests;
