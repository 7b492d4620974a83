//! Scale-out through Kafka against a real Kafka-protocol broker (Tansu):
//! edge nodes relay what they accept, two writers consume in one group and
//! share a data directory, one writer is killed with SIGKILL mid-stream.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{llm_event, parquet_files, stored_event_ids, vm_sample, KafkaBroker, Tally};
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use tally_proto::billing::v1 as pb;

/// Topics a writer consumes (6 subjects, vm.metrics, tally.records), 4
/// partitions each.
const PARTITIONS: u64 = 8 * 4;

async fn health(t: &Tally) -> Value {
    reqwest::get(t.url("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn assigned(t: &Tally) -> u64 {
    health(t).await["components"]["kafka"]["assigned_partitions"]
        .as_u64()
        .unwrap_or(0)
}

/// A node on the shared data directory, with its own state directory and
/// log under `root`, and the arguments of its role.
async fn start_node(shared: &Path, root: &Path, node: &str, role: &[&str]) -> Tally {
    let state = root.join(node);
    let mut args = vec![
        "--state-dir",
        state.to_str().unwrap(),
        "--node-id",
        node,
        "--list-interval",
        "500ms",
        "--no-sampler",
    ];
    args.extend_from_slice(role);
    Tally::start_logged(shared, &root.join(format!("{node}.log")), &args, &[]).await
}

async fn start_writer(shared: &Path, root: &Path, brokers: &str, node: &str) -> Tally {
    let role = [
        "--kafka",
        brokers,
        "--kafka-partitions",
        "4",
        "--kafka-session-timeout",
        "6s",
        "--flush-interval",
        "300ms",
    ];
    start_node(shared, root, node, &role).await
}

async fn start_edge(shared: &Path, root: &Path, brokers: &str, node: &str) -> Tally {
    start_node(shared, root, node, &["--relay-kafka", brokers]).await
}

/// Waits until `check` holds, or fails with `what`.
async fn eventually<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn batch(b: usize) -> Vec<Value> {
    (0..100)
        .map(|i| {
            let mut e = llm_event(&format!("b{b}-{i}"), "2026-11-20T10:00:00Z", 10 + i, 5);
            // Many tenants, so the relay spreads them over partitions.
            e["microdao_id"] = json!(format!("microdao:{}", (b * 7 + i as usize) % 23));
            e
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edges_relay_through_kafka_to_two_writers_and_a_kill_9_loses_and_doubles_nothing() {
    let root = tempfile::tempdir().unwrap();
    let shared = root.path().join("shared");
    let broker = KafkaBroker::start();
    let brokers = broker.brokers.as_str();

    let w1 = start_writer(&shared, root.path(), brokers, "writer-1").await;
    eventually("writer-1 owns every partition", 60, || async {
        assigned(&w1).await == PARTITIONS
    })
    .await;
    let w2 = start_writer(&shared, root.path(), brokers, "writer-2").await;
    eventually("the two writers split the partitions", 60, || async {
        let (a, b) = (assigned(&w1).await, assigned(&w2).await);
        a > 0 && b > 0 && a + b == PARTITIONS
    })
    .await;
    let e1 = start_edge(&shared, root.path(), brokers, "edge-1").await;
    let e2 = start_edge(&shared, root.path(), brokers, "edge-2").await;

    // 40 batches of 100 events through alternating edges. writer-1 dies
    // after the 15th, with some of its records in Parquet and some only in
    // its WAL, while the stream goes on.
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut w1 = Some(w1);
    for b in 0..40 {
        let edge = if b % 2 == 0 { &e1 } else { &e2 };
        let events = batch(b);
        let r = edge.post_llm_events(&events).await;
        assert_eq!(r["accepted"], 100, "{r}");
        acked.extend(
            events
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_string()),
        );
        if b == 12 {
            eventually("writer-1 has written a file", 30, || async {
                parquet_files(&shared, "usage_llm").iter().any(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("writer-1-")
                })
            })
            .await;
        }
        if b == 15 {
            w1.take().unwrap().kill9();
        }
        if b == 25 {
            // A client retries an earlier batch through the other edge: it
            // must not be stored twice, whatever that edge answers.
            let r = e2.post_llm_events(&batch(4)).await;
            assert_eq!(
                r["accepted"].as_u64().unwrap() + r["duplicates"].as_u64().unwrap(),
                100
            );
        }
    }

    // billing.v1 over Connect (JSON) at an edge, relayed like the rest.
    let samples: Vec<Value> = (0..20)
        .map(|i| json!({"timestamp": format!("2026-11-20T10:00:{i:02}Z"), "cpuTimeNanos": (i * 1000).to_string()}))
        .collect();
    let r = reqwest::Client::new()
        .post(e1.url("/billing.v1.BillingService/SendMetricsBatch"))
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .body(json!({"vmId": "vm-connect", "customerId": "cust-c", "metrics": samples}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // writer-2 takes over writer-1's partitions once its session expires.
    eventually("writer-2 owns every partition", 60, || async {
        assigned(&w2).await == PARTITIONS
    })
    .await;
    let h = health(&w2).await;
    assert!(
        h["components"]["kafka"]["rebalances"].as_u64().unwrap() >= 1,
        "{h}"
    );
    // writer-1 comes back with its WAL: what it had not flushed stays with
    // Kafka (redelivered to the group), not replayed a second time.
    let w1 = start_writer(&shared, root.path(), brokers, "writer-1").await;
    // More load while it rejoins: writer-2 gives up half its partitions in a
    // rebalance under load (flush and commit before the revocation).
    // (Joining takes Tansu about 5 s; the load lasts longer.)
    for b in 40..80 {
        let edge = if b % 2 == 0 { &e1 } else { &e2 };
        let events = batch(b);
        assert_eq!(edge.post_llm_events(&events).await["accepted"], 100);
        acked.extend(
            events
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_string()),
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    eventually("the writers split the partitions again", 60, || async {
        let (a, b) = (assigned(&w1).await, assigned(&w2).await);
        a > 0 && b > 0 && a + b == PARTITIONS
    })
    .await;

    // Producers that write to Kafka directly: JSON on the subject topic,
    // billing.v1 protobuf on vm.metrics, and one message that is not JSON.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .create()
        .unwrap();
    let mut direct = BTreeSet::new();
    for i in 0..50 {
        let id = format!("k-{i}");
        let payload = llm_event(&id, "2026-11-20T11:00:00Z", 7, 3).to_string();
        producer
            .send(
                FutureRecord::to("usage.llm")
                    .key("microdao:7")
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        direct.insert(id);
    }
    let req = pb::SendMetricsBatchRequest {
        vm_id: "vm-kafka".into(),
        customer_id: "cust-k".into(),
        metrics: (0..30)
            .map(|i| vm_sample(1_795_000_000 + i * 15, i * 1_000_000))
            .collect(),
    };
    producer
        .send(
            FutureRecord::to("vm.metrics")
                .key("cust-k")
                .payload(&req.encode_to_vec()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    producer
        .send(
            FutureRecord::to("usage.llm").key("x").payload("{not json"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    // Every acknowledged event is in a file under the shared prefix, once.
    let expected: BTreeSet<String> = acked.union(&direct).cloned().collect();
    eventually("every acknowledged event in Parquet", 90, || async {
        stored_event_ids(&shared, "usage_llm").len() >= expected.len()
    })
    .await;
    // Give a late duplicate (if any) the time to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = stored_event_ids(&shared, "usage_llm");
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "stored more than once: {doubled:?}");
    let stored_ids: BTreeSet<String> = stored.keys().cloned().collect();
    assert_eq!(
        stored_ids.difference(&expected).count(),
        0,
        "stored events nobody sent"
    );
    let missing: Vec<_> = expected.difference(&stored_ids).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );

    // Both writers wrote files, named for their node.
    let names: Vec<String> = parquet_files(&shared, "usage_llm")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("writer-1-")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("writer-2-")),
        "{names:?}"
    );

    // Any node answers SQL over the whole prefix: an edge, which wrote
    // nothing, once its listing has caught up.
    let total = expected.len() as u64;
    eventually("the edge's SQL sees every event", 30, || async {
        let rows = e2
            .sql("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM usage_llm")
            .await;
        rows[0]["n"] == total && rows[0]["d"] == total
    })
    .await;
    eventually("vm_metrics from Connect and from Kafka", 30, || async {
        let rows = e2
            .sql("SELECT vm_id, count(*) AS n FROM vm_metrics GROUP BY vm_id ORDER BY vm_id")
            .await;
        rows == vec![
            json!({"vm_id": "vm-connect", "n": 20}),
            json!({"vm_id": "vm-kafka", "n": 30}),
        ]
    })
    .await;
    eventually(
        "the bad Kafka message is kept with its reason",
        30,
        || async {
            let rows = w1
                .sql("SELECT source, subject, reason FROM rejected WHERE source = 'kafka'")
                .await;
            rows.iter().any(|r| {
                r["subject"] == "usage.llm"
                    && r["reason"]
                        .as_str()
                        .unwrap()
                        .contains("message is not valid JSON")
            })
        },
    )
    .await;
    drop(broker);
}
