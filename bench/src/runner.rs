//! Closed- and open-loop load, with latency into an HdrHistogram.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::Args;

pub struct RunResult {
    pub elapsed: Duration,
    pub requests: u64,
    pub records_acked: u64,
    /// Including the warm-up: what the server stores.
    pub records_stored: u64,
    /// Latency of acknowledged requests, in microseconds.
    pub latency_us: Histogram<u64>,
    pub errors: std::collections::BTreeMap<String, u64>,
}

struct Shared {
    next_id: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
    acked: AtomicU64,
    stored: AtomicU64,
    requests: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    errors: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// One NDJSON body of `n` LLM events with fresh ids.
fn body(first_id: u64, n: usize) -> String {
    let mut s = String::with_capacity(n * 330);
    for id in first_id..first_id + n as u64 {
        let secs = 1_763_985_600 + id / 1000;
        let ts = chrono::DateTime::from_timestamp(secs as i64, 0).unwrap_or_default();
        s.push_str(&format!(
            concat!(
                "{{\"event_id\":\"bench-{:012}\",\"timestamp\":\"{}\",\"actor_id\":\"user:{}\",",
                "\"actor_type\":\"human\",\"agent_id\":\"agent:{}\",\"microdao_id\":\"microdao:{}\",",
                "\"model\":\"{}\",\"provider\":\"openai\",\"prompt_tokens\":{},\"completion_tokens\":{},",
                "\"total_tokens\":{},\"latency_ms\":{},\"success\":true}}\n"
            ),
            id,
            ts.format("%Y-%m-%dT%H:%M:%SZ"),
            id % 97,
            id % 13,
            id % 7,
            ["gpt-4.1-mini", "gpt-4o", "claude-3-5-sonnet-20241022"][(id % 3) as usize],
            100 + id % 900,
            20 + id % 300,
            120 + id % 900 + id % 300,
            200 + id % 2000,
        ));
    }
    s
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    shared: &Shared,
    batch: usize,
    intended: Instant,
) {
    let first = shared.next_id.fetch_add(batch as u64, Ordering::Relaxed);
    let result = client
        .post(url)
        .header("content-type", "application/x-ndjson")
        .body(body(first, batch))
        .send()
        .await;
    let outcome = match result {
        Ok(r) if r.status().is_success() => {
            let ok = r.bytes().await.is_ok();
            if ok {
                Ok(())
            } else {
                Err("read".to_string())
            }
        }
        Ok(r) => Err(r.status().as_u16().to_string()),
        Err(e) => Err(if e.is_timeout() {
            "timeout".into()
        } else {
            "connect".into()
        }),
    };
    if outcome.is_ok() {
        shared.stored.fetch_add(batch as u64, Ordering::Relaxed);
    }
    if !shared.measuring.load(Ordering::Relaxed) {
        return;
    }
    shared.requests.fetch_add(1, Ordering::Relaxed);
    match outcome {
        Ok(()) => {
            shared.acked.fetch_add(batch as u64, Ordering::Relaxed);
            let us = intended.elapsed().as_micros() as u64;
            let _ = shared.hist.lock().expect("not poisoned").record(us.max(1));
        }
        Err(code) => {
            *shared
                .errors
                .lock()
                .expect("not poisoned")
                .entry(code)
                .or_default() += 1
        }
    }
}

pub async fn run(args: &Args, base: &str) -> anyhow::Result<RunResult> {
    let url = format!("{base}/v1/events/usage.llm");
    let shared = Arc::new(Shared {
        next_id: AtomicU64::new(0),
        measuring: AtomicBool::new(args.warmup.is_zero()),
        stop: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        stored: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        errors: Mutex::new(Default::default()),
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut tasks = Vec::new();
    match args.rate {
        None => {
            for _ in 0..args.concurrency {
                let (client, url, shared, batch) =
                    (client.clone(), url.clone(), shared.clone(), args.batch);
                tasks.push(tokio::spawn(async move {
                    while !shared.stop.load(Ordering::Relaxed) {
                        send(&client, &url, &shared, batch, Instant::now()).await;
                    }
                }));
            }
        }
        Some(rate) => {
            let interval = Duration::from_secs_f64(args.batch as f64 / rate.max(1) as f64);
            let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1) * 64));
            let (client, url, shared, batch) =
                (client.clone(), url.clone(), shared.clone(), args.batch);
            tasks.push(tokio::spawn(async move {
                let start = Instant::now();
                let mut i: u32 = 0;
                while !shared.stop.load(Ordering::Relaxed) {
                    let intended = start + interval * i;
                    tokio::time::sleep_until(intended.into()).await;
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        break;
                    };
                    let (client, url, shared) = (client.clone(), url.clone(), shared.clone());
                    tokio::spawn(async move {
                        send(&client, &url, &shared, batch, intended).await;
                        drop(permit);
                    });
                    i += 1;
                }
            }));
        }
    }
    tokio::time::sleep(args.warmup).await;
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut last = 0;
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_secs(1).min(args.duration)).await;
        if !args.quiet {
            let now = shared.acked.load(Ordering::Relaxed);
            eprint!(
                "\r{:>6.1}s  {:>10} records/s  {:>12} acked",
                started.elapsed().as_secs_f64(),
                now - last,
                now
            );
            last = now;
        }
    }
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    if !args.quiet {
        eprintln!();
    }
    let hist = shared.hist.lock().expect("not poisoned").clone();
    let errors = shared.errors.lock().expect("not poisoned").clone();
    Ok(RunResult {
        elapsed,
        requests: shared.requests.load(Ordering::Relaxed),
        records_acked: shared.acked.load(Ordering::Relaxed),
        records_stored: shared.stored.load(Ordering::Relaxed),
        latency_us: hist,
        errors,
    })
}
