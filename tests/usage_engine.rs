//! `/internal/usage/*`: summaries per tenant, agent, model and tool, with
//! costs, against expectations computed here from the events sent.

mod common;

use std::collections::BTreeMap;

use common::Tally;
use serde_json::{json, Value};

fn ts(hours_ago: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::hours(hours_ago)).to_rfc3339()
}

fn llm(
    id: &str,
    hours_ago: i64,
    dao: &str,
    agent: &str,
    model: &str,
    [p, c, cache_read]: [i64; 3],
    latency: i64,
) -> Value {
    json!({"event_id": id, "timestamp": ts(hours_ago), "actor_id": "user:1", "actor_type": "human",
        "agent_id": agent, "microdao_id": dao, "model": model, "provider": "openai",
        "prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c + cache_read,
        "cache_read_tokens": cache_read, "latency_ms": latency})
}

fn tool(
    id: &str,
    hours_ago: i64,
    dao: &str,
    agent: &str,
    tool: &str,
    ok: bool,
    latency: i64,
) -> Value {
    json!({"event_id": id, "timestamp": ts(hours_ago), "actor_id": agent, "actor_type": "agent",
        "agent_id": agent, "microdao_id": dao, "tool_id": tool, "tool_name": format!("Tool {tool}"),
        "success": ok, "latency_ms": latency})
}

fn agent(id: &str, hours_ago: i64, dao: &str, agent: &str) -> Value {
    json!({"event_id": id, "timestamp": ts(hours_ago), "agent_id": agent, "microdao_id": dao,
        "trigger": "message", "duration_ms": 100})
}

/// Posts the events; answers the ingest response.
async fn post(t: &Tally, subject: &str, events: &[Value]) -> Value {
    common::post_events(t, subject, events).await
}

async fn send(t: &Tally, subject: &str, events: Vec<Value>) {
    let body = post(t, subject, &events).await;
    assert_eq!(
        body["accepted"].as_u64().unwrap() as usize,
        events.len(),
        "{body}"
    );
}

async fn get(t: &Tally, path: &str) -> (u16, Value) {
    let r = reqwest::get(t.url(path)).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Prices read straight from the shipped catalogue file.
fn price(model: &str) -> (f64, f64, f64) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/queries/prices/llm_model_prices.json"
    ))
    .unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    let m = &all[model];
    (
        m["input_cost_per_token"].as_f64().unwrap(),
        m["output_cost_per_token"].as_f64().unwrap(),
        m["cache_read_input_token_cost"].as_f64().unwrap(),
    )
}

