//! Compaction: each closed hour partition becomes one file sorted by the
//! dataset's key, exact duplicates dropped, and its hourly rollups are
//! written beside it.
//!
//! An hour is closed once its end plus `compact_after` has passed. One round
//! of an hour:
//! 1. merge its files (each is sorted already) into a temporary file in the
//!    partition, dropping rows whose key was seen (the first stored copy
//!    stays); its footer names the files it replaces (`tally.compacted_from`);
//! 2. compute the hour's rollups from it and write them, fsync'd, under
//!    `<table>/date=…/hour=…/<compacted file stem>.<fingerprint>.parquet`;
//! 3. rename (or upload) the compacted file: the commit point;
//! 4. swap the files in the manifest in one step, delete the replaced
//!    rollups, and delete the replaced files a little later (a query that
//!    planned over them may still be reading).
//!
//! A crash before 3 leaves temporary files (removed at start-up) and maybe
//! rollups naming a file that does not exist (deleted as stale); after 3,
//! start-up deletes what the committed file replaces. So readers of tally
//! see the old files or the new one, never both and never neither.
//!
//! On a shared prefix, the node with the smallest id among the writers of an
//! hour's files compacts it; the others leave it alone.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use parking_lot::Mutex;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use tally_pipeline::batch::schema;
use tally_pipeline::checksum;
use tally_pipeline::clock::HOUR_NS;
use tally_pipeline::metrics::Metrics;
use tally_pipeline::rollup::{
    file_name, hour_of_path, RolledHour, RollupBuilder, RollupMemory, RollupOutput, Rollups,
};
use tally_pipeline::store::FileCheck;
use tally_pipeline::store::{FileEntry, Store};
use tally_pipeline::Dataset;
use tokio::sync::watch;

use super::background;
use super::destination::{list_local_table, Destination, ListedFile};
use super::flusher::FlushTarget;
use super::layout::{file_name as data_file_name, node_of, partition_dir, partition_of, tmp_name};
use super::merge::{self, conform, Input, KeyOrder, MergePlan};
use super::verify::COMPACTED_FROM;
use super::writer::writer_properties_with;
use super::{io_err, SinkError};

mod days;

/// When hours are compacted and how long files are kept.
#[derive(Debug, Clone)]
pub struct CompactionPolicy {
    /// An hour is closed this long after its end.
    pub compact_after: Duration,
    /// How often the compactor looks for work.
    pub interval: Duration,
    /// Raw hours older than this are deleted once rolled up (`None`: kept).
    pub raw_retention: Option<Duration>,
    /// Rollups older than this are deleted (`None`: kept).
    pub rollup_retention: Option<Duration>,
    /// How long replaced files stay on disk for queries still reading them.
    pub grace: Duration,
    /// Bytes one hour's compaction may hold: its merge, then its rollups.
    pub memory: usize,
}

/// Sets the rows per second of the pass that started at `pass.0` with
/// `pass.1` rows counted.
fn pass_rate(metrics: &Metrics, pass: (Instant, u64)) {
    let secs = pass.0.elapsed().as_secs_f64();
    if secs > 0.0 {
        let rows = metrics.compaction_rows.get() - pass.1;
        metrics
            .compaction_rows_per_second
            .set((rows as f64 / secs) as u64);
    }
}

/// A merge's way of giving ingest the core: it waits while ingest's queues
/// are more than half full (a compaction behind by a minute costs nothing;
/// a refused request costs its sender), but never for longer in all than it
/// has worked, so under a saturating load a backlog is still caught up, at
/// half speed.
struct IngestYield {
    started: Instant,
    waited: Mutex<Duration>,
}

