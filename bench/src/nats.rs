//! NATS scenarios: `usage.llm` events published to NATS (core or JetStream)
//! and the rate at which tally makes them durable, read from its
//! `tally_records_accepted_total{source="nats"}` counter.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct NatsReport {
    pub mode: &'static str,
    pub publishers: usize,
    pub duration_seconds: f64,
    pub published: u64,
    pub published_per_second: f64,
    /// Events stored by tally during the measured window, per second.
    pub stored_per_second: f64,
    /// Events stored in the end (after a drain wait).
    pub stored_total: u64,
    /// Published but never stored (core NATS drops under overload).
    pub lost: u64,
}

/// tally's count of events accepted from NATS.
pub async fn stored(http: &reqwest::Client, base: &str) -> anyhow::Result<u64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("tally_records_accepted_total{") && l.contains("source=\"nats\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// Where the stored count is read: tally's metrics, or a subscriber of the
/// bench's own that only counts.
enum Counter {
    Tally { http: reqwest::Client, base: String },
    Local(Arc<AtomicU64>),
}

impl Counter {
    async fn get(&self) -> anyhow::Result<u64> {
        match self {
            Counter::Tally { http, base } => stored(http, base).await,
            Counter::Local(n) => Ok(n.load(Ordering::Relaxed)),
        }
    }
}

pub async fn run(
    base: &str,
    nats_url: &str,
    jetstream: bool,
    publishers: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<NatsReport> {
    let counter = Counter::Tally {
        http: reqwest::Client::new(),
        base: base.to_string(),
    };
    publish(counter, nats_url, jetstream, publishers, warmup, duration).await
}

/// Core NATS with a subscriber (its own connection, as tally's would be)
/// that counts messages and drops them.
pub async fn ceiling(
    nats_url: &str,
    publishers: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<NatsReport> {
    use futures::StreamExt;
    let received = Arc::new(AtomicU64::new(0));
    // Default options, as tally's collector has.
    let subscriber = async_nats::connect(nats_url).await?;
    let mut messages = subscriber.subscribe("usage.llm").await?;
    subscriber.flush().await?;
    let count = received.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            std::hint::black_box(&m.payload);
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut report = publish(
        Counter::Local(received),
        nats_url,
        false,
        publishers,
        warmup,
        duration,
    )
    .await?;
    report.mode = "core, counting subscriber";
    task.abort();
    Ok(report)
}

async fn publish(
    counter: Counter,
    nats_url: &str,
    jetstream: bool,
    publishers: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<NatsReport> {
    let client = async_nats::connect(nats_url).await?;
    let js = async_nats::jetstream::new(client.clone());
    if jetstream {
        // tally creates the stream; wait for it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while js.get_stream("BENCH").await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "stream BENCH was not created by tally"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..publishers.max(1) {
        let (client, js, next, stop) = (client.clone(), js.clone(), next.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::with_capacity(256);
            while !stop.load(Ordering::Relaxed) {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let event = crate::runner::body(id, 1);
                let payload = bytes::Bytes::from(event.trim_end().to_string());
                if jetstream {
                    match js.publish("usage.llm", payload).await {
                        Ok(ack) => acks.push(ack),
                        Err(_) => continue,
                    }
                    if acks.len() >= 256 {
                        for a in acks.drain(..) {
                            let _ = a.await;
                        }
                    }
                } else if client.publish("usage.llm", payload).await.is_err() {
                    break;
                }
            }
            for a in acks.drain(..) {
                let _ = a.await;
            }
            let _ = client.flush().await;
        }));
    }
    tokio::time::sleep(warmup).await;
    let (s0, p0, t0) = (
        counter.get().await?,
        next.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(duration).await;
    let (s1, p1, elapsed) = (
        counter.get().await?,
        next.load(Ordering::Relaxed),
        t0.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let published = next.load(Ordering::Relaxed);
    // Let tally drain what is on its way.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut total = counter.get().await?;
    let mut last_change = Instant::now();
    while total < published
        && Instant::now() < deadline
        && last_change.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = counter.get().await?;
        if now != total {
            last_change = Instant::now();
        }
        total = now;
    }
    let secs = elapsed.as_secs_f64();
    Ok(NatsReport {
        mode: if jetstream { "jetstream" } else { "core" },
        publishers,
        duration_seconds: secs,
        published,
        published_per_second: (p1 - p0) as f64 / secs,
        stored_per_second: (s1 - s0) as f64 / secs,
        stored_total: total,
        lost: published.saturating_sub(total),
    })
}
