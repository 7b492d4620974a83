//! The one entry point of every source: admit, dedup, log, acknowledge.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::dataset::Dataset;
use crate::dedup::Dedup;
use crate::metrics::{Metrics, Outcome};
use crate::record::{Record, Value};
use crate::store::{QueueFull, Store};
use crate::wal::{Wal, WalError};

/// Where an edge node sends what it accepts instead of its own WAL: the
/// Kafka relay. `send` returns once the records are durable there.
pub trait Relay: Send + Sync {
    fn send(
        &self,
        records: Vec<Record>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// A payload a source could not turn into a record. It is stored in
/// `rejected` with the reason, and the sender is told the reason.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Position in the request, when the request held several.
    pub index: Option<usize>,
    pub subject: Option<String>,
    pub dataset: Option<Dataset>,
    pub reason: String,
    pub payload: String,
}

impl Rejection {
    fn into_record(self, source: &str, now_ns: i64) -> Record {
        let opt = |s: Option<String>| s.map(Value::Str).unwrap_or(Value::Null);
        Record::new(
            Dataset::Rejected,
            vec![
                Value::Ts(now_ns),
                Value::Str(source.to_string()),
                opt(self.subject),
                opt(self.dataset.map(|d| d.name().to_string())),
                self.index
                    .map(|i| Value::I32(i as i32))
                    .unwrap_or(Value::Null),
                Value::Str(self.reason),
                Value::Str(self.payload),
            ],
        )
    }
}

/// What became of a request's records.
#[derive(Debug, Default, Clone)]
pub struct IngestReport {
    pub accepted: usize,
    pub duplicates: usize,
    /// `(index, reason)` of each rejection.
    pub rejected: Vec<(Option<usize>, String)>,
    /// Per input record (in the order given): `true` if it was a duplicate.
    pub duplicate_flags: Vec<bool>,
    /// WAL sequence of the entry that holds the request; `None` when nothing
    /// was written (all duplicates) or the records went to the relay.
    pub seq: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    QueueFull(#[from] QueueFull),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("the Kafka relay did not take the records: {0}")]
    Relay(String),
}

/// Shared handle to the pipeline.
#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

struct Inner {
    wal: Wal,
    store: Arc<Store>,
    dedup: Arc<Dedup>,
    metrics: Arc<Metrics>,
    relay: Option<Arc<dyn Relay>>,
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

impl Pipeline {
    pub fn new(wal: Wal, store: Arc<Store>, dedup: Arc<Dedup>, metrics: Arc<Metrics>) -> Self {
        Self::with_relay(wal, store, dedup, metrics, None)
    }

    /// A pipeline whose accepted records go to `relay` (an edge node) rather
    /// than to the WAL, when it is set.
    pub fn with_relay(
        wal: Wal,
        store: Arc<Store>,
        dedup: Arc<Dedup>,
        metrics: Arc<Metrics>,
        relay: Option<Arc<dyn Relay>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                wal,
                store,
                dedup,
                metrics,
                relay,
            }),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }
    pub fn wal(&self) -> &Wal {
        &self.inner.wal
    }
    pub fn dedup(&self) -> &Arc<Dedup> {
        &self.inner.dedup
    }

    /// Stores `records` (dropping duplicates) and `rejections`, and returns
    /// once they are durable. On error nothing of the request is stored.
    pub async fn ingest(
        &self,
        source: &str,
        records: Vec<Record>,
        rejections: Vec<Rejection>,
    ) -> Result<IngestReport, IngestError> {
        self.ingest_entry(source, records, rejections, false).await
    }

    /// Like [`Pipeline::ingest`], for records read from a replayable log
    /// (Kafka): the WAL entry is marked so that a restart leaves them to the
    /// log, which redelivers everything after the committed offset.
    pub async fn ingest_from_log(
        &self,
        source: &str,
        records: Vec<Record>,
        rejections: Vec<Rejection>,
    ) -> Result<IngestReport, IngestError> {
        self.ingest_entry(source, records, rejections, true).await
    }