impl IngestYield {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            waited: Mutex::new(Duration::ZERO),
        }
    }

    fn pause(&self, store: &Store) {
        let mut waited = self.waited.lock();
        while store.queue_fill() > 0.5 && *waited * 2 < self.started.elapsed() {
            std::thread::sleep(Duration::from_millis(20));
            *waited += Duration::from_millis(20);
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct CompactionReport {
    pub hours: usize,
    pub files_in: usize,
    pub rows_in: u64,
    pub rows_out: u64,
    pub duplicates_dropped: u64,
    pub rollup_files: usize,
    /// Days whose rollups were merged from their hours.
    pub days: usize,
    pub raw_files_expired: usize,
    pub rollup_files_expired: usize,
}

/// The files of a compacted file's footer `compacted_from`, as paths beside it.
pub fn superseded(files: &[ListedFile]) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    for f in files.iter().filter(|f| !f.compacted_from.is_empty()) {
        let Some(dir) = f.entry.path.parent() else {
            continue;
        };
        for name in &f.compacted_from {
            let p = dir.join(name);
            if p != f.entry.path {
                out.insert(p);
            }
        }
    }
    out
}

/// `<stem>.<fingerprint>[.crc32-XXXXXXXX].parquet` → (source file name,
/// fingerprint).
fn parse_rollup_name(name: &str) -> Option<(String, u64)> {
    let (name, _) = checksum::split_name(name);
    let stem = name.strip_suffix(".parquet")?;
    let (source, fp) = stem.rsplit_once('.')?;
    let fp = u64::from_str_radix(fp, 16).ok()?;
    Some((format!("{source}.parquet"), fp))
}

fn rollup_name(source: &str, fingerprint: u64) -> String {
    let stem = source.strip_suffix(".parquet").unwrap_or(source);
    format!("{stem}.{fingerprint:016x}.parquet")
}

pub struct Compactor {
    target: FlushTarget,
    store: Arc<Store>,
    rollups: Arc<Rollups>,
    builder: Arc<dyn RollupBuilder>,
    policy: CompactionPolicy,
    metrics: Arc<Metrics>,
    /// Replaced files waiting for their grace period to end.
    doomed: Mutex<Vec<(Instant, Vec<PathBuf>)>>,
    running: tokio::sync::Mutex<()>,
    /// Takes unreadable files out when an hour's merge cannot read one.
    file_check: Option<Arc<dyn FileCheck>>,
}

impl Compactor {
    pub fn new(
        target: FlushTarget,
        store: Arc<Store>,
        rollups: Arc<Rollups>,
        builder: Arc<dyn RollupBuilder>,
        policy: CompactionPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            target,
            store,
            rollups,
            builder,
            policy,
            metrics,
            doomed: Mutex::new(Vec::new()),
            running: tokio::sync::Mutex::new(()),
            file_check: None,
        }
    }

    /// An hour whose files cannot all be read makes `check` read the
    /// registered files; those it moves to the quarantine (reported) leave
    /// the hour, which is compacted from the others on the next pass.
    pub fn with_file_check(mut self, check: Arc<dyn FileCheck>) -> Self {
        self.file_check = Some(check);
        self
    }

    /// Start-up, after recovery (`recovery::recover`): removes temporary
    /// rollup files, registers the rollups whose source is the hour's only
    /// file (or whose hour has no raw file left), deletes stale ones, and
    /// marks compacted hours of datasets without rollups. `compacted` are the
    /// compacted files recovery found.
    pub fn recover(&self, compacted: &[(Dataset, PathBuf)]) -> Result<usize, SinkError> {
        let data = self.target.data.as_path();
        let dest = &*self.target.destination;
        let mut registered = 0;
        for d in Dataset::ALL {
            let tables = self.builder.tables(d);
            let raw = self.raw_by_hour(d);
            if tables.is_empty() {
                for (_, path) in compacted.iter().filter(|(cd, _)| *cd == d) {
                    let Some(hour) = hour_of_path(path) else {
                        continue;
                    };
                    if raw.get(&hour).is_some_and(|files| files.len() == 1) {
                        self.rollups.set(
                            d,
                            hour,
                            RolledHour {
                                source: file_name(path),
                                fingerprint: 0,
                                tables: BTreeMap::new(),
                            },
                        );
                        registered += 1;
                    }
                }
                continue;
            }
            // hour → source → (fingerprint, table → file)
            type Found = BTreeMap<String, (u64, BTreeMap<&'static str, FileEntry>)>;
            let mut found: BTreeMap<i64, Found> = BTreeMap::new();
            let mut stale: Vec<PathBuf> = Vec::new();
            for &table in tables {
                let (_, tmps) = list_local_table(data, table)?;
                for t in tmps {
                    fs::remove_file(&t).map_err(io_err(&t))?;
                }
                for f in dest.list_table(data, table)? {
                    let parsed = parse_rollup_name(&file_name(&f.entry.path));
                    match (hour_of_path(&f.entry.path), parsed) {
                        (Some(hour), Some((source, fp))) => {
                            let e = found.entry(hour).or_default().entry(source).or_default();
                            e.0 = fp;
                            e.1.insert(table, f.entry);
                        }
                        _ => stale.push(f.entry.path),
                    }
                }
            }
            for (hour, sources) in found {
                let live: Vec<String> = raw
                    .get(&hour)
                    .map(|fs| fs.iter().map(|f| file_name(&f.path)).collect())
                    .unwrap_or_default();
                // The current generation: the one made from a live file, or
                // when the hour's raw files expired, the last one written.
                let keep = if live.is_empty() {
                    sources.keys().next_back().cloned()
                } else {
                    sources.keys().find(|s| live.contains(s)).cloned()
                };
                for (source, (fp, files)) in sources {
                    if Some(&source) == keep.as_ref() && files.len() == tables.len() {
                        self.rollups.set(
                            d,
                            hour,
                            RolledHour {
                                source,
                                fingerprint: fp,
                                tables: files,
                            },
                        );
                        registered += 1;
                    } else {
                        stale.extend(files.into_values().map(|f| f.path));
                    }
                }
            }
            for p in stale {
                dest.delete(&p)?;
            }
        }
        registered += self.recover_days()?;
        Ok(registered)
    }

    /// Raw files of `dataset` by hour.
    fn raw_by_hour(&self, dataset: Dataset) -> BTreeMap<i64, Vec<FileEntry>> {
        let mut by_hour: BTreeMap<i64, Vec<FileEntry>> = BTreeMap::new();
        for f in self.store.snapshot(dataset).files {
            if let Some(h) = hour_of_path(&f.path) {
                by_hour.entry(h).or_default().push(f);
            }
        }
        by_hour
    }

    /// Whether this node compacts an hour made of `files`: the smallest
    /// node id among their writers is this node's.
    fn owns(&self, files: &[FileEntry]) -> bool {
        let names: Vec<String> = files.iter().map(|f| file_name(&f.path)).collect();
        let smallest = names.iter().filter_map(|n| node_of(n)).min();
        smallest.is_none_or(|n| n == self.target.node)
    }

    /// Compacts every closed hour that needs it, then applies retention.
    pub async fn run_once(&self, now: SystemTime) -> Result<CompactionReport, SinkError> {
        let _one = self.running.lock().await;
        let mut report = CompactionReport::default();
        // Deletes and the object store's calls block: off the async workers.
        tokio::task::block_in_place(|| self.delete_doomed(false))?;
        let now_ns = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i64;
        let closed_before = now_ns - self.policy.compact_after.as_nanos() as i64;
        // Every hour that waits, first: the backlog /metrics shows.
        let mut work: Vec<(Dataset, i64, Vec<FileEntry>)> = Vec::new();
        for d in Dataset::ALL {
            let busy = self.store.buffered_hours(d);
            let raw = self.raw_by_hour(d);
            let candidates: Vec<(i64, Vec<FileEntry>)> = raw
                .into_iter()
                .filter(|(h, files)| {
                    h + HOUR_NS <= closed_before
                        && !busy.contains(h)
                        && !files.is_empty()
                        && self.owns(files)
                })
                .collect();
            let hours: Vec<i64> = candidates.iter().map(|(h, _)| *h).collect();
            let fingerprints = if self.builder.tables(d).is_empty() {
                vec![0; hours.len()]
            } else {
                self.builder
                    .fingerprints(d, &hours)
                    .await
                    .map_err(|e| SinkError::Rollup(e.to_string()))?
            };
            for ((hour, files), fp) in candidates.into_iter().zip(fingerprints) {
                // A file of a release before checksums is compacted again:
                // the new file carries one.
                let done = self.rollups.get(d, hour).is_some_and(|r| {
                    files.len() == 1
                        && r.source == file_name(&files[0].path)
                        && r.fingerprint == fp
                        && checksum::recorded(&files[0].path).is_some()
                });
                if !done {
                    work.push((d, hour, files));
                }
            }
        }
        // Oldest first, one hour at a time: a day of backlog is a day of
        // passes in the same memory.
        work.sort_by_key(|(d, hour, _)| (*hour, d.index()));
        let started = Instant::now();
        let rows_before = self.metrics.compaction_rows.get();
        let backlog = |left: &[(Dataset, i64, Vec<FileEntry>)]| {
            self.metrics.compaction_backlog_hours.set(left.len() as u64);
            let oldest = left.iter().map(|(_, h, _)| h + HOUR_NS).min().unwrap_or(0);
            self.metrics
                .compaction_backlog_oldest_ns
                .set(oldest.max(0) as u64);
        };
        backlog(&work);
        for i in 0..work.len() {
            let (d, hour, files) = work[i].clone();
            let result = self
                .compact_hour(d, hour, files, (started, rows_before), &mut report)
                .await;
            backlog(&work[i + 1..]);
            pass_rate(&self.metrics, (started, rows_before));
            if let Err(e) = result {
                // One hour's failure does not stop the others.
                self.metrics.compaction_errors.add(1);
                tracing::error!(%d, hour, error = %e, "compacting an hour failed; it stays as it was and is tried again");
                if let (SinkError::Damaged { .. }, Some(check)) = (&e, &self.file_check) {
                    // The inputs' checksums: the damaged one goes to the
                    // quarantine, the hour is compacted from the others.
                    let inputs = work[i].2.clone();
                    tokio::task::block_in_place(|| check.ensure(d, inputs));
                } else if reads_files(&e) {
                    if let Some(check) = &self.file_check {
                        let moved = tokio::task::block_in_place(|| check.quarantine_unreadable());
                        if moved > 0 {
                            tracing::error!(%d, hour, files = moved, "unreadable files met by compaction are in quarantine; the hour is compacted from the others on the next pass");
                        }
                    }
                }
            }
        }
        // A day's failure is logged and counted by `roll_days`; what fails
        // here (the fingerprints) fails the pass, as for the hours.
        report.days = self.roll_days(closed_before).await?;
        tokio::task::block_in_place(|| self.expire(now_ns, &mut report))?;
        if report.hours > 0 || report.raw_files_expired > 0 || report.days > 0 {
            tracing::info!(
                hours = report.hours,
                files_in = report.files_in,
                rows_in = report.rows_in,
                rows_out = report.rows_out,
                duplicates_dropped = report.duplicates_dropped,
                rollup_files = report.rollup_files,
                days = report.days,
                raw_files_expired = report.raw_files_expired,
                rollup_files_expired = report.rollup_files_expired,
                seconds = started.elapsed().as_secs_f64(),
                peak_memory = self.metrics.compaction_memory.peak(),
                "compaction pass"
            );
        }
        Ok(report)
    }

    /// One hour: merge, roll up, commit, swap.
    async fn compact_hour(
        &self,
        d: Dataset,
        hour: i64,
        inputs: Vec<FileEntry>,
        pass: (Instant, u64),
        report: &mut CompactionReport,
    ) -> Result<(), SinkError> {
        let target = self.target.clone();
        let ins = inputs.clone();
        let (metrics, store) = (self.metrics.clone(), self.store.clone());
        let budget = self.policy.memory;
        let merge_started = Instant::now();
        let merged = background::run("tally-compact", move || {
            let ingest = IngestYield::new();
            let pause = || {
                ingest.pause(&store);
                pass_rate(&metrics, pass);
            };
            let cx = MergeContext {
                budget,
                metrics: &metrics,
                pause: &pause,
            };
            merge_hour(&target, d, hour, &ins, &cx)
        })
        .await;
        self.metrics.compaction_memory.set(0);
        let merged = merged?;
        let merge_secs = merge_started.elapsed().as_secs_f64();
        let rollup_started = Instant::now();
        let data = self.target.data.clone();
        let abs_tmp = data.join(&merged.tmp);
        let metrics = self.metrics.clone();
        let memory = RollupMemory {
            limit: budget,
            report: Arc::new(move |bytes| metrics.compaction_memory.set(bytes)),
        };
        let built = self.builder.build(d, hour, &abs_tmp, memory).await;
        self.metrics.compaction_memory.set(0);
        let rollup_secs = rollup_started.elapsed().as_secs_f64();
        let (outputs, fingerprint) = match built {
            Ok(b) => b,
            Err(e) => {
                let _ = fs::remove_file(&abs_tmp);
                return Err(SinkError::Rollup(e.to_string()));
            }
        };
        let target = self.target.clone();
        let m = merged.clone();
        let committed = tokio::task::spawn_blocking(move || {
            commit_hour(&target, d, hour, &m, &outputs, fingerprint)
        })
        .await
        .expect("commit does not panic");
        let tables = match committed {
            Ok(t) => t,
            Err(e) => {
                let _ = fs::remove_file(&abs_tmp);
                return Err(e);
            }
        };
        let dest = &self.target.destination;
        let entry = FileEntry {
            path: dest.location(&data, &merged.final_path),
            rows: merged.rows_out,
            bytes: merged.bytes,
        };
        let source = file_name(&entry.path);
        let replaced: Vec<PathBuf> = inputs.iter().map(|f| f.path.clone()).collect();
        let table_count = tables.len();
        let old = self.rollups.set(
            d,
            hour,
            RolledHour {
                source,
                fingerprint,
                tables,
            },
        );
        self.store.replace_files(d, &replaced, vec![entry]);
        if let Some(old) = old {
            let paths: Vec<PathBuf> = old.tables.values().map(|f| f.path.clone()).collect();
            tokio::task::block_in_place(|| paths.iter().try_for_each(|p| dest.delete(p)))?;
            self.builder.forget(&paths);
        }
        tracing::debug!(%d, hour, inputs = ?inputs.iter().map(|f| file_name(&f.path)).collect::<Vec<_>>(), output = %file_name(&merged.final_path), "hour compacted");
        tracing::info!(%d, hour, files_in = inputs.len(), rows_in = merged.rows_in, rows_out = merged.rows_out, merge_seconds = merge_secs, rollup_seconds = rollup_secs, "hour compacted");
        self.doomed.lock().push((Instant::now(), replaced));
        let i = d.index();
        self.metrics.compactions[i].add(1);
        self.metrics.compaction_duplicates[i].add(merged.rows_in - merged.rows_out);
        report.hours += 1;
        report.files_in += inputs.len();
        report.rows_in += merged.rows_in;
        report.rows_out += merged.rows_out;
        report.duplicates_dropped += merged.rows_in - merged.rows_out;
        report.rollup_files += table_count;
        Ok(())
    }

    /// Deletes replaced files whose grace period ended (all with `all`).
    fn delete_doomed(&self, all: bool) -> Result<(), SinkError> {
        let due: Vec<PathBuf> = {
            let mut doomed = self.doomed.lock();
            let grace = self.policy.grace;
            let (due, keep): (Vec<_>, Vec<_>) = doomed
                .drain(..)
                .partition(|(at, _)| all || at.elapsed() >= grace);
            *doomed = keep;
            due.into_iter().flat_map(|(_, p)| p).collect()
        };
        for p in &due {
            tracing::debug!(path = %p.display(), "deleting a file a compaction replaced");
            self.target.destination.delete(p)?;
        }
        Ok(())
    }

    /// Retention: raw hours that are rolled up and older than the raw
    /// retention, rollups older than theirs.
    fn expire(&self, now_ns: i64, report: &mut CompactionReport) -> Result<(), SinkError> {
        let dest = &self.target.destination;
        if let Some(keep) = self.policy.raw_retention {
            let before = now_ns - keep.as_nanos() as i64;
            for d in Dataset::ALL {
                for (hour, files) in self.raw_by_hour(d) {
                    if hour + HOUR_NS > before || !self.owns(&files) {
                        continue;
                    }
                    // Only an hour whose rollups hold it may go: bills of old
                    // hours must not change.
                    let rolled = self
                        .rollups
                        .get(d, hour)
                        .is_some_and(|r| files.len() == 1 && r.source == file_name(&files[0].path));
                    if !rolled {
                        continue;
                    }
                    let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
                    self.store.replace_files(d, &paths, Vec::new());
                    self.doomed.lock().push((Instant::now(), paths));
                    report.raw_files_expired += files.len();
                }
            }
        }
        if let Some(keep) = self.policy.rollup_retention {
            let before = now_ns - keep.as_nanos() as i64;
            for d in Dataset::ALL {
                for hour in self.rollups.hours(d) {
                    if hour + HOUR_NS > before {
                        continue;
                    }
                    // Rollups of an hour whose raw files are still there stay:
                    // they are what makes reading it cheap.
                    if self.raw_by_hour(d).contains_key(&hour) {
                        continue;
                    }
                    if let Some(old) = self.rollups.remove(d, hour) {
                        let paths: Vec<PathBuf> =
                            old.tables.values().map(|f| f.path.clone()).collect();
                        for p in &paths {
                            dest.delete(p)?;
                        }
                        report.rollup_files_expired += paths.len();
                        self.builder.forget(&paths);
                    }
                }
            }
        }
        report.rollup_files_expired += self.expire_days()?;
        Ok(())
    }

    /// Runs a pass every `interval` until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.policy.interval) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if let Err(e) = self.run_once(SystemTime::now()).await {
                self.metrics.compaction_errors.add(1);
                tracing::error!(error = %e, "compaction pass failed; the hour stays as it was and is tried again");
            }
        }
        let _ = tokio::task::block_in_place(|| self.delete_doomed(true));
    }
}

