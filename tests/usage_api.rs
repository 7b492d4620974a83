//! The Usage API (spec 002) against the real binary: stats from blocks,
//! limits, burn rate and predictions computed here independently; config
//! validation and persistence; sessions from snapshots; rate limits; stream.

mod common;

use std::time::Duration;

use common::Tally;
use futures::StreamExt;
use serde_json::{json, Value};

const HOUR: i64 = 3_600_000;

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339()
}

fn call(id: &str, at_ms: i64, actor: &str, model: &str, t: [i64; 4]) -> Value {
    json!({"event_id": id, "timestamp": iso(at_ms), "actor_id": actor, "actor_type": "human",
        "model": model, "provider": "openai", "prompt_tokens": t[0], "completion_tokens": t[1],
        "cache_creation_tokens": t[2], "cache_read_tokens": t[3], "latency_ms": 10})
}

fn price(model: &str) -> [f64; 4] {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/queries/prices/llm_model_prices.json"
    ))
    .unwrap();
    let m = &serde_json::from_str::<Value>(&text).unwrap()[model];
    let input = m["input_cost_per_token"].as_f64().unwrap();
    [
        input,
        m["output_cost_per_token"].as_f64().unwrap(),
        m["cache_creation_input_token_cost"]
            .as_f64()
            .unwrap_or(input),
        m["cache_read_input_token_cost"].as_f64().unwrap_or(input),
    ]
}

async fn get(t: &Tally, path: &str) -> (u16, Value) {
    let r = reqwest::get(t.url(path)).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn post(t: &Tally, path: &str, body: &str) -> (u16, Value, Option<String>) {
    let r = reqwest::Client::new()
        .post(t.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), r.json().await.unwrap(), retry)
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-9)
}

