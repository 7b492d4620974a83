//! NATS collectors against a real nats-server: core NATS and JetStream.

mod common;

use std::time::Duration;

use common::{llm_event, wait_for_count, wait_nats_connected, NatsServer, Tally};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_stores_spec_events_rejects_bad_ones_and_dedups() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let t = Tally::start(
        &dir.path().join("data"),
        &["--nats", &nats.url, "--flush-interval", "1h"],
    )
    .await;
    wait_nats_connected(&t).await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    // Core NATS keeps nothing for a subscriber that is not there yet: probe
    // until tally's subscriptions store what is published.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for i in 0.. {
        let probe = llm_event(&format!("probe-{i}"), "2025-11-24T11:00:00Z", 1, 1);
        client
            .publish("usage.llm", probe.to_string().into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = t.sql("SELECT count(*) AS n FROM usage_llm").await[0]["n"]
            .as_u64()
            .unwrap();
        if n > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tally never received a probe"
        );
    }
    let events = [
        (
            "usage.llm",
            llm_event("evt-123", "2025-11-24T12:00:00Z", 450, 120),
        ),
        (
            "usage.llm",
            llm_event("evt-123", "2025-11-24T12:00:00Z", 450, 120),
        ),
        (
            "usage.tool",
            json!({"event_id": "evt-456", "timestamp": "2025-11-24T12:01:00Z",
            "actor_id": "agent:sofia", "actor_type": "agent", "agent_id": "agent:sofia",
            "microdao_id": "microdao:7", "tool_id": "projects.list", "tool_name": "List Projects",
            "success": true, "latency_ms": 450}),
        ),
        (
            "usage.agent",
            json!({"event_id": "evt-789", "timestamp": "2025-11-24T12:02:00Z",
            "agent_id": "agent:sofia", "microdao_id": "microdao:7", "channel_id": "channel-uuid",
            "trigger": "message", "duration_ms": 3450, "llm_calls": 2, "tool_calls": 1, "success": true}),
        ),
        (
            "messaging.message.created",
            json!({"channel_id": "channel-uuid", "message_id": "msg-uuid",
            "sender_id": "user:93", "microdao_id": "microdao:7", "created_at": "2025-11-24T12:03:00Z",
            "content_preview": "hi there"}),
        ),
        (
            "chat.usage_delta",
            json!({"event_id": "a1b2c3d4e5f6", "event_ts": "2026-01-12T03:12:34.567890+00:00",
            "chat_id": "chat_123", "app_id": "app_abc", "user_id": "user_456", "workflow_name": "AgentGenerator",
            "agent_name": "PlannerAgent", "model_name": "gpt-4o-mini", "prompt_tokens": 120,
            "completion_tokens": 48, "cached": false, "duration_sec": 0.82, "invocation_id": "inv_789"}),
        ),
        (
            "chat.usage_summary",
            json!({"event_id": "f1e2d3c4b5a6", "event_ts": "2026-01-12T03:12:35.000000+00:00",
            "chat_id": "chat_123", "app_id": "app_abc", "user_id": "user_456", "workflow_name": "GeneralCapability",
            "prompt_tokens": 400, "completion_tokens": 200, "total_tokens": 600}),
        ),
    ];
    for (subject, e) in &events {
        client
            .publish(subject.to_string(), e.to_string().into())
            .await
            .unwrap();
    }
    client
        .publish("usage.llm", "not json".into())
        .await
        .unwrap();
    client
        .publish("usage.tool", json!({"event_id": "t2"}).to_string().into())
        .await
        .unwrap();
    client.flush().await.unwrap();

    assert_eq!(
        wait_for_count(&t, "SELECT count(*) AS n FROM rejected", 2).await,
        2
    );
    assert_eq!(
        wait_for_count(&t, "SELECT count(*) AS n FROM usage_chat_summary", 1).await,
        1
    );
    let llm = t
        .sql("SELECT event_id, total_tokens, source FROM usage_llm WHERE event_id NOT LIKE 'probe-%' ORDER BY event_id")
        .await;
    assert_eq!(
        llm,
        vec![
            json!({"event_id": "a1b2c3d4e5f6", "total_tokens": 168, "source": "chat.usage_delta"}),
            json!({"event_id": "evt-123", "total_tokens": 570, "source": "usage.llm"}),
        ]
    );
    let msg = t
        .sql("SELECT actor_type, message_length FROM usage_message")
        .await;
    assert_eq!(
        msg,
        vec![json!({"actor_type": "human", "message_length": 8})]
    );
    assert_eq!(
        t.sql("SELECT count(*) AS n FROM usage_tool").await[0]["n"],
        1
    );
    assert_eq!(
        t.sql("SELECT count(*) AS n FROM usage_agent").await[0]["n"],
        1
    );
    let rejected = t
        .sql("SELECT source, subject, reason FROM rejected ORDER BY subject")
        .await;
    assert_eq!(rejected[0]["source"], "nats");
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("message is not valid JSON"),
        "{rejected:?}"
    );
    assert_eq!(rejected[1]["subject"], "usage.tool");
    assert!(rejected[1]["reason"]
        .as_str()
        .unwrap()
        .contains("timestamp is required"));
    let metrics = reqwest::get(t.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tally_records_duplicate_total{dataset=\"usage_llm\",source=\"nats\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tally_records_rejected_total{dataset=\"usage_tool\",source=\"nats\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jetstream_redelivery_across_kill_9_loses_nothing_and_doubles_nothing() {
    const N: usize = 3000;
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "--nats",
        &nats.url,
        "--nats-stream",
        "USAGE",
        "--nats-create-stream",
        "--flush-interval",
        "200ms",
        "--nats-ack-wait",
        "2s",
    ];
    let t = Tally::start(&data, &args).await;
    wait_nats_connected(&t).await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // Wait for tally to have created the stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while js.get_stream("USAGE").await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "stream was not created"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let e = llm_event(&format!("js-{i:05}"), "2025-11-24T12:00:00Z", i as i64, 1);
                js.publish("usage.llm", e.to_string().into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        })
    };
    // Let tally consume part of it, then kill it without warning.
    tokio::time::sleep(Duration::from_millis(700)).await;
    t.kill9();
    publisher.await.unwrap();
    let t = Tally::start(&data, &args).await;
    let n = wait_for_count(
        &t,
        "SELECT count(DISTINCT event_id) AS n FROM usage_llm",
        N as u64,
    )
    .await;
    assert_eq!(n, N as u64, "every published event is stored");
    assert_eq!(
        t.sql("SELECT count(*) AS n FROM usage_llm").await[0]["n"],
        N as u64,
        "none twice"
    );
    // Everything ends acknowledged.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stream = js.get_stream("USAGE").await.unwrap();
        let info = stream.consumer_info("tally").await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} pending, {} unacked",
            info.num_pending,
            info.num_ack_pending
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.terminate();
}