/// Whether a compaction error can come from reading an input file.
fn reads_files(e: &SinkError) -> bool {
    matches!(
        e,
        SinkError::Io { .. } | SinkError::Parquet { .. } | SinkError::Arrow(_)
    )
}

/// A merged hour waiting for its commit.
#[derive(Debug, Clone)]
struct Merged {
    /// Relative to the data directory.
    tmp: PathBuf,
    final_path: PathBuf,
    rows_in: u64,
    rows_out: u64,
    bytes: u64,
}

/// A file written under another key order (the keys of usage datasets
/// gained their tenant): its rows sorted in memory by the dataset's order.
/// Such files predate the change and are as small as a flush round makes
/// them, so this happens once per hour and within a round's memory.
fn sorted_in_memory(path: &Path, d: Dataset) -> Result<Input, SinkError> {
    let order = KeyOrder::of(d)?;
    let file = File::open(path).map_err(io_err(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|source| SinkError::Parquet {
            path: path.to_path_buf(),
            source,
        })?;
    let batches: Vec<RecordBatch> = reader
        .map(|b| b.map_err(SinkError::from).and_then(|b| conform(b, d)))
        .collect::<Result<_, _>>()?;
    let all = arrow::compute::concat_batches(&schema(d), &batches)?;
    let rows = order.sort_rows(&all)?;
    let mut idx: Vec<u32> = (0..all.num_rows() as u32).collect();
    // Stable: rows of one key keep their stored order.
    idx.sort_by(|&a, &b| rows.row(a as usize).cmp(&rows.row(b as usize)));
    let sorted = arrow::compute::take_record_batch(&all, &arrow::array::UInt32Array::from(idx))?;
    let step = 8192;
    let n = sorted.num_rows();
    let parts: Vec<RecordBatch> = (0..n)
        .step_by(step)
        .map(|o| sorted.slice(o, step.min(n - o)))
        .collect();
    Ok(Input {
        path: path.to_path_buf(),
        batches: Box::new(parts.into_iter().map(Ok)),
    })
}

/// What a merge needs to know of an input before reading it: from its
/// footer.
struct InputFooter {
    /// The local file read (a download when the input is in object storage).
    local: PathBuf,
    rows: u64,
    in_order: bool,
    row_bytes: usize,
    /// WAL sequences of its rows, when this node wrote it.
    seqs: Option<(u64, u64)>,
}

/// Temporary files of one hour's merge, removed when it ends whichever way.
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// How one hour's merge reports and yields.
struct MergeContext<'a> {
    budget: usize,
    metrics: &'a Metrics,
    pause: &'a (dyn Fn() + Sync),
}

