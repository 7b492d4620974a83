//! `kill -9` during streams of metric batches over gRPC: every acknowledged
//! sample is stored once.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::TimestampNanosecondType;
use common::{parquet_files, read_parquet, strings, Rng, Tally};
use tally_proto::billing::v1 as pb;
use tally_proto::billing::v1::billing_service_client::BillingServiceClient;

type Acked = Arc<Mutex<BTreeSet<(String, i64)>>>;

async fn stream(addr: String, vm: String, round: usize, acked: Acked) {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return;
    };
    let Ok(channel) = endpoint.connect().await else {
        return;
    };
    let mut client = BillingServiceClient::new(channel);
    // Each round starts a later stretch of time; batch k of round r is fixed,
    // so a batch resent after a restart is the same samples.
    for k in 0.. {
        let base = 1_705_314_600_000_000_000i64 + (round as i64 * 10_000 + k) * 100 * 100_000_000;
        let metrics: Vec<_> = (0..100)
            .map(|i| {
                let ts = base + i * 100_000_000;
                pb::VmMetrics {
                    timestamp: Some(prost_types::Timestamp {
                        seconds: ts / 1_000_000_000,
                        nanos: (ts % 1_000_000_000) as i32,
                    }),
                    cpu_time_nanos: ts / 1000,
                    memory_usage_bytes: 1 << 30,
                    ..Default::default()
                }
            })
            .collect();
        let keys: Vec<_> = metrics
            .iter()
            .map(|m| {
                let t = m.timestamp.unwrap();
                (vm.clone(), t.seconds * 1_000_000_000 + t.nanos as i64)
            })
            .collect();
        let req = pb::SendMetricsBatchRequest {
            vm_id: vm.clone(),
            customer_id: "c".into(),
            metrics,
        };
        match tokio::time::timeout(Duration::from_secs(5), client.send_metrics_batch(req)).await {
            Ok(Ok(_)) => acked.lock().unwrap().extend(keys),
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_samples_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rng = Rng::from_time();
    let acked: Acked = Arc::new(Mutex::new(BTreeSet::new()));
    let args = ["--flush-interval", "200ms", "--flush-rows", "5000"];
    for round in 0..3 {
        let t = Tally::start(&data, &args).await;
        let tasks: Vec<_> = (0..3)
            .map(|v| {
                tokio::spawn(stream(
                    t.addr.clone(),
                    format!("vm-{v}"),
                    round,
                    acked.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(400 + rng.below(1000))).await;
        t.kill9();
        for task in tasks {
            task.await.unwrap();
        }
    }
    let t = Tally::start(&data, &args).await;
    let n = t.sql("SELECT count(*) AS n FROM vm_metrics").await;
    let d = t
        .sql("SELECT count(*) AS n FROM (SELECT DISTINCT vm_id, timestamp FROM vm_metrics)")
        .await;
    assert_eq!(n, d, "a sample is counted twice");
    t.terminate();

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 3000, "too little traffic: {}", acked.len());
    let mut stored = BTreeSet::new();
    for f in parquet_files(&data, "vm_metrics") {
        for b in read_parquet(&f) {
            let ts = b
                .column_by_name("timestamp")
                .unwrap()
                .as_primitive::<TimestampNanosecondType>()
                .clone();
            for (i, vm) in strings(&b, "vm_id").into_iter().enumerate() {
                assert!(stored.insert((vm, ts.value(i))), "stored twice");
            }
        }
    }
    let lost = acked.difference(&stored).count();
    assert_eq!(lost, 0, "{lost} acknowledged samples lost");
}
