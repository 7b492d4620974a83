//! The history scenarios: load a month of data with synthetic timestamps,
//! wait until every hour is compacted and rolled up, then time the read
//! APIs over it.
//!
//! - `history-vm`: `--samples` VM samples of `--vms` VMs (50 customers) over
//!   30 days, October 2026, over gRPC; times the monthly bill of every
//!   customer and one customer's hourly bill for a day.
//! - `history-llm`: `--events` `usage.llm` events over the 30 days before
//!   now, over HTTP NDJSON; times `/internal/usage/summary` for 720 and 24
//!   hours. An actor belongs to one tenant and one agent, as in real use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tally_proto::billing::v1 as pb;
use tally_proto::billing::v1::billing_service_client::BillingServiceClient;

/// 2026-10-01T00:00:00Z.
pub const MONTH_START_S: i64 = 1_790_812_800;
pub const DAYS: i64 = 30;

#[derive(Debug, Serialize)]
pub struct Timing {
    pub query: String,
    pub runs: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
    /// The warm-up request (the first after start-up): it also checks the
    /// checksum of each file it is the first to use.
    pub first_ms: f64,
    pub rows: usize,
}

#[derive(Debug, Serialize)]
pub struct HistoryReport {
    pub records: u64,
    pub load_seconds: f64,
    pub compaction_wait_seconds: f64,
    pub timings: Vec<Timing>,
}

/// Sample `k`: VM `k % vms`, the `k / vms`-th sample of it, spread evenly
/// over the month.
fn vm_sample(k: u64, vms: u64, per_vm: u64) -> (u64, pb::VmMetrics) {
    let (vm, step) = (k % vms, k / vms);
    let interval_ns = DAYS * 86_400 * 1_000_000_000 / per_vm.max(1) as i64;
    let ts = MONTH_START_S * 1_000_000_000 + step as i64 * interval_ns + vm as i64 * 1_000;
    let s = step as i64;
    (
        vm,
        pb::VmMetrics {
            timestamp: Some(prost_types::Timestamp {
                seconds: ts.div_euclid(1_000_000_000),
                nanos: ts.rem_euclid(1_000_000_000) as i32,
            }),
            cpu_time_nanos: s * 1_300_000_000 + (vm as i64 % 7) * s,
            memory_usage_bytes: (1 << 30) + (vm as i64 % 16) * (64 << 20),
            disk_read_bytes: s * 4096,
            disk_write_bytes: s * 8192,
            network_rx_bytes: s * 150_000,
            network_tx_bytes: s * 90_000,
        },
    )
}

