//! Is a file in the data tree one of tally's readable Parquet files?
//!
//! Start-up checks the footer and schema of every file it registers; `tally
//! check` and a query that failed read every file whole. A file that fails
//! is moved to the quarantine and reported, so one bad file never stops the
//! service or fails a query over the others.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::Schema;
use parking_lot::Mutex;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::ChunkReader;
use tally_pipeline::batch::schema;
use tally_pipeline::checksum::{self, Verdict};
use tally_pipeline::clock::now_secs;
use tally_pipeline::metrics::Metrics;
use tally_pipeline::quarantine::{Damage, DamageKind, FileHeld, Quarantine};
use tally_pipeline::rollup::{hour_of_path, Rollups};
use tally_pipeline::store::{FileCheck, FileEntry, Store};
use tally_pipeline::Dataset;

use super::destination::Destination;
use super::layout::{node_of, table_of};

/// Why a file cannot be used.
#[derive(Debug, Clone, PartialEq)]
pub struct FileProblem {
    pub kind: DamageKind,
    pub detail: String,
}

impl FileProblem {
    fn damaged(path: &Path, detail: String) -> Self {
        // A file under a name tally writes is tally's own, damaged; any other
        // name was put there by someone else.
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(node_of)
            .is_some();
        Self {
            kind: if ours {
                DamageKind::ParquetFile
            } else {
                DamageKind::ForeignFile
            },
            detail,
        }
    }
}

/// The file's columns against the dataset's: same names, same types, no
/// required column missing.
fn check_schema(found: &Schema, dataset: Dataset) -> Result<(), FileProblem> {
    let expected = schema(dataset);
    for field in found.fields() {
        match expected.field_with_name(field.name()) {
            Ok(e) if e.data_type() == field.data_type() => {}
            Ok(e) => {
                return Err(FileProblem {
                    kind: DamageKind::ForeignFile,
                    detail: format!(
                        "column {} is {}, the {dataset} schema has {}",
                        field.name(),
                        field.data_type(),
                        e.data_type()
                    ),
                })
            }
            Err(_) => {
                return Err(FileProblem {
                    kind: DamageKind::ForeignFile,
                    detail: format!("column {} is not in the {dataset} schema", field.name()),
                })
            }
        }
    }
    for c in dataset.columns().iter().filter(|c| !c.nullable) {
        if found.field_with_name(c.name).is_err() {
            return Err(FileProblem {
                kind: DamageKind::ForeignFile,
                detail: format!("required column {} of {dataset} is missing", c.name),
            });
        }
    }
    Ok(())
}

/// What the footer of a good file says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileFacts {
    pub rows: u64,
    /// Whether the bytes were checked against a recorded checksum (only
    /// by a deep check).
    pub unverified: bool,
    /// A compacted file names the files it replaces (`tally.compacted_from`).
    pub compacted_from: Vec<String>,
}

/// The key of the footer metadata naming the files a compacted file replaces.
pub const COMPACTED_FROM: &str = "tally.compacted_from";

/// Checks footer and schema; with `deep`, decodes every row and compares the
/// count with the footer's.
pub fn verify_reader<R: ChunkReader + 'static>(
    path: &Path,
    reader: R,
    dataset: Dataset,
    deep: bool,
) -> Result<FileFacts, FileProblem> {
    let builder = open_footer(reader).map_err(|e| FileProblem::damaged(path, e))?;
    check_schema(builder.schema(), dataset)?;
    let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let compacted_from = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kvs| kvs.iter().find(|kv| kv.key == COMPACTED_FROM))
        .and_then(|kv| kv.value.as_deref())
        .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
        .unwrap_or_default();
    let facts = FileFacts {
        rows,
        unverified: false,
        compacted_from,
    };
    if !deep {
        return Ok(facts);
    }
    let batches = builder
        .build()
        .map_err(|e| FileProblem::damaged(path, format!("opening row groups: {e}")))?;
    let mut read = 0u64;
    for batch in batches {
        let batch = batch
            .map_err(|e| FileProblem::damaged(path, format!("decoding after {read} rows: {e}")))?;
        read += batch.num_rows() as u64;
    }
    if read != rows {
        return Err(FileProblem::damaged(
            path,
            format!("the footer says {rows} rows, {read} could be read"),
        ));
    }
    Ok(facts)
}

