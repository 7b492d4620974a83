//! The Kafka source: a member of a consumer group that reads
//! - the JSON events of the NATS subjects from topics of the same names
//!   (`usage.llm`, …; configurable),
//! - `billing.v1.SendMetricsBatchRequest` protobufs from `vm.metrics`,
//! - records relayed by edge nodes from `tally.records` (the WAL encoding).
//!
//! # Offsets
//! Auto-commit and auto offset store are off. An offset is committed only
//! once every record of it and of the offsets before it is in a committed
//! Parquet file (the flusher's `flushed` sequence), so a crash, a `kill -9`
//! or a rebalance replays from the last committed offset and nothing
//! acknowledged to Kafka is only in a WAL that may never come back.
//! WAL entries of Kafka records carry the `from_log` flag: a restart leaves
//! them to Kafka instead of replaying them, so they are not stored twice.
//!
//! # Rebalances (eager protocol)
//! Before partitions are revoked, the member flushes its buffer to Parquet
//! and commits every offset it consumed, so the next owner starts exactly
//! after it. Before it consumes newly assigned partitions, it lists the
//! shared data prefix: files that a dead member wrote after its last commit
//! put their keys into dedup, and the records it reads again count as
//! duplicates.

pub mod config;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tally_pipeline::batch::{Columns, RowsByDataset};
use tally_pipeline::component::Component;
use tally_pipeline::metrics::Metrics;
use tally_pipeline::sink::SinkControl;
use tally_pipeline::waiting::Origin;
use tally_pipeline::wal::codec::decode_records;
use tally_pipeline::{now_ns, IngestError, Pipeline, Rejection};
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::billing::MetricsBatch;
use crate::events::Subject;

pub const SOURCE: &str = "kafka";
/// Partitions of the topics this source creates when they are missing.
pub const DEFAULT_PARTITIONS: i32 = 8;
/// How fast a dead writer's partitions move to another.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages taken per ingest call.
const BATCH: usize = 4096;
/// How long a batch waits to fill.
const BATCH_WAIT: Duration = Duration::from_millis(20);

/// A future the Kafka thread waits on.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group: String,
    /// Written into commit metadata (`node=<id>`), for operators.
    pub node: String,
    /// Topic of each event subject (defaults to the subject's name).
    pub subjects: HashMap<Subject, String>,
    pub vm_metrics_topic: String,
    pub records_topic: String,
    /// Partitions of the topics this source creates when they are missing.
    pub partitions: i32,
    pub session_timeout: Duration,
    /// More librdkafka properties (`--kafka-option`): TLS, SASL.
    pub options: Vec<(String, String)>,
}

impl KafkaConfig {
    /// A client of the brokers, with the options given.
    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    pub fn new(brokers: &str, group: &str, node: &str) -> Self {
        Self {
            brokers: brokers.to_string(),
            group: group.to_string(),
            node: node.to_string(),
            subjects: HashMap::new(),
            vm_metrics_topic: "vm.metrics".into(),
            records_topic: tally_pipeline::wal::codec::RECORDS_TOPIC.into(),
            partitions: DEFAULT_PARTITIONS,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            options: Vec::new(),
        }
    }

    fn routes(&self) -> HashMap<String, Route> {
        let mut routes: HashMap<String, Route> = Subject::ALL
            .iter()
            .map(|s| {
                let topic = self
                    .subjects
                    .get(s)
                    .cloned()
                    .unwrap_or_else(|| s.name().to_string());
                (topic, Route::Subject(*s))
            })
            .collect();
        routes.insert(self.vm_metrics_topic.clone(), Route::VmMetrics);
        routes.insert(self.records_topic.clone(), Route::Records);
        routes
    }
}

#[derive(Debug, Clone, Copy)]
enum Route {
    Subject(Subject),
    VmMetrics,
    Records,
}

/// The source's state, for `/health` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct KafkaStatus {
    pub assigned_partitions: usize,
    pub messages: u64,
    pub committed_messages: u64,
    pub rebalances: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot create the Kafka consumer for {brokers}: {source}")]
    Create {
        brokers: String,
        source: RdKafkaError,
    },
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        source: RdKafkaError,
    },
}

/// Consumed offsets waiting for their records to reach Parquet, per
/// partition in offset order: `(offset, WAL sequence)`; sequence 0 when the
/// message wrote nothing (all duplicates).
#[derive(Default)]
struct PendingOffsets {
    by_partition: BTreeMap<(String, i32), VecDeque<(i64, u64)>>,
}

