//! `kill -9` while exporters send OTLP/HTTP log records of Claude Code's
//! shape: after each restart every acknowledged call is stored exactly once
//! (read back by SQL), exporters' resends included.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{create_token, Rng, Tally};
use serde_json::{json, Value};

const ROUNDS: usize = 3;
const SENDERS: usize = 3;

fn export(ids: &[String]) -> Value {
    let kv = |k: &str, v: Value| json!({"key": k, "value": v});
    let records: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"timeUnixNano": "1796551200000000000",
                "body": {"stringValue": "claude_code.api_request"},
                "attributes": [kv("event.name", json!({"stringValue": "api_request"})),
                    kv("request_id", json!({"stringValue": id})),
                    kv("model", json!({"stringValue": "claude-sonnet-4-5"})),
                    kv("input_tokens", json!({"intValue": 10})),
                    kv("output_tokens", json!({"intValue": 5}))]})
        })
        .collect();
    json!({"resourceLogs": [{"resource": {"attributes": [
        kv("service.name", json!({"stringValue": "claude-code"}))]},
        "scopeLogs": [{"logRecords": records}]}]})
}

/// Exports until the server goes away; records what was acknowledged.
async fn exporter(
    url: String,
    token: String,
    next: Arc<AtomicU64>,
    acked: Arc<Mutex<BTreeSet<String>>>,
    seed: u64,
) {
    let client = reqwest::Client::new();
    let mut rng = Rng::new(seed);
    loop {
        let mut ids: Vec<String> = (0..1 + rng.below(50))
            .map(|_| format!("req_{:08}", next.fetch_add(1, Ordering::Relaxed)))
            .collect();
        // Now and then an export again, as exporters retry.
        if rng.below(3) == 0 {
            ids.extend(acked.lock().unwrap().iter().rev().take(5).cloned());
        }
        let resp = client
            .post(format!("{url}/v1/logs"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(export(&ids).to_string())
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match resp {
            Ok(r) if r.status() == 200 => {
                let body: Value = r.json().await.unwrap_or_default();
                assert!(body.get("partialSuccess").is_none(), "{body}");
                acked.lock().unwrap().extend(ids);
            }
            Ok(r) if r.status() == 429 || r.status() == 503 => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(r) => panic!("unexpected answer {}", r.status()),
            Err(_) => return,
        }
    }
}

/// Each stored request id and how many times it is stored.
async fn stored(t: &Tally, admin: &str) -> BTreeMap<String, u64> {
    let r = reqwest::Client::new()
        .post(t.url("/v1/sql"))
        .bearer_auth(admin)
        .body("SELECT event_id, count(*) AS n FROM usage_llm GROUP BY event_id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rows: Vec<Value> = r.json().await.unwrap();
    rows.iter()
        .map(|r| {
            let id = r["event_id"].as_str().unwrap();
            (
                id.strip_prefix("claude-code:request:")
                    .unwrap_or(id)
                    .to_string(),
                r["n"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_acknowledged_otlp_call_counts_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ingest = create_token(&data, "seats", "ingest", &["acme"]);
    let admin = create_token(&data, "ops", "admin", &[]);
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut rng = Rng::from_time();
    let args = ["--flush-interval", "200ms"];
    for round in 0..ROUNDS {
        let t = Tally::start(&data, &args).await;
        let tasks: Vec<_> = (0..SENDERS)
            .map(|i| {
                tokio::spawn(exporter(
                    t.url(""),
                    ingest.clone(),
                    next.clone(),
                    acked.clone(),
                    rng.next() ^ i as u64,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1200))).await;
        t.kill9();
        for task in tasks {
            task.await.unwrap();
        }
        let t = Tally::start(&data, &args).await;
        let stored = stored(&t, &admin).await;
        let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "round {round}: stored twice: {twice:?}");
        let acked = acked.lock().unwrap().clone();
        let lost: Vec<_> = acked
            .iter()
            .filter(|id| !stored.contains_key(*id))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged, not stored: {} of {}",
            lost.len(),
            acked.len()
        );
        assert!(!acked.is_empty(), "round {round}: nothing was acknowledged");
        t.kill9();
    }
}
