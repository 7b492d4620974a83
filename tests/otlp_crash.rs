//! `kill -9` while exporters send OTLP/HTTP log records of Claude Code's
//! shape: after each restart every acknowledged call is stored exactly once
//! (read back by SQL), exporters' resends included.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use common::crash::Acked;
use common::{create_token, Rng};
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
async fn exporter(url: String, token: String, next: Arc<AtomicU64>, acked: Acked, seed: u64) {
    let client = reqwest::Client::new();
    let mut rng = Rng::new(seed);
    loop {
        // New ids, now and then with a resend, as clients retry.
        let ids = common::crash::next_ids(&mut rng, &next, &acked, "req_");
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
async fn stored(url: String, admin: String) -> BTreeMap<String, u64> {
    let rows = common::crash::stored_rows(
        &url,
        &admin,
        "SELECT event_id, count(*) AS n FROM usage_llm GROUP BY event_id",
    )
    .await;
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
    common::crash::acked_once_across_kill_9(
        &data,
        &["--flush-interval", "200ms"],
        ROUNDS,
        SENDERS,
        move |url, next, acked, seed| exporter(url, ingest.clone(), next, acked, seed),
        |url| stored(url, admin.clone()),
    )
    .await;
}
