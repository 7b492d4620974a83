//! The write-ahead log: every record is framed, written and fsync'd here
//! before anyone is told it was accepted.
//!
//! One writer thread owns the files. Appends that arrive while an fsync runs
//! are written together and share the next fsync (group commit). After the
//! fsync the writer applies the records to the live buffer in sequence order,
//! then answers the waiting appenders.

pub mod codec;
pub mod segment;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::batch::Columns;
use crate::metrics::Metrics;
use crate::quarantine::{Damage, DamageKind, Quarantine};
use crate::record::Record;
use crate::store::{Prepared, Store};
use segment::{
    classify_tail, encode_frame_with_crc, list_removing, list_segments, lost_entries, read_segment,
    remove_in_steps, segment_path, sync_dir, Tail, REMOVE_PAUSE, REMOVE_STEP,
};

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O error at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the WAL is not accepting writes: {0}")]
    Failed(String),
    #[error("the WAL writer has stopped")]
    Stopped,
    /// The entry could not be encoded (nothing was written).
    #[error("encoding a WAL entry: {0}")]
    Encode(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct WalConfig {
    pub dir: PathBuf,
    /// A segment is closed once it is larger than this.
    pub segment_bytes: u64,
    /// Upper bound of bytes written under one fsync.
    pub max_group_bytes: usize,
    /// Where damaged segments are kept; `None` leaves them in place (and
    /// never deletes them).
    pub quarantine: Option<Arc<Quarantine>>,
}

/// Part of a segment that replay could not read.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentDamage {
    pub path: PathBuf,
    pub first_seq: u64,
    pub offset: u64,
    pub bytes: u64,
    /// Acknowledged entries lost (from the sequence numbers around it).
    pub lost_entries: u64,
    pub detail: String,
}

/// What start-up found in the log.
#[derive(Debug, Default, Clone)]
pub struct ReplayReport {
    pub segments: usize,
    pub entries_replayed: u64,
    pub records_replayed: u64,
    pub torn_frames: usize,
    /// Damage: unreadable frames with readable ones after them, or missing
    /// from the end of a segment that a later one proves were written.
    pub damage: Vec<SegmentDamage>,
    pub last_seq: u64,
    /// Entries from a replayable log (Kafka) left for the log to redeliver.
    pub entries_left_to_log: u64,
}