/// Merges the hour's files into one sorted temporary file within the
/// budget: in rounds of sorted runs when the hour has more files than one
/// merge may read at once.
fn merge_hour(
    target: &FlushTarget,
    d: Dataset,
    hour: i64,
    inputs: &[FileEntry],
    cx: &MergeContext<'_>,
) -> Result<Merged, SinkError> {
    let data = target.data.as_path();
    let dest = &*target.destination;
    let (date, hh) = partition_of(hour);
    let dir = partition_dir(d, &date, hh);
    fs::create_dir_all(data.join(&dir)).map_err(io_err(&data.join(&dir)))?;
    // Names this node removes at start-up if it dies mid-merge.
    let scratch_name = || tmp_name(&data_file_name(&target.node, 0, &uuid::Uuid::new_v4()));
    let mut scratch = Scratch(Vec::new());
    let expected_order = super::writer::sorting_columns(d);

    let mut footers = Vec::with_capacity(inputs.len());
    for f in inputs {
        let local = match dest {
            Destination::Local => f.path.clone(),
            Destination::Object { .. } => {
                // One object in memory at a time, then on local disk.
                let bytes = dest.read(f)?;
                let local = data.join(&dir).join(scratch_name());
                scratch.0.push(local.clone());
                fs::write(&local, &bytes).map_err(io_err(&local))?;
                local
            }
        };
        // Damage must not pass into the compacted file under a new checksum.
        // (A download is checked against the name it has in the store.)
        let recorded = checksum::recorded(&f.path);
        let verdict = match recorded {
            None => checksum::Verdict::Unverified,
            Some(_) => {
                let (crc, _) = checksum::file_crc(&local, &mut |_| {}).map_err(io_err(&local))?;
                checksum::Verdict::of(recorded, crc)
            }
        };
        if verdict.is_damage() {
            return Err(SinkError::Damaged {
                path: f.path.clone(),
                detail: verdict.to_string(),
            });
        }
        let file = File::open(&local).map_err(io_err(&local))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| {
            SinkError::Parquet {
                path: f.path.clone(),
                source,
            }
        })?;
        let meta = builder.metadata();
        let own = node_of(&file_name(&f.path)).is_none_or(|n| n == target.node);
        let kv = meta.file_metadata().key_value_metadata();
        let get = |k: &str| {
            kv.and_then(|kvs| kvs.iter().find(|kv| kv.key == k))
                .and_then(|kv| kv.value.as_deref())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let seqs = match (get("tally.first_wal_seq"), get("tally.last_wal_seq")) {
            (Some(a), Some(b)) if own => Some((a, b)),
            _ => None,
        };
        footers.push(InputFooter {
            local,
            rows: meta.file_metadata().num_rows().max(0) as u64,
            in_order: meta
                .row_groups()
                .iter()
                .all(|g| g.sorting_columns() == Some(&expected_order)),
            row_bytes: merge::row_bytes(meta),
            seqs,
        });
    }
    let rows_in: u64 = footers.iter().map(|f| f.rows).sum();
    let own_first = footers.iter().filter_map(|f| f.seqs).map(|s| s.0).min();
    let own_last = footers.iter().filter_map(|f| f.seqs).map(|s| s.1).max();
    let (own_first, own_last) = (own_first.unwrap_or(0), own_last.unwrap_or(0));
    let row_bytes = footers.iter().map(|f| f.row_bytes).max().unwrap_or(0);
    let plan = MergePlan::new(cx.budget, row_bytes, schema(d).fields().len());

    let progress = merge::Progress {
        memory: &cx.metrics.compaction_memory,
        rows: &cx.metrics.compaction_rows,
        pause: cx.pause,
        base: 0,
    };
    let open = |local: &Path, in_order: bool| -> Result<Input, SinkError> {
        if in_order {
            Input::sorted_file(local, plan.batch_rows)
        } else {
            tracing::info!(path = %local.display(), dataset = %d, "file written under an older key order: sorted in memory for the merge");
            sorted_in_memory(local, d)
        }
    };
    // Rounds: groups of `fan_in` inputs into runs, until one merge is enough.
    let mut level: Vec<(PathBuf, bool)> = footers
        .iter()
        .map(|f| (f.local.clone(), f.in_order))
        .collect();
    let mut runs_made = 0usize;
    while level.len() > plan.fan_in {
        let mut next = Vec::with_capacity(level.len().div_ceil(plan.fan_in));
        for group in level.chunks(plan.fan_in) {
            let run = data.join(&dir).join(scratch_name());
            scratch.0.push(run.clone());
            let sources = group
                .iter()
                .map(|(p, ordered)| open(p, *ordered))
                .collect::<Result<Vec<_>, _>>()?;
            merge::merge_into(
                d,
                sources,
                &run,
                super::writer::run_properties(d),
                &plan,
                &progress,
                &mut |_| Ok(()),
            )?;
            next.push((run, true));
            runs_made += 1;
        }
        // The runs this round read are done with (never an input file).
        let done: Vec<PathBuf> = level
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| scratch.0.contains(p) && !footers.iter().any(|f| &f.local == p))
            .collect();
        for p in &done {
            let _ = fs::remove_file(p);
        }
        scratch.0.retain(|p| !done.contains(p));
        level = next;
    }

    let name = data_file_name(&target.node, own_first, &uuid::Uuid::new_v4());
    let tmp = dir.join(tmp_name(&name));
    let abs_tmp = data.join(&tmp);
    let replaced: Vec<String> = inputs.iter().map(|f| file_name(&f.path)).collect();
    let props = writer_properties_with(
        d,
        own_first,
        own_last,
        vec![KeyValue::new(
            COMPACTED_FROM.into(),
            serde_json::to_string(&replaced).expect("names serialise"),
        )],
    );
    let result = level
        .iter()
        .map(|(p, ordered)| open(p, *ordered))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|sources| {
            merge::merge_into(d, sources, &abs_tmp, props, &plan, &progress, &mut |_| {
                Ok(())
            })
        });
    match result {
        Ok((rows_out, _)) => {
            // Read back once: the name records the checksum of the bytes on
            // disk.
            let (crc, bytes) =
                checksum::file_crc(&abs_tmp, &mut |_| {}).map_err(io_err(&abs_tmp))?;
            let final_path = dir.join(checksum::sealed_name(&name, crc));
            if runs_made > 0 {
                tracing::info!(%d, hour, inputs = inputs.len(), runs = runs_made, fan_in = plan.fan_in, batch_rows = plan.batch_rows, "hour merged in rounds");
            }
            Ok(Merged {
                tmp,
                final_path,
                rows_in,
                rows_out,
                bytes,
            })
        }
        Err(e) => {
            let _ = fs::remove_file(&abs_tmp);
            Err(e)
        }
    }
}

