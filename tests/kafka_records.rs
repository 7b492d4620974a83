//! A `tally.records` message from a peer that lies about a value's type: the
//! record is rejected with its reason, and what is produced after it still
//! reaches Parquet (a real Kafka-protocol broker, the real binary).

mod common;

use std::time::{Duration, Instant};

use common::{stored_event_ids, KafkaBroker, Tally};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tally_pipeline::wal::codec::encode_records;
use tally_pipeline::{Dataset, Record, Value};

/// A `usage_llm` row in column order, as an edge node would relay it;
/// `prompt` is whatever value the peer put there.
fn llm_row(id: &str, prompt: Value) -> Record {
    let mut values: Vec<Value> = Dataset::UsageLlm
        .columns()
        .iter()
        .map(|c| match c.name {
            "event_id" => Value::Str(id.into()),
            "timestamp" => Value::Ts(1_763_985_600_000_000_000),
            "model" => Value::Str("gpt-4.1-mini".into()),
            "completion_tokens" | "total_tokens" => Value::I32(3),
            "success" => Value::Bool(true),
            "source" => Value::Str("usage.llm".into()),
            _ => Value::Null,
        })
        .collect();
    let i = Dataset::UsageLlm.column_index("prompt_tokens").unwrap();
    values[i] = prompt;
    Record::from_columns(Dataset::UsageLlm, values)
}

async fn produce(producer: &FutureProducer, records: &[Record]) {
    let mut payload = Vec::new();
    encode_records(records, &mut payload);
    producer
        .send(
            FutureRecord::to("tally.records")
                .key("microdao:7")
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrongly_typed_relayed_record_is_rejected_and_later_records_reach_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = KafkaBroker::start();
    let t = Tally::start(
        &data,
        &[
            "--kafka",
            &broker.brokers,
            "--kafka-partitions",
            "1",
            "--flush-interval",
            "200ms",
            "--no-sampler",
        ],
    )
    .await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .create()
        .unwrap();
    // A good record and a lying one in one message, then good ones after.
    produce(
        &producer,
        &[
            llm_row("ok-1", Value::I32(10)),
            llm_row("bad-1", Value::Str("ten".into())),
        ],
    )
    .await;
    produce(&producer, &[llm_row("ok-2", Value::I32(20))]).await;
    produce(&producer, &[llm_row("ok-3", Value::I32(30))]).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = stored_event_ids(&data, "usage_llm");
        if stored.len() == 3 || Instant::now() > deadline {
            let ids: Vec<&str> = stored.keys().map(String::as_str).collect();
            assert_eq!(ids, ["ok-1", "ok-2", "ok-3"]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = t
        .sql("SELECT source, dataset, reason FROM rejected WHERE dataset = 'usage_llm'")
        .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["source"], "kafka");
    assert_eq!(
        rows[0]["reason"],
        "usage_llm.prompt_tokens must be a 32-bit integer, got a string"
    );
    let metrics = t.metrics_text().await;
    assert!(
        metrics.contains("tally_records_failing_schema_total 1\n"),
        "{metrics}"
    );
    let (_, h) = t.health().await;
    assert_eq!(h["components"]["parquet_writer"]["status"], "ok", "{h}");
    t.terminate();
}

/// `--kafka-option` reaches librdkafka: a property it refuses stops the
/// start with librdkafka's own reason (no broker needed to see it).
#[tokio::test]
async fn kafka_options_reach_librdkafka() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["serve", "--data"])
        .arg(dir.path().join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--kafka",
            "127.0.0.1:1",
            "--kafka-option",
            "security.protocol=carrier_pigeon",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("security.protocol") && err.contains("carrier_pigeon"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["serve", "--data"])
        .arg(dir.path().join("data"))
        .args(["--kafka", "127.0.0.1:1", "--kafka-option", "group.id=other"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("group.id is set by tally"), "{err}");
}
