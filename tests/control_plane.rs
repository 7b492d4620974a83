//! The control-plane usage hook (README "Control-plane usage hook"): accepted `chat.usage_summary`
//! payloads are POSTed on, with retries on 429/5xx, drops on other 4xx.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use common::Tally;
use serde_json::{json, Value};

type Seen = Arc<Mutex<HashMap<String, Vec<Value>>>>;

/// A control plane: `retry-*` ids get 503, then 429, then 200; `reject-*`
/// get 400; `conflict-*` get 409; the rest 201.
async fn control_plane(State(seen): State<Seen>, Json(body): Json<Value>) -> StatusCode {
    let id = body["event_id"].as_str().unwrap_or("").to_string();
    let attempts = {
        let mut seen = seen.lock().unwrap();
        let v = seen.entry(id.clone()).or_default();
        v.push(body);
        v.len()
    };
    match id.split('-').next().unwrap() {
        "retry" if attempts == 1 => StatusCode::SERVICE_UNAVAILABLE,
        "retry" if attempts == 2 => StatusCode::TOO_MANY_REQUESTS,
        "retry" => StatusCode::OK,
        "reject" => StatusCode::BAD_REQUEST,
        "conflict" => StatusCode::CONFLICT,
        _ => StatusCode::CREATED,
    }
}

fn summary(id: &str) -> Value {
    json!({"event_id": id, "event_ts": "2026-01-12T03:12:35.000000+00:00", "chat_id": "chat_123",
        "app_id": "app_abc", "user_id": "user_456", "workflow_name": "GeneralCapability",
        "prompt_tokens": 400, "completion_tokens": 200, "total_tokens": 600})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_summaries_are_forwarded_with_retries_and_drops() {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp_addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/usage/ingest", post(control_plane))
        .with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{cp_addr}/usage/ingest");
    let t = Tally::start_with_env(
        &dir.path().join("data"),
        &["--flush-interval", "1h"],
        &[
            ("CONTROL_PLANE_USAGE_INGEST_ENABLED", "true"),
            ("CONTROL_PLANE_USAGE_INGEST_URL", &url),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    for id in ["ok-1", "retry-1", "reject-1", "conflict-1"] {
        let r = client
            .post(t.url("/usage/ingest"))
            .json(&summary(id))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // A duplicate is not forwarded again; other subjects are not forwarded.
    client
        .post(t.url("/usage/ingest"))
        .json(&summary("ok-1"))
        .send()
        .await
        .unwrap();
    client.post(t.url("/v1/events/chat.usage_delta"))
        .json(&json!({"event_id": "d1", "event_ts": "2026-01-12T03:12:35Z", "prompt_tokens": 1, "completion_tokens": 1}))
        .send().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let done = seen.lock().unwrap().get("retry-1").map_or(0, |v| v.len()) == 3;
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = seen.lock().unwrap().clone();
    let attempts: HashMap<&str, usize> = seen.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
    assert_eq!(
        attempts,
        HashMap::from([
            ("ok-1", 1),
            ("retry-1", 3),
            ("reject-1", 1),
            ("conflict-1", 1)
        ])
    );
    // The raw payload, as sent to tally.
    assert_eq!(seen["ok-1"][0], summary("ok-1"));

    let metrics = reqwest::get(t.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tally_control_plane_forwarded_total 3"),
        "{metrics}"
    );
    assert!(metrics.contains("tally_control_plane_retries_total 2"));
    assert!(metrics.contains("tally_control_plane_dropped_total{reason=\"client_error\"} 1"));
}
