//! Start-up: finish the last flush round, find the committed files, and
//! remember their keys for dedup.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use tally_pipeline::batch::value_at;
use tally_pipeline::dedup::Dedup;
use tally_pipeline::record::encode_key_part;
use tally_pipeline::store::{FileEntry, Store};
use tally_pipeline::wal;
use tally_pipeline::Dataset;

use super::checkpoint::Checkpoint;
use super::destination::{list_local, Destination, ListedFile};
use super::flusher::FlushTarget;
use super::layout::{node_of, wal_dir};
use super::verify::{last_wal_seq, quarantine_file, verify_file, FileProblem};
use super::{io_err, SinkError};
use tally_pipeline::clock::now_secs;
use tally_pipeline::quarantine::{Damage, DamageKind};

/// What start-up found.
#[derive(Debug, Default)]
pub struct Recovered {
    pub checkpoint: Checkpoint,
    pub files: usize,
    pub renames_completed: usize,
    pub tmp_files_removed: usize,
    pub dedup_keys_restored: usize,
    /// Unreadable or foreign files moved to the quarantine.
    pub quarantined: usize,
    /// The checkpoint was unreadable and was rebuilt from the files.
    pub checkpoint_rebuilt: bool,
    /// Files replaced by a committed compaction, deleted now.
    pub superseded_removed: usize,
    /// The compacted files found.
    pub compacted: Vec<(Dataset, PathBuf)>,
}

/// Completes the pending moves of the checkpoint, removes temporary files
/// of rounds that never committed, registers the committed files (every
/// node's, when the prefix is shared) with `store`, and loads into `dedup`
/// the keys of files written within its window.
/// The WAL is replayed afterwards, from `checkpoint.flushed_seq`.
pub fn recover(target: &FlushTarget, store: &Store, dedup: &Dedup) -> Result<Recovered, SinkError> {
    let data = target.data.as_path();
    let dest = &*target.destination;
    fs::create_dir_all(data).map_err(io_err(data))?;
    let (checkpoint, rebuild) = match Checkpoint::load(&target.state) {
        Ok(c) => (c, false),
        Err(SinkError::Checkpoint { path, detail }) => {
            // Bit rot in the checkpoint: keep it aside and rebuild what it
            // said from the files (see below).
            quarantine_state_file(
                target,
                &path,
                format!("the checkpoint cannot be read ({detail}); the flushed WAL sequence is rebuilt from the Parquet files' metadata"),
            );
            (Checkpoint::default(), true)
        }
        Err(e) => return Err(e),
    };
    let mut out = Recovered {
        checkpoint,
        ..Default::default()
    };
    for p in std::mem::take(&mut out.checkpoint.pending) {
        if dest.complete(data, &p.tmp, &p.final_path)? {
            out.renames_completed += 1;
        }
    }
    if out.renames_completed > 0 {
        tracing::info!(
            renames = out.renames_completed,
            "completed the renames of an interrupted flush"
        );
    }
    if !rebuild {
        out.checkpoint.store(&target.state)?;
    }

    let mut own_last_seq = 0u64;
    for d in Dataset::ALL {
        let (_, tmps) = list_local(data, d)?;
        // Temporary files of this node's unfinished rounds (and of versions
        // that did not name the node); other nodes' may be in flight.
        let own = |t: &PathBuf| {
            let name = t.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.as_deref().unwrap_or("");
            let fin = name.trim_start_matches('.').trim_end_matches(".tmp");
            node_of(fin).is_none_or(|n| n == target.node)
        };
        for t in tmps.into_iter().filter(own) {
            fs::remove_file(&t).map_err(io_err(&t))?;
            out.tmp_files_removed += 1;
        }
        let (mut files, bad) = admit_files(target, d, dest.list(data, d)?);
        out.quarantined += bad.len();
        // A compaction that committed its file but had not deleted the files
        // it replaces yet: finish it.
        let gone = super::compact::superseded(&files);
        for p in &gone {
            tracing::debug!(path = %p.display(), "deleting a file a committed compaction replaced");
            dest.delete(p)?;
        }
        out.superseded_removed += gone.len();
        files.retain(|f| !gone.contains(&f.entry.path));
        out.compacted.extend(
            files
                .iter()
                .filter(|f| !f.compacted_from.is_empty())
                .map(|f| (d, f.entry.path.clone())),
        );
        if rebuild {
            for f in &files {
                let name = f.entry.path.file_name().and_then(|n| n.to_str());
                if name.and_then(node_of).is_none_or(|n| n == target.node) {
                    if let Some(seq) = last_wal_seq(dest, &f.entry) {
                        own_last_seq = own_last_seq.max(seq);
                    }
                }
            }
        }
        let (keys, unreadable) = restore_recent_keys(target, d, &files, dedup);
        out.dedup_keys_restored += keys;
        out.quarantined += unreadable.len();
        let files: Vec<FileEntry> = files
            .into_iter()
            .filter(|f| !unreadable.contains(&f.entry.path))
            .map(|f| f.entry)
            .collect();
        out.files += files.len();
        store.add_existing_files(d, files);
    }
    if rebuild {
        // Everything up to the last entry any of this node's files holds is
        // in Parquet; the WAL replays what comes after. Temporary files of
        // an interrupted round were removed above, and the WAL still holds
        // their entries (it is truncated only after a round commits).
        out.checkpoint.flushed_seq = own_last_seq;
        out.checkpoint.store(&target.state)?;
        out.checkpoint_rebuilt = true;
        tracing::warn!(
            flushed_seq = own_last_seq,
            "checkpoint rebuilt from the Parquet files"
        );
    }
    Ok(out)
}

