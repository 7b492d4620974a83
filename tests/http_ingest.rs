//! HTTP ingest end to end: validation, rejections, dedup across restarts.

mod common;

use common::{llm_event, metric, ndjson, Tally};
use serde_json::{json, Value};

async fn post(t: &Tally, path: &str, content_type: &str, body: String) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(t.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Flushes only on shutdown, so queries read the live buffer.
const NO_FLUSH: [&str; 2] = ["--flush-interval", "1h"];

#[tokio::test]
async fn bad_records_are_rejected_with_the_field_named_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tally::start(&dir.path().join("data"), &NO_FLUSH).await;
    let mut negative = llm_event("neg", "2025-11-24T12:00:00Z", 5, 5);
    negative["completion_tokens"] = json!(-3);
    let mut wrong_type = llm_event("wt", "2025-11-24T12:00:00Z", 5, 5);
    wrong_type["prompt_tokens"] = json!("many");
    let mut missing = llm_event("miss", "2025-11-24T12:00:00Z", 5, 5);
    missing.as_object_mut().unwrap().remove("model");
    let body = format!(
        "{}{}{}{}{{not json\n{}",
        ndjson(&[llm_event("ok-1", "2025-11-24T12:00:00Z", 1, 2)]),
        ndjson(&[negative]),
        ndjson(&[wrong_type]),
        ndjson(&[missing]),
        ndjson(&[llm_event("ok-2", "2025-11-24T12:00:00Z", 3, 4)]),
    );
    let (status, report) = post(&t, "/v1/events/usage.llm", "application/x-ndjson", body).await;
    assert_eq!(status, 200);
    assert_eq!(report["accepted"], 2);
    assert_eq!(report["duplicates"], 0);
    let rejected = report["rejected"].as_array().unwrap();
    let by_index: Vec<(u64, &str)> = rejected
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["error"].as_str().unwrap()))
        .collect();
    assert_eq!(
        by_index,
        vec![
            (1, "completion_tokens must be >= 0, got -3"),
            (2, "prompt_tokens must be an integer, got a string"),
            (3, "model is required"),
            (4, by_index[3].1),
        ]
    );
    assert!(
        by_index[3].1.starts_with("line is not valid JSON"),
        "{}",
        by_index[3].1
    );

    // The valid records are stored; the bad ones are in `rejected`, with reason and payload.
    let ids = t
        .sql("SELECT event_id FROM usage_llm ORDER BY event_id")
        .await;
    assert_eq!(
        ids,
        vec![json!({"event_id": "ok-1"}), json!({"event_id": "ok-2"})]
    );
    let rows = t
        .sql("SELECT \"index\", reason, payload, source, subject FROM rejected ORDER BY \"index\"")
        .await;
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0]["reason"], "completion_tokens must be >= 0, got -3");
    assert!(rows[0]["payload"].as_str().unwrap().contains("\"neg\""));
    assert_eq!(rows[3]["payload"], "{not json");
    assert_eq!(rows[0]["source"], "http");
    assert_eq!(rows[0]["subject"], "usage.llm");

    // A body that is not JSON at all, a scalar, an unknown subject.
    let (status, err) = post(
        &t,
        "/v1/events/usage.tool",
        "application/json",
        "{{{".into(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"], "Invalid request body");
    assert!(err["detail"].as_str().unwrap().contains("line 1"), "{err}");
    let (status, _) = post(&t, "/v1/events/usage.tool", "application/json", "42".into()).await;
    assert_eq!(status, 400);
    let (status, err) = post(
        &t,
        "/v1/events/usage.bogus",
        "application/json",
        "{}".into(),
    )
    .await;
    assert_eq!(status, 404);
    assert!(err["detail"].as_str().unwrap().contains("usage.bogus"));

    // Still up and healthy.
    let health: Value = reqwest::get(t.url("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let metrics = reqwest::get(t.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tally_records_rejected_total{dataset=\"usage_llm\",source=\"http\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tally_records_accepted_total{dataset=\"usage_llm\",source=\"http\"} 2")
    );
}

#[tokio::test]
async fn a_record_sent_twice_is_stored_once_also_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let body = serde_json::to_string(&vec![
        llm_event("dup-1", "2025-11-24T12:00:00Z", 1, 1),
        llm_event("dup-2", "2025-11-24T12:00:00Z", 1, 1),
    ])
    .unwrap();

    let t = Tally::start(&data, &NO_FLUSH).await;
    let (_, r) = post(&t, "/v1/events/usage.llm", "application/json", body.clone()).await;
    assert_eq!(
        (r["accepted"].as_u64(), r["duplicates"].as_u64()),
        (Some(2), Some(0))
    );
    let (_, r) = post(&t, "/v1/events/usage.llm", "application/json", body.clone()).await;
    assert_eq!(
        (r["accepted"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(2))
    );
    // kill -9: the records live only in the WAL; replay must restore the keys.
    t.kill9();

    let t = Tally::start(&data, &NO_FLUSH).await;
    let (_, r) = post(&t, "/v1/events/usage.llm", "application/json", body.clone()).await;
    assert_eq!(
        (r["accepted"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(2))
    );
    // Graceful stop: now they are in Parquet, and the keys come from the files.
    t.terminate();

    let t = Tally::start(&data, &NO_FLUSH).await;
    let one = ndjson(&[
        llm_event("dup-2", "2025-11-24T12:00:00Z", 1, 1),
        llm_event("new-3", "2025-11-24T12:00:00Z", 1, 1),
    ]);
    let (_, r) = post(&t, "/v1/events/usage.llm", "application/x-ndjson", one).await;
    assert_eq!(
        (r["accepted"].as_u64(), r["duplicates"].as_u64()),
        (Some(1), Some(1))
    );
    let rows = t
        .sql("SELECT event_id, count(*) AS n FROM usage_llm GROUP BY event_id ORDER BY event_id")
        .await;
    assert_eq!(
        rows,
        vec![
            json!({"event_id": "dup-1", "n": 1}),
            json!({"event_id": "dup-2", "n": 1}),
            json!({"event_id": "new-3", "n": 1}),
        ]
    );
}

/// Past `--dedup-max-keys`, each new key drops the earliest one kept: the
/// latest keys up to the bound still meet their copies at ingest, and the
/// index is never emptied at once.
#[tokio::test]
async fn past_the_key_bound_the_latest_keys_are_still_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (bound, sent) = (100usize, 250usize);
    let bound_arg = bound.to_string();
    let mut args = NO_FLUSH.to_vec();
    args.extend(["--dedup-max-keys", &bound_arg]);
    let t = Tally::start(&dir.path().join("data"), &args).await;
    let event = |i: usize| llm_event(&format!("e-{i}"), "2025-11-24T12:00:00Z", 1, 1);
    let send = |ids: std::ops::Range<usize>| {
        let body = ndjson(&ids.map(event).collect::<Vec<_>>());
        post(&t, "/v1/events/usage.llm", "application/x-ndjson", body)
    };
    for start in (0..sent).step_by(50) {
        let (status, r) = send(start..start + 50).await;
        assert_eq!((status, r["accepted"].as_u64()), (200, Some(50)));
    }
    let evicted = metric(&t.metrics_text().await, "tally_dedup_evictions_total");
    assert_eq!(evicted as usize, sent - bound);
    // The latest `bound` keys are all held.
    let (_, r) = send(sent - bound..sent).await;
    assert_eq!(
        (r["accepted"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(bound as u64))
    );
    // The earliest left memory: taken at ingest (compaction drops the
    // copies), each dropping the earliest key still held.
    let (_, r) = send(0..10).await;
    assert_eq!(
        (r["accepted"].as_u64(), r["duplicates"].as_u64()),
        (Some(10), Some(0))
    );
    let (_, r) = send(sent - bound + 10..sent).await;
    assert_eq!(r["duplicates"].as_u64(), Some(bound as u64 - 10));
    let (_, r) = send(sent - bound..sent - bound + 10).await;
    assert_eq!(r["accepted"].as_u64(), Some(10));
}

#[tokio::test]
async fn every_subject_maps_onto_its_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tally::start(&dir.path().join("data"), &NO_FLUSH).await;
    let cases = [
        (
            "/v1/events/usage.tool",
            json!({"event_id": "evt-456", "timestamp": "2025-11-24T12:01:00Z",
            "actor_id": "agent:sofia", "actor_type": "agent", "agent_id": "agent:sofia",
            "microdao_id": "microdao:7", "tool_id": "projects.list", "tool_name": "List Projects",
            "success": true, "latency_ms": 450}),
        ),
        (
            "/v1/events/usage.agent",
            json!({"event_id": "evt-789", "timestamp": "2025-11-24T12:02:00Z",
            "agent_id": "agent:sofia", "microdao_id": "microdao:7", "channel_id": "channel-uuid",
            "trigger": "message", "duration_ms": 3450, "llm_calls": 2, "tool_calls": 1, "success": true}),
        ),
        (
            "/v1/events/messaging.message.created",
            json!({"channel_id": "channel-uuid",
            "message_id": "msg-uuid", "sender_id": "user:93", "sender_type": "human",
            "microdao_id": "microdao:7", "created_at": "2025-11-24T12:03:00Z", "content": "hello"}),
        ),
        (
            "/v1/events/chat.usage_delta",
            json!({"event_id": "a1b2c3d4e5f6",
            "event_ts": "2026-01-12T03:12:34.567890+00:00", "chat_id": "chat_123", "app_id": "app_abc",
            "user_id": "user_456", "workflow_name": "AgentGenerator", "agent_name": "PlannerAgent",
            "model_name": "gpt-4o-mini", "prompt_tokens": 120, "completion_tokens": 48,
            "total_tokens": 168, "cached": false, "duration_sec": 0.82, "invocation_id": "inv_789"}),
        ),
        (
            "/usage/ingest",
            json!({"event_id": "f1e2d3c4b5a6", "event_ts": "2026-01-12T03:12:35.000000+00:00",
            "chat_id": "chat_123", "app_id": "app_abc", "user_id": "user_456",
            "workflow_name": "GeneralCapability", "prompt_tokens": 400, "completion_tokens": 200,
            "total_tokens": 600}),
        ),
    ];
    for (path, event) in cases {
        let (status, r) = post(&t, path, "application/json", event.to_string()).await;
        assert_eq!(
            (status, r["accepted"].as_u64()),
            (200, Some(1)),
            "{path}: {r}"
        );
    }
    let tool = t
        .sql("SELECT tool_id, latency_ms, success FROM usage_tool")
        .await;
    assert_eq!(
        tool,
        vec![json!({"tool_id": "projects.list", "latency_ms": 450, "success": true})]
    );
    let agent = t
        .sql("SELECT llm_calls, tool_calls, duration_ms FROM usage_agent")
        .await;
    assert_eq!(
        agent,
        vec![json!({"llm_calls": 2, "tool_calls": 1, "duration_ms": 3450})]
    );
    let msg = t
        .sql("SELECT event_id, actor_id, message_length FROM usage_message")
        .await;
    assert_eq!(
        msg,
        vec![json!({"event_id": "msg-uuid", "actor_id": "user:93", "message_length": 5})]
    );
    let delta = t
        .sql("SELECT microdao_id, actor_id, agent_id, model, latency_ms, source, CAST(timestamp AS VARCHAR) AS ts FROM usage_llm")
        .await;
    assert_eq!(
        delta,
        vec![
            json!({"microdao_id": "app_abc", "actor_id": "user_456", "agent_id": "PlannerAgent",
            "model": "gpt-4o-mini", "latency_ms": 820, "source": "chat.usage_delta",
            "ts": "2026-01-12T03:12:34.567890Z"})
        ]
    );
    let summary = t
        .sql("SELECT chat_id, total_tokens FROM usage_chat_summary")
        .await;
    assert_eq!(
        summary,
        vec![json!({"chat_id": "chat_123", "total_tokens": 600})]
    );
}
