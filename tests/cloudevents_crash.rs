//! `kill -9` while OpenMeter-style clients send CloudEvents: after each
//! restart every acknowledged event is stored exactly once (read back from
//! the Parquet files and the live buffer by SQL), resends included.

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

fn event(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "gateway", "type": "request",
           "subject": "cust-1", "time": "2026-12-06T10:00:00Z", "data": {"n": 1}})
}

/// Sends batches until the server goes away; records what was acknowledged.
async fn sender(url: String, token: String, next: Arc<AtomicU64>, acked: Acked, seed: u64) {
    let client = reqwest::Client::new();
    let mut rng = Rng::new(seed);
    loop {
        // New ids, now and then with a resend, as clients retry.
        let ids = common::crash::next_ids(&mut rng, &next, &acked, "ev-");
        let batch: Vec<Value> = ids.iter().map(|id| event(id)).collect();
        let resp = client
            .post(format!("{url}/api/v1/events"))
            .bearer_auth(&token)
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::Array(batch).to_string())
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match resp {
            Ok(r) if r.status() == 204 => acked.lock().unwrap().extend(ids),
            Ok(r) if r.status() == 429 => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(r) => panic!("unexpected answer {}", r.status()),
            Err(_) => return,
        }
    }
}

/// Each stored id and how many times it is stored.
async fn stored(url: String, admin: String) -> BTreeMap<String, u64> {
    let rows = common::crash::stored_rows(
        &url,
        &admin,
        "SELECT id, count(*) AS n FROM events GROUP BY id",
    )
    .await;
    rows.iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["n"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_acknowledged_event_counts_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ingest = create_token(&data, "gw", "ingest", &["acme"]);
    let admin = create_token(&data, "ops", "admin", &[]);
    common::crash::acked_once_across_kill_9(
        &data,
        &["--flush-interval", "200ms"],
        ROUNDS,
        SENDERS,
        move |url, next, acked, seed| sender(url, ingest.clone(), next, acked, seed),
        |url| stored(url, admin.clone()),
    )
    .await;
}
