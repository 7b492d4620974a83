//! Overload: three times what tally can take, for a minute, over Connect
//! (binary protobuf). What is not taken is refused with 429 and
//! `resource_exhausted` (never a 5xx, never a timeout), memory stays bounded,
//! and once the load drops every request is taken again.
//!
//! Capacity is made deterministic here: at most `QUEUE` rows may wait for the
//! Parquet writer, and the writer flushes once a second, so tally can take
//! about `QUEUE` rows a second (`CAPACITY`) whatever the machine does.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{vm_sample, Tally};
use prost::Message;
use tally_proto::billing::v1 as pb;

const QUEUE: u64 = 10_000;
/// Rows a second the bound and the flush interval let through.
const CAPACITY: u64 = QUEUE;
const SAMPLES: u64 = 100;
/// RSS the server must stay under for the whole run (debug build).
const RSS_BOUND_MIB: u64 = 256;

#[derive(Default)]
struct Tallies {
    accepted_rows: AtomicU64,
    refused: AtomicU64,
    sent: AtomicU64,
    other: AtomicU64,
}

fn batch(vm: u64, start_secs: i64) -> Vec<u8> {
    pb::SendMetricsBatchRequest {
        vm_id: format!("vm-{vm}"),
        customer_id: "cust-1".into(),
        metrics: (0..SAMPLES as i64)
            .map(|i| vm_sample(start_secs + i, i))
            .collect(),
    }
    .encode_to_vec()
}

/// Sends `rate` rows a second (in batches of `SAMPLES`) for `secs`, open
/// loop: a request leaves on schedule whether the last one was answered.
async fn offer(t: &Tally, tallies: &Arc<Tallies>, next_vm: &AtomicU64, rate: u64, secs: u64) {
    let client = reqwest::Client::new();
    let per_second = rate / SAMPLES;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let url = t.url("/billing.v1.BillingService/SendMetricsBatch");
    let mut tasks = Vec::new();
    for _ in 0..per_second * secs {
        tick.tick().await;
        let body = batch(next_vm.fetch_add(1, Ordering::Relaxed), 1_767_225_000);
        let (client, url, tallies) = (client.clone(), url.clone(), tallies.clone());
        tasks.push(tokio::spawn(async move {
            tallies.sent.fetch_add(1, Ordering::Relaxed);
            let r = client
                .post(url)
                .header("content-type", "application/proto")
                .header("connect-protocol-version", "1")
                .body(body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let Ok(r) = r else {
                tallies.other.fetch_add(1, Ordering::Relaxed);
                return;
            };
            match r.status().as_u16() {
                200 => {
                    let ok =
                        pb::SendMetricsBatchResponse::decode(r.bytes().await.unwrap()).unwrap();
                    assert!(ok.success);
                    tallies.accepted_rows.fetch_add(SAMPLES, Ordering::Relaxed);
                }
                429 => {
                    assert_eq!(r.headers()["retry-after"], "1");
                    let e: serde_json::Value = r.json().await.unwrap();
                    assert_eq!(e["code"], "resource_exhausted", "{e}");
                    tallies.refused.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    tallies.other.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_times_capacity_for_a_minute_is_refused_cleanly_and_throughput_returns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let queue = QUEUE.to_string();
    let t = Tally::start(
        &data,
        &[
            "--no-sampler",
            "--max-queued-rows",
            &queue,
            "--flush-interval",
            "1s",
            "--flush-rows",
            "100000000",
        ],
    )
    .await;
    let rss_start = t.rss_kib();
    let next_vm = Arc::new(AtomicU64::new(0));

    // Three times capacity for 60 s, RSS sampled every half second.
    let overload = Arc::new(Tallies::default());
    let pid = t.pid();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let rss_max = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut max = 0u64;
            while sampling.load(Ordering::Relaxed) {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
                let kib: u64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    .unwrap();
                max = max.max(kib);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            max
        })
    };
    let started = Instant::now();
    offer(&t, &overload, &next_vm, 3 * CAPACITY, 60).await;
    let overload_secs = started.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let rss_max_kib = rss_max.await.unwrap();

    let sent = overload.sent.load(Ordering::Relaxed);
    let refused = overload.refused.load(Ordering::Relaxed);
    let accepted = overload.accepted_rows.load(Ordering::Relaxed);
    eprintln!(
        "overload: {sent} requests in {overload_secs:.1}s, {accepted} rows accepted ({:.0}/s), {refused} refused; RSS {} → max {} MiB",
        accepted as f64 / overload_secs,
        rss_start / 1024,
        rss_max_kib / 1024
    );
    assert_eq!(
        overload.other.load(Ordering::Relaxed),
        0,
        "only 200 and 429"
    );
    // About two thirds are refused; tally keeps taking about its capacity.
    assert!(refused * 2 > sent, "{refused} of {sent} refused");
    let rate = accepted as f64 / overload_secs;
    assert!(
        rate > 0.5 * CAPACITY as f64 && rate < 1.5 * CAPACITY as f64,
        "accepted {rate:.0} rows/s under overload, capacity {CAPACITY}"
    );
    assert!(
        rss_max_kib < RSS_BOUND_MIB * 1024,
        "RSS reached {} MiB",
        rss_max_kib / 1024
    );

    // Half of capacity: after a moment to drain, every request is taken.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calm = Arc::new(Tallies::default());
    offer(&t, &calm, &next_vm, CAPACITY / 2, 10).await;
    assert_eq!(calm.refused.load(Ordering::Relaxed), 0);
    assert_eq!(calm.other.load(Ordering::Relaxed), 0);
    assert_eq!(
        calm.accepted_rows.load(Ordering::Relaxed),
        calm.sent.load(Ordering::Relaxed) * SAMPLES
    );

    // Every acknowledged row is stored, once.
    let want = accepted + calm.accepted_rows.load(Ordering::Relaxed);
    let rows = t
        .sql("SELECT count(*) AS n, count(DISTINCT vm_id || '/' || CAST(timestamp AS VARCHAR)) AS d FROM vm_metrics")
        .await;
    assert_eq!(rows[0]["n"], want);
    assert_eq!(rows[0]["d"], want);
    t.terminate();
}