/// The footer of a file, as an Arrow reader. A damaged footer is an error,
/// never a panic (the Arrow schema in it is decoded by code that panics on
/// some bad input).
fn open_footer<R: ChunkReader + 'static>(
    reader: R,
) -> Result<ParquetRecordBatchReaderBuilder<R>, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ParquetRecordBatchReaderBuilder::try_new(reader)
    })) {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(format!("footer: {e}")),
        Err(_) => Err("footer: its Arrow schema cannot be decoded".into()),
    }
}

/// [`verify_reader`] on a listed file, wherever it lives. A deep check
/// also checks every byte against the checksum the file's name records.
pub fn verify_file(
    dest: &Destination,
    entry: &FileEntry,
    dataset: Dataset,
    deep: bool,
) -> Result<FileFacts, FileProblem> {
    let mut facts = match dest {
        Destination::Local => {
            if deep {
                check_checksum(dest, entry)?;
            }
            let file = File::open(&entry.path).map_err(|e| FileProblem {
                kind: DamageKind::ParquetFile,
                detail: format!("open: {e}"),
            })?;
            verify_reader(&entry.path, file, dataset, deep)?
        }
        Destination::Object { .. } => {
            let bytes = dest.read(entry).map_err(|e| FileProblem {
                kind: DamageKind::ParquetFile,
                detail: e.to_string(),
            })?;
            if deep {
                bytes_checksum(&entry.path, &bytes)?;
            }
            verify_reader(&entry.path, bytes, dataset, deep)?
        }
    };
    facts.unverified = checksum::recorded(&entry.path).is_none();
    Ok(facts)
}

/// A rollup file: its checksum, its footer, and with `deep` every row.
pub fn verify_rollup(
    dest: &Destination,
    entry: &FileEntry,
    deep: bool,
) -> Result<FileFacts, FileProblem> {
    let bytes = dest.read(entry).map_err(|e| FileProblem {
        kind: DamageKind::ParquetFile,
        detail: e.to_string(),
    })?;
    bytes_checksum(&entry.path, &bytes)?;
    let damaged = |detail: String| FileProblem {
        kind: DamageKind::ParquetFile,
        detail,
    };
    let builder = open_footer(bytes).map_err(damaged)?;
    let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
    if deep {
        let mut read = 0u64;
        for b in builder
            .build()
            .map_err(|e| damaged(format!("opening row groups: {e}")))?
        {
            read += b
                .map_err(|e| damaged(format!("decoding after {read} rows: {e}")))?
                .num_rows() as u64;
        }
        if read != rows {
            return Err(damaged(format!(
                "the footer says {rows} rows, {read} could be read"
            )));
        }
    }
    Ok(FileFacts {
        rows,
        unverified: checksum::recorded(&entry.path).is_none(),
        compacted_from: Vec::new(),
    })
}

fn mismatch(verdict: Verdict) -> Result<Verdict, FileProblem> {
    if verdict.is_damage() {
        Err(FileProblem {
            kind: DamageKind::ParquetFile,
            detail: verdict.to_string(),
        })
    } else {
        Ok(verdict)
    }
}

fn bytes_checksum(path: &Path, bytes: &[u8]) -> Result<Verdict, FileProblem> {
    mismatch(checksum::check_bytes(path, bytes))
}

/// Every byte of a listed file against the checksum its name records (a
/// file of an older release has none: `Unverified`).
pub fn check_checksum(dest: &Destination, entry: &FileEntry) -> Result<Verdict, FileProblem> {
    if checksum::recorded(&entry.path).is_none() {
        return Ok(Verdict::Unverified);
    }
    match dest {
        Destination::Local => {
            let verdict = checksum::check_file(&entry.path).map_err(|e| FileProblem {
                kind: DamageKind::ParquetFile,
                detail: format!("reading: {e}"),
            })?;
            mismatch(verdict)
        }
        Destination::Object { .. } => {
            let bytes = dest.read(entry).map_err(|e| FileProblem {
                kind: DamageKind::ParquetFile,
                detail: e.to_string(),
            })?;
            bytes_checksum(&entry.path, &bytes)
        }
    }
}