#[tokio::test]
async fn stats_follow_the_block_model_with_limits_and_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = Tally::start(
        &data,
        &["--flush-interval", "1h", "--usage-config-rate", "6"],
    )
    .await;
    let now = chrono::Utc::now().timestamp_millis();
    // The current block: its first call 40 minutes ago.
    let first = now - 40 * 60_000;
    let start = first - first.rem_euclid(HOUR);
    let mut events = vec![
        call("c1", first, "user:1", "gpt-4o-mini", [1250, 850, 0, 200]),
        call(
            "c2",
            now - 10 * 60_000,
            "user:1",
            "mystery-model",
            [100, 0, 0, 0],
        ),
        call(
            "other",
            now - 5 * 60_000,
            "user:2",
            "gpt-4o-mini",
            [99_999, 0, 0, 0],
        ),
    ];
    // Three finished blocks in the last 8 days: 30k, 40k and 50k tokens.
    for (i, total) in [30_000, 40_000, 50_000].into_iter().enumerate() {
        let at = now - (2 + i as i64) * 24 * HOUR;
        events.push(call(
            &format!("past-{i}"),
            at,
            "user:1",
            "gpt-4o-mini",
            [total, 0, 0, 0],
        ));
    }
    let r = reqwest::Client::new()
        .post(t.url("/v1/events/usage.llm"))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["accepted"], 6);

    let (status, s) = get(&t, "/api/usage/stats?actor_id=user:1").await;
    assert_eq!(status, 200, "{s}");
    let cur = &s["current_session"];
    assert_eq!(cur["start_time"].as_i64(), Some(start));
    assert_eq!(cur["end_time"].as_i64(), Some(start + 5 * HOUR));
    assert_eq!(cur["id"], format!("session-{}", start + 5 * HOUR));
    assert_eq!(cur["is_active"], true);
    // The spec's example numbers: 1250 + 850 + 0 + 200 = 2300, plus the second call.
    assert_eq!(
        cur["token_counts"],
        json!({"input_tokens": 1350, "output_tokens": 850,
        "cache_creation_tokens": 0, "cache_read_tokens": 200, "total_tokens": 2400})
    );
    assert_eq!(cur["sent_messages_count"], 2);
    let p = price("gpt-4o-mini");
    let cost = 1250.0 * p[0] + 850.0 * p[1] + 200.0 * p[3];
    assert!(
        close(cur["cost_usd"].as_f64().unwrap(), cost, 1e-9),
        "{} vs {cost}",
        cur["cost_usd"]
    );
    assert_eq!(cur["per_model_stats"]["gpt-4o-mini"]["tokens"], 2300);
    assert_eq!(cur["per_model_stats"]["mystery-model"]["messages"], 1);
    let elapsed_min = ((now - start) as f64 / 60_000.0).max(1.0);
    let tpm = 2400.0 / elapsed_min;
    assert!(close(
        s["burn_rate"]["tokens_per_minute"].as_f64().unwrap(),
        tpm,
        0.01
    ));
    assert!(close(
        s["burn_rate"]["cost_per_hour"].as_f64().unwrap(),
        cost / (elapsed_min / 60.0),
        0.01
    ));

    // Default plan is custom: P90 of 30k, 40k, 50k = 48k tokens; cost and
    // messages fall back to the pro floor ($18, 250).
    assert_eq!(s["limits"]["tokens"].as_f64(), Some(48_000.0));
    assert!(close(
        s["totals"]["token_percentage"].as_f64().unwrap(),
        2400.0 * 100.0 / 48_000.0,
        1e-9
    ));
    assert!(close(
        s["totals"]["message_percentage"].as_f64().unwrap(),
        2.0 * 100.0 / 250.0,
        1e-9
    ));
    let run_out = now as f64
        + ((48_000.0 - 2400.0) / tpm).min((18.0 - cost) / (cost / (elapsed_min / 60.0) / 60.0))
            * 60_000.0;
    let got = s["predictions"]["tokens_run_out"].as_f64().unwrap();
    assert!((got - run_out).abs() < 60_000.0 * 5.0, "{got} vs {run_out}");
    assert_eq!(
        s["predictions"]["limit_resets_at"].as_i64(),
        Some(start + 5 * HOUR)
    );
    let finished = s["recent_sessions"].as_array().unwrap();
    assert!(
        finished.is_empty(),
        "no block ended in the last 24 h: {finished:?}"
    );

    // Overrides: plan pro, a reset hour; all checked by the config rules.
    let (_, s) = get(&t, "/api/usage/stats?actor_id=user:1&plan=pro&reset_hour=0").await;
    assert!(close(
        s["totals"]["token_percentage"].as_f64().unwrap(),
        2400.0 * 100.0 / 19_000.0,
        1e-9
    ));
    let midnight = (now / (24 * HOUR) + 1) * 24 * HOUR;
    assert_eq!(s["predictions"]["limit_resets_at"].as_i64(), Some(midnight));
    assert_eq!(s["config_applied"]["plan"], "pro");
    let (status, e) = get(
        &t,
        "/api/usage/stats?plan=gold&refresh_rate=0&custom_limit_tokens=-5",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(e["error"], "Validation failed");
    assert_eq!(e["validation_errors"].as_array().unwrap().len(), 3, "{e}");
    let (_, s) = get(
        &t,
        "/api/usage/stats?actor_id=user:1&plan=custom&custom_limit_tokens=4800",
    )
    .await;
    assert!(close(
        s["totals"]["token_percentage"].as_f64().unwrap(),
        50.0,
        1e-9
    ));

    // Sessions: the stats calls above stored one snapshot (refresh_rate 10 s).
    let (_, sessions) = get(&t, "/api/usage/sessions?actor_id=user:1").await;
    assert_eq!(sessions["total_count"], 1, "{sessions}");
    let snap = &sessions["sessions"][0];
    assert_eq!(snap["session_id"], format!("session-{}", start + 5 * HOUR));
    assert_eq!(snap["snapshot_type"], "stats");
    assert_eq!(
        snap["data"]["current_session"]["token_counts"]["total_tokens"],
        2400
    );
    assert_eq!(
        (sessions["hours_back"].as_i64(), sessions["limit"].as_i64()),
        (Some(24), Some(100))
    );
    let (_, none) = get(&t, "/api/usage/sessions?session_id=session-1").await;
    assert_eq!(none["total_count"], 0);
    for (q, msg) in [
        (
            "hours_back=0",
            "hours_back must be an integer between 1 and 720",
        ),
        ("limit=1001", "limit must be an integer between 1 and 1000"),
    ] {
        let (status, e) = get(&t, &format!("/api/usage/sessions?{q}")).await;
        assert_eq!(status, 400);
        assert!(
            e["validation_errors"][0].as_str().unwrap().starts_with(msg),
            "{e}"
        );
    }

    // The stream: a usage_update right after connecting.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/api/usage/stream?actor_id=user:1",
        t.addr
    ))
    .await
    .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(v["type"], "usage_update");
    assert_eq!(
        v["data"]["current_session"]["token_counts"]["total_tokens"],
        2400
    );
    assert!(v["timestamp"].as_i64().unwrap() >= now);
}

