//! The flusher: cuts the live buffer into Parquet files by rows, bytes or age.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::UInt32Array;
use arrow::compute::take_record_batch;
use arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use tally_pipeline::batch::times;
use tally_pipeline::clock::HOUR_NS;
use tally_pipeline::metrics::Metrics;
use tally_pipeline::quarantine::Quarantine;
use tally_pipeline::store::{Chunk, FileEntry, Store};
use tally_pipeline::wal::Wal;
use tally_pipeline::Dataset;
use tokio::sync::watch;

use super::background;
use super::checkpoint::{Checkpoint, PendingRename};
use super::destination::Destination;
use super::layout::partition_of;
use super::writer::{write_partition, WrittenFile};
use super::{io_err, SinkError};

/// When a flush round starts: any dataset over a bound.
#[derive(Debug, Clone)]
pub struct FlushPolicy {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
    /// How often the bounds are checked.
    pub tick: Duration,
}

/// What one round wrote.
#[derive(Debug, Default, Clone)]
pub struct FlushStats {
    pub through_seq: u64,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
}

/// Where and as whom a flusher writes.
#[derive(Debug, Clone)]
pub struct FlushTarget {
    /// Local directory of the files themselves (local destination, possibly
    /// shared with other nodes), or of their staging copies (object store).
    pub data: PathBuf,
    /// This node's own directory: its `_tally/` holds the WAL and checkpoint.
    pub state: PathBuf,
    pub destination: Arc<Destination>,
    /// Written into every file name (see `layout`).
    pub node: String,
    /// Where unreadable and foreign files go; `None` reports nothing and
    /// moves nothing (offline readers).
    pub quarantine: Option<Arc<Quarantine>>,
}

pub struct Flusher {
    target: FlushTarget,
    store: Arc<Store>,
    wal: Wal,
    metrics: Arc<Metrics>,
    policy: FlushPolicy,
    /// Held for a whole round, so rounds never overlap.
    checkpoint: tokio::sync::Mutex<Checkpoint>,
    last_error: Mutex<Option<String>>,
    /// Set when a round failed after its checkpoint: only a restart (which
    /// completes the renames) may go on.
    halted: Mutex<Option<String>>,
    /// The WAL sequence that committed files hold, for consumers that commit
    /// upstream offsets only once their records are in Parquet (Kafka).
    flushed: watch::Sender<u64>,
}

impl Flusher {
    pub fn new(
        target: FlushTarget,
        store: Arc<Store>,
        wal: Wal,
        metrics: Arc<Metrics>,
        policy: FlushPolicy,
        checkpoint: Checkpoint,
    ) -> Self {
        let (flushed, _) = watch::channel(checkpoint.flushed_seq);
        Self {
            target,
            flushed,
            store,
            wal,
            metrics,
            policy,
            checkpoint: tokio::sync::Mutex::new(checkpoint),
            last_error: Mutex::new(None),
            halted: Mutex::new(None),
        }
    }

    /// Follows the highest WAL sequence held by committed files.
    pub fn flushed(&self) -> watch::Receiver<u64> {
        self.flushed.subscribe()
    }

    /// The error of the last round, if it failed.
    pub fn last_error(&self) -> Option<String> {
        self.halted
            .lock()
            .clone()
            .or_else(|| self.last_error.lock().clone())
    }

    /// Whether the flusher stopped for good (the writer is down).
    pub fn is_halted(&self) -> bool {
        self.halted.lock().is_some()
    }

    pub fn due(&self) -> bool {
        Dataset::ALL.iter().any(|d| {
            let s = self.store.stats(*d);
            s.buffered_rows >= self.policy.max_rows
                || s.buffered_bytes >= self.policy.max_bytes
                || s.oldest.is_some_and(|t| t.elapsed() >= self.policy.max_age)
        })
    }

    /// Checks the policy every tick until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = self.policy.tick;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
            if !self.due() {
                continue;
            }
            match self.flush().await {
                Ok(_) => backoff = self.policy.tick,
                Err(_) => backoff = (backoff * 2).min(Duration::from_secs(5)),
            }
        }
    }

    /// Writes everything buffered up to now into Parquet files.
    pub async fn flush(&self) -> Result<FlushStats, SinkError> {
        let mut checkpoint = self.checkpoint.lock().await;
        if let Some(reason) = self.halted.lock().clone() {
            return Err(SinkError::Halted(reason));
        }
        let through = self.store.applied_seq();
        if through <= checkpoint.flushed_seq {
            return Ok(FlushStats::default());
        }
        let target = self.target.clone();
        let store = self.store.clone();
        let previous = checkpoint.clone();
        // Under a saturating load the round at a low priority would get too
        // little of a core and senders would be refused for a full queue:
        // once half the bound is queued the round runs at the default
        // priority.
        let lower = self.store.queue_fill() < 0.5;
        let result = background::run_at("tally-flush", lower, move || {
            write_round(&target, &store, through, previous)
        })
        .await;
        let (files, new_checkpoint) = match result {
            Ok(ok) => ok,
            Err(RoundError::BeforeCommit(e)) => {
                self.metrics.flush_errors.add(1);
                tracing::error!(error = %e, "Parquet flush failed; records stay in the WAL and the buffer");
                *self.last_error.lock() = Some(e.to_string());
                return Err(e);
            }
            Err(RoundError::AfterCommit(e)) => {
                self.metrics.flush_errors.add(1);
                tracing::error!(error = %e, "Parquet flush failed after its checkpoint; the writer stops until a restart completes the round");
                *self.halted.lock() = Some(e.to_string());
                return Err(e);
            }
        };
        *checkpoint = new_checkpoint;
        *self.last_error.lock() = None;

        let mut stats = FlushStats {
            through_seq: through,
            ..Default::default()
        };
        let mut by_dataset: BTreeMap<Dataset, Vec<FileEntry>> = BTreeMap::new();
        for f in &files {
            let i = f.dataset.index();
            self.metrics.parquet_files[i].add(1);
            self.metrics.parquet_bytes[i].add(f.bytes);
            self.metrics.parquet_rows[i].add(f.rows);
            stats.files += 1;
            stats.rows += f.rows;
            stats.bytes += f.bytes;
            by_dataset.entry(f.dataset).or_default().push(FileEntry {
                path: self
                    .target
                    .destination
                    .location(&self.target.data, &f.final_path),
                rows: f.rows,
                bytes: f.bytes,
            });
        }
        for (d, fs) in &by_dataset {
            for f in fs {
                tracing::debug!(%d, path = %f.path.display(), rows = f.rows, through, "file committed");
            }
        }
        let mut done = Vec::new();
        for d in Dataset::ALL {
            let files = by_dataset.remove(&d).unwrap_or_default();
            done.extend(self.store.commit_files(d, through, files));
        }
        // Freeing a round's records holds a core for milliseconds: not on a
        // runtime worker, where requests wait to be acknowledged.
        tokio::spawn(background::run("tally-free", move || drop(done)));
        self.wal.truncate_through(through).await;
        self.flushed.send_replace(through);
        tracing::debug!(
            through,
            files = stats.files,
            rows = stats.rows,
            bytes = stats.bytes,
            "flushed"
        );
        Ok(stats)
    }
}