/// What a file under `table` (a dataset or a rollup table) held, from its
/// path and, when it can be read, its footer.
pub fn held(dest: &Destination, entry: &FileEntry, table: &str, rollup: bool) -> FileHeld {
    let rows = match dest {
        Destination::Local => File::open(&entry.path)
            .ok()
            .and_then(|f| open_footer(f).ok())
            .map(|b| b.metadata().file_metadata().num_rows().max(0) as u64),
        Destination::Object { .. } => dest
            .read(entry)
            .ok()
            .and_then(|b| open_footer(b).ok())
            .map(|b| b.metadata().file_metadata().num_rows().max(0) as u64),
    };
    FileHeld {
        role: if rollup { "rollup" } else { "raw" }.to_string(),
        table: table.to_string(),
        hour: hour_of_path(&entry.path).map(|h| {
            chrono::DateTime::from_timestamp_nanos(h)
                .format("%Y-%m-%dT%H:00:00Z")
                .to_string()
        }),
        rows,
    }
}

/// The last WAL sequence a file of tally's holds (`tally.last_wal_seq` in
/// its key-value metadata).
pub fn last_wal_seq(dest: &Destination, entry: &FileEntry) -> Option<u64> {
    let metadata = match dest {
        Destination::Local => open_footer(File::open(&entry.path).ok()?)
            .ok()?
            .metadata()
            .clone(),
        Destination::Object { .. } => open_footer(dest.read(entry).ok()?).ok()?.metadata().clone(),
    };
    metadata
        .file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|kv| kv.key == "tally.last_wal_seq")?
        .value
        .as_deref()?
        .parse()
        .ok()
}

/// Moves a bad file to the quarantine (when there is one) and reports it,
/// with what it held.
pub fn quarantine_file(
    dest: &Destination,
    data: &Path,
    quarantine: Option<&Quarantine>,
    entry: &FileEntry,
    problem: FileProblem,
) {
    quarantine_held(dest, data, quarantine, entry, problem, None)
}

/// [`quarantine_file`] with what the file held (read before it moves).
pub fn quarantine_held(
    dest: &Destination,
    data: &Path,
    quarantine: Option<&Quarantine>,
    entry: &FileEntry,
    problem: FileProblem,
    held: Option<FileHeld>,
) {
    let Some(q) = quarantine else {
        return;
    };
    let kept = match dest.quarantine(data, &entry.path, q) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(path = %entry.path.display(), error = %e, "cannot move the bad file into quarantine; it stays in place, unread");
            None
        }
    };
    q.report(Damage {
        kind: problem.kind,
        path: entry.path.display().to_string(),
        quarantined: kept,
        offset: None,
        unread_entries: 0,
        unread_bytes: entry.bytes,
        detail: problem.detail,
        found_at: now_secs(),
        acknowledged: false,
        held,
    });
}

/// Files remembered as verified before the gone ones are forgotten.
const REMEMBER_BOUND: usize = 200_000;

/// The read-time check the SQL engine calls when a query fails: reads every
/// registered file not read whole before, quarantines the bad ones and takes
/// them out of the store.
pub struct FileDoctor {
    pub destination: Arc<Destination>,
    pub data: PathBuf,
    pub store: Arc<Store>,
    pub rollups: Arc<Rollups>,
    pub quarantine: Arc<Quarantine>,
    metrics: Arc<Metrics>,
    /// Files whose checksum matched since start-up (files never change;
    /// the scrub reads them again).
    verified: Mutex<HashSet<PathBuf>>,
    /// Files read whole without a problem.
    decoded: Mutex<HashSet<PathBuf>>,
}