/// Writes the rollups, then commits the compacted file. Returns the rollup
/// files by table.
/// Writes one rollup table's rows, fsync'd, as a temporary file in `dir`
/// (relative to `data`); returns it, its final name (sealed with its
/// checksum) and its size.
fn write_rollup(
    data: &Path,
    dir: &Path,
    base: &str,
    out: &RollupOutput,
    meta: Vec<KeyValue>,
) -> Result<(PathBuf, PathBuf, u64), SinkError> {
    let abs_dir = data.join(dir);
    fs::create_dir_all(&abs_dir).map_err(io_err(&abs_dir))?;
    let tmp = dir.join(tmp_name(base));
    let abs = data.join(&tmp);
    let parquet_err = |source| SinkError::Parquet {
        path: abs.clone(),
        source,
    };
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid")))
        .set_key_value_metadata(Some(meta))
        .build();
    let file = File::create(&abs).map_err(io_err(&abs))?;
    let mut w = ArrowWriter::try_new(
        checksum::Crc32Writer::new(file),
        out.batch.schema(),
        Some(props),
    )
    .map_err(parquet_err)?;
    w.write(&out.batch).map_err(parquet_err)?;
    let (file, crc, bytes) = w.into_inner().map_err(parquet_err)?.finish();
    file.sync_all().map_err(io_err(&abs))?;
    let name = checksum::sealed_name(base, crc);
    Ok((tmp, dir.join(name), bytes))
}

