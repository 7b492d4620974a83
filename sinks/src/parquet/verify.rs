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
use tally_pipeline::quarantine::{now_secs, Damage, DamageKind, FileCheck, Quarantine};
use tally_pipeline::store::{FileEntry, Store};
use tally_pipeline::Dataset;

use super::destination::Destination;
use super::layout::node_of;

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
    let builder = ParquetRecordBatchReaderBuilder::try_new(reader)
        .map_err(|e| FileProblem::damaged(path, format!("footer: {e}")))?;
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

/// [`verify_reader`] on a listed file, wherever it lives.
pub fn verify_file(
    dest: &Destination,
    entry: &FileEntry,
    dataset: Dataset,
    deep: bool,
) -> Result<FileFacts, FileProblem> {
    match dest {
        Destination::Local => {
            let file = File::open(&entry.path).map_err(|e| FileProblem {
                kind: DamageKind::ParquetFile,
                detail: format!("open: {e}"),
            })?;
            verify_reader(&entry.path, file, dataset, deep)
        }
        Destination::Object { .. } => {
            let bytes = dest.read(entry).map_err(|e| FileProblem {
                kind: DamageKind::ParquetFile,
                detail: e.to_string(),
            })?;
            verify_reader(&entry.path, bytes, dataset, deep)
        }
    }
}

/// The last WAL sequence a file of tally's holds (`tally.last_wal_seq` in
/// its key-value metadata).
pub fn last_wal_seq(dest: &Destination, entry: &FileEntry) -> Option<u64> {
    let metadata = match dest {
        Destination::Local => {
            ParquetRecordBatchReaderBuilder::try_new(File::open(&entry.path).ok()?)
                .ok()?
                .metadata()
                .clone()
        }
        Destination::Object { .. } => {
            ParquetRecordBatchReaderBuilder::try_new(dest.read(entry).ok()?)
                .ok()?
                .metadata()
                .clone()
        }
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

/// Moves a bad file to the quarantine (when there is one) and reports it.
pub fn quarantine_file(
    dest: &Destination,
    data: &Path,
    quarantine: Option<&Quarantine>,
    entry: &FileEntry,
    problem: FileProblem,
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
    });
}

/// The read-time check the SQL engine calls when a query fails: reads every
/// registered file not read whole before, quarantines the bad ones and takes
/// them out of the store.
pub struct FileDoctor {
    pub destination: Arc<Destination>,
    pub data: PathBuf,
    pub store: Arc<Store>,
    pub quarantine: Arc<Quarantine>,
    /// Files read whole without a problem (files never change).
    verified: Mutex<HashSet<PathBuf>>,
}

impl FileDoctor {
    pub fn new(
        destination: Arc<Destination>,
        data: PathBuf,
        store: Arc<Store>,
        quarantine: Arc<Quarantine>,
    ) -> Self {
        Self {
            destination,
            data,
            store,
            quarantine,
            verified: Mutex::new(HashSet::new()),
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
                if self.verified.lock().contains(&f.path) {
                    continue;
                }
                match verify_file(&self.destination, &f, d, true) {
                    Ok(_) => {
                        self.verified.lock().insert(f.path.clone());
                    }
                    Err(problem) => {
                        quarantine_file(
                            &self.destination,
                            &self.data,
                            Some(&self.quarantine),
                            &f,
                            problem,
                        );
                        bad.push(f.path.clone());
                    }
                }
            }
            moved += bad.len();
            self.store.remove_files(d, &bad);
        }
        moved
    }
}