impl PendingOffsets {
    /// Takes, per partition, the offsets whose records are flushed, and
    /// returns the next offset to commit for each partition that moved.
    fn take_flushed(&mut self, flushed: u64) -> Vec<((String, i32), i64, usize)> {
        let mut out = Vec::new();
        for (tp, queue) in &mut self.by_partition {
            let mut next = None;
            let mut n = 0;
            while queue.front().is_some_and(|&(_, seq)| seq <= flushed) {
                let (offset, _) = queue.pop_front().expect("front checked");
                next = Some(offset + 1);
                n += 1;
            }
            if let Some(next) = next {
                out.push((tp.clone(), next, n));
            }
        }
        self.by_partition.retain(|_, q| !q.is_empty());
        out
    }
}

struct Shared {
    rt: Handle,
    sink: Arc<dyn SinkControl>,
    node: String,
    pending: Mutex<PendingOffsets>,
    /// Bumped on every revocation: what a batch polled before one is
    /// dropped (its partitions restart from the committed offsets).
    revocations: AtomicU64,
    status: Arc<Mutex<KafkaStatus>>,
}

impl Shared {
    /// Commits (synchronously) every offset whose records are flushed.
    fn commit_flushed(&self, consumer: &BaseConsumer<Context>, flushed: u64) {
        let taken = self.pending.lock().take_flushed(flushed);
        if taken.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        let mut messages = 0;
        let metadata = format!("node={};flushed_seq={flushed}", self.node);
        for ((topic, partition), next, n) in taken {
            messages += n as u64;
            let mut e = tpl.add_partition(&topic, partition);
            if e.set_offset(Offset::Offset(next)).is_ok() {
                e.set_metadata(&metadata);
            }
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                let mut st = self.status.lock();
                st.committed_messages += messages;
                st.last_error = None;
            }
            Err(e) => {
                // The records are in Parquet; the next owner reads them again
                // and dedup (fed by the shared listing) drops them.
                tracing::warn!(error = %e, "Kafka offset commit failed");
                self.status.lock().last_error = Some(format!("offset commit: {e}"));
            }
        }
    }
}

struct Context {
    shared: Arc<Shared>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let s = &self.shared;
        if let Rebalance::Revoke(tpl) = rebalance {
            s.revocations.fetch_add(1, Ordering::SeqCst);
            tracing::info!(
                partitions = tpl.count(),
                "Kafka partitions revoked: flushing and committing"
            );
            match s.rt.block_on(s.sink.flush_now()) {
                Ok(flushed) => s.commit_flushed(consumer, flushed),
                Err(e) => {
                    tracing::error!(error = %e, "flush before revocation failed; the next owner reads the uncommitted offsets again");
                    s.status.lock().last_error = Some(format!("flush before revocation: {e}"));
                }
            }
            s.pending.lock().by_partition.clear();
            let mut st = s.status.lock();
            st.assigned_partitions = 0;
            st.rebalances += 1;
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let s = &self.shared;
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "Kafka partitions assigned");
            if let Err(e) = s.rt.block_on(s.sink.refresh()) {
                tracing::warn!(error = %e, "listing the shared prefix before consuming failed");
            }
            s.status.lock().assigned_partitions = tpl.count();
        }
    }
}