fn commit_hour(
    target: &FlushTarget,
    d: Dataset,
    hour: i64,
    merged: &Merged,
    outputs: &[RollupOutput],
    fingerprint: u64,
) -> Result<BTreeMap<&'static str, FileEntry>, SinkError> {
    let data = target.data.as_path();
    let dest = &*target.destination;
    let source = file_name(&merged.final_path);
    let (date, hh) = partition_of(hour);
    let mut written: Vec<(&'static str, PathBuf, PathBuf, u64)> = Vec::new();
    let result = (|| {
        for out in outputs {
            let dir = PathBuf::from(out.table)
                .join(format!("date={date}"))
                .join(format!("hour={hh:02}"));
            let base = rollup_name(&source, fingerprint);
            let meta = vec![
                KeyValue::new("tally.rollup_of".into(), source.clone()),
                KeyValue::new("tally.dataset".into(), d.name().to_string()),
            ];
            let (tmp, fin, bytes) = write_rollup(data, &dir, &base, out, meta)?;
            written.push((out.table, tmp, fin, bytes));
        }
        Ok::<_, SinkError>(())
    })();
    if let Err(e) = result {
        for (_, tmp, _, _) in &written {
            let _ = fs::remove_file(data.join(tmp));
        }
        return Err(e);
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut tables = BTreeMap::new();
    for (table, tmp, fin, bytes) in &written {
        dest.finish(data, tmp, fin)?;
        if let Some(p) = data.join(fin).parent() {
            dirs.push(p.to_path_buf());
        }
        tables.insert(
            *table,
            FileEntry {
                path: dest.location(data, fin),
                rows: 0,
                bytes: *bytes,
            },
        );
    }
    if matches!(dest, Destination::Local) {
        for d in dirs
            .iter()
            .flat_map(|d| [d.clone(), d.join("..").join("..")])
        {
            if d.exists() {
                File::open(&d)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err(&d))?;
            }
        }
    }
    // The commit point.
    dest.finish(data, &merged.tmp, &merged.final_path)?;
    if matches!(dest, Destination::Local) {
        if let Some(p) = data.join(&merged.final_path).parent() {
            File::open(p)
                .and_then(|f| f.sync_all())
                .map_err(io_err(p))?;
        }
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;

    /// A node "n" writing to a local directory.
    fn local_target(data: &Path) -> FlushTarget {
        FlushTarget {
            data: data.to_path_buf(),
            state: data.to_path_buf(),
            destination: Arc::new(Destination::Local),
            node: "n".into(),
            quarantine: None,
        }
    }

    /// The rows of a merge's file, as one batch.
    fn read_merged(data: &Path, merged: &Merged) -> RecordBatch {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let file = File::open(data.join(&merged.tmp)).unwrap();
        let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
    }

    /// Column `c` as strings (dictionaries decoded), null as `None`.
    fn strings(b: &RecordBatch, c: usize) -> Vec<Option<String>> {
        let a = arrow::compute::cast(b.column(c), &arrow::datatypes::DataType::Utf8).unwrap();
        let a = a
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        (0..a.len())
            .map(|r| (!a.is_null(r)).then(|| a.value(r).to_string()))
            .collect()
    }

    use crate::test_rng::xorshift;

    #[test]
    fn a_merge_yields_to_full_queues_for_no_longer_than_it_worked() {
        let store = Store::new(10);
        let y = IngestYield::new();
        y.pause(&store);
        assert_eq!(*y.waited.lock(), Duration::ZERO, "queues empty: no wait");
        store.reserve(Dataset::VmMetrics, 8).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // Queues stay full: it waits about as long as it had worked, then
        // goes on.
        y.pause(&store);
        let waited = *y.waited.lock();
        assert!(
            waited >= Duration::from_millis(100)
                && waited * 2 <= y.started.elapsed() + Duration::from_millis(40),
            "waited {waited:?} of {:?}",
            y.started.elapsed()
        );
    }

    #[test]
    fn rollup_names_carry_their_source_and_fingerprint() {
        let n = rollup_name("w-1-00000000000000000007-abc.parquet", 0xfeed);
        assert_eq!(
            parse_rollup_name(&checksum::sealed_name(&n, 7)),
            parse_rollup_name(&n)
        );
        assert_eq!(n, "w-1-00000000000000000007-abc.000000000000feed.parquet");
        assert_eq!(
            parse_rollup_name(&n),
            Some(("w-1-00000000000000000007-abc.parquet".into(), 0xfeed))
        );
        assert_eq!(parse_rollup_name("x.parquet"), None);
    }

    #[test]
    fn a_compacted_file_supersedes_its_siblings_only() {
        let f = |p: &str, from: &[&str]| ListedFile {
            entry: FileEntry {
                path: p.into(),
                rows: 0,
                bytes: 0,
            },
            modified: SystemTime::UNIX_EPOCH,
            compacted_from: from.iter().map(|s| s.to_string()).collect(),
        };
        let gone = superseded(&[
            f("d/h=1/c.parquet", &["a.parquet", "b.parquet", "c.parquet"]),
            f("d/h=1/a.parquet", &[]),
            f("d/h=2/a.parquet", &[]),
        ]);
        let mut gone: Vec<_> = gone.into_iter().collect();
        gone.sort();
        assert_eq!(
            gone,
            vec![
                PathBuf::from("d/h=1/a.parquet"),
                PathBuf::from("d/h=1/b.parquet")
            ]
        );
    }

    /// Merges `inputs` within `budget` bytes, recording its memory.
    fn merge_within(
        target: &FlushTarget,
        d: Dataset,
        hour: i64,
        inputs: &[FileEntry],
        budget: usize,
        metrics: &Metrics,
    ) -> Merged {
        let cx = MergeContext {
            budget,
            metrics,
            pause: &|| {},
        };
        merge_hour(target, d, hour, inputs, &cx).unwrap()
    }

    #[test]
    fn a_merge_keeps_every_distinct_key_once_in_key_order() {
        use crate::parquet::listing::tests::vm_sample;
        use crate::parquet::writer::write_partition;
        use tally_pipeline::Record;

        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let target = local_target(data);
        let hour = 1_705_363_200_000_000_000i64;
        let mut next = xorshift(7);
        let mut want = std::collections::BTreeSet::new();
        let mut inputs = Vec::new();
        // More files than one merge of the smallest budget reads at once:
        // merged in rounds.
        for f in 0..40u64 {
            // Files of 1 to 20,000 rows: some span several read batches.
            let rows = 1 + next(20_000);
            let records: Vec<Record> = (0..rows)
                .map(|_| {
                    let vm = format!("vm-{}", next(13));
                    let ts = hour + next(3_600_000) as i64 * 1_000_000;
                    want.insert((vm.clone(), ts));
                    vm_sample("c", &vm, ts)
                })
                .collect();
            let batch = tally_pipeline::batch::records_to_batch(Dataset::VmMetrics, records.iter())
                .unwrap();
            let w = write_partition(
                data,
                "n",
                Dataset::VmMetrics,
                ("2024-01-16", 0),
                (f + 1, f + 1),
                &[batch],
            )
            .unwrap();
            std::fs::rename(data.join(&w.tmp), data.join(&w.final_path)).unwrap();
            inputs.push(FileEntry {
                path: data.join(&w.final_path),
                rows: w.rows,
                bytes: w.bytes,
            });
        }
        let metrics = Metrics::default();
        let budget = 16 << 20;
        let row_bytes = inputs
            .iter()
            .map(|f| {
                let file = File::open(&f.path).unwrap();
                let b = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
                merge::row_bytes(b.metadata())
            })
            .max()
            .unwrap();
        let plan = MergePlan::new(budget, row_bytes, schema(Dataset::VmMetrics).fields().len());
        assert!(plan.fan_in < inputs.len(), "{plan:?}: no rounds");
        let merged = merge_within(&target, Dataset::VmMetrics, hour, &inputs, budget, &metrics);
        // Every round counted its rows; what the merge held stayed within
        // its budget; no run is left behind.
        assert!(metrics.compaction_rows.get() > merged.rows_in);
        assert!(
            metrics.compaction_memory.peak() <= budget as u64,
            "{} > {budget}",
            metrics.compaction_memory.peak()
        );
        let tmps = crate::parquet::destination::list_local(data, Dataset::VmMetrics)
            .unwrap()
            .1;
        assert_eq!(tmps, vec![data.join(&merged.tmp)]);
        let b = read_merged(data, &merged);
        let ts = b
            .column(2)
            .as_any()
            .downcast_ref::<arrow::array::TimestampNanosecondArray>()
            .unwrap();
        let got: Vec<(String, i64)> = strings(&b, 1)
            .into_iter()
            .enumerate()
            .map(|(r, vm)| (vm.unwrap(), ts.value(r)))
            .collect();
        assert_eq!(merged.rows_out as usize, want.len());
        assert_eq!(got, want.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn files_of_the_older_key_order_merge_with_tenant_keyed_files() {
        use crate::parquet::writer::write_partition;
        use tally_pipeline::batch::records_to_batch;
        use tally_pipeline::{Record, RecordBuilder, Value};

        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let target = local_target(data);
        let d = Dataset::UsageLlm;
        let hour = 1_705_363_200_000_000_000i64;
        let mut next = xorshift(11);
        let tenants = [None, Some("m1"), Some("m2")];
        // Expected: each (tenant, event_id) once, ordered with no tenant last.
        let mut want = std::collections::BTreeSet::new();
        let mut inputs = Vec::new();
        for f in 0..6u64 {
            let records: Vec<Record> = (0..500)
                .map(|_| {
                    let tenant = tenants[next(3) as usize];
                    let id = format!("e{:03}", next(200));
                    want.insert((tenant.is_none(), tenant.unwrap_or(""), id.clone()));
                    let mut b = RecordBuilder::new(d);
                    b.set("event_id", id.as_str())
                        .set(
                            "timestamp",
                            Value::Ts(hour + next(3_600_000) as i64 * 1_000_000),
                        )
                        .set("microdao_id", tenant)
                        .set("prompt_tokens", 1)
                        .set("completion_tokens", 1)
                        .set("total_tokens", 2)
                        .set("success", true)
                        .set("source", "test");
                    b.build().unwrap()
                })
                .collect();
            let path = if f % 2 == 0 {
                let batch = records_to_batch(d, records.iter()).unwrap();
                let w = write_partition(data, "n", d, ("2024-01-16", 0), (f + 1, f + 1), &[batch])
                    .unwrap();
                std::fs::rename(data.join(&w.tmp), data.join(&w.final_path)).unwrap();
                data.join(&w.final_path)
            } else {
                // As files were written before keys had a tenant: sorted
                // by (event_id, timestamp) and saying so.
                let mut sorted: Vec<&Record> = records.iter().collect();
                sorted.sort_by_key(|r| {
                    let mut k = Vec::new();
                    tally_pipeline::record::encode_key_part(&r.values[0], &mut k);
                    tally_pipeline::record::encode_key_part(&r.values[1], &mut k);
                    k
                });
                let batch = records_to_batch(d, sorted.into_iter()).unwrap();
                let props = WriterProperties::builder()
                    .set_sorting_columns(Some(
                        [0, 1]
                            .map(|c| parquet::file::metadata::SortingColumn {
                                column_idx: c,
                                descending: false,
                                nulls_first: false,
                            })
                            .to_vec(),
                    ))
                    .build();
                let dir = data.join("usage_llm/date=2024-01-16/hour=00");
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join(format!("old-{f}.parquet"));
                let mut w =
                    ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), Some(props))
                        .unwrap();
                w.write(&batch).unwrap();
                w.close().unwrap();
                path
            };
            inputs.push(FileEntry {
                rows: 500,
                bytes: std::fs::metadata(&path).unwrap().len(),
                path,
            });
        }
        let merged = merge_within(&target, d, hour, &inputs, 512 << 20, &Metrics::default());
        let b = read_merged(data, &merged);
        let got: Vec<(bool, String, String)> = strings(&b, 5)
            .into_iter()
            .zip(strings(&b, 0))
            .map(|(tenant, id)| (tenant.is_none(), tenant.unwrap_or_default(), id.unwrap()))
            .collect();
        let want: Vec<(bool, String, String)> = want
            .into_iter()
            .map(|(none, t, id)| (none, t.to_string(), id))
            .collect();
        assert_eq!(merged.rows_out as usize, want.len());
        assert_eq!(got, want);
    }
}
