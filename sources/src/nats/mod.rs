//! NATS collectors for the subjects of specs 001 and 004.
//!
//! Two modes:
//! - **Core NATS** (as the usage-engine spec has it): at-most-once. A message
//!   published while tally is down, or dropped by the NATS client as a slow
//!   consumer, is lost; that is NATS core's contract, not tally's.
//! - **JetStream** (`--nats-stream`): a durable pull consumer. A message is
//!   acknowledged only after its record (or its rejection) is in the fsync'd
//!   WAL; redeliveries are deduplicated by `event_id`.

pub mod config;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use parking_lot::Mutex;
use tally_pipeline::batch::{Columns, RowsByDataset};
use tally_pipeline::waiting::Origin;
use tally_pipeline::{Dataset, IngestError, Pipeline, Rejection};
use tokio::sync::watch;

use crate::events::Subject;
use tally_pipeline::component::{Component, Context, Handle};
use tally_pipeline::tap::PayloadTap;

pub const SOURCE: &str = "nats";
/// Messages taken per ingest call.
const BATCH: usize = 4096;
/// Core NATS: ingest calls in flight at once.
const IN_FLIGHT: usize = 4;
/// Core NATS: how long a batch waits for more messages before it is
/// stored. Core NATS acknowledges nothing, so this delays only when an
/// event becomes queryable.
const LINGER: Duration = Duration::from_millis(2);

#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub url: String,
    /// JetStream stream to consume; core NATS when `None`.
    pub stream: Option<String>,
    /// Create the stream (over all subjects) when it does not exist.
    pub create_stream: bool,
    /// Durable consumer name.
    pub consumer: String,
    /// Redelivery delay of unacknowledged messages.
    pub ack_wait: Duration,
    /// Messages the client holds per subject before core NATS drops them
    /// as a slow consumer.
    pub buffer: usize,
    /// NATS subject for each event subject (defaults to the same name).
    pub subjects: HashMap<Subject, String>,
    /// Credentials file (JWT and NKey seed).
    pub credentials: Option<PathBuf>,
    /// CA of the server's certificate: TLS required.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key.
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

impl NatsConfig {
    pub fn subject_name(&self, s: Subject) -> String {
        self.subjects
            .get(&s)
            .cloned()
            .unwrap_or_else(|| s.name().to_string())
    }

    fn routes(&self) -> HashMap<String, Subject> {
        Subject::ALL
            .iter()
            .map(|s| (self.subject_name(*s), *s))
            .collect()
    }
}

/// The collector's state, for `/health`.
#[derive(Debug, Clone, Default)]
pub struct NatsStatus {
    pub connected: bool,
    pub detail: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("reading the NATS credentials file {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
}

/// The event type of each NATS subject, remembering the last one: the
/// messages of a batch mostly share their subject.
struct Routes<'a> {
    routes: &'a HashMap<String, Subject>,
    last: Option<(&'a str, Subject)>,
}

impl<'a> Routes<'a> {
    fn new(routes: &'a HashMap<String, Subject>) -> Self {
        Routes { routes, last: None }
    }

    fn get(&mut self, subject: &str) -> Option<Subject> {
        if let Some((name, s)) = self.last {
            if name == subject {
                return Some(s);
            }
        }
        let (name, s) = self.routes.get_key_value(subject)?;
        self.last = Some((name.as_str(), *s));
        Some(*s)
    }
}

/// One message decoded into a row of its dataset, or a rejection; the
/// subject it was decoded as.
fn decode(
    routes: &mut Routes,
    subject: &str,
    payload: &[u8],
    rows: &mut RowsByDataset,
    rejections: &mut Vec<Rejection>,
) -> Option<Subject> {
    let Some(s) = routes.get(subject) else {
        rejections.push(Rejection {
            index: None,
            subject: Some(subject.to_string()),
            dataset: None,
            reason: format!("no event type is mapped to NATS subject {subject:?}"),
            payload: String::from_utf8_lossy(payload).into_owned(),
        });
        return None;
    };
    match s.decode_message_into(s.name(), payload, rows) {
        Ok(()) => Some(s),
        Err(rejection) => {
            rejections.push(rejection);
            None
        }
    }
}

/// The columns (one part per dataset) and rejections of a batch of
/// `(subject, payload)`, and for each row, part after part, its subject
/// and payload (for the tap).
type Decoded = (Vec<Columns>, Vec<Rejection>, Vec<(Subject, Vec<u8>)>);

/// `keep_payloads`: whether a tap wants the payloads of stored records
/// (copied only then).
fn decode_batch<'a>(
    routes: &HashMap<String, Subject>,
    messages: impl ExactSizeIterator<Item = (&'a str, &'a [u8])>,
    keep_payloads: bool,
) -> Decoded {
    let mut rows = RowsByDataset::default();
    let mut rejections = Vec::new();
    // The payloads of each dataset's rows, in the order of its rows.
    let mut accepted: Vec<Vec<(Subject, Vec<u8>)>> =
        Dataset::ALL.iter().map(|_| Vec::new()).collect();
    let mut routes = Routes::new(routes);
    for (subject, payload) in messages {
        if let Some(s) = decode(&mut routes, subject, payload, &mut rows, &mut rejections) {
            if keep_payloads {
                accepted[s.dataset().index()].push((s, payload.to_vec()));
            }
        }
    }
    // Parts come in the order of `Dataset::ALL`, as their payloads do.
    (
        rows.finish(),
        rejections,
        accepted.into_iter().flatten().collect(),
    )
}

