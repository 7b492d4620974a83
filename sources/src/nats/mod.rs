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
use tally_pipeline::{IngestError, Pipeline, Record, Rejection};
use tokio::sync::watch;

use crate::events::Subject;
use tally_pipeline::tap::PayloadTap;

pub const SOURCE: &str = "nats";
/// Messages taken per ingest call.
const BATCH: usize = 4096;
/// Core NATS: ingest calls in flight at once.
const IN_FLIGHT: usize = 4;

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

/// One message turned into a record or a rejection.
fn decode(
    routes: &HashMap<String, Subject>,
    subject: &str,
    payload: &[u8],
    records: &mut Vec<Record>,
    rejections: &mut Vec<Rejection>,
) -> Option<(Subject, usize)> {
    let Some(&s) = routes.get(subject) else {
        rejections.push(Rejection {
            index: None,
            subject: Some(subject.to_string()),
            dataset: None,
            reason: format!("no event type is mapped to NATS subject {subject:?}"),
            payload: String::from_utf8_lossy(payload).into_owned(),
        });
        return None;
    };
    match s.decode_message(s.name(), payload) {
        Ok(r) => {
            records.push(r);
            Some((s, records.len() - 1))
        }
        Err(rejection) => {
            rejections.push(rejection);
            None
        }
    }
}

/// Records and rejections of a batch of `(subject, payload)`, and for each
/// record its subject, index and payload (for the tap).
type Decoded = (Vec<Record>, Vec<Rejection>, Vec<(Subject, usize, Vec<u8>)>);

fn decode_batch<'a>(
    routes: &HashMap<String, Subject>,
    messages: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Decoded {
    let (mut records, mut rejections, mut accepted) = (Vec::new(), Vec::new(), Vec::new());
    for (subject, payload) in messages {
        if let Some((s, i)) = decode(routes, subject, payload, &mut records, &mut rejections) {
            accepted.push((s, i, payload.to_vec()));
        }
    }
    (records, rejections, accepted)
}

/// Ingests until durable, waiting while queues are full: the pipeline's
/// backpressure reaches NATS as a slower consumer.
async fn ingest_until_durable(
    pipeline: &Pipeline,
    records: Vec<Record>,
    rejections: Vec<Rejection>,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<bool>, IngestError> {
    let mut delay = Duration::from_millis(20);
    loop {
        match pipeline
            .ingest(SOURCE, records.clone(), rejections.clone())
            .await
        {
            Ok(report) => return Ok(report.stored_flags),
            Err(IngestError::QueueFull(q)) if !*stop.borrow() => {
                tracing::debug!(error = %q, "pipeline full; NATS collector waits");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Starts the collector: it runs until the context's stop, and a failure
/// stops it with the reason in its status (`/health`).
pub fn start(
    config: NatsConfig,
    ctx: &tally_pipeline::component::Context,
    tap: Option<Arc<dyn PayloadTap>>,
) -> (tally_pipeline::component::Handle, Arc<Mutex<NatsStatus>>) {
    let status = Arc::new(Mutex::new(NatsStatus::default()));
    let (pipeline, stop, task_status) = (ctx.pipeline.clone(), ctx.stop.clone(), status.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = run(config, pipeline, tap, task_status.clone(), stop).await {
            tracing::error!(error = %e, "NATS collector stopped");
            *task_status.lock() = NatsStatus {
                connected: false,
                detail: Some(e.to_string()),
            };
        }
    });
    (tally_pipeline::component::Handle::Task(task), status)
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

fn offer(
    tap: &Option<Arc<dyn PayloadTap>>,
    accepted: &[(Subject, usize, Vec<u8>)],
    stored: &[bool],
) {
    let Some(tap) = tap else { return };
    for (subject, index, payload) in accepted {
        if stored.get(*index).copied().unwrap_or(false) {
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
    let routes = config.routes();
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
        let batch = tokio::select! {
            b = messages.next() => b,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(batch) = batch else { break };
        let (records, rejections, accepted) = decode_batch(
            &routes,
            batch.iter().map(|m| (m.subject.as_str(), &m.payload[..])),
        );
        // Several batches in flight share WAL fsyncs (group commit); core
        // NATS has no order to keep and nothing to acknowledge.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (pipeline, tap, stop) = (pipeline.clone(), tap.clone(), stop.clone());
        let n = batch.len();
        tokio::spawn(async move {
            match ingest_until_durable(&pipeline, records, rejections, &stop).await {
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
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                // Above one fetch, so a fetch is never cut short by
                // messages still waiting for their ack.
                max_ack_pending: (4 * BATCH) as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| NatsError::JetStream(format!("consumer {}: {e}", config.consumer)))?;
    while !*stop.borrow() {
        let fetched = consumer
            .fetch()
            .max_messages(BATCH)
            .expires(Duration::from_millis(500))
            .messages()
            .await;
        let mut batch_stream = match fetched {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "JetStream fetch failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
                continue;
            }
        };
        let mut batch = Vec::new();
        while let Some(m) = batch_stream.next().await {
            match m {
                Ok(m) => batch.push(m),
                Err(e) => tracing::debug!(error = %e, "JetStream batch ended"),
            }
        }
        if batch.is_empty() {
            continue;
        }
        let (records, rejections, accepted) = decode_batch(
            &routes,
            batch.iter().map(|m| (m.subject.as_str(), &m.payload[..])),
        );
        match ingest_until_durable(&pipeline, records, rejections, &stop).await {
            Ok(stored) => {
                offer(&tap, &accepted, &stored);
                // Durable: now JetStream may forget them.
                for m in &batch {
                    if let Err(e) = m.ack().await {
                        tracing::warn!(error = %e, "JetStream ack failed; the message will be redelivered and deduplicated");
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, messages = batch.len(), "could not store JetStream messages; they will be redelivered");
                for m in &batch {
                    let _ = m
                        .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
            }
        }
    }
    Ok(())
}
