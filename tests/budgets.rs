//! Budgets end to end: `used` against sums computed here from the records
//! sent (prices read from the catalogue file), each threshold alert once
//! with a valid signature to a real HTTP receiver that answers 503 first,
//! across `kill -9` (delivered before, and pending while killed), the
//! alerts dataset and stream, and `/v1/budgets/check`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};
use common::{hmac_sha256, Rng, Tally, WebhookReceiver};
use futures::StreamExt;
use serde_json::{json, Value};
use tally_proto::billing::v1 as pb;

const SECRET: &str = "s3cret-for-budgets";
const VM_SECRET: &str = "another secret";

/// Input, output and cache-read prices per token, from the shipped catalogue.
fn prices() -> BTreeMap<String, (f64, f64, f64)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/queries/prices/llm_model_prices.json"
    ))
    .unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    ["gpt-4.1-mini", "gpt-4o"]
        .iter()
        .map(|m| {
            let p = &all[*m];
            (
                m.to_string(),
                (
                    p["input_cost_per_token"].as_f64().unwrap(),
                    p["output_cost_per_token"].as_f64().unwrap(),
                    p["cache_read_input_token_cost"].as_f64().unwrap(),
                ),
            )
        })
        .collect()
}

/// What the test expects, summed as events are made.
#[derive(Default)]
struct Sums {
    cost_m7: f64,
    tokens_m7_agent_a: i64,
    calls_all: i64,
    tools_m7: i64,
    cpu_nanos_cust1: i64,
}

fn ts(ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn now_ns() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap()
}

fn month_start(now: i64) -> i64 {
    let d = DateTime::<Utc>::from_timestamp_nanos(now).date_naive();
    Utc.from_utc_datetime(&d.with_day(1).unwrap().and_hms_opt(0, 0, 0).unwrap())
        .timestamp_nanos_opt()
        .unwrap()
}

/// `n` LLM events at times in `[from, to)`, summed into `sums` when `count`.
fn llm_events(
    rng: &mut Rng,
    prefix: &str,
    n: usize,
    (from, to): (i64, i64),
    sums: &mut Sums,
    count: bool,
) -> Vec<Value> {
    let prices = prices();
    let models = ["gpt-4.1-mini", "gpt-4o", "mystery-model-x"];
    (0..n)
        .map(|i| {
            let tenant = ["microdao:7", "microdao:8"][rng.below(2) as usize];
            let agent = ["agent:a", "agent:b"][rng.below(2) as usize];
            let model = models[rng.below(3) as usize];
            let (p, c, r) = (
                1 + rng.below(4000) as i64,
                1 + rng.below(1500) as i64,
                rng.below(3000) as i64,
            );
            let total = p + c + r;
            let t = from + rng.below((to - from) as u64) as i64;
            if count {
                sums.calls_all += 1;
                if tenant == "microdao:7" {
                    if let Some((pi, po, pr)) = prices.get(model) {
                        sums.cost_m7 += p as f64 * pi + c as f64 * po + r as f64 * pr;
                    }
                    if agent == "agent:a" {
                        sums.tokens_m7_agent_a += total;
                    }
                }
            }
            json!({
                "event_id": format!("{prefix}-{i}"), "timestamp": ts(t),
                "actor_id": format!("user:{}", rng.below(3)), "actor_type": "human",
                "agent_id": agent, "microdao_id": tenant, "model": model, "provider": "openai",
                "prompt_tokens": p, "completion_tokens": c, "cache_read_tokens": r,
                "total_tokens": total, "latency_ms": 100, "success": true
            })
        })
        .collect()
}

