//! A WAL written by the previous release (entries of records, format 1)
//! replays into this one, whose entries are columns (format 2): the rows
//! come back, their dedup keys too, and a WAL holding both formats
//! replays after `kill -9`.
//!
//! The segments in `tests/fixtures/wal_v1/` were written by the release
//! before the columnar WAL (`scripts/make_wal_fixture.py`, which also saved
//! what it sent in `sent.json`). Expected values come from `sent.json`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::Tally;
use serde_json::Value;
use tally_proto::billing::v1 as pb;
use tally_proto::billing::v1::billing_service_client::BillingServiceClient;

#[derive(Default, Debug, PartialEq)]
struct VmTotals {
    samples: i64,
    cpu: i64,
    tx: i64,
}

/// Per VM: distinct samples (by time) and their sums, from what was sent.
fn expected_vm(sent: &Value, extra: &[(String, String, i64, i64)]) -> BTreeMap<String, VmTotals> {
    let mut seen = BTreeSet::new();
    let mut out: BTreeMap<String, VmTotals> = BTreeMap::new();
    let mut add = |vm: &str, ts: String, cpu: i64, tx: i64| {
        if seen.insert((vm.to_string(), ts)) {
            let t = out.entry(vm.to_string()).or_default();
            t.samples += 1;
            t.cpu += cpu;
            t.tx += tx;
        }
    };
    for b in sent["vm_batches"].as_array().unwrap() {
        let vm = b["vm_id"].as_str().unwrap();
        for m in b["metrics"].as_array().unwrap() {
            add(
                vm,
                m["timestamp"].as_str().unwrap().to_string(),
                m["cpu_time_nanos"].as_i64().unwrap(),
                m["network_tx_bytes"].as_i64().unwrap(),
            );
        }
    }
    for (vm, ts, cpu, tx) in extra {
        add(vm, ts.clone(), *cpu, *tx);
    }
    out
}

async fn stored_vm(t: &Tally) -> BTreeMap<String, VmTotals> {
    t.sql(
        "SELECT vm_id, count(*) AS n, sum(cpu_time_nanos) AS cpu, sum(network_tx_bytes) AS tx \
         FROM vm_metrics GROUP BY vm_id",
    )
    .await
    .into_iter()
    .map(|r| {
        (
            r["vm_id"].as_str().unwrap().to_string(),
            VmTotals {
                samples: r["n"].as_i64().unwrap(),
                cpu: r["cpu"].as_i64().unwrap(),
                tx: r["tx"].as_i64().unwrap(),
            },
        )
    })
    .collect()
}

/// Per model: distinct events by id, and their total tokens; events that
/// fail validation (negative counts) are not stored.
fn expected_llm(sent: &Value) -> BTreeMap<String, (i64, i64)> {
    let mut ids = BTreeSet::new();
    let mut out: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for request in sent["llm_requests"].as_array().unwrap() {
        for e in request.as_array().unwrap() {
            if e["prompt_tokens"].as_i64().unwrap() < 0 {
                continue;
            }
            if ids.insert(e["event_id"].as_str().unwrap().to_string()) {
                let t = out
                    .entry(e["model"].as_str().unwrap().to_string())
                    .or_default();
                t.0 += 1;
                t.1 += e["total_tokens"].as_i64().unwrap();
            }
        }
    }
    out
}

async fn stored_llm(t: &Tally) -> BTreeMap<String, (i64, i64)> {
    t.sql("SELECT model, count(*) AS n, sum(total_tokens) AS tokens FROM usage_llm GROUP BY model")
        .await
        .into_iter()
        .map(|r| {
            (
                r["model"].as_str().unwrap().to_string(),
                (r["n"].as_i64().unwrap(), r["tokens"].as_i64().unwrap()),
            )
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_of_the_previous_release_replays_and_mixes_with_columnar_entries() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal_v1");
    let sent: Value =
        serde_json::from_slice(&std::fs::read(fixture.join("sent.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(&fixture.join("wal"), &data.join("_tally").join("wal"));
    let args = ["--flush-interval", "1h"];

    // 1. The old entries replay: every row that was acknowledged, once.
    let t = Tally::start(&data, &args).await;
    let want_llm = expected_llm(&sent);
    assert_eq!(want_llm.values().map(|v| v.0).sum::<i64>(), 40);
    assert_eq!(stored_vm(&t).await, expected_vm(&sent, &[]));
    assert_eq!(stored_llm(&t).await, want_llm);
    let rejected = t
        .sql("SELECT reason FROM rejected WHERE dataset = 'usage_llm'")
        .await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0]["reason"]
        .as_str()
        .unwrap()
        .contains("prompt_tokens"));

    // 2. Their dedup keys came back: a sample of the old WAL sent again
    // is a duplicate; new samples are stored (in a columnar entry).
    let old = &sent["vm_batches"][0];
    let old_sample = &old["metrics"][3];
    let secs = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap()
    };
    let sample = |ns: i64, cpu: i64, tx: i64| pb::VmMetrics {
        timestamp: Some(prost_types::Timestamp {
            seconds: ns / 1_000_000_000,
            nanos: (ns % 1_000_000_000) as i32,
        }),
        cpu_time_nanos: cpu,
        memory_usage_bytes: 1 << 29,
        network_tx_bytes: tx,
        ..Default::default()
    };
    let old_ns = secs(old_sample["timestamp"].as_str().unwrap());
    let new_ns = secs("2025-11-24T19:00:00.5Z");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", t.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = BillingServiceClient::new(channel);
    let answer = client
        .send_metrics_batch(pb::SendMetricsBatchRequest {
            vm_id: "vm-a".into(),
            customer_id: "cust-1".into(),
            metrics: vec![
                sample(
                    old_ns,
                    old_sample["cpu_time_nanos"].as_i64().unwrap(),
                    old_sample["network_tx_bytes"].as_i64().unwrap(),
                ),
                sample(new_ns, 77, 5),
                sample(new_ns + 1, 78, 6),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.message, "processed 2 metrics, 1 duplicates ignored");
    let extra = vec![
        ("vm-a".to_string(), "new-1".to_string(), 77, 5),
        ("vm-a".to_string(), "new-2".to_string(), 78, 6),
    ];
    assert_eq!(stored_vm(&t).await, expected_vm(&sent, &extra));

    // 3. kill -9: the WAL now holds entries of both formats, and both
    // replay.
    t.kill9();
    let t = Tally::start(&data, &args).await;
    assert_eq!(stored_vm(&t).await, expected_vm(&sent, &extra));
    assert_eq!(stored_llm(&t).await, want_llm);
    let n = t
        .sql("SELECT count(*) AS n FROM (SELECT DISTINCT vm_id, timestamp FROM vm_metrics)")
        .await;
    let all = t.sql("SELECT count(*) AS n FROM vm_metrics").await;
    assert_eq!(n, all, "a sample is stored twice");

    // 4. A clean stop flushes both into Parquet; the files hold the same.
    t.terminate();
    let t = Tally::start(&data, &args).await;
    assert_eq!(stored_vm(&t).await, expected_vm(&sent, &extra));
    assert_eq!(stored_llm(&t).await, want_llm);
    assert!(!common::parquet_files(&data, "vm_metrics").is_empty());
}
