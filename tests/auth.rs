//! Who may write and read what, end to end: tokens made by `tally token`,
//! roles and tenants on every route (HTTP, Connect, the WebSockets), dedup
//! keys scoped by tenant, revocation without a restart, the refusal to
//! serve a network without a token, and per-tenant rate limits.
//!
//! Expected numbers are summed in the test from the events it sends.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use common::{Rng, Tally};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const NO_FLUSH: [&str; 2] = ["--flush-interval", "1h"];

/// Runs a `tally` command on `data`; its standard output.
fn tally_cli(data: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A request with an optional bearer token: status and JSON body.
async fn call(
    t: &Tally,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<String>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = reqwest::Client::new().request(method, t.url(path));
    if let Some(tok) = token {
        req = req.bearer_auth(tok);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v, headers)
}

async fn get(t: &Tally, token: Option<&str>, path: &str) -> (u16, Value) {
    let (s, v, _) = call(t, token, reqwest::Method::GET, path, None).await;
    (s, v)
}

async fn post(t: &Tally, token: Option<&str>, path: &str, body: &Value) -> (u16, Value) {
    let (s, v, _) = call(
        t,
        token,
        reqwest::Method::POST,
        path,
        Some(body.to_string()),
    )
    .await;
    (s, v)
}

fn minutes_ago(m: i64) -> String {
    (Utc::now() - chrono::Duration::minutes(m)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn llm(id: &str, tenant: &str, agent: &str, tokens: i64) -> Value {
    json!({"event_id": id, "timestamp": minutes_ago(5), "actor_id": "user:1", "actor_type": "human",
        "agent_id": agent, "microdao_id": tenant, "model": "gpt-4o-mini", "provider": "openai",
        "prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens, "latency_ms": 100,
        "success": true})
}

fn tool(id: &str, tenant: &str, tool_id: &str) -> Value {
    json!({"event_id": id, "timestamp": minutes_ago(5), "actor_id": "agent:x", "actor_type": "agent",
        "agent_id": "agent:x", "microdao_id": tenant, "tool_id": tool_id, "tool_name": tool_id,
        "success": true, "latency_ms": 10})
}

fn vm_batch(customer: &str, vm: &str, from_secs: i64, n: i64) -> Value {
    let metrics: Vec<Value> = (0..n)
        .map(|i| {
            let at = chrono::DateTime::from_timestamp(from_secs + i, 0)
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Secs, true);
            json!({"timestamp": at, "cpuTimeNanos": (i * 1_000_000_000).to_string(),
                "memoryUsageBytes": "1073741824"})
        })
        .collect();
    json!({"vmId": vm, "customerId": customer, "metrics": metrics})
}

const SEND_BATCH: &str = "/billing.v1.BillingService/SendMetricsBatch";

/// A WebSocket handshake: `Ok(())` when upgraded, else the HTTP status.
async fn ws(t: &Tally, path: &str, bearer: Option<&str>) -> Result<(), u16> {
    let mut req = format!("ws://{}{}", t.addr, path)
        .into_client_request()
        .unwrap();
    if let Some(tok) = bearer {
        req.headers_mut()
            .insert("authorization", format!("Bearer {tok}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{path}: {e}"),
    }
}

#[tokio::test]
async fn roles_and_tenants_decide_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let admin = common::create_token(&data, "ops", "admin", &[]);
    let ingest_all = common::create_token(&data, "fleet", "ingest", &[]);
    let ingest_a = common::create_token(&data, "fleet-a", "ingest", &["m_a", "cust_a"]);
    let read_all = common::create_token(&data, "finance", "read", &[]);
    let read_a = common::create_token(&data, "team-a", "read", &["m_a", "cust_a"]);
    let read_ma = common::create_token(&data, "team-a-llm", "read", &["m_a"]);
    let chat_a = common::create_token(&data, "app-a", "ingest", &["app_a"]);
    let t = Tally::start(&data, &NO_FLUSH).await;

    // /health is open; everything else needs a token.
    assert_eq!(get(&t, None, "/health").await.0, 200);
    let events = "/v1/events/usage.llm";
    let (s, v) = post(&t, None, events, &json!([llm("x", "m_a", "a", 1)])).await;
    assert_eq!((s, v["error"].as_str()), (401, Some("unauthorized")), "{v}");
    let (s, v) = post(
        &t,
        Some("tally_0000"),
        events,
        &json!([llm("x", "m_a", "a", 1)]),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (401, Some("unauthorized")), "{v}");
    let (s, v) = post(
        &t,
        Some(&read_all),
        events,
        &json!([llm("x", "m_a", "a", 1)]),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (403, Some("forbidden")), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("read role"), "{v}");

    // A tenant's ingest token: its own records stored, another's named.
    let (s, v) = post(
        &t,
        Some(&ingest_a),
        events,
        &json!([
            llm("a-0", "m_a", "agent:a1", 10),
            llm("b-x", "m_b", "agent:b1", 99),
            llm("a-1", "m_a", "agent:a2", 20)
        ]),
    )
    .await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(2)), "{v}");
    assert_eq!(v["rejected"][0]["index"], 1, "{v}");
    assert!(
        v["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("\"m_b\""),
        "{v}"
    );
    // A request of another tenant's records alone: refused whole.
    let (s, v) = post(
        &t,
        Some(&ingest_a),
        events,
        &json!([llm("b-y", "m_b", "b", 1)]),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (403, Some("forbidden")), "{v}");
    // Chat summaries: the tenant is the app_id.
    let summary_of = |app: &str| {
        json!({"event_id": "f1e2d3c4b5a6", "event_ts": "2026-01-12T03:12:35.000000+00:00",
            "chat_id": "chat_1", "app_id": app, "user_id": "u", "workflow_name": "W",
            "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    };
    let (s, v) = post(&t, Some(&chat_a), "/usage/ingest", &summary_of("app_b")).await;
    assert_eq!((s, v["error"].as_str()), (403, Some("forbidden")), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("app_id"), "{v}");
    let (s, v) = post(&t, Some(&chat_a), "/usage/ingest", &summary_of("app_a")).await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(1)), "{v}");

    // Everything else through the fleet token of every tenant.
    let mut rng = Rng::from_time();
    let mut want_tokens: BTreeMap<&str, i64> = BTreeMap::from([("m_a", 30), ("m_b", 0)]);
    let mut want_calls: BTreeMap<&str, i64> = BTreeMap::from([("m_a", 2), ("m_b", 0)]);
    let mut want_agents: BTreeMap<&str, BTreeSet<String>> = BTreeMap::from([
        // agent:x made m_a's tool call.
        (
            "m_a",
            BTreeSet::from([
                "agent:a1".to_string(),
                "agent:a2".to_string(),
                "agent:x".to_string(),
            ]),
        ),
        ("m_b", BTreeSet::new()),
    ]);
    let mut batch = Vec::new();
    for i in 0..40 {
        let tenant = if rng.below(2) == 0 { "m_a" } else { "m_b" };
        let agent = format!("agent:{}{}", &tenant[2..], rng.below(3));
        let n = 1 + rng.below(1000) as i64;
        *want_tokens.get_mut(tenant).unwrap() += n;
        *want_calls.get_mut(tenant).unwrap() += 1;
        want_agents.get_mut(tenant).unwrap().insert(agent.clone());
        batch.push(llm(&format!("e{i}"), tenant, &agent, n));
    }
    let (s, v) = post(&t, Some(&ingest_all), events, &json!(batch)).await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(40)), "{v}");
    let tools = json!([
        tool("t1", "m_a", "search"),
        tool("t2", "m_b", "deploy"),
        tool("t3", "m_b", "bill")
    ]);
    let (s, v) = post(&t, Some(&ingest_all), "/v1/events/usage.tool", &tools).await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(3)), "{v}");

    // Usage-engine reads: a tenant's token sees its tenant alone.
    let summary = |v: &Value| {
        (
            v["summary"]["llm_calls_total"].as_i64().unwrap(),
            v["summary"]["llm_tokens_total"].as_i64().unwrap(),
        )
    };
    let (s, v) = get(&t, Some(&read_a), "/internal/usage/summary").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(summary(&v), (want_calls["m_a"], want_tokens["m_a"]), "{v}");
    let (s, v) = get(
        &t,
        Some(&read_all),
        "/internal/usage/summary?microdao_id=m_b",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(summary(&v), (want_calls["m_b"], want_tokens["m_b"]), "{v}");
    let (s, v) = get(&t, Some(&read_all), "/internal/usage/summary").await;
    assert_eq!(
        summary(&v),
        (
            want_calls["m_a"] + want_calls["m_b"],
            want_tokens["m_a"] + want_tokens["m_b"]
        ),
        "{s} {v}"
    );
    for path in [
        "/internal/usage/summary?microdao_id=m_b",
        "/internal/usage/models?microdao_id=m_b",
        "/internal/usage/agents?microdao_id=m_b",
        "/internal/usage/tools?microdao_id=m_b",
        "/api/usage/stats?microdao_id=m_b",
        "/api/usage/sessions?microdao_id=m_b",
        "/v1/billing/vm-usage?customer_id=cust_b",
    ] {
        let (s, v) = get(&t, Some(&read_a), path).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (403, Some("forbidden")),
            "{path}: {v}"
        );
        // An ingest token reads nothing.
        let (s, _) = get(&t, Some(&ingest_all), path).await;
        assert_eq!(s, 403, "{path}");
    }
    let (_, v) = get(&t, Some(&read_a), "/internal/usage/models").await;
    let calls: i64 = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["calls"].as_i64().unwrap())
        .sum();
    assert_eq!(calls, want_calls["m_a"], "{v}");
    let (_, v) = get(&t, Some(&read_a), "/internal/usage/agents").await;
    let agents: BTreeSet<String> = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(agents, want_agents["m_a"], "{v}");
    let (_, v) = get(&t, Some(&read_a), "/internal/usage/tools").await;
    let tools: Vec<&str> = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["tool_id"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["search"], "{v}");

    // The Usage API: a token reads its tenants' plan usage (one tenant's
    // alone, or the union of several).
    let total = |v: &Value| v["current_session"]["token_counts"]["total_tokens"].as_i64();
    let (s, v) = get(&t, Some(&read_ma), "/api/usage/stats").await;
    assert_eq!((s, total(&v)), (200, Some(want_tokens["m_a"])), "{v}");
    let (s, v) = get(&t, Some(&read_a), "/api/usage/stats").await;
    assert_eq!((s, total(&v)), (200, Some(want_tokens["m_a"])), "{v}");
    let (s, v) = get(&t, Some(&read_all), "/api/usage/stats?microdao_id=m_b").await;
    assert_eq!((s, total(&v)), (200, Some(want_tokens["m_b"])), "{v}");
    // The one-tenant stats calls stored a snapshot of their tenant.
    let sessions = |v: &Value| v["total_count"].as_u64();
    let (s, v) = get(&t, Some(&read_ma), "/api/usage/sessions").await;
    assert_eq!((s, sessions(&v)), (200, Some(1)), "{v}");
    let (s, v) = get(&t, Some(&read_a), "/api/usage/sessions").await;
    assert_eq!((s, sessions(&v)), (200, Some(1)), "{v}");
    let (s, v) = get(&t, Some(&read_all), "/api/usage/sessions").await;
    assert_eq!((s, sessions(&v)), (200, Some(2)), "{v}");
    // Changing the plan settings is an admin's.
    let cfg = json!({"plan": "max5"});
    assert_eq!(
        post(&t, Some(&read_all), "/api/usage/config", &cfg).await.0,
        403
    );
    assert_eq!(
        post(&t, Some(&admin), "/api/usage/config", &cfg).await.0,
        200
    );

    // billing.v1 over Connect: the customer is the tenant.
    let now = Utc::now().timestamp() - 600;
    let (s, v) = post(
        &t,
        Some(&ingest_a),
        SEND_BATCH,
        &vm_batch("cust_b", "vm-b", now, 3),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (403, Some("permission_denied")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("\"cust_b\""), "{v}");
    let (s, v) = post(&t, None, SEND_BATCH, &vm_batch("cust_a", "vm-a", now, 3)).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (401, Some("unauthenticated")),
        "{v}"
    );
    let (s, v) = post(
        &t,
        Some(&ingest_a),
        SEND_BATCH,
        &vm_batch("cust_a", "vm-a", now, 3),
    )
    .await;
    assert_eq!((s, v["success"].as_bool()), (200, Some(true)), "{v}");
    let (s, v) = post(
        &t,
        Some(&ingest_all),
        SEND_BATCH,
        &vm_batch("cust_b", "vm-b", now, 3),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let started = |customer: &str| {
        json!({"vmId": format!("vm-{customer}"), "customerId": customer,
            "startTime": (now * 1_000_000_000).to_string()})
    };
    let start = "/billing.v1.BillingService/NotifyVmStarted";
    let (s, v) = post(&t, Some(&ingest_a), start, &started("cust_b")).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (403, Some("permission_denied")),
        "{v}"
    );
    let (s, v) = post(&t, Some(&ingest_a), start, &started("cust_a")).await;
    assert_eq!(s, 200, "{v}");
    // A stop names only the VM: its customer is the one seen in its batches.
    let stopped = |vm: &str| json!({"vmId": vm, "stopTime": (now * 1_000_000_000).to_string()});
    let stop = "/billing.v1.BillingService/NotifyVmStopped";
    let (s, v) = post(&t, Some(&ingest_a), stop, &stopped("vm-b")).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (403, Some("permission_denied")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("\"cust_b\""), "{v}");
    let (s, v) = post(&t, Some(&ingest_a), stop, &stopped("vm-a")).await;
    assert_eq!(s, 200, "{v}");
    let heartbeat = json!({"instanceId": "metald-1", "activeVms": ["vm-a"]});
    let hb = "/billing.v1.BillingService/SendHeartbeat";
    assert_eq!(post(&t, Some(&read_all), hb, &heartbeat).await.0, 403);
    assert_eq!(post(&t, Some(&ingest_a), hb, &heartbeat).await.0, 200);
    let from = chrono::DateTime::from_timestamp(now - now.rem_euclid(3600) - 3600, 0)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    let bill = format!("/v1/billing/vm-usage?window=hour&from={from}");
    let customers = |v: &Value| -> BTreeSet<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|r| r["customer_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (s, v) = get(&t, Some(&read_a), &bill).await;
    assert_eq!(
        (s, customers(&v)),
        (200, BTreeSet::from(["cust_a".to_string()])),
        "{v}"
    );
    let (_, all) = get(&t, Some(&read_all), &bill).await;
    assert_eq!(
        customers(&all),
        BTreeSet::from(["cust_a".to_string(), "cust_b".to_string()])
    );

    // SQL is an admin's alone.
    let sql = |tok: &str| {
        reqwest::Client::new()
            .post(t.url("/v1/sql"))
            .bearer_auth(tok)
            .body("SELECT count(*) AS n FROM usage_llm")
            .send()
    };
    assert_eq!(sql(&read_all).await.unwrap().status(), 403);
    let r = sql(&admin).await.unwrap();
    assert_eq!(r.status(), 200);
    let rows: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(rows[0]["n"], 42, "{rows}");

    // WebSockets: the header, or ?access_token= for browsers. Host usage
    // covers every tenant: a tenant's token may not watch it.
    assert_eq!(ws(&t, "/usage", None).await, Err(401));
    assert_eq!(ws(&t, "/usage", Some(&read_a)).await, Err(403));
    assert_eq!(ws(&t, "/usage", Some(&read_all)).await, Ok(()));
    assert_eq!(
        ws(&t, &format!("/usage?access_token={read_all}"), None).await,
        Ok(())
    );
    assert_eq!(
        ws(&t, "/api/usage/stream?microdao_id=m_b", Some(&read_a)).await,
        Err(403)
    );
    assert_eq!(
        ws(
            &t,
            &format!("/api/usage/stream?access_token={read_a}"),
            None
        )
        .await,
        Ok(())
    );

    // /metrics needs a token of every tenant, and counts the refusals by
    // route and reason (never the token).
    assert_eq!(get(&t, Some(&read_a), "/metrics").await.0, 403);
    let (s, m) = get(&t, Some(&read_all), "/metrics").await;
    assert_eq!(s, 200);
    let m = m.as_str().unwrap().to_string();
    for line in [
        "tally_auth_failures_total{route=\"/v1/events/{subject}\",reason=\"missing\"} 1",
        "tally_auth_failures_total{route=\"/v1/events/{subject}\",reason=\"unknown\"} 1",
        "tally_auth_failures_total{route=\"/v1/events/{subject}\",reason=\"role\"} 1",
        "tally_auth_failures_total{route=\"/v1/events/{subject}\",reason=\"tenant\"} 1",
        "tally_auth_failures_total{route=\"/usage\",reason=\"missing\"} 1",
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
    for secret in [
        &admin,
        &ingest_all,
        &ingest_a,
        &read_all,
        &read_a,
        &read_ma,
        &chat_a,
    ] {
        assert!(!m.contains(&secret[6..]));
    }

    // `tally token list`: names, roles, tenants, last use; never secrets.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let list = tally_cli(&data, &["token", "list"]);
    for secret in [
        &admin,
        &ingest_all,
        &ingest_a,
        &read_all,
        &read_a,
        &read_ma,
        &chat_a,
    ] {
        assert!(!list.contains(&secret[6..]), "{list}");
    }
    let team_a = list.lines().find(|l| l.starts_with("team-a ")).unwrap();
    assert!(
        team_a.contains("read") && team_a.contains("cust_a,m_a"),
        "{team_a}"
    );
    assert!(!team_a.contains("never"), "team-a was used: {team_a}");
}

#[tokio::test]
async fn dedup_keys_are_scoped_by_tenant_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = Tally::start(&data, &NO_FLUSH).await;
    // The same 12-hex id from two tenants: two events.
    let llm_pair = json!([
        llm("a1b2c3d4e5f6", "m_a", "x", 5),
        llm("a1b2c3d4e5f6", "m_b", "x", 7)
    ]);
    let chat = |app: &str, chat: &str| {
        json!({"event_id": "a1b2c3d4e5f6", "event_ts": "2026-01-12T03:12:34.567890+00:00",
            "chat_id": chat, "app_id": app, "user_id": "u", "workflow_name": "W",
            "model_name": "gpt-4o-mini", "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    };
    let chats = json!([
        chat("app_a", "chat_1"),
        chat("app_b", "chat_1"),
        chat("app_a", "chat_2")
    ]);
    let (_, v) = post(&t, None, "/v1/events/usage.llm", &llm_pair).await;
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(2), Some(0)),
        "{v}"
    );
    let (_, v) = post(&t, None, "/v1/events/chat.usage_delta", &chats).await;
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(3), Some(0)),
        "{v}"
    );
    let summaries = json!([chat("app_a", "chat_1"), chat("app_b", "chat_1")]);
    let (_, v) = post(&t, None, "/usage/ingest", &summaries).await;
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(2), Some(0)),
        "{v}"
    );
    // A copy is still a copy.
    let (_, v) = post(&t, None, "/v1/events/usage.llm", &llm_pair).await;
    assert_eq!(v["duplicates"].as_u64(), Some(2), "{v}");
    let (_, v) = post(
        &t,
        None,
        "/v1/events/chat.usage_delta",
        &json!([chat("app_c", "chat_1")]),
    )
    .await;
    assert_eq!(v["accepted"].as_u64(), Some(1), "{v}");
    // Across a restart (the first ones in Parquet after the clean stop).
    t.terminate();
    let t = Tally::start(&data, &NO_FLUSH).await;
    let (_, v) = post(&t, None, "/v1/events/usage.llm", &llm_pair).await;
    assert_eq!(v["duplicates"].as_u64(), Some(2), "{v}");
    let (_, v) = post(&t, None, "/v1/events/chat.usage_delta", &chats).await;
    assert_eq!(v["duplicates"].as_u64(), Some(3), "{v}");
    let (_, v) = post(&t, None, "/usage/ingest", &summaries).await;
    assert_eq!(v["duplicates"].as_u64(), Some(2), "{v}");
    let rows = t
        .sql(
            "SELECT CAST(microdao_id AS VARCHAR) AS app, chat_id FROM usage_llm \
              WHERE source = 'chat.usage_delta' ORDER BY app, chat_id",
        )
        .await;
    assert_eq!(
        rows,
        vec![
            json!({"app": "app_a", "chat_id": "chat_1"}),
            json!({"app": "app_a", "chat_id": "chat_2"}),
            json!({"app": "app_b", "chat_id": "chat_1"}),
            json!({"app": "app_c", "chat_id": "chat_1"}),
        ]
    );
    let n = t.sql("SELECT count(*) AS n FROM usage_chat_summary").await;
    assert_eq!(n[0]["n"], 2);
}