async fn post(t: &Tally, path: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(t.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn get(t: &Tally, path: &str) -> Value {
    let r = reqwest::get(t.url(path)).await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

async fn ingest(t: &Tally, route: &str, events: &[Value]) {
    let r = reqwest::Client::new()
        .post(t.url(route))
        .body(common::ndjson(events))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["accepted"].as_u64(), Some(events.len() as u64), "{v}");
}

/// VM samples every 10 s over `[from, to)` with CPU counters rising by
/// random steps (times `scale`); returns the CPU nanoseconds the billing rules count.
async fn send_vm(
    t: &Tally,
    rng: &mut Rng,
    (from, to): (i64, i64),
    scale: i64,
    cpu: &mut i64,
) -> i64 {
    let mut client = common::billing_client(t).await;
    let mut metrics = Vec::new();
    let mut counted = 0;
    let step = 10_000_000_000i64;
    let mut at = from;
    while at < to {
        if !metrics.is_empty() {
            let d = (1_000_000_000 + rng.below(9_000_000_000) as i64) * scale;
            *cpu += d;
            counted += d;
        }
        let mut m = common::vm_sample(at / 1_000_000_000, *cpu);
        m.timestamp.as_mut().unwrap().nanos = (at % 1_000_000_000) as i32;
        metrics.push(m);
        at += step;
    }
    client
        .send_metrics_batch(pb::SendMetricsBatchRequest {
            vm_id: "vm-1".into(),
            customer_id: "cust-1".into(),
            metrics,
        })
        .await
        .unwrap();
    counted
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-9 * want.abs().max(1e-12)
}

/// Waits until the budget's `used` is `want` (the evaluation that GET makes
/// holds every acknowledged record, so the first answer should be it).
async fn used(t: &Tally, id: &str) -> Value {
    get(t, &format!("/v1/budgets/{id}")).await
}

async fn alerts(t: &Tally) -> Vec<Value> {
    get(t, "/v1/alerts").await["alerts"]
        .as_array()
        .unwrap()
        .clone()
}

async fn wait_delivered(t: &Tally, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = alerts(t).await;
        let delivered = a
            .iter()
            .filter(|a| a["webhook"]["delivery"] == "delivered")
            .count();
        if delivered >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{a:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_count_exactly_and_alert_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let receiver = WebhookReceiver::start().await;
    let args = ["--budget-interval", "200ms", "--no-sampler"];
    let t = Tally::start(&data, &args).await;
    let mut rng = Rng::from_time();
    let mut sums = Sums::default();
    let now = now_ns();
    let start = month_start(now);
    let recent = ((now - 1_800_000_000_000).max(start), now - 1_000_000_000);

    // Usage of this month, and of the month before (not counted).
    let mut events = llm_events(&mut rng, "p1", 300, recent, &mut sums, true);
    let before = (start - 3_600_000_000_000, start - 1);
    events.extend(llm_events(
        &mut rng,
        "old",
        50,
        before,
        &mut Sums::default(),
        false,
    ));
    ingest(&t, "/v1/events/usage.llm", &events).await;
    let tools: Vec<Value> = (0..40)
        .map(|i| {
            let tenant = ["microdao:7", "microdao:8"][i % 2];
            if tenant == "microdao:7" {
                sums.tools_m7 += 1;
            }
            json!({"event_id": format!("tool-{i}"), "timestamp": ts(recent.0 + i as i64 * 1_000_000),
                "actor_id": "user:1", "actor_type": "human", "agent_id": "agent:a",
                "microdao_id": tenant, "tool_id": "t", "tool_name": "search",
                "success": true, "latency_ms": 5})
        })
        .collect();
    ingest(&t, "/v1/events/usage.tool", &tools).await;
    let mut cpu = 0i64;
    let vm_from = (now - 600_000_000_000).max(start);
    sums.cpu_nanos_cust1 +=
        send_vm(&t, &mut rng, (vm_from, now - 100_000_000_000), 1, &mut cpu).await;
    assert!(sums.cost_m7 > 0.0);

    // Validation lists every error at once, in the Usage API's shape.
    let (s, v) = post(
        &t,
        "/v1/budgets",
        &json!({"metric": "bananas", "period": "year", "limit": 0, "scope": {"vm_id": 3}}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"], "Validation failed");
    let errors = v["validation_errors"].as_array().unwrap();
    assert!(errors.len() >= 4, "{v}");

    // The cost budget is set so that this month's cost so far is 90 % of it.
    let limit = sums.cost_m7 / 0.9;
    let (s, cost) = post(
        &t,
        "/v1/budgets",
        &json!({
            "name": "microdao 7 monthly", "scope": {"microdao_id": "microdao:7"},
            "metric": "cost_usd", "period": "month", "limit": limit, "thresholds": [0.5, 0.8, 1.0],
            "webhook_url": receiver.url("/llm"), "webhook_secret": SECRET
        }),
    )
    .await;
    assert_eq!(s, 201, "{cost}");
    assert!(cost.get("webhook_secret").is_none(), "{cost}");
    let big = 1e15;
    let mut ids = BTreeMap::new();
    ids.insert("cost", cost["id"].as_str().unwrap().to_string());
    for (name, body) in [
        (
            "tokens",
            json!({"name": "tokens", "scope": {"microdao_id": "microdao:7", "agent_id": "agent:a"}, "metric": "total_tokens", "period": "month", "limit": big}),
        ),
        (
            "calls",
            json!({"name": "calls", "metric": "llm_calls", "period": "month", "limit": big}),
        ),
        (
            "tools",
            json!({"name": "tools", "scope": {"microdao_id": "microdao:7"}, "metric": "tool_calls", "period": "month", "limit": big}),
        ),
        (
            "cpu",
            json!({"name": "cpu", "scope": {"customer_id": "cust-1"}, "metric": "vm_cpu_seconds", "period": "month",
            "limit": sums.cpu_nanos_cust1 as f64 / 1e9 * 4.0, "thresholds": [0.5],
            "webhook_url": receiver.url("/vm"), "webhook_secret": VM_SECRET}),
        ),
    ] {
        let (s, v) = post(&t, "/v1/budgets", &body).await;
        assert_eq!(s, 201, "{v}");
        ids.insert(name, v["id"].as_str().unwrap().to_string());
    }

    let check_used = |sums: &Sums, got: &BTreeMap<&str, Value>| {
        assert!(
            close(got["cost"]["used"].as_f64().unwrap(), sums.cost_m7),
            "{} vs {}",
            got["cost"],
            sums.cost_m7
        );
        assert_eq!(
            got["tokens"]["used"].as_f64().unwrap(),
            sums.tokens_m7_agent_a as f64
        );
        assert_eq!(
            got["calls"]["used"].as_f64().unwrap(),
            sums.calls_all as f64
        );
        assert_eq!(got["tools"]["used"].as_f64().unwrap(), sums.tools_m7 as f64);
        let cpu = sums.cpu_nanos_cust1 as f64 / 1e9;
        assert!(
            close(got["cpu"]["used"].as_f64().unwrap(), cpu),
            "{} vs {cpu}",
            got["cpu"]
        );
    };
    let mut got = BTreeMap::new();
    for (name, id) in &ids {
        got.insert(*name, used(&t, id).await);
    }
    check_used(&sums, &got);
    let c = &got["cost"];
    assert_eq!(c["state"], "warning", "{c}");
    assert_eq!(c["period_start"], ts(start).replace(".000000000", ""));
    assert!(close(
        c["remaining"].as_f64().unwrap(),
        limit - sums.cost_m7
    ));
    assert!(close(c["percent"].as_f64().unwrap(), 90.0), "{c}");

    // 0.5 and 0.8 are crossed: two alerts, each refused once (503), then
    // delivered, signed with the budget's secret.
    let accepted = receiver.wait_accepted(2).await;
    wait_delivered(&t, 2).await;
    for d in &accepted {
        assert_eq!(d.path, "/llm");
        assert_eq!(
            d.signature.as_deref(),
            Some(hmac_sha256(SECRET.as_bytes(), d.body.as_bytes()).as_str())
        );
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["type"], "budget.threshold");
        assert_eq!(body["budget_id"], ids["cost"].as_str());
        assert_eq!(body["metric"], "cost_usd");
        assert!(close(body["limit"].as_f64().unwrap(), limit));
    }
    let mut crossed: Vec<f64> = accepted
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(&d.body).unwrap()["threshold"]
                .as_f64()
                .unwrap()
        })
        .collect();
    crossed.sort_by(f64::total_cmp);
    assert_eq!(crossed, [0.5, 0.8]);
    assert!(
        receiver
            .deliveries()
            .iter()
            .filter(|d| d.status == 503)
            .count()
            >= 2
    );

    let check = get(
        &t,
        "/v1/budgets/check?microdao_id=microdao:7&agent_id=agent:a",
    )
    .await;
    assert_eq!(check["allowed"], true, "{check}");
    let matched: Vec<&str> = check["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    for want in ["microdao 7 monthly", "tokens", "calls", "tools"] {
        assert!(matched.contains(&want), "{want} not in {check}");
    }
    assert!(!matched.contains(&"cpu"));

    // kill -9, restart: the same numbers, and no alert again.
    t.kill9();
    let t = Tally::start(&data, &args).await;
    let mut got = BTreeMap::new();
    for (name, id) in &ids {
        got.insert(*name, used(&t, id).await);
    }
    check_used(&sums, &got);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.accepted().len(), 2, "{:#?}", receiver.deliveries());

    // Over the limit, with a late event (early in the period) among them:
    // the 1.0 alert, on the stream too; check says no for microdao:7 only.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/alerts/stream", t.addr))
        .await
        .unwrap();
    let mut more = Sums::default();
    let mut events = llm_events(&mut rng, "p2", 600, recent, &mut more, true);
    events.extend(llm_events(
        &mut rng,
        "late",
        5,
        (start, start + 60_000_000_000),
        &mut more,
        true,
    ));
    ingest(&t, "/v1/events/usage.llm", &events).await;
    sums.cost_m7 += more.cost_m7;
    sums.tokens_m7_agent_a += more.tokens_m7_agent_a;
    sums.calls_all += more.calls_all;
    assert!(
        sums.cost_m7 > limit,
        "the second batch should pass the limit"
    );
    let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .expect("an alert on the stream")
        .unwrap()
        .unwrap();
    let streamed: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(
        (
            streamed["budget_id"].as_str(),
            streamed["threshold"].as_f64()
        ),
        (Some(ids["cost"].as_str()), Some(1.0)),
        "{streamed}"
    );
    receiver.wait_accepted(3).await;
    let mut got = BTreeMap::new();
    for (name, id) in &ids {
        got.insert(*name, used(&t, id).await);
    }
    check_used(&sums, &got);
    assert_eq!(got["cost"]["state"], "exceeded");
    let check = get(
        &t,
        "/v1/budgets/check?microdao_id=microdao:7&agent_id=agent:a&actor_id=user:1",
    )
    .await;
    assert_eq!(check["allowed"], false, "{check}");
    let check = get(&t, "/v1/budgets/check?microdao_id=microdao:8").await;
    assert_eq!(check["allowed"], true, "{check}");

    // The VM budget crosses 0.5 while its receiver refuses; killed while
    // the alert is pending, it is delivered after the restart, once.
    wait_delivered(&t, 3).await;
    receiver
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let vm_from = now - 100_000_000_000 + 10_000_000_000;
    // The pair joining the two sends counts nothing: the counter did not
    // move between them.
    sums.cpu_nanos_cust1 += send_vm(&t, &mut rng, (vm_from, now_ns()), 50, &mut cpu).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let vm_alerts: Vec<Value> = alerts(&t)
            .await
            .into_iter()
            .filter(|a| a["alert"]["budget_id"] == ids["cpu"].as_str())
            .collect();
        if vm_alerts
            .first()
            .is_some_and(|a| a["webhook"]["attempts"].as_u64() >= Some(1))
        {
            assert_eq!(
                vm_alerts[0]["webhook"]["delivery"], "pending",
                "{vm_alerts:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no VM alert: {vm_alerts:?} used {}",
            used(&t, &ids["cpu"]).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.kill9();
    receiver
        .refuse
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let t = Tally::start(&data, &args).await;
    let all = receiver.wait_accepted(4).await;
    wait_delivered(&t, 4).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all_accepted = receiver.accepted();
    assert_eq!(all_accepted.len(), 4, "{all:#?}");
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for d in &all_accepted {
        *per_id.entry(d.id.clone()).or_default() += 1;
        let secret = if d.path == "/vm" { VM_SECRET } else { SECRET };
        assert_eq!(
            d.signature.as_deref(),
            Some(hmac_sha256(secret.as_bytes(), d.body.as_bytes()).as_str())
        );
    }
    assert!(per_id.values().all(|n| *n == 1), "{per_id:?}");
    let vm = all_accepted.iter().find(|d| d.path == "/vm").unwrap();
    let body: Value = serde_json::from_str(&vm.body).unwrap();
    assert_eq!(
        (body["metric"].as_str(), body["threshold"].as_f64()),
        (Some("vm_cpu_seconds"), Some(0.5))
    );
    let cpu = used(&t, &ids["cpu"]).await;
    assert!(
        close(
            cpu["used"].as_f64().unwrap(),
            sums.cpu_nanos_cust1 as f64 / 1e9
        ),
        "{cpu} vs {}",
        sums.cpu_nanos_cust1
    );

    // Every budget alert is a row of the alerts dataset, once. (The
    // anomaly detector may judge this data too: from the 4th of a month the
    // tenants' first usage, in the last hour of the month before, is 3 days
    // of history, and this hour's usage is far above their zero baseline.)
    let rows = t
        .sql("SELECT id, type, budget_id FROM alerts WHERE type <> 'anomaly' ORDER BY id")
        .await;
    let stored: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let sent: Vec<&str> = per_id.keys().map(String::as_str).collect();
    assert_eq!(stored, sent);

    // Deleted: gone, and not matched by check any more.
    let r = reqwest::Client::new()
        .delete(t.url(&format!("/v1/budgets/{}", ids["cost"])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = reqwest::get(t.url(&format!("/v1/budgets/{}", ids["cost"])))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let check = get(&t, "/v1/budgets/check?microdao_id=microdao:7").await;
    assert_eq!(check["allowed"], true, "{check}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_budget_file_is_quarantined_and_the_others_load() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = Tally::start(&data, &["--no-sampler"]).await;
    let mut ids = Vec::new();
    for name in ["kept", "damaged"] {
        let (s, v) = post(
            &t,
            "/v1/budgets",
            &json!({"name": name, "metric": "llm_calls", "period": "day", "limit": 10}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    t.terminate();
    let file = data.join(format!("_tally/budgets/{}.json", ids[1]));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&file, bytes).unwrap();

    let t = Tally::start(&data, &["--no-sampler"]).await;
    let listed = get(&t, "/v1/budgets").await;
    let names: Vec<&str> = listed["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kept"]);
    assert!(!file.exists());
    let damage = get(&t, "/v1/damage").await;
    let reports = damage["damage"].as_array().unwrap();
    assert!(
        reports.iter().any(|r| r["path"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{}.json", ids[1]))
            && r["quarantined"].is_string()),
        "{damage:#}"
    );
    let (_, health) = t.health().await;
    assert_eq!(health["status"], "degraded", "{health}");
}