/// Ingests until durable, waiting while queues are full: the pipeline's
/// backpressure reaches NATS as a slower consumer.
async fn ingest_until_durable(
    pipeline: &Pipeline,
    parts: Vec<Columns>,
    rejections: Vec<Rejection>,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<bool>, IngestError> {
    pipeline
        .ingest_until_durable(SOURCE, Origin::Consumer, parts, rejections, stop, |q| {
            tracing::debug!(error = %q, "pipeline full; NATS collector waits");
        })
        .await
        .map(|report| report.stored_flags)
}

/// The NATS collector: its settings and the hook that sees what it accepts.
pub struct Nats {
    pub config: NatsConfig,
    pub tap: Option<Arc<dyn PayloadTap>>,
}

#[async_trait::async_trait]
impl Component for Nats {
    const NAME: &'static str = "NATS collector";
    /// Its status for `/health`.
    type Running = Arc<Mutex<NatsStatus>>;
    type Error = std::convert::Infallible;

    /// Starts the collector: it runs until the context's stop, and a
    /// failure stops it with the reason in its status.
    async fn start(self, ctx: &Context) -> Result<(Handle, Self::Running), Self::Error> {
        let status = Arc::new(Mutex::new(NatsStatus::default()));
        let (pipeline, stop, task_status) =
            (ctx.pipeline.clone(), ctx.stop.clone(), status.clone());
        let (config, tap) = (self.config, self.tap);
        let task = tokio::spawn(async move {
            if let Err(e) = run(config, pipeline, tap, task_status.clone(), stop).await {
                tracing::error!(error = %e, "NATS collector stopped");
                *task_status.lock() = NatsStatus {
                    connected: false,
                    detail: Some(e.to_string()),
                };
            }
        });
        Ok((Handle::Task(task), status))
    }
}

/// Runs the collector until `stop`; reconnects are the NATS client's.
pub async fn run(
    config: NatsConfig,
    pipeline: Pipeline,
    tap: Option<Arc<dyn PayloadTap>>,
    status: Arc<Mutex<NatsStatus>>,
    stop: watch::Receiver<bool>,
) -> Result<(), NatsError> {
    let status_events = status.clone();
    let mut options = async_nats::ConnectOptions::new();
    if let Some(path) = &config.credentials {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| NatsError::Credentials {
                    path: path.clone(),
                    source,
                })?;
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &config.tls_client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let client = options
        .name("tally")
        .subscription_capacity(config.buffer)
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let status = status_events.clone();
            async move {
                let mut s = status.lock();
                match event {
                    async_nats::Event::Connected => {
                        *s = NatsStatus {
                            connected: true,
                            detail: None,
                        }
                    }
                    async_nats::Event::Disconnected => {
                        *s = NatsStatus {
                            connected: false,
                            detail: Some("disconnected; reconnecting".into()),
                        }
                    }
                    other => s.detail = Some(other.to_string()),
                }
            }
        })
        .connect(&config.url)
        .await
        .map_err(|source| NatsError::Connect {
            url: config.url.clone(),
            source,
        })?;
    {
        let mut s = status.lock();
        s.connected = true;
    }
    tracing::info!(url = %config.url, stream = ?config.stream, "NATS collector connected");
    match &config.stream {
        None => run_core(client, &config, pipeline, tap, stop).await,
        Some(stream) => run_jetstream(client, &config, stream, pipeline, tap, stop).await,
    }
}