enum Command {
    /// An entry encoded by the appender: the writer thread only copies,
    /// writes and fsyncs it.
    Append {
        payload: Vec<u8>,
        crc: crc32fast::Hasher,
        chunks: Prepared,
        reply: oneshot::Sender<Result<u64, WalError>>,
    },
    /// Delete what is stored in Parquet up to and including this sequence.
    Truncate(u64),
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the WAL writer. Cheap to clone.
#[derive(Clone)]
pub struct Wal {
    tx: mpsc::Sender<Command>,
    failure: Arc<Mutex<Option<String>>>,
}

impl Wal {
    /// Replays the log into `store` (entries after `flushed_seq`), calling
    /// `on_columns` for each replayed part (one dataset's rows of an
    /// entry), then starts the writer on a fresh segment.
    pub fn open(
        config: WalConfig,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        flushed_seq: u64,
        mut on_columns: impl FnMut(&Columns),
    ) -> Result<(Wal, ReplayReport), WalError> {
        fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
        let mut report = replay(&config.dir, flushed_seq, |seq, parts| {
            parts.iter().for_each(&mut on_columns);
            store.apply(seq, parts, false);
        })?;
        report.last_seq = report.last_seq.max(flushed_seq);
        store.set_applied_seq(report.last_seq);
        let pinned = quarantine_damage(&report.damage, config.quarantine.as_deref());
        // Segments a crash caught while they were deleted: their entries
        // were in Parquet before the deletion began.
        for path in list_removing(&config.dir).map_err(io_err(&config.dir))? {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        let next_seq = report.last_seq + 1;
        // Segments holding entries before `next_seq`. A segment named for
        // `next_seq` itself (left empty by the rotation of a truncation)
        // becomes the active one below: were it also listed as closed, a
        // truncation would delete the file being written.
        let segments: VecDeque<u64> = list_segments(&config.dir)
            .map_err(io_err(&config.dir))?
            .into_iter()
            .map(|(s, _)| s)
            .filter(|s| *s < next_seq)
            .collect();
        let active = ActiveSegment::create(&config.dir, next_seq)?;
        let (tx, rx) = mpsc::channel(4096);
        let failure = Arc::new(Mutex::new(None));
        let writer = Writer {
            config,
            store,
            metrics,
            closed: segments,
            active,
            next_seq,
            failure: failure.clone(),
            pinned,
            remover: None,
        };
        std::thread::Builder::new()
            .name("tally-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(Path::new("tally-wal thread")))?;
        Ok((Wal { tx, failure }, report))
    }

    /// Writes the records as one entry and returns once they are fsync'd and
    /// in the live buffer.
    pub async fn append(&self, records: Vec<Record>) -> Result<u64, WalError> {
        self.append_entry(Columns::of_records(records), false).await
    }

    /// Writes rows (one part per dataset) as one entry and returns once
    /// they are fsync'd and in the live buffer. `from_log` marks rows that
    /// a replayable log (Kafka) delivers again until its offset is
    /// committed, so start-up leaves them to the log instead of replaying
    /// them.
    pub async fn append_entry(&self, parts: Vec<Columns>, from_log: bool) -> Result<u64, WalError> {
        if let Some(f) = self.failure.lock().clone() {
            return Err(WalError::Failed(f));
        }
        // Encoding, checksumming and measuring happen here, on the
        // appender's core; the one writer thread is left the copy, the
        // write and the fsync, which every appender waits for.
        let rows: usize = parts.iter().map(Columns::rows).sum();
        let mut payload = Vec::with_capacity(1024 + rows * 64);
        codec::encode_entry(&parts, from_log, &mut payload)
            .map_err(|e| WalError::Encode(e.to_string()))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&payload);
        let chunks = Prepared::new(parts);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Append {
                payload,
                crc,
                chunks,
                reply,
            })
            .await
            .map_err(|_| WalError::Stopped)?;
        rx.await.map_err(|_| WalError::Stopped)?
    }

    /// Lets the writer delete segments whose entries are all in Parquet.
    pub async fn truncate_through(&self, seq: u64) {
        let _ = self.tx.send(Command::Truncate(seq)).await;
    }

