//! WebSocket `/usage`: a real WebSocket client against the real binary.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{llm_event, ndjson, Tally};
use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(t: &Tally) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/usage", t.addr))
        .await
        .unwrap();
    ws
}

/// The next JSON text message (pings are answered by the client library).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("stream ended: {other:?}"),
        }
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn system_info_first_then_updates_with_the_spec_fields() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tally::start(
        &dir.path().join("data"),
        &["--sampler-interval", "300ms", "--flush-interval", "1h"],
    )
    .await;
    let mut ws = connect(&t).await;
    let connected = Instant::now();
    let info = next_json(&mut ws).await;
    // No GPU here: gpu_count and gpus are absent.
    assert_eq!(
        keys(&info),
        set(&[
            "type",
            "cpu_count",
            "cpu_model",
            "ram_total_mb",
            "hostname",
            "timestamp"
        ])
    );
    assert_eq!(info["type"], "system_info");
    assert!(info["cpu_count"].as_u64().unwrap() >= 1);
    assert!(info["cpu_model"].is_string() && info["hostname"].is_string());
    assert!(info["ram_total_mb"].as_u64().unwrap() > 0);
    let now = chrono::Utc::now().timestamp() as u64;
    assert!(
        info["timestamp"].as_u64().unwrap().abs_diff(now) <= 2,
        "epoch seconds: {info}"
    );

    let mut update = next_json(&mut ws).await;
    if update["timestamp"].as_u64().unwrap() + 1 < now {
        update = next_json(&mut ws).await;
    }
    assert!(
        connected.elapsed() < Duration::from_millis(2 * 300 + 200),
        "first update took {:?}",
        connected.elapsed()
    );
    assert_eq!(
        keys(&update),
        set(&[
            "type",
            "cpu_percent",
            "ram_percent",
            "ram_used_mb",
            "ram_total_mb",
            "timestamp",
            "message_rates"
        ])
    );
    assert_eq!(update["type"], "usage_update");
    assert!(update["cpu_percent"].is_f64() || update["cpu_percent"].is_u64());
    assert!((0.0..=100.0).contains(&update["ram_percent"].as_f64().unwrap()));
    assert!(update["ram_used_mb"].is_u64() && update["ram_total_mb"].is_u64());
    assert!(update["timestamp"].is_u64());
    let rates = update["message_rates"].as_object().unwrap();
    assert!(
        rates.contains_key("total_per_sec")
            && rates.contains_key("vm_metrics_per_sec")
            && rates.contains_key("usage_llm_per_sec")
    );
    assert!(rates.values().all(Value::is_number));

    // message_rates moves when records are ingested.
    let events: Vec<_> = (0..2000)
        .map(|i| llm_event(&format!("r-{i}"), "2025-11-24T12:00:00Z", 1, 1))
        .collect();
    let r = reqwest::Client::new()
        .post(t.url("/v1/events/usage.llm"))
        .header("content-type", "application/x-ndjson")
        .body(ndjson(&events))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let u = next_json(&mut ws).await;
        let llm = u["message_rates"]["usage_llm_per_sec"].as_f64().unwrap();
        if llm > 0.0 {
            assert!(u["message_rates"]["total_per_sec"].as_f64().unwrap() >= llm);
            break;
        }
        assert!(Instant::now() < deadline, "usage_llm_per_sec never moved");
    }
    // Every sample is also a host_usage row.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = t.sql("SELECT count(*) AS n FROM host_usage").await[0]["n"]
            .as_u64()
            .unwrap();
        if n >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "only {n} host_usage rows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No GPU: /health says why, and is still healthy.
    let h: Value = reqwest::get(t.url("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["components"]["gpu"]["status"], "absent");
    assert!(
        h["components"]["gpu"]["detail"]
            .as_str()
            .unwrap()
            .contains("NVML"),
        "{h}"
    );
    // Shutdown with a client connected: the client is closed, tally exits cleanly.
    t.terminate();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(_) = m {
                return true;
            }
        }
        true
    })
    .await;
    assert_eq!(end, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_all_receive_updates_and_a_stalled_one_delays_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tally::start(&dir.path().join("data"), &["--sampler-interval", "200ms"]).await;

    // A client that never reads.
    let stalled = connect(&t).await;

    let clients: Vec<_> = (0..1000)
        .map(|_| {
            let addr = t.addr.clone();
            tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/usage"))
                    .await
                    .unwrap();
                let info = next_json(&mut ws).await;
                assert_eq!(info["type"], "system_info");
                // Two updates: the newest at connect time and a fresh one.
                let a = next_json(&mut ws).await;
                let b = next_json(&mut ws).await;
                assert_eq!(
                    (a["type"].as_str(), b["type"].as_str()),
                    (Some("usage_update"), Some("usage_update"))
                );
                ws
            })
        })
        .collect();
    let mut open = Vec::new();
    for c in clients {
        open.push(c.await.unwrap());
    }
    assert_eq!(open.len(), 1000);

    // With the stalled client (and 1000 idle ones) connected, a reading
    // client still gets an update every interval.
    let mut ws = connect(&t).await;
    next_json(&mut ws).await;
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(2) {
        if next_json(&mut ws).await["type"] == "usage_update" {
            n += 1;
        }
    }
    assert!(n >= 7, "only {n} updates in 2 s at a 200 ms interval");
    drop(stalled);
}
