//! The meters scenario (OpenMeter's API): `--events` CloudEvents over 30
//! days of October 2026 for 10,000 subjects, sent in batches of 100 to
//! `POST /api/v1/events`; two meters made before them through the API
//! (`tokens`: `SUM` of `$.tokens`, and `active_users`: `UNIQUE_COUNT` of
//! `$.user`, both grouped by `model`, `region` and `tier`). Then it times
//! three queries:
//!
//! - a month of `tokens` by subject (10,000 rows);
//! - a day of `tokens` by hour for one subject;
//! - a month of `active_users` (one row).
//!
//! A subject has one region and one tier, and uses four models; a user
//! belongs to one subject.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::history::{time, wait_compacted, Timing, DAYS, MONTH_START_S};

pub const SUBJECTS: u64 = 10_000;
const USERS_PER_SUBJECT: u64 = 5;
const MODELS: [&str; 4] = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "claude-haiku"];
const REGIONS: [&str; 4] = ["eu-west", "eu-central", "us-east", "ap-south"];
const TIERS: [&str; 3] = ["free", "team", "enterprise"];

/// The queries, by name, as `(path, name)`.
pub const QUERIES: [(&str, &str); 3] = [
    (
        "/api/v1/meters/tokens/query?from=2026-10-01T00:00:00Z&to=2026-10-31T00:00:00Z&groupBy=subject",
        "month of a SUM meter by subject",
    ),
    (
        "/api/v1/meters/tokens/query?from=2026-10-15T00:00:00Z&to=2026-10-16T00:00:00Z&windowSize=HOUR&subject=cust-00042",
        "a day by hour for one subject",
    ),
    (
        "/api/v1/meters/active_users/query?from=2026-10-01T00:00:00Z&to=2026-10-31T00:00:00Z",
        "month of a UNIQUE_COUNT meter",
    ),
];

#[derive(Debug, Serialize)]
pub struct MetersReport {
    pub events: u64,
    pub load_seconds: f64,
    pub events_per_second: f64,
    pub compaction_wait_seconds: f64,
    pub timings: Vec<Timing>,
    /// What each query answered, summed over its rows (the peer computes
    /// the same from the raw files).
    pub answers: Vec<f64>,
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Event `k` of `n`, spread evenly over `hours` from October 1st.
fn event(k: u64, n: u64, hours: u64) -> Value {
    let span_ns = hours as i128 * 3_600 * 1_000_000_000;
    let at = MONTH_START_S as i128 * 1_000_000_000 + k as i128 * span_ns / n.max(1) as i128;
    let h = mix(k);
    let subject = h % SUBJECTS;
    let time = chrono::DateTime::from_timestamp_nanos(at as i64)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    json!({
        "specversion": "1.0",
        "id": format!("e-{k}"),
        "source": "bench",
        "type": "request",
        "subject": format!("cust-{subject:05}"),
        "time": time,
        "data": {
            "tokens": (h >> 32) % 2000,
            "model": MODELS[((h >> 20) % 4) as usize],
            "region": REGIONS[(subject % 4) as usize],
            "tier": TIERS[(subject % 3) as usize],
            "user": format!("u-{subject}-{}", (h >> 44) % USERS_PER_SUBJECT),
        }
    })
}

async fn create_meters(base: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let groups = json!({"model": "$.model", "region": "$.region", "tier": "$.tier"});
    for (slug, aggregation, value) in [
        ("tokens", "SUM", "$.tokens"),
        ("active_users", "UNIQUE_COUNT", "$.user"),
    ] {
        let r = http
            .post(format!("{base}/api/v1/meters"))
            .json(
                &json!({"slug": slug, "eventType": "request", "aggregation": aggregation,
                          "valueProperty": value, "groupBy": groups}),
            )
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success() || r.status() == 409,
            "creating meter {slug}: {} {}",
            r.status(),
            r.text().await?
        );
    }
    Ok(())
}

/// Sends the events in batches of 100, `concurrency` requests at a time.
async fn load(base: &str, events: u64, hours: u64, concurrency: usize) -> anyhow::Result<f64> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (http, next, url) = (http.clone(), next.clone(), format!("{base}/api/v1/events"));
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(100, Ordering::Relaxed);
                if first >= events {
                    return Ok::<(), anyhow::Error>(());
                }
                let batch: Vec<Value> = (first..(first + 100).min(events))
                    .map(|k| event(k, events, hours))
                    .collect();
                let body = serde_json::to_vec(&batch)?;
                loop {
                    let r = http
                        .post(&url)
                        .header("content-type", "application/cloudevents-batch+json")
                        .body(body.clone())
                        .send()
                        .await?;
                    if r.status().is_success() {
                        break;
                    }
                    anyhow::ensure!(
                        r.status() == 429 || r.status() == 503,
                        "events refused: {} {}",
                        r.status(),
                        r.text().await?
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// `load`: makes the meters and sends the events (start the server with
/// compaction held back). `read`: waits until every hour is compacted and
/// rolled up, then times the queries; `query`: times them at once (a
/// restart on data compacted before).
pub async fn run(
    base: &str,
    phase: &str,
    events: u64,
    span_hours: Option<u64>,
    concurrency: usize,
    runs: usize,
) -> anyhow::Result<MetersReport> {
    let hours = span_hours.unwrap_or(DAYS as u64 * 24).max(1);
    let mut report = MetersReport {
        events,
        load_seconds: 0.0,
        events_per_second: 0.0,
        compaction_wait_seconds: 0.0,
        timings: Vec::new(),
        answers: Vec::new(),
    };
    if phase == "load" {
        create_meters(base).await?;
        report.load_seconds = load(base, events, hours, concurrency).await?;
        report.events_per_second = events as f64 / report.load_seconds;
        return Ok(report);
    }
    if phase != "query" {
        report.compaction_wait_seconds = wait_compacted(base, "events", hours).await?;
    }
    let http = reqwest::Client::new();
    for (path, _) in QUERIES {
        report.timings.push(time(base, path, runs, "data").await?);
        let v: Value = http
            .get(format!("{base}{path}"))
            .send()
            .await?
            .json()
            .await?;
        let sum = v["data"].as_array().map_or(0.0, |rows| {
            rows.iter().filter_map(|r| r["value"].as_f64()).sum()
        });
        report.answers.push(sum);
    }
    Ok(report)
}