fn offer(tap: &Option<Arc<dyn PayloadTap>>, accepted: &[(Subject, Vec<u8>)], stored: &[bool]) {
    let Some(tap) = tap else { return };
    for ((subject, payload), stored) in accepted.iter().zip(stored) {
        if *stored {
            tap.offer(subject.name(), payload);
        }
    }
}

async fn run_core(
    client: async_nats::Client,
    config: &NatsConfig,
    pipeline: Pipeline,
    tap: Option<Arc<dyn PayloadTap>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), NatsError> {
    let routes = Arc::new(config.routes());
    let mut subs = Vec::new();
    for name in routes.keys() {
        subs.push(
            client
                .subscribe(name.clone())
                .await
                .map_err(|source| NatsError::Subscribe {
                    subject: name.clone(),
                    source,
                })?,
        );
    }
    let mut messages = futures::stream::select_all(subs).ready_chunks(BATCH);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    loop {
        // Several batches in flight share WAL fsyncs (group commit) and are
        // decoded on every core; core NATS has no order to keep and nothing
        // to acknowledge. A slot is taken first, so messages that arrive
        // while every slot is busy wait in the subscription and go into
        // the next batch together.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let batch = tokio::select! {
            b = messages.next() => b,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(mut batch) = batch else { break };
        // A batch is filled for up to LINGER: every ingest call has a cost
        // of its own (a WAL entry, a dedup lock, a task), which a trickle
        // of one-message batches would pay per message.
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(more)) => batch.extend(more),
                Ok(None) | Err(_) => break,
            }
        }
        let (pipeline, tap, stop, routes) =
            (pipeline.clone(), tap.clone(), stop.clone(), routes.clone());
        let n = batch.len();
        tokio::spawn(async move {
            let (parts, rejections, accepted) = decode_batch(
                &routes,
                batch.iter().map(|m| (m.subject.as_str(), &m.payload[..])),
                tap.is_some(),
            );
            drop(batch);
            match ingest_until_durable(&pipeline, parts, rejections, &stop).await {
                Ok(stored) => offer(&tap, &accepted, &stored),
                // Core NATS cannot redeliver: say loudly what was lost.
                Err(e) => {
                    tracing::error!(error = %e, messages = n, "NATS messages could not be stored and are lost (core NATS is at-most-once)")
                }
            }
            drop(permit);
        });
    }
    // Wait for the batches still in flight.
    let _ = in_flight.acquire_many(IN_FLIGHT as u32).await;
    Ok(())
}

async fn run_jetstream(
    client: async_nats::Client,
    config: &NatsConfig,
    stream_name: &str,
    pipeline: Pipeline,
    tap: Option<Arc<dyn PayloadTap>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), NatsError> {
    let js = jetstream::new(client);
    let routes = config.routes();
    let stream = if config.create_stream {
        js.get_or_create_stream(jetstream::stream::Config {
            name: stream_name.to_string(),
            subjects: routes.keys().cloned().collect(),
            ..Default::default()
        })
        .await
        .map_err(|e| NatsError::JetStream(format!("creating stream {stream_name}: {e}")))?
    } else {
        js.get_stream(stream_name).await.map_err(|e| {
            NatsError::JetStream(format!(
                "stream {stream_name} (use --nats-create-stream to create it): {e}"
            ))
        })?
    };
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            &config.consumer,
            jetstream::consumer::pull::Config {
                durable_name: Some(config.consumer.clone()),
                // Each message is acknowledged once stored. `All` would save
                // acks, but one ack would then also cover the redeliveries
                // of an earlier run that are still waiting their turn (not
                // stored yet): after a crash, those would be lost.
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                // Room for every batch in flight and the next pull, so the
                // server never waits for an ack to deliver more.
                max_ack_pending: ((JS_IN_FLIGHT + 2) * BATCH) as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| NatsError::JetStream(format!("consumer {}: {e}", config.consumer)))?;
    let routes = Arc::new(routes);
    while !*stop.borrow() {
        // A continuous pull: the client asks for the next batch while the
        // current ones are still being stored.
        let pulled = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .expires(Duration::from_secs(5))
            .messages()
            .await;
        let messages = match pulled {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "JetStream pull failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
                continue;
            }
        };
        consume_jetstream(messages, &routes, &pipeline, &tap, &stop).await;
    }
    Ok(())
}

/// JetStream batches stored at once: their WAL writes share fsyncs.
const JS_IN_FLIGHT: usize = 4;