/// Creates the missing topics (`partitions` each, replication 1; a real
/// cluster's operators usually create them with their own settings).
fn ensure_topics(rt: &Handle, config: &KafkaConfig, topics: &[String]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        config
            .client()
            .create()
            .map_err(|source| KafkaError::Create {
                brokers: config.brokers.clone(),
                source,
            })?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, config.partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results =
        rt.block_on(admin.create_topics(&new, &opts))
            .map_err(|e| KafkaError::CreateTopic {
                topic: topics.join(","),
                reason: e.to_string(),
            })?;
    for r in results {
        if let Err((topic, code)) = r {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                return Err(KafkaError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// A `vm.metrics` message: a `SendMetricsBatchRequest`, validated as
/// billing.v1 validates it, as `vm_metrics` columns (as billing.v1 builds
/// them).
pub fn decode_vm_metrics(payload: &[u8], now: i64) -> Result<Columns, BadVmMetrics> {
    let batch = MetricsBatch::decode(payload)?;
    batch.validate(now)?;
    Ok(batch.into_columns()?.0)
}

/// Why a `vm.metrics` message is refused (the rejection's reason).
#[derive(Debug, thiserror::Error)]
pub enum BadVmMetrics {
    #[error("message is not a SendMetricsBatchRequest: {0}")]
    NotABatch(#[from] prost::DecodeError),
    #[error(transparent)]
    Invalid(#[from] crate::billing::error::RpcError),
    #[error(transparent)]
    Schema(#[from] tally_pipeline::SchemaError),
}

/// One consumed message, decoded into rows of its datasets, or rejected.
fn decode(
    route: Route,
    topic: &str,
    payload: &[u8],
    now: i64,
    rows: &mut RowsByDataset,
    rejections: &mut Vec<Rejection>,
    metrics: &Metrics,
) {
    match route {
        Route::Subject(s) => {
            if let Err(rejection) = s.decode_message_into(topic, payload, rows) {
                rejections.push(rejection);
            }
        }
        Route::VmMetrics => match decode_vm_metrics(payload, now) {
            Ok(columns) => rows.push_columns(columns),
            Err(bad) => rejections.push(Rejection {
                index: None,
                subject: Some(topic.to_string()),
                dataset: Some(tally_pipeline::Dataset::VmMetrics),
                reason: bad.to_string(),
                payload: format!("{} bytes of protobuf", payload.len()),
            }),
        },
        // Each record is checked against its dataset's schema as it joins
        // its columns: a wrongly typed one becomes a rejection.
        Route::Records => match decode_records(payload) {
            Ok(rs) => {
                for r in &rs {
                    if let Err(e) = rows.push_record(r) {
                        tracing::error!(dataset = %r.dataset, error = %e, "a record does not fit its dataset's schema; rejected");
                        metrics.records_failing_schema.add(1);
                        rejections.push(Rejection::schema(r, e));
                    }
                }
            }
            Err(e) => rejections.push(Rejection {
                index: None,
                subject: Some(topic.to_string()),
                dataset: None,
                reason: format!("message is not a batch of tally records: {e}"),
                payload: String::from_utf8_lossy(payload).into_owned(),
            }),
        },
    }
}

/// The Kafka consumer: its settings and the sink it flushes before it
/// commits.
pub struct Kafka {
    pub config: KafkaConfig,
    pub sink: Arc<dyn SinkControl>,
}

#[async_trait::async_trait]
impl Component for Kafka {
    const NAME: &'static str = "Kafka source";
    /// Its status for `/health`.
    type Running = Arc<Mutex<KafkaStatus>>;
    type Error = KafkaError;

    /// Starts the consumer on its own thread; it runs until the context's
    /// stop and flushes and commits what it consumed before it returns.
    async fn start(
        self,
        ctx: &tally_pipeline::component::Context,
    ) -> Result<(tally_pipeline::component::Handle, Self::Running), KafkaError> {
        let status = Arc::new(Mutex::new(KafkaStatus::default()));
        let thread = spawn(
            self.config,
            ctx.pipeline.clone(),
            self.sink,
            status.clone(),
            ctx.stop.clone(),
        )?;
        Ok((tally_pipeline::component::Handle::Thread(thread), status))
    }
}

fn spawn(
    config: KafkaConfig,
    pipeline: Pipeline,
    sink: Arc<dyn SinkControl>,
    status: Arc<Mutex<KafkaStatus>>,
    stop: watch::Receiver<bool>,
) -> Result<std::thread::JoinHandle<()>, KafkaError> {
    let rt = Handle::current();
    let routes = config.routes();
    let mut topics: Vec<String> = routes.keys().cloned().collect();
    topics.sort();
    let shared = Arc::new(Shared {
        rt: rt.clone(),
        sink,
        node: config.node.clone(),
        pending: Mutex::new(PendingOffsets::default()),
        revocations: AtomicU64::new(0),
        status,
    });
    let consumer: BaseConsumer<Context> = config
        .client()
        .set("group.id", &config.group)
        .set("client.id", format!("tally-{}", config.node))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            config.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (config.session_timeout.as_millis() / 4)
                .max(100)
                .to_string(),
        )
        .create_with_context(Context {
            shared: shared.clone(),
        })
        .map_err(|source| KafkaError::Create {
            brokers: config.brokers.clone(),
            source,
        })?;
    let handle = std::thread::Builder::new()
        .name("tally-kafka".into())
        .spawn(move || {
            if let Err(e) = ensure_topics(&rt, &config, &topics) {
                tracing::warn!(error = %e, "could not create the Kafka topics; consuming those that exist");
            }
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            if let Err(source) = consumer.subscribe(&names) {
                let e = KafkaError::Subscribe {
                    topics: topics.clone(),
                    source,
                };
                tracing::error!(error = %e, "Kafka source stopped");
                shared.status.lock().last_error = Some(e.to_string());
                return;
            }
            tracing::info!(brokers = %config.brokers, group = %config.group, topics = ?topics, "Kafka source subscribed");
            run(&consumer, &shared, &routes, &pipeline, stop);
            // A clean stop: flush what was consumed and commit it, so the
            // group's next owner starts exactly after it.
            match rt.block_on(shared.sink.flush_now()) {
                Ok(flushed) => shared.commit_flushed(&consumer, flushed),
                Err(e) => tracing::warn!(error = %e, "final flush of the Kafka source failed; its offsets stay uncommitted"),
            }
            tracing::info!("Kafka source stopped");
        })
        .expect("the Kafka thread starts");
    Ok(handle)
}

fn run(
    consumer: &BaseConsumer<Context>,
    shared: &Arc<Shared>,
    routes: &HashMap<String, Route>,
    pipeline: &Pipeline,
    stop: watch::Receiver<bool>,
) {
    let mut flushed = shared.sink.flushed();
    while !*stop.borrow() {
        let mut generation = shared.revocations.load(Ordering::SeqCst);
        let started = Instant::now();
        let now = now_ns();
        let (mut rows, mut rejections) = (RowsByDataset::default(), Vec::new());
        let mut offsets: Vec<(String, i32, i64)> = Vec::new();
        while offsets.len() < BATCH {
            let wait = if offsets.is_empty() {
                Duration::from_millis(100)
            } else {
                BATCH_WAIT.saturating_sub(started.elapsed())
            };
            let polled = consumer.poll(wait);
            // A rebalance runs inside `poll`. What this batch holds from
            // before it was neither ingested nor committed: the partitions'
            // owners (this member too, for those it got back) read it again
            // from the committed offsets. A message `poll` returns after the
            // rebalance belongs to the new assignment.
            let now_generation = shared.revocations.load(Ordering::SeqCst);
            if now_generation != generation {
                generation = now_generation;
                rows = RowsByDataset::default();
                rejections.clear();
                offsets.clear();
            }
            match polled {
                Some(Ok(m)) => {
                    let topic = m.topic();
                    match (routes.get(topic), m.payload()) {
                        (Some(route), Some(payload)) => decode(
                            *route,
                            topic,
                            payload,
                            now,
                            &mut rows,
                            &mut rejections,
                            pipeline.metrics(),
                        ),
                        (_, None) => rejections.push(Rejection {
                            index: None,
                            subject: Some(topic.to_string()),
                            dataset: None,
                            reason: "message has no payload (a tombstone)".into(),
                            payload: String::new(),
                        }),
                        // Only routed topics are subscribed to.
                        (None, Some(_)) => {}
                    }
                    offsets.push((topic.to_string(), m.partition(), m.offset()));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error");
                    shared.status.lock().last_error = Some(e.to_string());
                    break;
                }
                None => break,
            }
            if offsets.is_empty() && *stop.borrow() {
                break;
            }
        }
        if !offsets.is_empty() {
            let seq = match ingest_until_durable(shared, pipeline, rows.finish(), rejections, &stop)
            {
                Some(seq) => seq,
                None => return,
            };
            let mut pending = shared.pending.lock();
            for (topic, partition, offset) in &offsets {
                pending
                    .by_partition
                    .entry((topic.clone(), *partition))
                    .or_default()
                    .push_back((*offset, seq));
            }
            shared.status.lock().messages += offsets.len() as u64;
        }
        if flushed.has_changed().unwrap_or(false) {
            let seq = *flushed.borrow_and_update();
            shared.commit_flushed(consumer, seq);
        }
    }
}

/// Ingests until durable in the WAL; waits while the pipeline is full (the
/// consumer simply reads more slowly), and through any other refusal (the
/// log cannot be told no). `None` when stopped meanwhile.
fn ingest_until_durable(
    shared: &Shared,
    pipeline: &Pipeline,
    parts: Vec<Columns>,
    rejections: Vec<Rejection>,
    stop: &watch::Receiver<bool>,
) -> Option<u64> {
    let stored = shared.rt.block_on(pipeline.ingest_until_durable(
        SOURCE,
        Origin::Log,
        parts,
        rejections,
        stop,
        |e| {
            if !matches!(e, IngestError::QueueFull(_)) {
                tracing::warn!(error = %e, "Kafka batch not stored; retrying");
                shared.status.lock().last_error = Some(e.to_string());
            }
        },
    ));
    stored.ok().map(|report| report.seq.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_flushed_prefixes_of_each_partition_are_committed() {
        let mut p = PendingOffsets::default();
        let a = ("a".to_string(), 0);
        let b = ("a".to_string(), 1);
        p.by_partition.insert(
            a.clone(),
            VecDeque::from([(10, 1), (11, 0), (12, 3), (13, 2)]),
        );
        p.by_partition.insert(b.clone(), VecDeque::from([(5, 4)]));
        // Through sequence 2: offsets 10 and 11 of partition 0 (11 wrote
        // nothing); 12 waits for sequence 3 and holds 13 back with it.
        assert_eq!(p.take_flushed(2), vec![(a.clone(), 12, 2)]);
        assert!(p.take_flushed(2).is_empty());
        assert_eq!(p.take_flushed(4), vec![(a, 14, 2), (b, 6, 1)]);
        assert!(p.by_partition.is_empty());
    }
}
