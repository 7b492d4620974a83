//! `kill -9` at random moments while clients ingest: every acknowledged
//! record is stored exactly once.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{llm_event, ndjson, stored_event_ids, Rng, Tally};

const ROUNDS: usize = 5;
const SENDERS: usize = 4;

/// Sends batches until the server goes away; returns nothing, records acks.
async fn sender(
    url: String,
    next_id: Arc<AtomicU64>,
    acked: Arc<Mutex<BTreeSet<String>>>,
    seed: u64,
) {
    let client = reqwest::Client::new();
    let mut rng = Rng::new(seed);
    loop {
        let n = 1 + rng.below(40);
        let mut events = Vec::new();
        for _ in 0..n {
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let hour = id % 3;
            events.push(llm_event(
                &format!("evt-{id:08}"),
                &format!("2025-11-24T1{hour}:00:00Z"),
                (id % 1000) as i64,
                7,
            ));
        }
        // Now and then resend what an earlier batch carried.
        if rng.below(4) == 0 {
            let old: Vec<String> = acked
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(5)
                .cloned()
                .collect();
            for id in old {
                events.push(llm_event(&id, "2025-11-24T10:00:00Z", 1, 1));
            }
        }
        let resp = client
            .post(format!("{url}/v1/events/usage.llm"))
            .header("content-type", "application/x-ndjson")
            .body(ndjson(&events))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let Ok(resp) = resp else { return };
        if resp.status() != 200 {
            continue;
        }
        let Ok(body) = resp.json::<serde_json::Value>().await else {
            return;
        };
        assert_eq!(body["rejected"].as_array().unwrap().len(), 0, "{body}");
        let mut acked = acked.lock().unwrap();
        for e in &events {
            acked.insert(e["event_id"].as_str().unwrap().to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_records_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rng = Rng::from_time();
    let next_id = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    // Small flush bounds, so kills also land inside flush rounds.
    let args = ["--flush-interval", "150ms", "--flush-rows", "300"];

    for round in 0..ROUNDS {
        let tally = Tally::start(&data, &args).await;
        let tasks: Vec<_> = (0..SENDERS)
            .map(|i| {
                tokio::spawn(sender(
                    tally.url(""),
                    next_id.clone(),
                    acked.clone(),
                    rng.next() ^ i as u64,
                ))
            })
            .collect();
        let delay = 300 + rng.below(1200);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        eprintln!(
            "round {round}: kill -9 after {delay} ms, {} acked so far",
            acked.lock().unwrap().len()
        );
        tally.kill9();
        for t in tasks {
            t.await.unwrap();
        }
    }

    // A last start replays the WAL; SQL sees everything, each once.
    let tally = Tally::start(&data, &args).await;
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 500,
        "too little traffic to prove anything: {}",
        acked.len()
    );
    let rows = tally
        .sql("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM usage_llm")
        .await;
    assert_eq!(rows[0]["n"], rows[0]["d"], "a record is counted twice");
    assert!(rows[0]["n"].as_u64().unwrap() >= acked.len() as u64);
    tally.terminate();

    // The files alone, read by the parquet crate, hold each acked record once.
    let stored = stored_event_ids(&data, "usage_llm");
    common::crash::assert_acked_stored_once(&acked, &stored, "the Parquet files");
    // Nothing is stored that was never sent.
    let sent = next_id.load(Ordering::Relaxed);
    assert!(stored
        .keys()
        .all(|id| id[4..].parse::<u64>().unwrap() < sent));
}