/// A chunk's rows by hour (ns / [`HOUR_NS`]): the chunk itself when its
/// rows are of one hour, as nearly all are.
fn by_hour(d: Dataset, c: &Chunk) -> Result<Vec<(i64, RecordBatch)>, SinkError> {
    let (lo, hi) = (c.min_ts.div_euclid(HOUR_NS), c.max_ts.div_euclid(HOUR_NS));
    if c.rows() == 0 {
        return Ok(Vec::new());
    }
    if lo == hi {
        return Ok(vec![(lo, c.batch.clone())]);
    }
    let mut rows: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (i, t) in times(d, &c.batch).values().iter().enumerate() {
        rows.entry(t.div_euclid(HOUR_NS))
            .or_default()
            .push(i as u32);
    }
    rows.into_iter()
        .map(|(hour, rows)| {
            let batch = take_record_batch(&c.batch, &UInt32Array::from(rows))?;
            Ok((hour, batch))
        })
        .collect()
}

enum RoundError {
    /// Nothing visible changed; the round can be retried.
    BeforeCommit(SinkError),
    /// The checkpoint names renames that did not all happen.
    AfterCommit(SinkError),
}

/// Writes, checkpoints and renames one round. On error the temporary files
/// are removed and nothing changed that a reader or a restart would see.
fn write_round(
    target: &FlushTarget,
    store: &Store,
    through: u64,
    previous: Checkpoint,
) -> Result<(Vec<WrittenFile>, Checkpoint), RoundError> {
    let data = target.data.as_path();
    let mut written: Vec<WrittenFile> = Vec::new();
    let result = (|| {
        for d in Dataset::ALL {
            let chunks = store.chunks_through(d, through);
            if chunks.is_empty() {
                continue;
            }
            // Hour bucket → (first seq, last seq, batches).
            let mut partitions: BTreeMap<i64, (u64, u64, Vec<RecordBatch>)> = BTreeMap::new();
            for c in &chunks {
                for (hour, batch) in by_hour(d, c)? {
                    let p = partitions
                        .entry(hour)
                        .or_insert_with(|| (c.seq, c.seq, Vec::new()));
                    p.1 = c.seq;
                    p.2.push(batch);
                }
            }
            for (hour, (first, last, records)) in partitions {
                let (date, hh) = partition_of(hour * HOUR_NS);
                written.push(write_partition(
                    data,
                    &target.node,
                    d,
                    (&date, hh),
                    (first, last),
                    &records,
                )?);
            }
        }
        let pending: Vec<PendingRename> = written
            .iter()
            .map(|f| PendingRename {
                tmp: f.tmp.clone(),
                final_path: f.final_path.clone(),
            })
            .collect();
        Checkpoint {
            flushed_seq: through,
            pending,
        }
        .store(&target.state)?;
        Ok(())
    })();
    if let Err(e) = result {
        for f in &written {
            let _ = fs::remove_file(data.join(&f.tmp));
        }
        // The checkpoint still says `previous`; write it back in case the
        // failure came after it was replaced.
        let _ = previous.store(&target.state);
        return Err(RoundError::BeforeCommit(e));
    }
    // From here the round is committed: a crash completes the renames.
    finish_round(target, &written, through).map_err(RoundError::AfterCommit)?;
    Ok((
        written,
        Checkpoint {
            flushed_seq: through,
            pending: Vec::new(),
        },
    ))
}

fn finish_round(
    target: &FlushTarget,
    written: &[WrittenFile],
    through: u64,
) -> Result<(), SinkError> {
    let data = target.data.as_path();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for f in written {
        target.destination.finish(data, &f.tmp, &f.final_path)?;
        if !matches!(*target.destination, Destination::Local) {
            continue;
        }
        let to = data.join(&f.final_path);
        let mut dir = to.parent().map(Path::to_path_buf);
        // The hour, date and dataset directories may be new.
        for _ in 0..3 {
            if let Some(d) = dir {
                if !dirs.contains(&d) {
                    dirs.push(d.clone());
                }
                dir = d.parent().map(Path::to_path_buf);
            }
        }
    }
    for d in &dirs {
        File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(io_err(d))?;
    }
    Checkpoint {
        flushed_seq: through,
        pending: Vec::new(),
    }
    .store(&target.state)
}