    async fn ingest_entry(
        &self,
        source: &str,
        records: Vec<Record>,
        rejections: Vec<Rejection>,
        from_log: bool,
    ) -> Result<IngestReport, IngestError> {
        let inner = &self.inner;
        let now = now_ns();
        let now_secs = (now / 1_000_000_000) as u64;

        // Admission first, so a full queue refuses before dedup remembers keys.
        let mut rows = [0usize; Dataset::COUNT];
        for r in &records {
            rows[r.dataset.index()] += 1;
        }
        rows[Dataset::Rejected.index()] += rejections.len();
        let mut reserved: Vec<(Dataset, usize)> = Vec::new();
        for d in Dataset::ALL {
            let n = rows[d.index()];
            if n == 0 {
                continue;
            }
            if let Err(e) = inner.store.reserve(d, n) {
                for (d, n) in reserved {
                    inner.store.release(d, n);
                }
                inner.metrics.queue_full.add(1);
                return Err(e.into());
            }
            reserved.push((d, n));
        }

        let mut report = IngestReport {
            duplicate_flags: Vec::with_capacity(records.len()),
            ..Default::default()
        };
        let mut keys: Vec<(Dataset, Vec<u8>)> = Vec::new();
        let mut kept = Vec::with_capacity(records.len() + rejections.len());
        for r in records {
            if let Some(key) = r.key() {
                if !inner.dedup.insert(r.dataset, &key, now_secs) {
                    inner.store.release(r.dataset, 1);
                    inner
                        .metrics
                        .count(Outcome::Duplicate, r.dataset, source, 1);
                    report.duplicates += 1;
                    report.duplicate_flags.push(true);
                    continue;
                }
                keys.push((r.dataset, key));
            }
            report.duplicate_flags.push(false);
            kept.push(r);
        }
        // Rows per dataset, counted once (this loop runs for every request).
        let mut accepted = [0usize; Dataset::COUNT];
        for r in &kept {
            accepted[r.dataset.index()] += 1;
        }
        report.accepted = kept.len();
        let mut rejected_by_dataset = [0u64; Dataset::COUNT];
        for rej in rejections {
            report.rejected.push((rej.index, rej.reason.clone()));
            rejected_by_dataset[rej.dataset.unwrap_or(Dataset::Rejected).index()] += 1;
            kept.push(rej.into_record(source, now));
        }
        if kept.is_empty() {
            return Ok(report);
        }
        // Rows this request holds under the admission bound (rejections are
        // rows of `rejected`, whatever dataset they were for).
        let mut held = accepted;
        held[Dataset::Rejected.index()] += report.rejected.len();
        let release = |held: &[usize; Dataset::COUNT]| {
            for d in Dataset::ALL {
                if held[d.index()] > 0 {
                    inner.store.release(d, held[d.index()]);
                }
            }
        };
        let written = match &inner.relay {
            // An edge node buffers nothing: the rows leave the bound either way.
            Some(relay) => {
                let result = relay.send(kept).await;
                release(&held);
                result.map(|()| None).map_err(IngestError::Relay)
            }
            None => inner
                .wal
                .append_entry(kept, from_log)
                .await
                .map(Some)
                .map_err(IngestError::from),
        };
        report.seq = match written {
            Ok(seq) => seq,
            Err(e) => {
                for (d, key) in keys {
                    inner.dedup.remove(d, &key);
                }
                if inner.relay.is_none() {
                    release(&held);
                }
                return Err(e);
            }
        };
        for d in Dataset::ALL {
            let n = accepted[d.index()];
            if n > 0 {
                inner.metrics.count(Outcome::Accepted, d, source, n as u64);
            }
        }
        for d in Dataset::ALL {
            let n = rejected_by_dataset[d.index()];
            inner.metrics.count(Outcome::Rejected, d, source, n);
        }
        Ok(report)
    }
}
