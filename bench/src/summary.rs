//! The `usage-summary` scenario: load N `usage.llm` events from the last 24
//! hours over HTTP, then time `GET /internal/usage/summary`.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct SummaryReport {
    pub events: u64,
    pub load_seconds: f64,
    pub queries: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
    pub llm_calls_total: u64,
}

/// One generated `usage.llm` event: the same one goes to tally and to the
/// PostgreSQL peer.
pub struct LlmEvent {
    pub event_id: String,
    pub timestamp: chrono::DateTime<chrono::Utc>,
    pub actor_id: String,
    pub agent_id: String,
    pub microdao_id: String,
    pub model: &'static str,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub latency_ms: i32,
}

impl LlmEvent {
    /// Event `id`: spread over the 23 hours before `now_s`, 12 tenants,
    /// 40 agents, 3 models.
    pub fn generate(id: u64, now_s: i64) -> LlmEvent {
        LlmEvent {
            event_id: format!("sum-{id:012}"),
            timestamp: chrono::DateTime::from_timestamp(now_s - (id % 82_800) as i64, 0)
                .unwrap_or_default(),
            actor_id: format!("user:{}", id % 997),
            agent_id: format!("agent:{}", id % 40),
            microdao_id: format!("microdao:{}", id % 12),
            model: ["gpt-4.1-mini", "gpt-4o", "gpt-4o-mini"][(id % 3) as usize],
            prompt_tokens: 100 + (id % 900) as i32,
            completion_tokens: 20 + (id % 300) as i32,
            latency_ms: 200 + (id % 2000) as i32,
        }
    }

    pub fn total_tokens(&self) -> i32 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Events `first..first + n` as NDJSON.
fn batch(first: u64, n: u64, now_s: i64) -> String {
    let mut s = String::with_capacity(n as usize * 300);
    for id in first..first + n {
        let e = LlmEvent::generate(id, now_s);
        s.push_str(&format!(
            "{{\"event_id\":\"{}\",\"timestamp\":\"{}\",\"actor_id\":\"{}\",\"actor_type\":\"human\",\
             \"agent_id\":\"{}\",\"microdao_id\":\"{}\",\"model\":\"{}\",\"provider\":\"openai\",\
             \"prompt_tokens\":{},\"completion_tokens\":{},\"latency_ms\":{}}}\n",
            e.event_id,
            e.timestamp.format("%Y-%m-%dT%H:%M:%SZ"),
            e.actor_id,
            e.agent_id,
            e.microdao_id,
            e.model,
            e.prompt_tokens,
            e.completion_tokens,
            e.latency_ms
        ));
    }
    s
}

/// Posts events `0..events` as NDJSON to `/v1/events/usage.llm`, 5,000 a
/// request from `concurrency` senders (`body(first, n)` makes a request's
/// body), waiting and retrying on 429. Answers the seconds it took.
pub async fn post_ndjson<F>(
    base: &str,
    events: u64,
    concurrency: usize,
    body: F,
) -> anyhow::Result<f64>
where
    F: Fn(u64, u64) -> String + Send + Sync + 'static,
{
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let started = Instant::now();
    let per = 5000u64;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let body = std::sync::Arc::new(body);
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (http, next, url, body) = (
            http.clone(),
            next.clone(),
            format!("{base}/v1/events/usage.llm"),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(per, std::sync::atomic::Ordering::Relaxed);
                if first >= events {
                    return Ok::<(), anyhow::Error>(());
                }
                let text = body(first, per.min(events - first));
                loop {
                    let r = http
                        .post(&url)
                        .header("content-type", "application/x-ndjson")
                        .body(text.clone())
                        .send()
                        .await?;
                    if r.status().is_success() {
                        break;
                    }
                    // 429: the queue is full; wait as Retry-After says.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

pub async fn run(
    base: &str,
    events: u64,
    queries: usize,
    concurrency: usize,
    now_s: i64,
) -> anyhow::Result<SummaryReport> {
    let load_seconds = post_ndjson(base, events, concurrency, move |first, n| {
        batch(first, n, now_s)
    })
    .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut calls = 0;
    for _ in 0..queries {
        let t = Instant::now();
        let v: serde_json::Value = http
            .get(format!("{base}/internal/usage/summary?period_hours=24"))
            .send()
            .await?
            .json()
            .await?;
        hist.record((t.elapsed().as_micros() as u64).max(1))?;
        calls = v["summary"]["llm_calls_total"].as_u64().unwrap_or(0);
    }
    Ok(SummaryReport {
        events,
        load_seconds,
        queries,
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p95_ms: hist.value_at_quantile(0.95) as f64 / 1000.0,
        max_ms: hist.max() as f64 / 1000.0,
        llm_calls_total: calls,
    })
}