impl FileDoctor {
    pub fn new(
        destination: Arc<Destination>,
        data: PathBuf,
        store: Arc<Store>,
        rollups: Arc<Rollups>,
        quarantine: Arc<Quarantine>,
        metrics: Arc<Metrics>,
    ) -> Self {
        // Hours whose raw rows damage took stay marked across restarts
        // (until a copy restores the file: `tally check --repair --from`).
        for r in quarantine.all() {
            let Some(held) = r.held.as_ref().filter(|h| h.role == "raw") else {
                continue;
            };
            let d = Dataset::ALL.iter().find(|d| d.name() == held.table);
            let h = held
                .hour
                .as_deref()
                .and_then(|h| chrono::DateTime::parse_from_rfc3339(h).ok())
                .and_then(|t| t.timestamp_nanos_opt());
            if let (Some(d), Some(h)) = (d, h) {
                store.mark_lost(*d, h);
            }
        }
        Self {
            destination,
            data,
            store,
            rollups,
            quarantine,
            metrics,
            verified: Mutex::new(HashSet::new()),
            decoded: Mutex::new(HashSet::new()),
        }
    }

    /// Forgets the files no longer listed (replaced by compaction, expired):
    /// what it remembers stays as large as what is stored.
    pub fn forget_gone(&self) {
        let mut live: HashSet<PathBuf> = HashSet::new();
        for d in Dataset::ALL {
            live.extend(self.store.snapshot(d).files.into_iter().map(|f| f.path));
            for (_, r) in self.rollups.range(d, i64::MIN, i64::MAX) {
                live.extend(r.tables.values().map(|f| f.path.clone()));
            }
        }
        self.verified.lock().retain(|p| live.contains(p));
        self.decoded.lock().retain(|p| live.contains(p));
    }

    /// Remembers a file whose checksum matched; past a bound, forgets the
    /// files that are gone.
    fn remember(&self, path: &Path) {
        let len = {
            let mut v = self.verified.lock();
            v.insert(path.to_path_buf());
            v.len()
        };
        if len > REMEMBER_BOUND {
            self.forget_gone();
        }
    }

    /// A damaged raw file of `d`: quarantined, reported with what it held,
    /// out of the store, its hour marked as having lost rows.
    pub fn raw_damaged(&self, d: Dataset, entry: &FileEntry, problem: FileProblem) {
        self.set_aside(entry, problem, d.name(), false);
        self.store
            .remove_files(d, std::slice::from_ref(&entry.path));
        if let Some(h) = hour_of_path(&entry.path) {
            self.store.mark_lost(d, h);
        }
    }

    /// A damaged rollup file of `hour`: quarantined and reported; the
    /// hour's rollups are dropped (readers use its raw rows) and the
    /// compactor's next pass builds them again from the raw file.
    pub fn rollup_damaged(&self, d: Dataset, hour: i64, entry: &FileEntry, problem: FileProblem) {
        let table = table_of(&entry.path).unwrap_or_default().to_string();
        self.set_aside(entry, problem, &table, true);
        if let Some(old) = self.rollups.remove(d, hour) {
            tracing::error!(dataset = %d, hour, source = %old.source, "a rollup of the hour is damaged: its answers come from raw rows until the compactor builds it again");
        }
    }

    /// A damaged rollup file of a UTC day: quarantined and reported; the
    /// day's rollup is dropped (readers merge its hours) and the
    /// compactor's next pass merges it again.
    pub fn day_damaged(&self, d: Dataset, day: i64, entry: &FileEntry, problem: FileProblem) {
        // `<table>/date=…/<file>`
        let table = entry.path.iter().rev().nth(2);
        let table = table
            .and_then(|t| t.to_str())
            .unwrap_or_default()
            .to_string();
        self.set_aside(entry, problem, &table, true);
        if self.rollups.remove_day(d, day).is_some() {
            tracing::error!(dataset = %d, day, path = %entry.path.display(), "a day's rollup is damaged: its answers come from its hours until the compactor merges it again");
        }
    }