#[tokio::test]
async fn summaries_models_agents_tools_with_costs_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tally::start(&dir.path().join("data"), &["--flush-interval", "1h"]).await;
    send(
        &t,
        "usage.llm",
        vec![
            llm(
                "l1",
                1,
                "dao:7",
                "agent:sofia",
                "gpt-4o-mini",
                [1000, 200, 50],
                1000,
            ),
            llm(
                "l2",
                2,
                "dao:7",
                "agent:sofia",
                "gpt-4o-mini",
                [3000, 400, 0],
                2000,
            ),
            llm(
                "l3",
                3,
                "dao:7",
                "agent:max",
                "mystery-model-x",
                [10, 10, 0],
                600,
            ),
            llm("l4", 5, "dao:9", "agent:zed", "gpt-4o-mini", [7, 3, 0], 100),
            llm(
                "old",
                48,
                "dao:7",
                "agent:sofia",
                "gpt-4o-mini",
                [99, 1, 0],
                100,
            ),
        ],
    )
    .await;
    send(
        &t,
        "usage.tool",
        vec![
            tool("t1", 1, "dao:7", "agent:sofia", "projects.list", true, 400),
            tool("t2", 1, "dao:7", "agent:sofia", "projects.list", true, 500),
            tool("t3", 2, "dao:7", "agent:sofia", "projects.list", false, 600),
            tool("t4", 2, "dao:7", "agent:max", "search", true, 50),
            tool("t5", 30, "dao:7", "agent:max", "search", false, 50),
        ],
    )
    .await;
    send(
        &t,
        "usage.agent",
        vec![
            agent("a1", 1, "dao:7", "agent:sofia"),
            agent("a2", 2, "dao:7", "agent:sofia"),
            agent("a3", 4, "dao:9", "agent:zed"),
        ],
    )
    .await;
    send(&t, "messaging.message.created", vec![
        json!({"channel_id": "c", "message_id": "m1", "sender_id": "user:1", "microdao_id": "dao:7", "created_at": ts(1)}),
        json!({"channel_id": "c", "message_id": "m2", "sender_id": "agent:sofia", "sender_type": "agent", "microdao_id": "dao:7", "created_at": ts(1)}),
    ]).await;

    let (input, output, cache_read) = price("gpt-4o-mini");
    let mini_cost_dao7 = (1000.0 + 3000.0) * input + 600.0 * output + 50.0 * cache_read;

    let (status, s) = get(&t, "/internal/usage/summary?microdao_id=dao:7").await;
    assert_eq!(status, 200);
    let sum = &s["summary"];
    assert_eq!(sum["microdao_id"], "dao:7");
    assert_eq!(
        (
            sum["llm_calls_total"].as_u64(),
            sum["llm_tokens_total"].as_u64(),
            sum["tool_calls_total"].as_u64(),
            sum["agent_invocations_total"].as_u64(),
            sum["messages_sent"].as_u64(),
            sum["unpriced_calls"].as_u64()
        ),
        (
            Some(3),
            Some(1250 + 3400 + 20),
            Some(4),
            Some(2),
            Some(2),
            Some(1)
        )
    );
    let cost = sum["llm_cost_usd_total"].as_f64().unwrap();
    assert!(
        (cost - mini_cost_dao7).abs() < 1e-12,
        "{cost} vs {mini_cost_dao7}"
    );
    let start =
        chrono::DateTime::parse_from_rfc3339(sum["period_start"].as_str().unwrap()).unwrap();
    let end = chrono::DateTime::parse_from_rfc3339(sum["period_end"].as_str().unwrap()).unwrap();
    assert_eq!((end - start).num_hours(), 24);

    // Models: by model and provider, cost null (not zero) when unpriced.
    let models = s["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["model"], "gpt-4o-mini");
    assert_eq!(
        (models[0]["calls"].as_u64(), models[0]["tokens"].as_u64()),
        (Some(2), Some(4650))
    );
    assert_eq!(models[0]["avg_latency_ms"].as_f64(), Some(1500.0));
    assert_eq!(models[1]["model"], "mystery-model-x");
    assert_eq!(models[1]["cost_usd"], Value::Null);

    // Agents join invocations, LLM calls, tool calls and tokens.
    let agents: BTreeMap<String, Value> = s["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["agent_id"].as_str().unwrap().to_string(), a.clone()))
        .collect();
    assert_eq!(
        agents["agent:sofia"],
        json!({"agent_id": "agent:sofia", "invocations": 2, "llm_calls": 2, "tool_calls": 3, "total_tokens": 4650})
    );
    assert_eq!(
        agents["agent:max"],
        json!({"agent_id": "agent:max", "invocations": 0, "llm_calls": 1, "tool_calls": 1, "total_tokens": 20})
    );
    assert!(!agents.contains_key("agent:zed"), "another tenant's agent");

    // Tools: success rate and mean latency.
    let (_, tools) = get(&t, "/internal/usage/tools?microdao_id=dao:7").await;
    let tools = tools["tools"].as_array().unwrap();
    assert_eq!(tools[0]["tool_id"], "projects.list");
    assert_eq!(tools[0]["calls"], 3);
    assert!((tools[0]["success_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(tools[0]["avg_latency_ms"].as_f64(), Some(500.0));
    assert_eq!(
        (
            tools[1]["tool_id"].as_str(),
            tools[1]["success_rate"].as_f64()
        ),
        (Some("search"), Some(1.0))
    );

    // A longer period takes in the older events; agent_id narrows everything.
    let (_, s) = get(
        &t,
        "/internal/usage/summary?microdao_id=dao:7&period_hours=72&agent_id=agent:sofia",
    )
    .await;
    assert_eq!(
        (
            s["summary"]["llm_calls_total"].as_u64(),
            s["summary"]["tool_calls_total"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert_eq!(
        s["summary"]["messages_sent"], 1,
        "agent_id filters messages by sender"
    );
    let (_, m) = get(&t, "/internal/usage/models?period_hours=72").await;
    let calls: u64 = m["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["calls"].as_u64().unwrap())
        .sum();
    assert_eq!(calls, 5);
    let (_, a) = get(&t, "/internal/usage/agents").await;
    assert_eq!(a["agents"].as_array().unwrap().len(), 3);

    // Bad parameters: 400 naming the parameter and the rule.
    for (q, want) in [
        (
            "period_hours=0",
            "period_hours must be between 1 and 720, got 0",
        ),
        (
            "period_hours=721",
            "period_hours must be between 1 and 720, got 721",
        ),
        (
            "period_hours=abc",
            "period_hours must be an integer between 1 and 720, got \"abc\"",
        ),
    ] {
        for endpoint in ["summary", "models", "agents", "tools"] {
            let (status, e) = get(&t, &format!("/internal/usage/{endpoint}?{q}")).await;
            assert_eq!(
                (status, e["detail"].as_str()),
                (400, Some(want)),
                "{endpoint}?{q}"
            );
        }
    }
}

/// One generated event and what the API should count of it.
struct Event {
    hours_ago: f64,
    dao: &'static str,
    agent: &'static str,
    json: Value,
}

fn at(hours_ago: f64) -> String {
    (chrono::Utc::now() - chrono::Duration::milliseconds((hours_ago * 3_600_000.0) as i64))
        .to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summaries_from_stored_rollups_equal_the_events_sent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "--flush-interval",
        "200ms",
        "--compact-after",
        "0s",
        "--compact-interval",
        "300ms",
    ];
    let t = Tally::start(&data, &args).await;
    let mut rng = common::Rng::from_time();
    let daos = ["dao:1", "dao:2"];
    let agents = ["agent:a", "agent:b", "agent:c"];
    let models = ["gpt-4o-mini", "mystery-model-x"];
    // Times 10 minutes to 40 hours back, none near the 24-hour bound.
    let when = |rng: &mut common::Rng| loop {
        let h = 0.17 + rng.below(40_000) as f64 / 1000.0;
        if !(23.7..24.3).contains(&h) {
            return h;
        }
    };
    let mut llms = Vec::new();
    for i in 0..800 {
        let (h, dao, agent) = (
            when(&mut rng),
            daos[rng.below(2) as usize],
            agents[rng.below(3) as usize],
        );
        let (p, c, cr) = (
            rng.below(5000) as i64,
            rng.below(900) as i64,
            rng.below(300) as i64,
        );
        let mut j = json!({"event_id": format!("l{i}"), "timestamp": at(h), "actor_id": "user:1",
            "actor_type": "human", "agent_id": agent, "microdao_id": dao,
            "model": models[rng.below(2) as usize], "provider": "openai", "prompt_tokens": p,
            "completion_tokens": c, "total_tokens": p + c + cr, "cache_read_tokens": cr});
        j["latency_ms"] = json!(rng.below(3000));
        llms.push(Event {
            hours_ago: h,
            dao,
            agent,
            json: j,
        });
    }
    let mut tools = Vec::new();
    for i in 0..400 {
        let (h, dao, agent) = (
            when(&mut rng),
            daos[rng.below(2) as usize],
            agents[rng.below(3) as usize],
        );
        let id = ["search", "projects.list"][rng.below(2) as usize];
        tools.push(Event {
            hours_ago: h,
            dao,
            agent,
            json: tool(
                &format!("t{i}"),
                0,
                dao,
                agent,
                id,
                rng.below(3) > 0,
                rng.below(900) as i64,
            ),
        });
        tools.last_mut().unwrap().json["timestamp"] = json!(at(h));
    }
    let mut invocations = Vec::new();
    for i in 0..200 {
        let (h, dao, a) = (
            when(&mut rng),
            daos[rng.below(2) as usize],
            agents[rng.below(3) as usize],
        );
        let mut j = agent(&format!("a{i}"), 0, dao, a);
        j["timestamp"] = json!(at(h));
        invocations.push(Event {
            hours_ago: h,
            dao,
            agent: a,
            json: j,
        });
    }
    let all = |events: &[Event]| events.iter().map(|e| e.json.clone()).collect::<Vec<_>>();
    send(&t, "usage.llm", all(&llms)).await;
    send(&t, "usage.tool", all(&tools)).await;
    send(&t, "usage.agent", all(&invocations)).await;

    let check = |s: &Value, period: f64, dao: &str| {
        let keep = |e: &&Event| e.hours_ago < period && e.dao == dao;
        let l: Vec<&Event> = llms.iter().filter(keep).collect();
        let sum = &s["summary"];
        let tokens: i64 = l
            .iter()
            .map(|e| e.json["total_tokens"].as_i64().unwrap())
            .sum();
        assert_eq!(
            sum["llm_calls_total"].as_u64().unwrap() as usize,
            l.len(),
            "{period} h"
        );
        assert_eq!(sum["llm_tokens_total"].as_i64().unwrap(), tokens);
        assert_eq!(
            sum["tool_calls_total"].as_u64().unwrap() as usize,
            tools.iter().filter(keep).count()
        );
        assert_eq!(
            sum["agent_invocations_total"].as_u64().unwrap() as usize,
            invocations.iter().filter(keep).count()
        );
        // Per model: calls, tokens and mean latency, by a second computation.
        for m in s["models"].as_array().unwrap() {
            let of: Vec<&&Event> = l.iter().filter(|e| e.json["model"] == m["model"]).collect();
            assert_eq!(m["calls"].as_u64().unwrap() as usize, of.len());
            let lat: Vec<f64> = of
                .iter()
                .filter_map(|e| e.json["latency_ms"].as_f64())
                .collect();
            let mean = lat.iter().sum::<f64>() / lat.len() as f64;
            assert!((m["avg_latency_ms"].as_f64().unwrap() - mean).abs() < 1e-9);
        }
        // Per agent: invocations, LLM and tool calls.
        for a in s["agents"].as_array().unwrap() {
            let name = a["agent_id"].as_str().unwrap();
            let n = |events: &[Event]| {
                events
                    .iter()
                    .filter(keep)
                    .filter(|e| e.agent == name)
                    .count()
            };
            assert_eq!(a["invocations"].as_u64().unwrap() as usize, n(&invocations));
            assert_eq!(a["llm_calls"].as_u64().unwrap() as usize, n(&llms));
            assert_eq!(a["tool_calls"].as_u64().unwrap() as usize, n(&tools));
        }
        for tl in s["tools"].as_array().unwrap() {
            let of: Vec<&Event> = tools
                .iter()
                .filter(keep)
                .filter(|e| e.json["tool_id"] == tl["tool_id"])
                .collect();
            let ok = of.iter().filter(|e| e.json["success"] == true).count();
            assert_eq!(tl["calls"].as_u64().unwrap() as usize, of.len());
            assert!(
                (tl["success_rate"].as_f64().unwrap() - ok as f64 / of.len() as f64).abs() < 1e-12
            );
        }
    };
    let ask = |period: u32, dao: &str| {
        let path = format!("/internal/usage/summary?period_hours={period}&microdao_id={dao}");
        let t = &t;
        async move {
            let (status, s) = get(t, &path).await;
            assert_eq!(status, 200, "{s}");
            s
        }
    };
    // Wait until every closed hour of usage_llm is one file with its rollup.
    let closed = |data: &std::path::Path| {
        let raw = common::files_per_hour(&data.join("usage_llm"));
        let rolled = common::files_per_hour(&data.join("usage_llm_hourly"));
        let current = chrono::Utc::now()
            .format("date=%Y-%m-%d/hour=%H")
            .to_string();
        raw.iter()
            .filter(|(h, _)| **h != current)
            .all(|(h, n)| *n == 1 && rolled.contains_key(h))
    };
    let wait = || async {
        for _ in 0..300 {
            if closed(&data) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!(
            "not compacted: {:?}",
            common::files_per_hour(&data.join("usage_llm"))
        );
    };
    wait().await;
    for dao in daos {
        check(&ask(24, dao).await, 24.0, dao);
        check(&ask(720, dao).await, 720.0, dao);
    }
    // Everything again: counted once right away and after compacting again.
    post(&t, "usage.llm", &all(&llms)).await;
    check(&ask(720, "dao:1").await, 720.0, "dao:1");
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    wait().await;
    check(&ask(720, "dao:1").await, 720.0, "dao:1");
    let n = t.sql("SELECT count(*) AS n FROM usage_llm").await;
    assert_eq!(n[0]["n"].as_u64().unwrap() as usize, llms.len());
}

/// A catalogue whose model changed price 15 and 3 days ago: each call is
/// priced at the price of its own hour, in `/internal/usage/models`, in the
/// stored hourly rollups (`cost_usd`) and by `llm_cost_usd_at` in SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_calls_are_priced_at_the_price_of_their_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let now = chrono::Utc::now();
    let until = |days: i64| (now - chrono::Duration::days(days)).to_rfc3339();
    // (until, input, output) oldest first; the current price last.
    let prices = [
        (Some(until(15)), 9e-6, 9e-6),
        (Some(until(3)), 4e-6, 8e-6),
        (None, 1e-6, 2e-6),
    ];
    let catalogue = json!({"dated-model": {
    "input_cost_per_token": prices[2].1, "output_cost_per_token": prices[2].2,
    "tally_earlier_prices": [
        // Listed newest first: the order in the file does not matter.
        {"until": prices[1].0, "input_cost_per_token": prices[1].1,
         "output_cost_per_token": prices[1].2},
        {"until": prices[0].0, "input_cost_per_token": prices[0].1,
         "output_cost_per_token": prices[0].2},
    ]}});
    let file = dir.path().join("prices.json");
    std::fs::write(&file, catalogue.to_string()).unwrap();
    let args = [
        "--prices",
        file.to_str().unwrap(),
        "--flush-interval",
        "200ms",
        "--compact-after",
        "0s",
        "--compact-interval",
        "300ms",
    ];
    let t = Tally::start(&data, &args).await;
    // (hours ago, prompt, completion)
    let calls = [(20 * 24, 1000, 100), (5 * 24, 2000, 200), (1, 4000, 400)];
    let events: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, &(h, p, c))| {
            let mut e = llm(
                &format!("d{i}"),
                h,
                "dao:1",
                "agent:a",
                "dated-model",
                [p, c, 0],
                10,
            );
            e["provider"] = json!("acme");
            e
        })
        .collect();
    send(&t, "usage.llm", events).await;
    // Expected: each call at the first price whose `until` is after it.
    let expected: f64 = calls
        .iter()
        .map(|&(h, p, c)| {
            let at = now - chrono::Duration::hours(h);
            let (_, input, output) = prices
                .iter()
                .find(|(until, _, _)| {
                    until
                        .as_ref()
                        .is_none_or(|u| at < chrono::DateTime::parse_from_rfc3339(u).unwrap())
                })
                .unwrap();
            p as f64 * input + c as f64 * output
        })
        .sum();
    let today_only: f64 = calls
        .iter()
        .map(|&(_, p, c)| p as f64 * prices[2].1 + c as f64 * prices[2].2)
        .sum();
    assert!(
        (expected - today_only).abs() > 1e-3,
        "the test needs dated prices to matter"
    );
    let close = |got: f64, what: &str| {
        assert!((got - expected).abs() < 1e-9, "{what}: {got} vs {expected}")
    };

    let (status, m) = get(&t, "/internal/usage/models?period_hours=720").await;
    assert_eq!(status, 200, "{m}");
    close(m["models"][0]["cost_usd"].as_f64().unwrap(), "models");
    let sql = "SELECT SUM(llm_cost_usd_at(model, provider, prompt_tokens, completion_tokens, \
               cache_creation_tokens, cache_read_tokens, CAST(timestamp AS BIGINT))) AS dated, \
               SUM(llm_cost_usd(model, provider, prompt_tokens, completion_tokens, \
               cache_creation_tokens, cache_read_tokens)) AS today FROM usage_llm";
    let r = t.sql(sql).await;
    close(r[0]["dated"].as_f64().unwrap(), "llm_cost_usd_at");
    let today = r[0]["today"].as_f64().unwrap();
    assert!((today - today_only).abs() < 1e-9, "{today} vs {today_only}");

    // The stored rollups (the three hours are closed) price each hour at
    // its time.
    let n = common::wait_for_count(&t, "SELECT COUNT(*) AS n FROM usage_llm_hourly", 3).await;
    assert_eq!(n, 3, "the three hours are rolled up");
    let r = t
        .sql("SELECT SUM(cost_usd) AS cost FROM usage_llm_hourly")
        .await;
    close(r[0]["cost"].as_f64().unwrap(), "rollups");
}
