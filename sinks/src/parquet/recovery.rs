//! Start-up: finish the last flush round, find the committed files, and
//! remember their keys for dedup.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use tally_pipeline::batch::value_at;
use tally_pipeline::dedup::Dedup;
use tally_pipeline::record::encode_key_part;
use tally_pipeline::store::{FileEntry, Store};
use tally_pipeline::wal;
use tally_pipeline::Dataset;

use super::checkpoint::Checkpoint;
use super::layout::wal_dir;
use super::{io_err, SinkError};

/// What start-up found.
#[derive(Debug, Default)]
pub struct Recovered {
    pub checkpoint: Checkpoint,
    pub files: usize,
    pub renames_completed: usize,
    pub tmp_files_removed: usize,
    pub dedup_keys_restored: usize,
}

/// Completes the pending renames of the checkpoint, removes temporary files
/// of rounds that never committed, registers committed files with `store`,
/// and loads into `dedup` the keys of files written within its window.
/// The WAL is replayed afterwards, from `checkpoint.flushed_seq`.
pub fn recover(data: &Path, store: &Store, dedup: &Dedup) -> Result<Recovered, SinkError> {
    fs::create_dir_all(data).map_err(io_err(data))?;
    let mut out = Recovered {
        checkpoint: Checkpoint::load(data)?,
        ..Default::default()
    };
    for p in std::mem::take(&mut out.checkpoint.pending) {
        let (tmp, fin) = (data.join(&p.tmp), data.join(&p.final_path));
        if tmp.exists() {
            fs::rename(&tmp, &fin).map_err(io_err(&fin))?;
            if let Some(dir) = fin.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(dir))?;
            }
            out.renames_completed += 1;
        } else if !fin.exists() {
            return Err(SinkError::MissingPending {
                tmp,
                final_path: fin,
            });
        }
    }
    if out.renames_completed > 0 {
        tracing::info!(
            renames = out.renames_completed,
            "completed the renames of an interrupted flush"
        );
    }
    out.checkpoint.store(data)?;

    let now = SystemTime::now();
    let horizon = now - Duration::from_secs(dedup.window_secs());
    for d in Dataset::ALL {
        let (files, tmps) = list_dataset_files(data, d)?;
        for t in tmps {
            fs::remove_file(&t).map_err(io_err(&t))?;
            out.tmp_files_removed += 1;
        }
        for f in &files {
            let modified = fs::metadata(&f.path)
                .and_then(|m| m.modified())
                .map_err(io_err(&f.path))?;
            if !d.key_columns().is_empty() && modified >= horizon {
                let secs = modified
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                out.dedup_keys_restored += restore_keys(&f.path, d, dedup, secs)?;
            }
        }
        out.files += files.len();
        store.add_existing_files(d, files);
    }
    Ok(out)
}

/// Opens a data directory read-only, for offline queries: the committed
/// files (and those of an interrupted round), plus what the WAL holds beyond
/// the checkpoint, in the live buffer of a new store.
pub fn open_files(data: &Path) -> Result<Arc<Store>, SinkError> {
    let store = Arc::new(Store::new(usize::MAX));
    let checkpoint = Checkpoint::load(data)?;
    for d in Dataset::ALL {
        let (mut files, _) = list_dataset_files(data, d)?;
        for p in &checkpoint.pending {
            let (tmp, fin) = (data.join(&p.tmp), data.join(&p.final_path));
            if fin.starts_with(data.join(d.name())) && !fin.exists() && tmp.exists() {
                files.push(file_entry(tmp)?);
            }
        }
        store.add_existing_files(d, files);
    }
    let report = wal::replay(&wal_dir(data), checkpoint.flushed_seq, |seq, records| {
        store.apply(seq, records, false)
    })?;
    store.set_applied_seq(report.last_seq);
    Ok(store)
}

fn file_entry(path: PathBuf) -> Result<FileEntry, SinkError> {
    let bytes = fs::metadata(&path).map_err(io_err(&path))?.len();
    Ok(FileEntry {
        path,
        rows: 0,
        bytes,
    })
}

/// Committed Parquet files of a dataset, in path order, and hidden
/// temporary files.
fn list_dataset_files(
    data: &Path,
    d: Dataset,
) -> Result<(Vec<FileEntry>, Vec<PathBuf>), SinkError> {
    let mut files = Vec::new();
    let mut tmps = Vec::new();
    let root = data.join(d.name());
    if !root.exists() {
        return Ok((files, tmps));
    }
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().map_err(io_err(&path))?.is_dir() {
                stack.push(path);
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                tmps.push(path);
            } else if name.ends_with(".parquet") {
                files.push(file_entry(path)?);
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((files, tmps))
}

fn restore_keys(path: &Path, d: Dataset, dedup: &Dedup, secs: u64) -> Result<usize, SinkError> {
    let parquet_err = |source| SinkError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err)?;
    let columns = d.columns();
    let names: Vec<&str> = d.key_columns().iter().map(|&c| columns[c].name).collect();
    let mask = ProjectionMask::columns(builder.parquet_schema(), names.iter().copied());
    let reader = builder.with_projection(mask).build().map_err(parquet_err)?;
    let mut n = 0;
    let mut key = Vec::with_capacity(64);
    for batch in reader {
        let batch = batch?;
        let arrays: Vec<_> = d
            .key_columns()
            .iter()
            .map(|&c| (batch.column_by_name(columns[c].name), columns[c].ty))
            .collect();
        for row in 0..batch.num_rows() {
            key.clear();
            for (array, ty) in &arrays {
                if let Some(a) = array {
                    encode_key_part(&value_at(a.as_ref(), *ty, row), &mut key);
                }
            }
            dedup.insert(d, &key, secs);
            n += 1;
        }
    }
    Ok(n)
}