/// Moves a damaged state file (checkpoint) into the quarantine and reports it.
fn quarantine_state_file(target: &FlushTarget, path: &Path, detail: String) {
    let Some(q) = target.quarantine.as_deref() else {
        return;
    };
    let name = path.file_name().unwrap_or_default();
    let kept = match q.move_in(path, &Path::new("state").join(name)) {
        Ok(p) => Some(p.display().to_string()),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot move the damaged state file into quarantine");
            None
        }
    };
    q.report(Damage {
        kind: DamageKind::StateFile,
        path: path.display().to_string(),
        quarantined: kept,
        offset: None,
        unread_entries: 0,
        unread_bytes: fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        detail,
        found_at: now_secs(),
        acknowledged: false,
        held: None,
    });
}

/// Checks the footer and schema of each listed file. Returns the good ones
/// and the paths of the bad ones, which are moved to the quarantine and
/// reported (when the target has a quarantine).
pub fn admit_files(
    target: &FlushTarget,
    d: Dataset,
    files: Vec<ListedFile>,
) -> (Vec<ListedFile>, Vec<PathBuf>) {
    let mut good = Vec::with_capacity(files.len());
    let mut bad = Vec::new();
    for f in files {
        match verify_file(&target.destination, &f.entry, d, false) {
            Ok(facts) => good.push(ListedFile {
                compacted_from: facts.compacted_from,
                ..f
            }),
            Err(problem) => {
                quarantine_file(
                    &target.destination,
                    &target.data,
                    target.quarantine.as_deref(),
                    &f.entry,
                    problem,
                );
                bad.push(f.entry.path);
            }
        }
    }
    (good, bad)
}

/// Loads into `dedup` the keys of the files modified within its window.
/// Returns how many keys, and the files whose keys could not be read: those
/// are quarantined (when the target has a quarantine).
pub fn restore_recent_keys(
    target: &FlushTarget,
    d: Dataset,
    files: &[ListedFile],
    dedup: &Dedup,
) -> (usize, Vec<PathBuf>) {
    let mut unreadable = Vec::new();
    if d.key_columns().is_empty() {
        return (0, unreadable);
    }
    let dest = &*target.destination;
    let horizon = SystemTime::now() - Duration::from_secs(dedup.window_secs());
    let mut n = 0;
    // Compacted hours need no keys in memory: a copy sent again lands in
    // its hour as a new file, and compacting the hour again drops it. So
    // start-up reads only the files of hours not compacted yet, whatever
    // the window holds.
    // Newest first, and no more than the index keeps: restart time is
    // bounded by the key bound, not by the data in the window.
    let mut recent: Vec<&ListedFile> = files
        .iter()
        .filter(|f| f.modified >= horizon && f.compacted_from.is_empty())
        .collect();
    recent.sort_by_key(|f| std::cmp::Reverse(f.modified));
    for f in recent {
        if n >= dedup.max_keys() {
            tracing::info!(
                dataset = %d,
                keys = n,
                "dedup keys restored up to the key bound; older copies are dropped when their hours are compacted"
            );
            break;
        }
        let secs = f
            .modified
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let restored = dest
            .read(&f.entry)
            .and_then(|bytes| restore_keys(bytes, &f.entry.path, d, dedup, secs));
        match restored {
            Ok(k) => n += k,
            Err(e) => {
                let problem = FileProblem {
                    kind: DamageKind::ParquetFile,
                    detail: format!("reading its keys: {e}"),
                };
                quarantine_file(
                    dest,
                    &target.data,
                    target.quarantine.as_deref(),
                    &f.entry,
                    problem,
                );
                unreadable.push(f.entry.path.clone());
            }
        }
    }
    (n, unreadable)
}

/// Opens a data directory read-only, for offline queries: the committed
/// files (and those of an interrupted round), plus what the WAL holds beyond
/// the checkpoint, in the live buffer of a new store.
pub fn open_files(data: &Path) -> Result<Arc<Store>, SinkError> {
    let store = Arc::new(Store::new(usize::MAX));
    let checkpoint = Checkpoint::load(data)?;
    for d in Dataset::ALL {
        let (listed, _) = list_local(data, d)?;
        let mut good: Vec<ListedFile> = Vec::with_capacity(listed.len());
        for f in listed {
            // Read-only: a bad file is left where it is, named, and skipped.
            match verify_file(&Destination::Local, &f.entry, d, false) {
                Ok(facts) => good.push(ListedFile {
                    compacted_from: facts.compacted_from,
                    ..f
                }),
                Err(p) => {
                    tracing::error!(path = %f.entry.path.display(), kind = ?p.kind, detail = %p.detail, "unreadable file left out of this query; `tally check --repair` moves it to quarantine")
                }
            }
        }
        // Files a committed compaction replaced (not deleted yet) are read
        // through the compacted file alone.
        let replaced = super::compact::superseded(&good);
        let mut files: Vec<FileEntry> = good
            .into_iter()
            .filter(|f| !replaced.contains(&f.entry.path))
            .map(|f| f.entry)
            .collect();
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
    for damage in &report.damage {
        tracing::error!(path = %damage.path.display(), offset = damage.offset, lost_entries = damage.lost_entries, detail = %damage.detail, "damaged WAL segment: what could be read is included; `tally check` tells more");
    }
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

fn restore_keys(
    bytes: Bytes,
    path: &Path,
    d: Dataset,
    dedup: &Dedup,
    secs: u64,
) -> Result<usize, SinkError> {
    let parquet_err = |source| SinkError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(parquet_err)?;
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
