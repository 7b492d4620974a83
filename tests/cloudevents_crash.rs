//! `kill -9` while OpenMeter-style clients send CloudEvents: after each
//! restart every acknowledged event is stored exactly once (read back from
//! the Parquet files and the live buffer by SQL), resends included.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{create_token, Rng, Tally};
use serde_json::{json, Value};

const ROUNDS: usize = 3;
const SENDERS: usize = 3;

fn event(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "gateway", "type": "request",
           "subject": "cust-1", "time": "2026-12-06T10:00:00Z", "data": {"n": 1}})
}

/// Sends batches until the server goes away; records what was acknowledged.
async fn sender(
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
            .map(|_| format!("ev-{:08}", next.fetch_add(1, Ordering::Relaxed)))
            .collect();
        // Now and then resend what was acknowledged before.
        if rng.below(3) == 0 {
            ids.extend(acked.lock().unwrap().iter().rev().take(5).cloned());
        }
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
async fn stored(t: &Tally, admin: &str) -> BTreeMap<String, u64> {
    let r = reqwest::Client::new()
        .post(t.url("/v1/sql"))
        .bearer_auth(admin)
        .body("SELECT id, count(*) AS n FROM events GROUP BY id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rows: Vec<Value> = r.json().await.unwrap();
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
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut rng = Rng::from_time();
    let args = ["--flush-interval", "200ms"];
    for round in 0..ROUNDS {
        let t = Tally::start(&data, &args).await;
        let tasks: Vec<_> = (0..SENDERS)
            .map(|i| {
                tokio::spawn(sender(
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