#[tokio::test]
async fn tokens_take_effect_and_are_revoked_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No token and loopback only: open, as the quick start is.
    let t = Tally::start(&data, &NO_FLUSH).await;
    assert_eq!(get(&t, None, "/internal/usage/summary").await.0, 200);
    let secret = common::create_token(&data, "ops", "read", &[]);
    let created = Instant::now();
    // Within two seconds a token is required, and this one works.
    let refused_after = loop {
        if get(&t, None, "/internal/usage/summary").await.0 == 401 {
            break created.elapsed();
        }
        assert!(created.elapsed() < Duration::from_secs(5), "still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        refused_after <= Duration::from_millis(2_000),
        "{refused_after:?}"
    );
    assert_eq!(
        get(&t, Some(&secret), "/internal/usage/summary").await.0,
        200
    );
    tally_cli(&data, &["token", "revoke", "ops"]);
    let revoked = Instant::now();
    let refused_after = loop {
        if get(&t, Some(&secret), "/internal/usage/summary").await.0 == 401 {
            break revoked.elapsed();
        }
        assert!(revoked.elapsed() < Duration::from_secs(5), "still accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        refused_after <= Duration::from_millis(2_000),
        "{refused_after:?}"
    );
    // With every token revoked, authentication stays required.
    assert_eq!(get(&t, None, "/internal/usage/summary").await.0, 401);
    let list = tally_cli(&data, &["token", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("ops ") && l.contains("revoked")),
        "{list}"
    );
}

#[tokio::test]
async fn a_network_listener_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["serve", "--data"])
        .arg(&data)
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tally token create") && err.contains("--auth off") && err.contains("0.0.0.0"),
        "{err}"
    );
}