/// Stores batches of a pull, up to [`JS_IN_FLIGHT`] at a time, and
/// acknowledges them in the order they were delivered, each once it is
/// durable. Returns when the pull ends or on `stop` (after acknowledging
/// what was stored meanwhile).
async fn consume_jetstream(
    messages: jetstream::consumer::pull::Stream,
    routes: &Arc<HashMap<String, Subject>>,
    pipeline: &Pipeline,
    tap: &Option<Arc<dyn PayloadTap>>,
    stop: &watch::Receiver<bool>,
) {
    let mut messages = messages.ready_chunks(BATCH);
    let mut storing = futures::stream::FuturesOrdered::new();
    let mut pull_ended = false;
    let mut stop_changed = stop.clone();
    loop {
        let stopping = *stop_changed.borrow();
        tokio::select! {
            biased;
            Some(done) = storing.next(), if !storing.is_empty() => {
                let done: Result<(Vec<jetstream::Message>, bool), tokio::task::JoinError> = done;
                let (batch, stored) = done.expect("a JetStream batch task does not panic");
                if !stored {
                    // Stopped before it was durable: it and every batch
                    // after it stay unacknowledged and are redelivered.
                    break;
                }
                acknowledge(&batch).await;
            }
            chunk = messages.next(), if !stopping && !pull_ended && storing.len() < JS_IN_FLIGHT => {
                let Some(chunk) = chunk else {
                    pull_ended = true;
                    continue;
                };
                let mut batch = Vec::with_capacity(chunk.len());
                for m in chunk {
                    match m {
                        Ok(m) => batch.push(m),
                        Err(e) => tracing::debug!(error = %e, "JetStream pull ended"),
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                let (routes, pipeline, tap, stop) =
                    (routes.clone(), pipeline.clone(), tap.clone(), stop.clone());
                storing.push_back(tokio::spawn(async move {
                    let stored = store_jetstream_batch(&batch, &routes, &pipeline, &tap, &stop).await;
                    (batch, stored)
                }));
            }
            changed = stop_changed.changed(), if !stopping => {
                if changed.is_err() {
                    break;
                }
            }
            else => break,
        }
        if (pull_ended || *stop_changed.borrow()) && storing.is_empty() {
            break;
        }
    }
}

/// Stores one batch, retrying until it is durable (JetStream keeps the
/// messages meanwhile) or `stop`. `false`: not stored.
async fn store_jetstream_batch(
    batch: &[jetstream::Message],
    routes: &HashMap<String, Subject>,
    pipeline: &Pipeline,
    tap: &Option<Arc<dyn PayloadTap>>,
    stop: &watch::Receiver<bool>,
) -> bool {
    let mut delay = Duration::from_millis(100);
    loop {
        let (parts, rejections, accepted) = decode_batch(
            routes,
            batch.iter().map(|m| (m.subject.as_str(), &m.payload[..])),
            tap.is_some(),
        );
        match ingest_until_durable(pipeline, parts, rejections, stop).await {
            Ok(stored) => {
                offer(tap, &accepted, &stored);
                return true;
            }
            Err(_) if *stop.borrow() => return false,
            Err(e) => {
                tracing::error!(error = %e, messages = batch.len(), "could not store JetStream messages; retrying (they stay unacknowledged)");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Durable: now JetStream may forget them. An ack is a publish without a
/// reply: the client writes a batch's acks to the socket together.
async fn acknowledge(batch: &[jetstream::Message]) {
    for m in batch {
        if let Err(e) = m.ack().await {
            tracing::warn!(error = %e, "JetStream ack failed; the messages will be redelivered and deduplicated");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages of several subjects in one batch, unknown ones among
    /// them: each is routed as the map routes it, whatever came before.
    #[test]
    fn remembered_route_is_the_maps_route() {
        let mut config = NatsConfig {
            url: String::new(),
            stream: None,
            create_stream: false,
            consumer: "tally".into(),
            ack_wait: Duration::from_secs(1),
            buffer: 1,
            subjects: HashMap::new(),
            credentials: None,
            tls_ca: None,
            tls_client: None,
        };
        config
            .subjects
            .insert(Subject::UsageTool, "acme.usage.tool".into());
        let map = config.routes();
        let mut routes = Routes::new(&map);
        let sequence = [
            "usage.llm",
            "usage.llm",
            "acme.usage.tool",
            "usage.tool",
            "usage.llm",
            "usage.agent",
            "usage.agent",
            "nope",
            "usage.agent",
            "usage.ll",
            "chat.usage_delta",
        ];
        for subject in sequence {
            assert_eq!(routes.get(subject), map.get(subject).copied(), "{subject}");
        }
        assert_eq!(routes.get("usage.tool"), None);
        assert_eq!(routes.get("acme.usage.tool"), Some(Subject::UsageTool));
    }
}
