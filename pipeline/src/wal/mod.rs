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

use crate::metrics::Metrics;
use crate::record::Record;
use crate::store::Store;
use segment::{encode_frame, list_segments, read_segment, segment_path, sync_dir};

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O error at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("WAL entry {seq} in {path} cannot be decoded: {source}")]
    Corrupt {
        seq: u64,
        path: PathBuf,
        source: codec::DecodeError,
    },
    #[error("the WAL is not accepting writes: {0}")]
    Failed(String),
    #[error("the WAL writer has stopped")]
    Stopped,
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
}

/// What start-up found in the log.
#[derive(Debug, Default, Clone)]
pub struct ReplayReport {
    pub segments: usize,
    pub entries_replayed: u64,
    pub records_replayed: u64,
    pub torn_frames: usize,
    pub last_seq: u64,
    /// Entries from a replayable log (Kafka) left for the log to redeliver.
    pub entries_left_to_log: u64,
}

enum Command {
    Append {
        records: Vec<Record>,
        from_log: bool,
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
    /// `on_record` for each replayed record, then starts the writer on a
    /// fresh segment.
    pub fn open(
        config: WalConfig,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        flushed_seq: u64,
        mut on_record: impl FnMut(&Record),
    ) -> Result<(Wal, ReplayReport), WalError> {
        fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
        let mut report = replay(&config.dir, flushed_seq, |seq, records| {
            records.iter().for_each(&mut on_record);
            store.apply(seq, records, false);
        })?;
        report.last_seq = report.last_seq.max(flushed_seq);
        store.set_applied_seq(report.last_seq);
        let next_seq = report.last_seq + 1;
        let segments: VecDeque<u64> = list_segments(&config.dir)
            .map_err(io_err(&config.dir))?
            .into_iter()
            .map(|(s, _)| s)
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
        self.append_entry(records, false).await
    }

    /// Like [`Wal::append`]; `from_log` marks records that a replayable log
    /// (Kafka) delivers again until its offset is committed, so start-up
    /// leaves them to the log instead of replaying them.
    pub async fn append_entry(
        &self,
        records: Vec<Record>,
        from_log: bool,
    ) -> Result<u64, WalError> {
        if let Some(f) = self.failure.lock().clone() {
            return Err(WalError::Failed(f));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Append {
                records,
                from_log,
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
    mut apply: impl FnMut(u64, Vec<Record>),
) -> Result<ReplayReport, WalError> {
    let mut report = ReplayReport::default();
    if !dir.exists() {
        return Ok(report);
    }
    for (_, path) in list_segments(dir).map_err(io_err(dir))? {
        report.segments += 1;
        let contents = read_segment(&path).map_err(io_err(&path))?;
        if let Some(at) = contents.torn_at {
            report.torn_frames += 1;
            tracing::warn!(path = %path.display(), offset = at, "WAL segment ends in a torn frame; it was never acknowledged");
        }
        for (seq, payload) in contents.frames {
            report.last_seq = report.last_seq.max(seq);
            if seq <= flushed_seq {
                continue;
            }
            if codec::is_from_log(&payload) {
                report.entries_left_to_log += 1;
                continue;
            }
            let records = codec::decode_records(&payload).map_err(|source| WalError::Corrupt {
                seq,
                path: path.clone(),
                source,
            })?;
            report.entries_replayed += 1;
            report.records_replayed += records.len() as u64;
            apply(seq, records);
        }
    }
    Ok(report)
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
}

struct Pending {
    seq: u64,
    records: Vec<Record>,
    reply: oneshot::Sender<Result<u64, WalError>>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut buf = Vec::with_capacity(1 << 20);
        let mut pending: Vec<Pending> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut truncate = None;
            let mut shutdown = None;
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Append {
                        records,
                        from_log,
                        reply,
                    } => {
                        if let Some(f) = self.failure.lock().clone() {
                            let _ = reply.send(Err(WalError::Failed(f)));
                        } else {
                            let seq = self.next_seq;
                            self.next_seq += 1;
                            let start = buf.len();
                            buf.extend_from_slice(&[0; segment::HEADER_LEN]);
                            codec::encode_entry(&records, from_log, &mut buf);
                            let payload = buf.split_off(start + segment::HEADER_LEN);
                            buf.truncate(start);
                            encode_frame(seq, &payload, &mut buf);
                            pending.push(Pending {
                                seq,
                                records,
                                reply,
                            });
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
                let _ = tx.send(());
                break;
            }
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
                    self.store.apply(p.seq, p.records, true);
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
        let mut removed = false;
        while !self.closed.is_empty() {
            let first = self.closed[0];
            let end = self.closed.get(1).copied().unwrap_or(self.active.first_seq);
            if end == 0 || end - 1 > through {
                break;
            }
            let path = segment_path(&self.config.dir, first);
            match fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
            self.closed.pop_front();
        }
        if removed {
            sync_dir(&self.config.dir).map_err(io_err(&self.config.dir))?;
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
        Record::new(
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
        }
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
            |r| seen.push(r.values[4].clone()),
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
    async fn entries_from_a_log_are_left_to_the_log_at_replay() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(Store::new(1000));
        let (wal, _) = Wal::open(config(dir.path()), store, metrics.clone(), 0, |_| {}).unwrap();
        assert_eq!(wal.append(vec![record(1)]).await.unwrap(), 1);
        assert_eq!(wal.append_entry(vec![record(2)], true).await.unwrap(), 2);
        assert_eq!(wal.append(vec![record(3)]).await.unwrap(), 3);
        wal.shutdown().await;

        let store2 = Arc::new(Store::new(1000));
        let mut seen = Vec::new();
        let (wal2, report) = Wal::open(config(dir.path()), store2.clone(), metrics, 0, |r| {
            seen.push(r.values[4].clone())
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