#[tokio::test]
async fn config_is_validated_persisted_reset_and_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = Tally::start(&data, &["--usage-config-rate", "5"]).await;
    let (status, c) = get(&t, "/api/usage/config").await;
    assert_eq!(status, 200);
    assert_eq!(c["plan"], "custom");
    assert_eq!(c["refresh_rate"], 10);
    assert_eq!(c["refresh_per_second"], 0.75);
    assert_eq!(c["reset_hour"], Value::Null);
    let created = c["created_at"].as_i64().unwrap();
    assert!(
        (created - chrono::Utc::now().timestamp()).abs() < 60,
        "epoch seconds"
    );

    let (status, r, _) = post(
        &t,
        "/api/usage/config",
        r#"{"plan": "pro", "theme": "dark", "refresh_rate": 30}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (r["success"].as_bool(), r["message"].as_str()),
        (Some(true), Some("Configuration updated successfully"))
    );
    assert_eq!(
        (
            r["data"]["plan"].as_str(),
            r["data"]["theme"].as_str(),
            r["data"]["view"].as_str()
        ),
        (Some("pro"), Some("dark"), Some("realtime"))
    );

    let (status, e, _) = post(
        &t,
        "/api/usage/config",
        r#"{"plan": "invalid", "refresh_rate": 999}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        e["validation_errors"],
        json!([
            "plan must be one of: pro, max5, max20, custom",
            "refresh_rate must be an integer between 1 and 60, got 999",
        ])
    );
    let (status, e, _) = post(&t, "/api/usage/config", "invalid json").await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("Invalid request body"))
    );

    // Survives a restart.
    t.terminate();
    let t = Tally::start(&data, &["--usage-config-rate", "5"]).await;
    let (_, c) = get(&t, "/api/usage/config").await;
    assert_eq!(
        (c["plan"].as_str(), c["refresh_rate"].as_i64()),
        (Some("pro"), Some(30))
    );
    assert_eq!(c["created_at"].as_i64(), Some(created));

    let (status, r, _) = post(&t, "/api/usage/config/reset", "").await;
    assert_eq!(status, 200);
    assert_eq!(r["message"], "Configuration reset to defaults successfully");
    assert_eq!(
        (
            r["data"]["plan"].as_str(),
            r["data"]["refresh_rate"].as_i64()
        ),
        (Some("custom"), Some(10))
    );

    // 5 config writes a minute per client: the rest get 429 with Retry-After.
    // The window is the wall-clock minute; 11 writes reach the limit even if
    // a minute boundary falls among them.
    let mut limited = None;
    for _ in 0..11 {
        let (status, e, retry) = post(&t, "/api/usage/config", r#"{"theme": "light"}"#).await;
        if status == 429 {
            limited = Some((e, retry));
            break;
        }
    }
    let (e, retry) = limited.expect("a sixth write within a minute is refused");
    assert_eq!(e["error"], "Too many requests");
    let wait: u64 = retry.unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
}