    /// Stops the writer after the commands queued before this one.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// `None` while healthy; the reason once an fsync or write failed.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }
}

/// Reads every segment and hands entries after `flushed_seq` to `apply`, in
/// sequence order. Used at start-up and by offline readers. Entries from a
/// replayable log are skipped: their offsets were never committed, so the log
/// delivers them again (to this node or to another of its consumer group).
pub fn replay(
    dir: &Path,
    flushed_seq: u64,
    mut apply: impl FnMut(u64, Vec<Columns>),
) -> Result<ReplayReport, WalError> {
    let mut report = ReplayReport::default();
    if !dir.exists() {
        return Ok(report);
    }
    let segments = list_segments(dir).map_err(io_err(dir))?;
    for (i, (first_seq, path)) in segments.iter().enumerate() {
        let (first_seq, path) = (*first_seq, path.clone());
        report.segments += 1;
        let contents = match read_segment(&path) {
            Ok(c) => c,
            Err(e) => {
                // Unreadable as a whole (EIO): every frame in it is lost.
                let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                let next = segments.get(i + 1).map(|s| s.0);
                report.damage.push(SegmentDamage {
                    path: path.clone(),
                    first_seq,
                    offset: 0,
                    bytes,
                    lost_entries: next.map_or(0, |n| n.saturating_sub(first_seq)),
                    detail: format!("the segment cannot be read: {e}"),
                });
                continue;
            }
        };
        for region in &contents.damaged {
            report.damage.push(SegmentDamage {
                path: path.clone(),
                first_seq,
                offset: region.offset,
                bytes: region.len,
                lost_entries: lost_entries(region, first_seq),
                detail: format!(
                    "{} unreadable bytes between entries {} and {}",
                    region.len,
                    region.after_seq.map_or("(start)".into(), |s| s.to_string()),
                    region.before_seq.map_or("(end)".into(), |s| s.to_string()),
                ),
            });
        }
        if let Some(tail) = contents.tail {
            let last_whole = contents.frames.last().map(|f| f.0);
            let next = segments.get(i + 1).map(|s| s.0);
            match classify_tail(first_seq, last_whole, next) {
                Tail::Torn => {
                    report.torn_frames += 1;
                    tracing::info!(path = %path.display(), offset = tail.offset, "WAL segment ends in a torn frame (a write cut short by a crash; it was never acknowledged)");
                }
                Tail::Damaged { lost_entries } => report.damage.push(SegmentDamage {
                    path: path.clone(),
                    first_seq,
                    offset: tail.offset,
                    bytes: tail.len,
                    lost_entries,
                    detail: format!(
                        "the last {} bytes are unreadable and the next segment starts at entry {}: entries after {} are lost",
                        tail.len,
                        next.unwrap_or_default(),
                        last_whole.map_or("(start)".into(), |s| s.to_string()),
                    ),
                }),
            }
        }
        for ((seq, payload), offset) in contents.frames.into_iter().zip(contents.offsets) {
            report.last_seq = report.last_seq.max(seq);
            if seq <= flushed_seq {
                continue;
            }
            if codec::is_from_log(&payload) {
                report.entries_left_to_log += 1;
                continue;
            }
            let parts = match codec::decode_entry(&payload) {
                Ok((_, parts)) => parts,
                Err(e) => {
                    // The checksum matched, so the bytes are what was
                    // written; a version that cannot decode them must not
                    // lose them either.
                    report.damage.push(SegmentDamage {
                        path: path.clone(),
                        first_seq,
                        offset,
                        bytes: (segment::HEADER_LEN + payload.len()) as u64,
                        lost_entries: 1,
                        detail: format!("entry {seq} cannot be decoded: {e}"),
                    });
                    continue;
                }
            };
            report.entries_replayed += 1;
            report.records_replayed += parts.iter().map(|c| c.rows() as u64).sum::<u64>();
            apply(seq, parts);
        }
    }
    Ok(report)
}

/// Keeps a whole copy of every damaged segment in the quarantine and
/// reports it. Returns the segments that could not be copied: the writer
/// never deletes those.
pub fn quarantine_damage(
    damage: &[SegmentDamage],
    quarantine: Option<&Quarantine>,
) -> std::collections::HashSet<u64> {
    let mut pinned = std::collections::HashSet::new();
    for d in damage {
        let name = d.path.file_name().unwrap_or_default();
        let kept = match quarantine {
            Some(q) => match q.keep_copy(&d.path, &Path::new("wal").join(name)) {
                Ok(p) => Some(p.display().to_string()),
                Err(e) => {
                    tracing::error!(path = %d.path.display(), error = %e, "cannot copy the damaged WAL segment into quarantine; it stays in place and is never deleted");
                    None
                }
            },
            None => None,
        };
        if kept.is_none() {
            pinned.insert(d.first_seq);
        }
        if let Some(q) = quarantine {
            q.report(Damage {
                kind: DamageKind::WalSegment,
                path: d.path.display().to_string(),
                quarantined: kept,
                offset: Some(d.offset),
                unread_entries: d.lost_entries,
                unread_bytes: d.bytes,
                detail: d.detail.clone(),
                found_at: crate::clock::now_secs(),
                acknowledged: false,
                held: None,
            });
        }
    }
    pinned
}

struct ActiveSegment {
    first_seq: u64,
    path: PathBuf,
    file: File,
    len: u64,
    last_seq: Option<u64>,
}

impl ActiveSegment {
    fn create(dir: &Path, first_seq: u64) -> Result<Self, WalError> {
        let path = segment_path(dir, first_seq);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(dir).map_err(io_err(dir))?;
        Ok(Self {
            first_seq,
            path,
            file,
            len: 0,
            last_seq: None,
        })
    }
}

struct Writer {
    config: WalConfig,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// First sequences of closed segments, oldest first.
    closed: VecDeque<u64>,
    active: ActiveSegment,
    next_seq: u64,
    failure: Arc<Mutex<Option<String>>>,
    /// Damaged segments that are not in quarantine: never deleted.
    pinned: std::collections::HashSet<u64>,
    /// Deletes truncated segments on its own thread, a few MiB at a time
    /// (`segment::remove_in_steps`): the deletion and a directory fsync
    /// must not hold up the fsyncs appenders wait for.
    remover: Option<Remover>,
}

struct Remover {
    tx: std::sync::mpsc::Sender<Vec<PathBuf>>,
    thread: std::thread::JoinHandle<()>,
}

impl Remover {
    fn start(dir: PathBuf) -> io::Result<Remover> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<PathBuf>>();
        let thread = std::thread::Builder::new()
            .name("tally-wal-remove".into())
            .spawn(move || {
                for paths in rx {
                    let mut removed = false;
                    for path in paths {
                        match remove_in_steps(&path, REMOVE_STEP, REMOVE_PAUSE) {
                            Ok(gone) => removed |= gone,
                            // Its entries are in Parquet: a restart lists it
                            // again (or its leftover while being removed),
                            // skips them and deletes it then.
                            Err(e) => {
                                tracing::warn!(path = %path.display(), error = %e, "cannot delete a truncated WAL segment; kept until the next start")
                            }
                        }
                    }
                    if removed {
                        if let Err(e) = sync_dir(&dir) {
                            tracing::warn!(dir = %dir.display(), error = %e, "fsync of the WAL directory after deleting segments failed");
                        }
                    }
                }
            })?;
        Ok(Remover { tx, thread })
    }

