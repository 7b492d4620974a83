//! The one entry point of every source: admit, dedup, log, acknowledge.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::BooleanArray;

use crate::batch::RecordBuilder;
use crate::batch::{Columns, RowsByDataset};
use crate::clock::{now_ns, NS_PER_SEC};
use crate::dataset::Dataset;
use crate::dedup::{Dedup, Keys};
use crate::metrics::{Metrics, Outcome};
use crate::record::{Record, SchemaError, Value};
use crate::store::{QueueFull, Store};
use crate::wal::{Wal, WalError};

/// Where an edge node sends what it accepts instead of its own WAL: the
/// Kafka relay. `send` returns once the records are durable there.
pub trait Relay: Send + Sync {
    fn send(
        &self,
        records: Vec<Record>,
    ) -> Pin<Box<dyn Future<Output = Result<(), RelayError>> + Send + '_>>;
}

/// The relay did not take the records: nothing was acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("producing to {topic}: {reason}")]
pub struct RelayError {
    pub topic: String,
    pub reason: String,
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
    fn into_record(self, source: &str, now_ns: i64) -> Result<Record, SchemaError> {
        let mut r = RecordBuilder::new(Dataset::Rejected);
        r.set("timestamp", Value::Ts(now_ns))
            .set("source", source)
            .set("subject", self.subject)
            .set("dataset", self.dataset.map(|d| d.name()))
            .set("index", self.index.map(|i| i.min(i32::MAX as usize) as i32))
            .set("reason", self.reason)
            .set("payload", self.payload);
        r.build()
    }

    /// A record a source built that does not fit its dataset's schema.
    pub fn schema(record: &Record, error: SchemaError) -> Self {
        let mut payload = format!("{:?}", record.values);
        if payload.len() > 4096 {
            let mut cut = 4096;
            while !payload.is_char_boundary(cut) {
                cut -= 1;
            }
            payload.truncate(cut);
        }
        Rejection {
            index: None,
            subject: None,
            dataset: Some(record.dataset),
            reason: error.to_string(),
            payload,
        }
    }
}

