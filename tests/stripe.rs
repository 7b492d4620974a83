//! Stripe's meter events: the official `stripe` Python client (pinned in
//! `scripts/test.sh`), pointed at tally with `stripe.api_base`, sends usage
//! with `billing.MeterEvent.create`; a meter of the config file then
//! answers the sums computed here, each `identifier` counted once.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{create_token, Tally};
use serde_json::{json, Value};

#[tokio::test]
async fn the_stripe_client_sends_meter_events_that_a_meter_counts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("tally.toml");
    std::fs::write(
        &config,
        "[[meters]]\nslug = \"api_calls\"\neventType = \"api_calls\"\naggregation = \"SUM\"\nvalueProperty = \"$.value\"\n",
    )
    .unwrap();
    let ingest = create_token(&data, "billing-in", "ingest", &["acme"]);
    let read = create_token(&data, "billing-read", "read", &["acme"]);
    let t = Tally::start(&data, &["--config", config.to_str().unwrap()]).await;

    // 2026-12-06T10:00:00Z and minutes after; idem-2 is sent twice (a retry).
    let t0 = 1_796_551_200i64;
    let events: Vec<Value> = [
        ("idem-1", "cus_a", 3, 0),
        ("idem-2", "cus_a", 5, 1),
        ("idem-2", "cus_a", 5, 1),
        ("idem-3", "cus_b", 7, 2),
        ("idem-4", "cus_b", 11, 65),
    ]
    .iter()
    .map(|(id, customer, value, min)| {
        json!({"event_name": "api_calls", "customer": customer, "value": value,
               "identifier": id, "timestamp": t0 + min * 60})
    })
    .collect();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("python3")
        .arg(repo.join("tests/clients/stripe_meter_events.py"))
        .env("TALLY_URL", t.url(""))
        .env("TALLY_INGEST_TOKEN", &ingest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json!({"events": events}).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    let created = seen["created"].as_array().unwrap();
    assert_eq!(created.len(), events.len());
    assert!(
        created.iter().all(|c| c["object"] == "billing.meter_event"),
        "{seen}"
    );
    assert_eq!(seen["bad"]["status"], 400, "{seen}");
    assert_eq!(
        seen["bad"]["param"], "payload[stripe_customer_id]",
        "{seen}"
    );

    // Sums per customer and hour, each identifier once, computed here.
    let mut once: BTreeMap<&str, &Value> = BTreeMap::new();
    for e in &events {
        once.insert(e["identifier"].as_str().unwrap(), e);
    }
    let mut want: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for e in once.values() {
        let hour = e["timestamp"].as_i64().unwrap() / 3600 * 3600;
        *want
            .entry((e["customer"].as_str().unwrap().to_string(), hour))
            .or_default() += e["value"].as_f64().unwrap();
    }
    let r = reqwest::Client::new()
        .get(t.url("/api/v1/meters/api_calls/query?from=2026-12-06T00:00:00Z&windowSize=HOUR&groupBy=subject"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let got: BTreeMap<(String, i64), f64> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let start = chrono::DateTime::parse_from_rfc3339(row["windowStart"].as_str().unwrap())
                .unwrap()
                .timestamp();
            (
                (row["subject"].as_str().unwrap().to_string(), start),
                row["value"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "{answer}");
}