/// Loads `samples` VM samples over gRPC: each batch holds one VM's
/// consecutive samples.
pub async fn load_vm(
    base: &str,
    samples: u64,
    vms: u64,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let per_vm = samples / vms;
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let batch = 600u64;
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let channel = tonic::transport::Endpoint::from_shared(base.to_string())?
            .connect()
            .await?;
        let mut client = BillingServiceClient::new(channel);
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                // Work items in time order: every VM's first 600 steps, then
                // every VM's next 600, …
                let item = next.fetch_add(1, Ordering::Relaxed);
                let chunks = per_vm.div_ceil(batch);
                let (chunk, vm) = (item / vms, item % vms);
                if chunk >= chunks {
                    return Ok::<(), anyhow::Error>(());
                }
                let first = chunk * batch;
                let last = (first + batch).min(per_vm);
                let metrics: Vec<pb::VmMetrics> = (first..last)
                    .map(|step| vm_sample(step * vms + vm, vms, per_vm).1)
                    .collect();
                let req = pb::SendMetricsBatchRequest {
                    vm_id: format!("vm-{vm:05}"),
                    customer_id: format!("cust-{:03}", vm % 50),
                    metrics,
                };
                loop {
                    match client.send_metrics_batch(req.clone()).await {
                        Ok(_) => break,
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        Err(s) => return Err(s.into()),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Event `id` of the LLM month: actor `id % 997` belongs to one tenant and
/// one agent; three models.
fn llm_line(id: u64, events: u64, now_s: i64) -> String {
    let span = DAYS * 86_400 - 600;
    let ts = now_s - 300 - (id as i64 * span / events.max(1) as i64);
    let actor = id % 997;
    let (p, c) = (100 + id % 900, 20 + id % 300);
    format!(
        "{{\"event_id\":\"h-{id:012}\",\"timestamp\":\"{}\",\"actor_id\":\"user:{actor}\",\
         \"actor_type\":\"human\",\"agent_id\":\"agent:{}\",\"microdao_id\":\"microdao:{}\",\
         \"model\":\"{}\",\"provider\":\"openai\",\"prompt_tokens\":{p},\"completion_tokens\":{c},\
         \"total_tokens\":{},\"latency_ms\":{}}}\n",
        chrono::DateTime::from_timestamp(ts, 0)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%SZ"),
        actor % 40,
        actor % 12,
        ["gpt-4.1-mini", "gpt-4o", "gpt-4o-mini"][(id / 997 % 3) as usize],
        p + c,
        200 + id % 2000
    )
}

pub async fn load_llm(
    base: &str,
    events: u64,
    concurrency: usize,
    now_s: i64,
) -> anyhow::Result<f64> {
    crate::summary::post_ndjson(base, events, concurrency, move |first, n| {
        (first..first + n)
            .map(|id| llm_line(id, events, now_s))
            .collect()
    })
    .await
}

/// Waits until `tally_compactions_total{dataset=…}` reaches `hours` and
/// stays put for a few seconds.
pub async fn wait_compacted(base: &str, dataset: &str, hours: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let http = reqwest::Client::new();
    let needle = format!("tally_compactions_total{{dataset=\"{dataset}\"}} ");
    loop {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let n: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if n >= hours {
            return Ok(started.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "compaction did not finish: {n} of {hours} hours"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Times `runs` GETs of `path` (after one warm-up).
pub async fn time(base: &str, path: &str, runs: usize, rows_at: &str) -> anyhow::Result<Timing> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut rows = 0;
    let mut first_ms = 0.0;
    for i in 0..=runs {
        let t = Instant::now();
        let r = http.get(format!("{base}{path}")).send().await?;
        anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
        let v: serde_json::Value = r.json().await?;
        if i > 0 {
            hist.record((t.elapsed().as_micros() as u64).max(1))?;
        } else {
            first_ms = t.elapsed().as_secs_f64() * 1000.0;
        }
        let found = if rows_at.is_empty() { &v } else { &v[rows_at] };
        rows = found.as_array().map_or(0, Vec::len);
    }
    Ok(Timing {
        query: path.to_string(),
        runs,
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p95_ms: hist.value_at_quantile(0.95) as f64 / 1000.0,
        max_ms: hist.max() as f64 / 1000.0,
        first_ms,
        rows,
    })
}

/// `load`: sends the month (start the server with compaction held back,
/// e.g. `--compact-interval 1h`). `read`: waits until every hour is
/// compacted (restart it with `--compact-interval 1s`), then times the reads;
/// `query`: times them at once (a restart on data compacted before).
pub async fn run(
    base: &str,
    vm: bool,
    phase: &str,
    records: u64,
    vms: u64,
    concurrency: usize,
    runs: usize,
) -> anyhow::Result<HistoryReport> {
    let mut report = HistoryReport {
        records,
        load_seconds: 0.0,
        compaction_wait_seconds: 0.0,
        timings: Vec::new(),
    };
    if phase == "load" {
        report.load_seconds = if vm {
            load_vm(base, records, vms, concurrency).await?
        } else {
            load_llm(base, records, concurrency, chrono::Utc::now().timestamp()).await?
        };
        return Ok(report);
    }
    let (dataset, hours) = if vm {
        ("vm_metrics", (DAYS * 24) as u64)
    } else {
        // The last hour or two are not closed yet.
        ("usage_llm", (DAYS * 24 - 2) as u64)
    };
    if phase != "query" {
        report.compaction_wait_seconds = wait_compacted(base, dataset, hours).await?;
    }
    let queries: &[(&str, &str)] = if vm {
        &[
            ("/v1/billing/vm-usage?window=month&from=2026-10-01T00:00:00Z&to=2026-11-01T00:00:00Z", ""),
            ("/v1/billing/vm-usage?window=hour&customer_id=cust-007&from=2026-10-15T00:00:00Z&to=2026-10-16T00:00:00Z", ""),
        ]
    } else {
        &[
            ("/internal/usage/summary?period_hours=720", "models"),
            ("/internal/usage/summary?period_hours=24", "models"),
        ]
    };
    for (path, rows_at) in queries {
        report.timings.push(time(base, path, runs, rows_at).await?);
    }
    Ok(report)
}
