//! The Usage API (README "Usage API") against the real binary: stats from blocks,
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
        2200.0 * 100.0 / 48_000.0,
        1e-9
    ));
    assert!(close(
        s["totals"]["message_percentage"].as_f64().unwrap(),
        2.0 * 100.0 / 250.0,
        1e-9
    ));
    // Input and output count toward the limit (1350 + 850), at their rate.
    assert_eq!(s["totals"]["tokens_toward_limit"], 2200);
    let run_out = now as f64
        + ((48_000.0 - 2200.0) / (2200.0 / elapsed_min))
            .min((18.0 - cost) / (cost / (elapsed_min / 60.0) / 60.0))
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
        2200.0 * 100.0 / 19_000.0,
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
        "/api/usage/stats?actor_id=user:1&plan=custom&custom_limit_tokens=4400",
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

/// The P90 of the spec: linear between the two nearest ranks.
fn p90(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = 0.9 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_over_compacted_and_rolled_up_hours_equal_the_block_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = Tally::start(
        &data,
        &[
            "--flush-interval",
            "200ms",
            "--compact-after",
            "0s",
            "--compact-interval",
            "200ms",
        ],
    )
    .await;
    let mut rng = common::Rng::from_time();
    let now = chrono::Utc::now().timestamp_millis();
    let tokens = |rng: &mut common::Rng| {
        [
            5_000 + rng.below(20_000) as i64,
            rng.below(5_000) as i64,
            rng.below(1_000) as i64,
            rng.below(3_000) as i64,
        ]
    };
    // Six finished blocks over the last 8 days, three calls each over three
    // hours; the current block has calls 170, 110, 50 and 5 minutes ago.
    let mut events: Vec<(i64, [i64; 4])> = Vec::new();
    let mut past_totals = Vec::new();
    for day in 2..8 {
        let base = now - day * 24 * HOUR;
        let mut total = 0;
        for offset in [0, 90, 150] {
            let t4 = tokens(&mut rng);
            // Toward the limit: input and output.
            total += t4[0] + t4[1];
            events.push((base + offset * 60_000, t4));
        }
        past_totals.push(total as f64);
    }
    let current: Vec<(i64, [i64; 4])> = [170, 110, 50, 5]
        .iter()
        .map(|m| (now - m * 60_000, tokens(&mut rng)))
        .collect();
    events.extend(current.iter().cloned());
    let body: Vec<Value> = events
        .iter()
        .enumerate()
        .map(|(i, (at, t4))| call(&format!("e{i}"), *at, "user:1", "gpt-4o-mini", *t4))
        .collect();
    let send = |body: Vec<Value>| {
        let url = t.url("/v1/events/usage.llm");
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        }
    };
    assert_eq!(send(body.clone()).await["accepted"], events.len());

    // Wait until every hour before the current one is one compacted file
    // with its stored rollup.
    let hour_of = |ms: i64| ms - ms.rem_euclid(HOUR);
    let mut closed: Vec<i64> = events
        .iter()
        .map(|(at, _)| hour_of(*at))
        .filter(|h| *h < hour_of(now))
        .collect();
    closed.sort();
    closed.dedup();
    let compacted = |data: &std::path::Path| {
        let raw = common::files_per_hour(&data.join("usage_llm"));
        let rolled = common::files_per_hour(&data.join("usage_llm_hourly"));
        closed
            .iter()
            .all(|h| raw.get(&dir_of(*h)) == Some(&1) && rolled.get(&dir_of(*h)) == Some(&1))
    };
    for _ in 0..200 {
        if compacted(&data) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        compacted(&data),
        "{:?}",
        common::files_per_hour(&data.join("usage_llm"))
    );

    // The whole batch again (all duplicates), then the stats.
    let again = send(body).await;
    assert_eq!(again["duplicates"], events.len(), "{again}");
    let (status, s) = get(&t, "/api/usage/stats?actor_id=user:1").await;
    assert_eq!(status, 200, "{s}");
    let p = price("gpt-4o-mini");
    let cost_of = |t4: &[i64; 4]| (0..4).map(|k| t4[k] as f64 * p[k]).sum::<f64>();
    let cur = &s["current_session"];
    let start = hour_of(now - 170 * 60_000);
    assert_eq!(cur["start_time"].as_i64(), Some(start), "{cur}");
    let sum = |k: usize| current.iter().map(|(_, t4)| t4[k]).sum::<i64>();
    assert_eq!(
        cur["token_counts"],
        json!({"input_tokens": sum(0), "output_tokens": sum(1),
            "cache_creation_tokens": sum(2), "cache_read_tokens": sum(3),
            "total_tokens": sum(0) + sum(1) + sum(2) + sum(3)})
    );
    assert_eq!(cur["sent_messages_count"], 4);
    let cost: f64 = current.iter().map(|(_, t4)| cost_of(t4)).sum();
    assert!(close(cur["cost_usd"].as_f64().unwrap(), cost, 1e-9));
    // The custom plan's token limit: P90 of the six finished blocks.
    let want = p90(past_totals).max(19_000.0);
    assert!(
        close(s["limits"]["tokens"].as_f64().unwrap(), want, 1e-12),
        "{} vs {want}",
        s["limits"]["tokens"]
    );

    // The stored rollup is a SQL table with the cost of its token sums.
    let rows = t
        .sql("SELECT sum(calls) AS calls, sum(cost_usd) AS cost FROM usage_llm_hourly")
        .await;
    let rolled: Vec<&(i64, [i64; 4])> = events
        .iter()
        .filter(|(at, _)| hour_of(*at) < hour_of(now))
        .collect();
    assert_eq!(rows[0]["calls"].as_u64(), Some(rolled.len() as u64));
    let rolled_cost: f64 = rolled.iter().map(|(_, t4)| cost_of(t4)).sum();
    assert!(
        close(rows[0]["cost"].as_f64().unwrap(), rolled_cost, 1e-9),
        "{rows:?} vs {rolled_cost}"
    );
}

/// The partition directory of an hour (ms): `date=YYYY-MM-DD/hour=HH`.
fn dir_of(hour_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(hour_ms)
        .unwrap()
        .format("date=%Y-%m-%d/hour=%H")
        .to_string()
}