    /// Quarantines a damaged file, reported with what it held (read before
    /// it moves), and forgets that it was verified.
    fn set_aside(&self, entry: &FileEntry, problem: FileProblem, table: &str, rollup: bool) {
        let held = held(&self.destination, entry, table, rollup);
        quarantine_held(
            &self.destination,
            &self.data,
            Some(&self.quarantine),
            entry,
            problem,
            Some(held),
        );
        self.verified.lock().remove(&entry.path);
    }

    /// The check of a file's first use since start-up (nothing when it was
    /// checked before).
    fn first_use(&self, file: &FileEntry) -> Result<(), FileProblem> {
        if self.verified.lock().contains(&file.path) {
            return Ok(());
        }
        self.metrics.checksum_files.add(1);
        match check_checksum(&self.destination, file) {
            Ok(_) => {
                self.remember(&file.path);
                Ok(())
            }
            Err(p) => {
                self.metrics.checksum_damaged.add(1);
                Err(p)
            }
        }
    }
}

impl FileCheck for FileDoctor {
    fn quarantine_unreadable(&self) -> usize {
        let mut moved = 0;
        for d in Dataset::ALL {
            let files = self.store.snapshot(d).files;
            let mut bad = Vec::new();
            for f in files {
                if self.decoded.lock().contains(&f.path) {
                    continue;
                }
                match verify_file(&self.destination, &f, d, true) {
                    Ok(_) => {
                        self.decoded.lock().insert(f.path.clone());
                        self.verified.lock().insert(f.path.clone());
                    }
                    Err(problem) => {
                        self.raw_damaged(d, &f, problem);
                        bad.push(f.path.clone());
                    }
                }
            }
            moved += bad.len();
        }
        moved
    }

    fn ensure(&self, d: Dataset, files: Vec<FileEntry>) -> Vec<FileEntry> {
        let mut good = Vec::with_capacity(files.len());
        for f in files {
            match self.first_use(&f) {
                Ok(()) => good.push(f),
                Err(problem) => self.raw_damaged(d, &f, problem),
            }
        }
        good
    }

    fn ensure_rollup(&self, d: Dataset, hour: i64, file: &FileEntry) -> bool {
        match self.first_use(file) {
            Ok(()) => true,
            Err(problem) => {
                self.rollup_damaged(d, hour, file, problem);
                false
            }
        }
    }

    fn ensure_day_rollup(&self, d: Dataset, day: i64, file: &FileEntry) -> bool {
        match self.first_use(file) {
            Ok(()) => true,
            Err(problem) => {
                self.day_damaged(d, day, file, problem);
                false
            }
        }
    }
}
/// The check of a reader that changes nothing (`tally sql`): a damaged file
/// is left out of the answer and named in [`ReadOnlyCheck::damaged`];
/// nothing is moved.
pub struct ReadOnlyCheck {
    destination: Arc<Destination>,
    damaged: Mutex<Vec<(PathBuf, String)>>,
}

impl ReadOnlyCheck {
    pub fn new(destination: Arc<Destination>) -> Self {
        Self {
            destination,
            damaged: Mutex::new(Vec::new()),
        }
    }

    /// The files left out, and why.
    pub fn damaged(&self) -> Vec<(PathBuf, String)> {
        self.damaged.lock().clone()
    }

    fn intact(&self, f: &FileEntry) -> bool {
        match check_checksum(&self.destination, f) {
            Ok(_) => true,
            Err(p) => {
                self.damaged.lock().push((f.path.clone(), p.detail));
                false
            }
        }
    }
}

impl FileCheck for ReadOnlyCheck {
    fn quarantine_unreadable(&self) -> usize {
        0
    }

    fn ensure(&self, _: Dataset, files: Vec<FileEntry>) -> Vec<FileEntry> {
        files.into_iter().filter(|f| self.intact(f)).collect()
    }

    fn ensure_rollup(&self, _: Dataset, _: i64, file: &FileEntry) -> bool {
        self.intact(file)
    }

    fn ensure_day_rollup(&self, _: Dataset, _: i64, file: &FileEntry) -> bool {
        self.intact(file)
    }
}