/// What became of a request's records.
#[derive(Debug, Default, Clone)]
pub struct IngestReport {
    pub accepted: usize,
    pub duplicates: usize,
    /// `(index, reason)` of each rejection.
    pub rejected: Vec<(Option<usize>, String)>,
    /// Per input record (in the order given): `true` if it was stored (not
    /// a duplicate, not rejected for its schema).
    pub stored_flags: Vec<bool>,
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
    Relay(#[from] RelayError),
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
    ///
    /// For records a source built one at a time (the host sampler, Stripe,
    /// derived alerts): each is checked against its schema here, once, as
    /// it joins its dataset's columns. One that does not fit is rejected
    /// with the reason (counted in `tally_records_failing_schema_total`)
    /// and never reaches the WAL or the Parquet writer. `stored_flags`
    /// follow the records given.
    pub async fn ingest(
        &self,
        source: &str,
        records: Vec<Record>,
        mut rejections: Vec<Rejection>,
    ) -> Result<IngestReport, IngestError> {
        let mut rows = RowsByDataset::default();
        let mut fits = Vec::with_capacity(records.len());
        for r in &records {
            let fit = rows.push_record(r);
            fits.push(fit.is_ok());
            if let Err(e) = fit {
                tracing::error!(dataset = %r.dataset, error = %e, "a record does not fit its dataset's schema; rejected");
                rejections.push(Rejection::schema(r, e));
            }
        }
        let result = self
            .ingest_parts(source, rows.finish(), rejections, false)
            .await;
        // A full queue refuses the request before anything of it is taken.
        if !matches!(result, Err(IngestError::QueueFull(_))) {
            let failing = fits.iter().filter(|f| !**f).count();
            self.inner
                .metrics
                .records_failing_schema
                .add(failing as u64);
        }
        let mut report = result?;
        // The flags follow the parts (one per dataset, in the order of
        // `Dataset::ALL`): put them back in the records' order.
        let mut per_dataset = [0usize; Dataset::COUNT];
        for (r, fit) in records.iter().zip(&fits) {
            per_dataset[r.dataset.index()] += usize::from(*fit);
        }
        let mut flags = report.stored_flags.iter().copied();
        let mut of_dataset: Vec<std::vec::IntoIter<bool>> = Dataset::ALL
            .iter()
            .map(|d| {
                let n = per_dataset[d.index()];
                flags.by_ref().take(n).collect::<Vec<_>>().into_iter()
            })
            .collect();
        report.stored_flags = records
            .iter()
            .zip(&fits)
            .map(|(r, fit)| *fit && of_dataset[r.dataset.index()].next().unwrap_or(false))
            .collect();
        Ok(report)
    }

    fn reserve_rows(&self, rows: [usize; Dataset::COUNT]) -> Result<(), IngestError> {
        let store = &self.inner.store;
        for d in Dataset::ALL {
            let n = rows[d.index()];
            if n == 0 {
                continue;
            }
            if let Err(e) = store.reserve(d, n) {
                for earlier in Dataset::ALL.iter().take_while(|e| **e != d) {
                    store.release(*earlier, rows[earlier.index()]);
                }
                self.inner.metrics.queue_full.add(1);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Stores rows a decoder built as columns (checked against their
    /// schema when they were assembled), dropping duplicates, with the
    /// request's rejections, and returns once they are durable. Their dedup
    /// keys are read from the columns; the columns go to the WAL and the
    /// live buffer as they are. `stored_flags` follow the rows.
    pub async fn ingest_columns(
        &self,
        source: &str,
        columns: Columns,
        rejections: Vec<Rejection>,
    ) -> Result<IngestReport, IngestError> {
        self.ingest_parts(source, vec![columns], rejections, false)
            .await
    }

    /// [`Pipeline::ingest_columns`] for the columns of several datasets
    /// (a NATS batch, a Kafka poll): `stored_flags` follow the rows part
    /// after part. `from_log`: the rows came from a replayable log
    /// (Kafka); the WAL entry is marked so that a restart leaves them to
    /// the log, which redelivers everything after the committed offset.
    pub async fn ingest_parts(
        &self,
        source: &str,
        parts: Vec<Columns>,
        rejections: Vec<Rejection>,
        from_log: bool,
    ) -> Result<IngestReport, IngestError> {
        self.reserve_parts(&parts, &rejections)?;
        self.ingest_reserved_parts(source, parts, rejections, from_log)
            .await
    }

    /// Admission: room for every row of the request under the queue bound,
    /// or none (a full queue refuses before dedup remembers keys). Each row
    /// counts for its dataset, each rejection for `rejected`.
    pub(crate) fn reserve_parts(
        &self,
        parts: &[Columns],
        rejections: &[Rejection],
    ) -> Result<(), IngestError> {
        let mut rows = [0usize; Dataset::COUNT];
        for p in parts {
            rows[p.dataset().index()] += p.rows();
        }
        rows[Dataset::Rejected.index()] += rejections.len();
        self.reserve_rows(rows)
    }

    pub(crate) async fn ingest_reserved_parts(
        &self,
        source: &str,
        parts: Vec<Columns>,
        rejections: Vec<Rejection>,
        from_log: bool,
    ) -> Result<IngestReport, IngestError> {
        let inner = &self.inner;
        let now = now_ns();
        let now_secs = (now / NS_PER_SEC) as u64;
        let keys = Keys::of_parts(&parts);
        let mut fresh = Vec::with_capacity(keys.len());
        inner.dedup.insert_all(keys.iter(), now_secs, &mut fresh);
        let mut report = IngestReport {
            stored_flags: Vec::with_capacity(parts.iter().map(Columns::rows).sum()),
            ..Default::default()
        };
        let mut accepted = [0usize; Dataset::COUNT];
        let mut kept = Vec::with_capacity(parts.len() + 1);
        let mut fresh_flags = fresh.iter();
        for part in parts {
            let (dataset, n) = (part.dataset(), part.rows());
            let start = report.stored_flags.len();
            if dataset.has_key() {
                report.stored_flags.extend(fresh_flags.by_ref().take(n));
            } else {
                report.stored_flags.resize(start + n, true);
            }
            let flags = &report.stored_flags[start..];
            let duplicates = flags.iter().filter(|f| !**f).count();
            let part = if duplicates == 0 {
                part
            } else {
                inner.store.release(dataset, duplicates);
                inner
                    .metrics
                    .count(Outcome::Duplicate, dataset, source, duplicates as u64);
                report.duplicates += duplicates;
                part.filter(&BooleanArray::from(flags.to_vec()))
            };
            accepted[dataset.index()] += part.rows();
            report.accepted += part.rows();
            if part.rows() > 0 {
                kept.push(part);
            }
        }
        let (rejected, rejected_by_dataset) =
            self.rejected_rows(source, now, rejections, &mut report);
        kept.extend(Columns::of_records(rejected));
        let logged = Logged {
            parts: kept,
            accepted,
            rejected_by_dataset,
            keys,
            fresh,
        };
        self.log(source, logged, report, from_log).await
    }

    /// A request's rejections as rows of `rejected`, each reason in the
    /// report, and their counts by the dataset they were for.
    fn rejected_rows(
        &self,
        source: &str,
        now: i64,
        rejections: Vec<Rejection>,
        report: &mut IngestReport,
    ) -> (Vec<Record>, [usize; Dataset::COUNT]) {
        let mut rows = Vec::with_capacity(rejections.len());
        let mut by_dataset = [0usize; Dataset::COUNT];
        for rej in rejections {
            report.rejected.push((rej.index, rej.reason.clone()));
            by_dataset[rej.dataset.unwrap_or(Dataset::Rejected).index()] += 1;
            match rej.into_record(source, now) {
                Ok(r) => rows.push(r),
                Err(e) => {
                    // Cannot happen with the columns above; the sender has
                    // the reason in its answer either way.
                    tracing::error!(error = %e, "a rejection does not fit the rejected table");
                    self.inner.store.release(Dataset::Rejected, 1);
                }
            }
        }
        (rows, by_dataset)
    }

    /// Writes an entry's rows to the WAL (or the relay) and counts them:
    /// the last step of every request. On error nothing of the request
    /// stays: its fresh keys are forgotten and its rows leave the bound.
    async fn log(
        &self,
        source: &str,
        logged: Logged,
        mut report: IngestReport,
        from_log: bool,
    ) -> Result<IngestReport, IngestError> {
        let inner = &self.inner;
        let Logged {
            parts,
            accepted,
            rejected_by_dataset,
            keys,
            fresh,
        } = logged;
        if parts.is_empty() {
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
                let records = parts.iter().flat_map(Columns::to_records).collect();
                let result = relay.send(records).await;
                release(&held);
                result.map(|()| None).map_err(IngestError::Relay)
            }
            None => inner
                .wal
                .append_entry(parts, from_log)
                .await
                .map(Some)
                .map_err(IngestError::from),
        };
        report.seq = match written {
            Ok(seq) => seq,
            Err(e) => {
                for ((d, key), fresh) in keys.iter().zip(&fresh) {
                    if *fresh {
                        inner.dedup.remove(d, key);
                    }
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
            inner.metrics.count(Outcome::Rejected, d, source, n as u64);
        }
        Ok(report)
    }
}

/// What a request leaves to [`Pipeline::log`]: its rows per dataset, its
/// counts, and the keys dedup remembered for it (forgotten if the write
/// fails).
struct Logged {
    parts: Vec<Columns>,
    accepted: [usize; Dataset::COUNT],
    rejected_by_dataset: [usize; Dataset::COUNT],
    keys: Keys,
    fresh: Vec<bool>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wal::WalConfig;

    fn message(id: &str, length: Value) -> Record {
        let mut b = RecordBuilder::new(Dataset::UsageMessage);
        b.set("event_id", id)
            .set("timestamp", Value::Ts(0))
            .set("actor_id", "user:1")
            .set("actor_type", "human")
            .set("microdao_id", "dao")
            .set("channel_id", "c")
            .set("message_length", 1);
        let mut r = b.build().unwrap();
        r.values[Dataset::UsageMessage
            .column_index("message_length")
            .unwrap()] = length;
        r
    }

    /// A pipeline over a WAL in `dir` and a store that admits `queue` rows.
    pub(crate) fn open(
        dir: &std::path::Path,
        queue: usize,
    ) -> (Pipeline, Wal, Arc<Store>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(Store::new(queue));
        let (wal, _) = Wal::open(
            WalConfig {
                dir: dir.to_path_buf(),
                segment_bytes: 1 << 20,
                max_group_bytes: 1 << 20,
                quarantine: None,
            },
            store.clone(),
            metrics.clone(),
            0,
            |_| {},
        )
        .unwrap();
        let dedup = Arc::new(Dedup::new(3600, 1000, metrics.clone()));
        let pipeline = Pipeline::new(wal.clone(), store.clone(), dedup, metrics.clone());
        (pipeline, wal, store, metrics)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_that_does_not_fit_its_schema_is_rejected_and_the_rest_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (pipeline, wal, store, metrics) = open(dir.path(), 1000);
        let report = pipeline
            .ingest(
                "test",
                vec![
                    message("a", Value::I32(1)),
                    message("b", Value::Str("long".into())),
                    message("c", Value::Null),
                    message("a", Value::I32(1)),
                ],
                Vec::new(),
            )
            .await
            .unwrap();
        assert_eq!(report.accepted, 1);
        assert_eq!(report.duplicates, 1);
        assert_eq!(report.stored_flags, vec![true, false, false, false]);
        let reasons: Vec<&str> = report.rejected.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "usage_message.message_length must be a 32-bit integer, got a string",
                "usage_message.message_length is required (NOT NULL), got null",
            ]
        );
        assert_eq!(metrics.records_failing_schema.get(), 2);
        assert_eq!(store.stats(Dataset::UsageMessage).buffered_rows, 1);
        assert_eq!(store.stats(Dataset::Rejected).buffered_rows, 2);
        assert_eq!(store.stats(Dataset::UsageMessage).queued_rows, 1);
        // The two that do not fit moved to `rejected`'s reservation.
        assert_eq!(store.stats(Dataset::Rejected).queued_rows, 2);
        wal.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_the_whole_batch_and_remembers_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (pipeline, wal, store, metrics) = open(dir.path(), 3);
        let batch = Columns::of_records(
            ["a", "b", "c", "d"]
                .into_iter()
                .map(|id| message(id, Value::I32(1)))
                .collect(),
        );
        let refused = pipeline
            .ingest_parts("test", batch.clone(), Vec::new(), false)
            .await
            .unwrap_err();
        assert!(matches!(refused, IngestError::QueueFull(_)));
        // Nothing was kept or remembered: the same ids are stored once
        // there is room.
        assert_eq!(store.stats(Dataset::UsageMessage).queued_rows, 0);
        let first_three = vec![batch[0].filter(&BooleanArray::from(vec![true, true, true, false]))];
        let report = pipeline
            .ingest_parts("test", first_three, Vec::new(), false)
            .await
            .unwrap();
        assert_eq!((report.accepted, report.duplicates), (3, 0));
        assert_eq!(metrics.queue_full.get(), 1);
        wal.shutdown().await;
    }
}
