//! The control-plane usage hook (README "Control-plane usage hook"): every `chat.usage_summary`
//! tally accepts is POSTed, as JSON, to `CONTROL_PLANE_USAGE_INGEST_URL`.
//!
//! Best effort, never in the way of ingest: payloads wait in a bounded
//! queue (overflow is counted, not waited for); 200/201/202/204 and 409
//! count as delivered; 429 and 5xx (and connection errors) are retried with
//! exponential backoff and jitter; other 4xx are dropped and counted. The
//! queue is in memory: what waits in it when tally stops is not sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tally_pipeline::component::{Component, Context, Handle};
use tally_pipeline::tap::PayloadTap;
use tokio::sync::{mpsc, Semaphore};

pub mod config;

#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    pub url: String,
    pub queue: usize,
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub concurrency: usize,
    pub timeout: Duration,
}

impl ForwarderConfig {
    pub fn new(url: String) -> Self {
        Self {
            url,
            queue: 10_000,
            max_attempts: 6,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            concurrency: 4,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default)]
pub struct ForwarderMetrics {
    pub delivered: AtomicU64,
    pub retries: AtomicU64,
    pub dropped_client_error: AtomicU64,
    pub dropped_retries_exhausted: AtomicU64,
    pub dropped_queue_full: AtomicU64,
}

impl ForwarderMetrics {
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP tally_control_plane_forwarded_total chat.usage_summary payloads delivered to the control plane.\n\
             # TYPE tally_control_plane_forwarded_total counter\ntally_control_plane_forwarded_total {}\n\
             # HELP tally_control_plane_retries_total Retried deliveries (429, 5xx, connection errors).\n\
             # TYPE tally_control_plane_retries_total counter\ntally_control_plane_retries_total {}\n\
             # HELP tally_control_plane_dropped_total Payloads not delivered, by reason.\n\
             # TYPE tally_control_plane_dropped_total counter\n\
             tally_control_plane_dropped_total{{reason=\"client_error\"}} {}\n\
             tally_control_plane_dropped_total{{reason=\"retries_exhausted\"}} {}\n\
             tally_control_plane_dropped_total{{reason=\"queue_full\"}} {}\n",
            g(&self.delivered),
            g(&self.retries),
            g(&self.dropped_client_error),
            g(&self.dropped_retries_exhausted),
            g(&self.dropped_queue_full),
        )
    }
}

pub struct ControlPlaneForwarder {
    tx: mpsc::Sender<Vec<u8>>,
    pub metrics: Arc<ForwarderMetrics>,
}

impl PayloadTap for ControlPlaneForwarder {
    fn offer(&self, subject: &str, payload: &[u8]) {
        if subject != "chat.usage_summary" {
            return;
        }
        if self.tx.try_send(payload.to_vec()).is_err() {
            self.metrics
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one delivery attempt says to do next.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Delivered,
    Retry,
    Drop,
}

pub fn verdict(status: u16) -> Verdict {
    match status {
        200 | 201 | 202 | 204 | 409 => Verdict::Delivered,
        429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Drop,
    }
}

/// `base × 2^attempt`, capped, with up to 50% jitter.
fn backoff(config: &ForwarderConfig, attempt: u32) -> Duration {
    let exp = config
        .base_backoff
        .saturating_mul(1 << attempt.min(16))
        .min(config.max_backoff);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0) as u64;
    exp + Duration::from_nanos((exp.as_nanos() as u64 / 2).max(1) * (nanos % 1000) / 1000)
}

async fn deliver(
    client: &reqwest::Client,
    config: &ForwarderConfig,
    metrics: &ForwarderMetrics,
    payload: Vec<u8>,
) {
    for attempt in 0..config.max_attempts {
        let result = client
            .post(&config.url)
            .header("content-type", "application/json")
            .body(payload.clone())
            .send()
            .await;
        let v = match &result {
            Ok(r) => verdict(r.status().as_u16()),
            Err(_) => Verdict::Retry,
        };
        match v {
            Verdict::Delivered => {
                metrics.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Verdict::Drop => {
                let status = result.map(|r| r.status().as_u16()).unwrap_or_default();
                tracing::warn!(status, "control plane refused a usage summary; dropped");
                metrics.dropped_client_error.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Verdict::Retry if attempt + 1 < config.max_attempts => {
                metrics.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff(config, attempt)).await;
            }
            Verdict::Retry => {}
        }
    }
    tracing::warn!(
        attempts = config.max_attempts,
        "control plane unreachable; usage summary dropped"
    );
    metrics
        .dropped_retries_exhausted
        .fetch_add(1, Ordering::Relaxed);
}

/// The control-plane hook: sees the payloads sources accept.
pub struct ControlPlane(pub ForwarderConfig);

#[async_trait::async_trait]
impl Component for ControlPlane {
    const NAME: &'static str = "control-plane forwarder";
    type Running = Arc<ControlPlaneForwarder>;
    type Error = std::convert::Infallible;

    /// Starts the delivery workers; what it runs ends with the process (a
    /// summary not yet delivered is dropped, as the hook promises no more).
    async fn start(self, _ctx: &Context) -> Result<(Handle, Self::Running), Self::Error> {
        tracing::info!(url = %self.0.url, "forwarding chat.usage_summary to the control plane");
        let (handle, forwarder) = start(self.0);
        Ok((handle, forwarder))
    }
}

/// Starts the delivery workers and returns the tap to hand to sources.
fn start(config: ForwarderConfig) -> (Handle, Arc<ControlPlaneForwarder>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(config.queue.max(1));
    let metrics = Arc::new(ForwarderMetrics::default());
    let worker_metrics = metrics.clone();
    let task = tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .unwrap_or_default();
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let config = Arc::new(config);
        while let Some(payload) = rx.recv().await {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let (client, config, metrics) =
                (client.clone(), config.clone(), worker_metrics.clone());
            tokio::spawn(async move {
                deliver(&client, &config, &metrics, payload).await;
                drop(permit);
            });
        }
    });
    (
        Handle::Background(task),
        Arc::new(ControlPlaneForwarder { tx, metrics }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_spec_verdicts() {
        for s in [200, 201, 202, 204, 409] {
            assert_eq!(verdict(s), Verdict::Delivered, "{s}");
        }
        for s in [429, 500, 502, 503, 599] {
            assert_eq!(verdict(s), Verdict::Retry, "{s}");
        }
        for s in [400, 401, 404, 413, 422] {
            assert_eq!(verdict(s), Verdict::Drop, "{s}");
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_half() {
        let c = ForwarderConfig::new("http://x".into());
        for attempt in 0..10 {
            let exp = c
                .base_backoff
                .saturating_mul(1 << attempt)
                .min(c.max_backoff);
            let b = backoff(&c, attempt);
            assert!(b >= exp && b <= exp + exp / 2, "{attempt}: {b:?}");
        }
    }
}