    /// Deletes what was sent so far, then stops.
    fn finish(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

struct Pending {
    seq: u64,
    chunks: Prepared,
    reply: oneshot::Sender<Result<u64, WalError>>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut buf = Vec::with_capacity(1 << 20);
        let mut pending: Vec<Pending> = Vec::new();
        // Payloads copied into `buf`, freed after the fsync (not before it,
        // where the appenders wait).
        let mut spent: Vec<Vec<u8>> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut truncate = None;
            let mut shutdown = None;
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Append {
                        payload,
                        crc,
                        chunks,
                        reply,
                    } => {
                        if let Some(f) = self.failure.lock().clone() {
                            let _ = reply.send(Err(WalError::Failed(f)));
                        } else {
                            let seq = self.next_seq;
                            self.next_seq += 1;
                            encode_frame_with_crc(seq, &payload, &crc, &mut buf);
                            spent.push(payload);
                            pending.push(Pending { seq, chunks, reply });
                        }
                    }
                    Command::Truncate(seq) => truncate = Some(seq),
                    Command::Shutdown(tx) => {
                        shutdown = Some(tx);
                        break;
                    }
                }
                if buf.len() < self.config.max_group_bytes {
                    next = rx.try_recv().ok();
                }
            }
            if !pending.is_empty() {
                self.commit(&mut buf, &mut pending);
            }
            spent.clear();
            if let Some(seq) = truncate {
                if let Err(e) = self.truncate(seq) {
                    tracing::warn!(error = %e, "WAL truncation failed; segments kept");
                }
            }
            if self.active.len >= self.config.segment_bytes {
                if let Err(e) = self.rotate() {
                    self.fail(e.to_string());
                }
            }
            if let Some(tx) = shutdown {
                if let Some(remover) = self.remover.take() {
                    remover.finish();
                }
                let _ = tx.send(());
                break;
            }
        }
        if let Some(remover) = self.remover.take() {
            remover.finish();
        }
        tracing::debug!("WAL writer stopped");
    }

    fn fail(&self, reason: String) {
        tracing::error!(%reason, "WAL failed; refusing writes");
        *self.failure.lock() = Some(reason);
    }

    fn commit(&mut self, buf: &mut Vec<u8>, pending: &mut Vec<Pending>) {
        let started = Instant::now();
        let result = self
            .active
            .file
            .write_all(buf)
            .and_then(|_| self.active.file.sync_data());
        self.metrics
            .wal_fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.wal_bytes.add(buf.len() as u64);
        match result {
            Ok(()) => {
                self.active.len += buf.len() as u64;
                for p in pending.drain(..) {
                    self.active.last_seq = Some(p.seq);
                    self.store.apply_prepared(p.seq, p.chunks, true);
                    let _ = p.reply.send(Ok(p.seq));
                }
            }
            Err(e) => {
                // After a failed fsync the file's state is unknown: stop
                // taking writes rather than acknowledge on top of it.
                let reason = format!(
                    "write or fsync of {} failed: {e}",
                    self.active.path.display()
                );
                self.fail(reason.clone());
                for p in pending.drain(..) {
                    let _ = p.reply.send(Err(WalError::Failed(reason.clone())));
                }
            }
        }
        buf.clear();
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        let next = ActiveSegment::create(&self.config.dir, self.next_seq)?;
        let old = std::mem::replace(&mut self.active, next);
        self.closed.push_back(old.first_seq);
        Ok(())
    }

    fn truncate(&mut self, through: u64) -> Result<(), WalError> {
        if self.active.last_seq.is_some_and(|s| s <= through) {
            self.rotate()?;
        }
        // A closed segment ends where the next one starts.
        let mut doomed = Vec::new();
        while !self.closed.is_empty() {
            let first = self.closed[0];
            let end = self.closed.get(1).copied().unwrap_or(self.active.first_seq);
            if end == 0 || end - 1 > through {
                break;
            }
            self.closed.pop_front();
            if !self.pinned.contains(&first) {
                doomed.push(segment_path(&self.config.dir, first));
            }
        }
        if doomed.is_empty() {
            return Ok(());
        }
        if self.remover.is_none() {
            let dir = self.config.dir.clone();
            self.remover = Some(Remover::start(dir.clone()).map_err(io_err(&dir))?);
        }
        if let Some(remover) = &self.remover {
            let _ = remover.tx.send(doomed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Dataset;
    use crate::record::Value;

    fn record(i: i64) -> Record {
        Record::from_columns(
            Dataset::Rejected,
            vec![
                Value::Ts(i),
                Value::Str("test".into()),
                Value::Null,
                Value::Null,
                Value::I32(i as i32),
                Value::Str("reason".into()),
                Value::Str(format!("payload {i}")),
            ],
        )
    }

    fn config(dir: &Path) -> WalConfig {
        WalConfig {
            dir: dir.to_path_buf(),
            segment_bytes: 256,
            max_group_bytes: 1 << 20,
            quarantine: None,
        }
    }

    /// A WAL of 1 MiB segments opened on an empty directory.
    fn open_empty(dir: &Path, metrics: &Arc<Metrics>) -> (WalConfig, Wal) {
        let mut cfg = config(dir);
        cfg.segment_bytes = 1 << 20;
        let (wal, _) = Wal::open(
            cfg.clone(),
            Arc::new(Store::new(1000)),
            metrics.clone(),
            0,
            |_| {},
        )
        .unwrap();
        (cfg, wal)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appended_entries_replay_after_reopen_and_truncate_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(Store::new(1000));
        let (wal, report) = Wal::open(
            config(dir.path()),
            store.clone(),
            metrics.clone(),
            0,
            |_| {},
        )
        .unwrap();
        assert_eq!(report.entries_replayed, 0);
        let mut seqs = Vec::new();
        for i in 0..20 {
            seqs.push(wal.append(vec![record(i)]).await.unwrap());
        }
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
        assert_eq!(store.stats(Dataset::Rejected).buffered_rows, 20);
        wal.shutdown().await;

        // Reopen as if after a crash: everything after seq 5 comes back.
        let store2 = Arc::new(Store::new(1000));
        let mut seen = Vec::new();
        let (wal2, report) = Wal::open(
            config(dir.path()),
            store2.clone(),
            metrics.clone(),
            5,
            |c| seen.extend(c.to_records().into_iter().map(|r| r.values[4].clone())),
        )
        .unwrap();
        assert_eq!(report.entries_replayed, 15);
        assert_eq!(report.last_seq, 20);
        assert_eq!(seen.first(), Some(&Value::I32(5)));
        assert_eq!(store2.stats(Dataset::Rejected).buffered_rows, 15);
        // New appends continue the sequence.
        assert_eq!(wal2.append(vec![record(99)]).await.unwrap(), 21);
        wal2.truncate_through(21).await;
        wal2.shutdown().await;
        let left = list_segments(dir.path()).unwrap();
        assert_eq!(
            left.len(),
            1,
            "only the fresh active segment remains: {left:?}"
        );
        assert_eq!(read_segment(&left[0].1).unwrap().frames.len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_segment_cut_by_a_crash_while_removed_is_deleted_not_reported() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let (cfg, wal) = open_empty(dir.path(), &metrics);
        for i in 0..10 {
            wal.append(vec![record(i)]).await.unwrap();
        }
        wal.shutdown().await;
        // A crash after the flush of all ten, while the remover had cut the
        // segment in the middle of an entry.
        let segments = list_segments(dir.path()).unwrap();
        assert_eq!(segments.len(), 1);
        let removing = segment::removing_path(&segments[0].1);
        fs::rename(&segments[0].1, &removing).unwrap();
        let len = fs::metadata(&removing).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&removing)
            .unwrap()
            .set_len(len / 2 + 3)
            .unwrap();

        let store = Arc::new(Store::new(1000));
        let (wal, report) = Wal::open(cfg, store.clone(), metrics.clone(), 10, |_| {}).unwrap();
        assert!(report.damage.is_empty(), "{:?}", report.damage);
        assert_eq!(report.torn_frames, 0);
        assert!(!removing.exists());
        assert_eq!(wal.append(vec![record(11)]).await.unwrap(), 11);
        wal.shutdown().await;
        assert_eq!(metrics.damage_reports.get(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_after_a_restart_on_an_empty_segment_survive_the_next_truncation() {
        // A flush truncates everything, which leaves an empty segment named
        // for the next sequence; a restart then writes into that very name.
        // Truncating after new flushes must not delete the segment being
        // written: the entries after it would be lost to a crash.
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let open = |flushed: u64, store: Arc<Store>| {
            Wal::open(config(dir.path()), store, metrics.clone(), flushed, |_| {}).unwrap()
        };
        let (wal, _) = open(0, Arc::new(Store::new(1000)));
        assert_eq!(wal.append(vec![record(1)]).await.unwrap(), 1);
        wal.truncate_through(1).await;
        wal.shutdown().await;

        let (wal, _) = open(1, Arc::new(Store::new(1000)));
        assert_eq!(wal.append(vec![record(2)]).await.unwrap(), 2);
        wal.truncate_through(2).await;
        assert_eq!(wal.append(vec![record(3)]).await.unwrap(), 3);
        wal.shutdown().await;

        let store = Arc::new(Store::new(1000));
        let (_, report) = open(2, store.clone());
        assert_eq!(report.last_seq, 3, "entry 3 was acknowledged");
        assert_eq!(report.entries_replayed, 1);
        assert_eq!(store.stats(Dataset::Rejected).buffered_rows, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_frame_is_salvaged_around_quarantined_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let (mut cfg, wal) = open_empty(dir.path(), &metrics);
        for i in 1..=5 {
            wal.append(vec![record(i), record(100 + i)]).await.unwrap();
        }
        wal.shutdown().await;
        let segments = list_segments(dir.path()).unwrap();
        let (_, path) = segments.iter().find(|(s, _)| *s == 1).unwrap();
        let contents = read_segment(path).unwrap();
        let mut bytes = fs::read(path).unwrap();
        let third = contents.offsets[2] as usize;
        bytes[third + segment::HEADER_LEN + 7] ^= 0x10;
        fs::write(path, &bytes).unwrap();

        let qdir = tempfile::tempdir().unwrap();
        let quarantine = Arc::new(Quarantine::open(qdir.path(), metrics.clone()).unwrap());
        cfg.quarantine = Some(quarantine.clone());
        let store = Arc::new(Store::new(1000));
        let mut seen = Vec::new();
        let (wal2, report) = Wal::open(cfg, store, metrics.clone(), 0, |c| {
            seen.extend(c.to_records().into_iter().map(|r| r.values[4].clone()))
        })
        .unwrap();
        let expected: Vec<Value> = [1, 101, 2, 102, 4, 104, 5, 105]
            .into_iter()
            .map(Value::I32)
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(report.damage.len(), 1);
        assert_eq!(report.damage[0].lost_entries, 1);
        assert_eq!(report.damage[0].offset, third as u64);
        let found = quarantine.unacknowledged();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].unread_entries, 1);
        let kept = PathBuf::from(found[0].quarantined.clone().unwrap());
        assert_eq!(fs::read(&kept).unwrap(), bytes, "the segment is kept whole");
        assert_eq!(metrics.damage_reports.get(), 1);
        // Once everything is flushed the segment may go; its copy stays.
        wal2.truncate_through(5).await;
        wal2.shutdown().await;
        assert!(!path.exists());
        assert!(kept.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_from_a_log_are_left_to_the_log_at_replay() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(Store::new(1000));
        let (wal, _) = Wal::open(config(dir.path()), store, metrics.clone(), 0, |_| {}).unwrap();
        assert_eq!(wal.append(vec![record(1)]).await.unwrap(), 1);
        assert_eq!(
            wal.append_entry(Columns::of_records(vec![record(2)]), true)
                .await
                .unwrap(),
            2
        );
        assert_eq!(wal.append(vec![record(3)]).await.unwrap(), 3);
        wal.shutdown().await;

        let store2 = Arc::new(Store::new(1000));
        let mut seen = Vec::new();
        let (wal2, report) = Wal::open(config(dir.path()), store2.clone(), metrics, 0, |c| {
            seen.extend(c.to_records().into_iter().map(|r| r.values[4].clone()))
        })
        .unwrap();
        assert_eq!(seen, vec![Value::I32(1), Value::I32(3)]);
        assert_eq!(report.entries_replayed, 2);
        assert_eq!(report.entries_left_to_log, 1);
        // The sequence still moves past the skipped entry.
        assert_eq!(report.last_seq, 3);
        assert_eq!(wal2.append(vec![record(4)]).await.unwrap(), 4);
        wal2.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(Store::new(100_000));
        let (wal, _) = Wal::open(
            config(dir.path()),
            store.clone(),
            metrics.clone(),
            0,
            |_| {},
        )
        .unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let wal = wal.clone();
                tokio::spawn(async move { wal.append(vec![record(i)]).await.unwrap() })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        assert!(
            metrics.wal_fsync_seconds.count() < 200,
            "appends were not grouped"
        );
        assert_eq!(store.stats(Dataset::Rejected).buffered_rows, 200);
    }
}