#[tokio::test]
async fn one_tenant_over_its_rate_does_not_slow_another() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = Tally::start(
        &data,
        &[
            "--flush-interval",
            "1h",
            "--customer-rate",
            "100",
            "--tenant-rate",
            "50",
        ],
    )
    .await;
    let now = Utc::now().timestamp() - 3600;
    // Customer a sends 80-sample batches until refused: the bucket holds
    // 200 (two seconds), so the fourth batch at the latest.
    let mut refused = None;
    for i in 0..6 {
        let (s, v, h) = call(
            &t,
            None,
            reqwest::Method::POST,
            SEND_BATCH,
            Some(vm_batch("cust_a", "vm-a", now + i * 80, 80).to_string()),
        )
        .await;
        if s == 429 {
            refused = Some((i, v, h));
            break;
        }
        assert_eq!(s, 200, "{v}");
    }
    let (i, v, h) = refused.expect("customer a was never refused");
    assert!(i >= 2, "refused too early: batch {i}");
    assert_eq!(v["code"], "resource_exhausted", "{v}");
    assert!(v["message"].as_str().unwrap().contains("\"cust_a\""), "{v}");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry), "{retry}");
    // Customer b at once: not slowed.
    for i in 0..2 {
        let (s, v) = post(
            &t,
            None,
            SEND_BATCH,
            &vm_batch("cust_b", "vm-b", now + i * 80, 80),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    // Events: tenant m_a over 50/s (burst 100) while m_b is not.
    let events = |tenant: &str, from: usize, n: usize| -> Value {
        json!((from..from + n)
            .map(|i| llm(&format!("{tenant}-{i}"), tenant, "x", 1))
            .collect::<Vec<_>>())
    };
    let (s, v) = post(&t, None, "/v1/events/usage.llm", &events("m_a", 0, 120)).await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(120)), "{v}");
    let (s, v, h) = call(
        &t,
        None,
        reqwest::Method::POST,
        "/v1/events/usage.llm",
        Some(events("m_a", 120, 10).to_string()),
    )
    .await;
    assert_eq!(s, 429, "{v}");
    assert!(h.contains_key("retry-after"), "{h:?}");
    // A mixed request: m_b's stored, m_a's named with the rate.
    let mut mixed = events("m_b", 0, 5).as_array().unwrap().clone();
    mixed.extend(events("m_a", 130, 2).as_array().unwrap().clone());
    let (s, v) = post(&t, None, "/v1/events/usage.llm", &json!(mixed)).await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(5)), "{v}");
    let rejected = v["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{v}");
    assert!(
        rejected[0]["error"].as_str().unwrap().contains("rate"),
        "{v}"
    );
    let rows = t
        .sql("SELECT CAST(microdao_id AS VARCHAR) AS m, count(*) AS n FROM usage_llm GROUP BY 1 ORDER BY 1")
        .await;
    assert_eq!(
        rows,
        vec![json!({"m": "m_a", "n": 120}), json!({"m": "m_b", "n": 5})]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_and_alerts_follow_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let admin = common::create_token(&data, "admin", "admin", &[]);
    let read_a = common::create_token(&data, "read-a", "read", &["m_a"]);
    let t = Tally::start(&data, &["--no-sampler", "--budget-interval", "200ms"]).await;
    let budget = |tenant: &str| {
        json!({"name": format!("{tenant} daily"), "scope": {"microdao_id": tenant},
               "metric": "llm_calls", "period": "day", "limit": 1, "thresholds": [1.0]})
    };

    // Only admin creates and deletes; no token is 401.
    let (s, v) = post(&t, Some(&read_a), "/v1/budgets", &budget("m_a")).await;
    assert_eq!((s, v["error"].as_str()), (403, Some("forbidden")), "{v}");
    let (s, _) = post(&t, None, "/v1/budgets", &budget("m_a")).await;
    assert_eq!(s, 401);
    let mut ids = Vec::new();
    for tenant in ["m_a", "m_b"] {
        let (s, v) = post(&t, Some(&admin), "/v1/budgets", &budget(tenant)).await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let (s, _, _) = call(
        &t,
        Some(&read_a),
        reqwest::Method::DELETE,
        &format!("/v1/budgets/{}", ids[0]),
        None,
    )
    .await;
    assert_eq!(s, 403);

    // A tenant's read token sees its tenant's budgets, checks and alerts.
    let (s, v) = get(&t, Some(&read_a), "/v1/budgets").await;
    assert_eq!(s, 200, "{v}");
    let names: Vec<&str> = v["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["m_a daily"]);
    let (s, _) = get(&t, Some(&read_a), &format!("/v1/budgets/{}", ids[1])).await;
    assert_eq!(s, 404);
    let (s, v) = get(&t, Some(&read_a), "/v1/budgets/check?microdao_id=m_b").await;
    assert_eq!((s, v["error"].as_str()), (403, Some("forbidden")), "{v}");

    let ingest = common::create_token(&data, "ingest", "ingest", &[]);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let now = chrono::Utc::now().to_rfc3339();
    let events: Vec<Value> = ["m_a", "m_b"]
        .iter()
        .map(|tenant| json!({"event_id": format!("e-{tenant}"), "timestamp": now, "actor_id": "u", "actor_type": "human",
            "microdao_id": tenant, "model": "gpt-4o", "provider": "openai", "prompt_tokens": 1,
            "completion_tokens": 1, "latency_ms": 1}))
        .collect();
    let (s, v) = post(&t, Some(&ingest), "/v1/events/usage.llm", &json!(events)).await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(2)), "{v}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, all) = get(&t, Some(&admin), "/v1/alerts").await;
        if all["alerts"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{all}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (s, mine) = get(&t, Some(&read_a), "/v1/alerts").await;
    assert_eq!(s, 200);
    let budgets: Vec<&str> = mine["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert"]["budget_id"].as_str().unwrap())
        .collect();
    assert_eq!(budgets, [ids[0].as_str()]);
    let (s, v) = get(&t, Some(&read_a), "/v1/budgets/check?microdao_id=m_a").await;
    assert_eq!((s, v["allowed"].as_bool()), (200, Some(false)), "{v}");
}
