//! The OTLP receiver against OpenTelemetry's own Python SDK and exporters
//! (gRPC, HTTP protobuf, HTTP JSON): Claude Code's `api_request` records,
//! Codex's `response.completed` records and GenAI spans become `usage_llm`
//! rows whose per-model tokens equal what this test computes from the calls
//! it made; a resend counts once; OTLP/JSON with bare integers; a partly
//! bad export; tokens.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{create_token, Rng, Tally};
use serde_json::{json, Value};

/// A model call as the test makes it: its tokens split the way tally
/// stores them (input without cache, cache reads, cache writes).
#[derive(Debug, Clone)]
struct Call {
    id: String,
    model: &'static str,
    prompt: i64,
    output: i64,
    read: i64,
    creation: i64,
    at_ns: i64,
}

const CLAUDE_MODELS: [&str; 2] = ["claude-sonnet-4-5", "claude-haiku-4-5"];
const CODEX_MODELS: [&str; 2] = ["gpt-5-codex", "gpt-5"];
const GENAI_MODELS: [&str; 2] = ["gpt-4o", "claude-opus-4-1"];

/// 2026-11-26T10:00:00Z.
const T0: i64 = 1_795_687_200_000_000_000;

fn calls(
    rng: &mut Rng,
    prefix: &str,
    models: &[&'static str],
    n: usize,
    cache_writes: bool,
) -> Vec<Call> {
    (0..n)
        .map(|i| Call {
            id: format!("{prefix}-{i}"),
            model: models[rng.below(models.len() as u64) as usize],
            prompt: rng.below(5_000) as i64,
            output: rng.below(2_000) as i64,
            read: rng.below(20_000) as i64,
            creation: if cache_writes {
                rng.below(3_000) as i64
            } else {
                0
            },
            at_ns: T0 + rng.below(3_600) as i64 * 1_000_000_000,
        })
        .collect()
}

fn rfc(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Claude Code's records of the calls: `input_tokens` without the cache,
/// and, between them, records that are not calls.
fn claude_logs(calls: &[Call]) -> Vec<Value> {
    let mut out = Vec::new();
    for c in calls {
        out.push(
            json!({"service": "claude-code", "body": "claude_code.user_prompt",
            "time_ns": c.at_ns - 1_000_000, "attributes": {"event.name": "user_prompt",
            "session.id": "s-1", "prompt_length": 42}}),
        );
        out.push(
            json!({"service": "claude-code", "body": "claude_code.api_request",
            "time_ns": c.at_ns, "attributes": {
                "event.name": "api_request", "event.timestamp": rfc(c.at_ns),
                "session.id": "s-1", "user.id": "u-hash", "user.email": "dev@acme.test",
                "model": c.model, "request_id": c.id,
                "input_tokens": c.prompt, "output_tokens": c.output,
                "cache_read_tokens": c.read, "cache_creation_tokens": c.creation,
                "cost_usd": 0.0123, "duration_ms": 1234.5}}),
        );
        out.push(
            json!({"service": "claude-code", "body": "claude_code.tool_result",
            "time_ns": c.at_ns + 1_000_000, "attributes": {"event.name": "tool_result",
            "tool_name": "Bash", "success": "true"}}),
        );
    }
    out
}

/// Codex's records: no time of their own (the SDK sends 0), counts partly
/// as strings, `input_token_count` with the cached tokens in it; a second
/// completion without counts for each call.
fn codex_logs(calls: &[Call]) -> Vec<Value> {
    let mut out = Vec::new();
    for c in calls {
        let input = c.prompt + c.read;
        out.push(
            json!({"service": "codex_exec", "body": null, "time_ns": null,
            "attributes": {"event.name": "codex.sse_event", "event.kind": "response.completed",
                "event.timestamp": rfc(c.at_ns), "conversation.id": c.id, "model": c.model,
                "input_token_count": input.to_string(), "output_token_count": c.output.to_string(),
                "cached_token_count": c.read, "reasoning_token_count": 7,
                "tool_token_count": (input + c.output).to_string()}}),
        );
        out.push(
            json!({"service": "codex_exec", "body": null, "time_ns": null,
            "attributes": {"event.name": "codex.sse_event", "event.kind": "response.completed",
                "event.timestamp": rfc(c.at_ns), "conversation.id": c.id, "model": c.model}}),
        );
        out.push(
            json!({"service": "codex_exec", "body": null, "time_ns": null,
            "attributes": {"event.name": "codex.api_request", "duration_ms": 800,
                "http.response.status_code": 200, "event.timestamp": rfc(c.at_ns)}}),
        );
    }
    out
}

/// GenAI spans: `gen_ai.usage.input_tokens` holds every input token, cached
/// ones included; one span without usage.
fn genai_spans(calls: &[Call], seed: u64) -> Vec<Value> {
    let mut out: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"service": "support-bot", "name": format!("chat {}", c.model),
                "trace_id": seed * 1000 + i as u64 + 1, "span_id": seed * 1000 + i as u64 + 1,
                "start_ns": c.at_ns, "end_ns": c.at_ns + 2_500_000_000i64,
                "attributes": {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": c.model, "gen_ai.response.model": c.model,
                    "gen_ai.usage.input_tokens": c.prompt + c.read + c.creation,
                    "gen_ai.usage.output_tokens": c.output,
                    "gen_ai.usage.cache_read.input_tokens": c.read,
                    "gen_ai.usage.cache_creation.input_tokens": c.creation,
                    "enduser.id": "customer-7"}})
        })
        .collect();
    out.push(json!({"service": "support-bot", "name": "db query",
        "trace_id": seed * 1000 + 999, "span_id": seed * 1000 + 999,
        "start_ns": T0, "end_ns": T0 + 1_000_000, "attributes": {"db.system": "postgresql"}}));
    out
}

fn send(dir: &Path, protocol: &str, endpoint: &str, token: &str, spec: &Value) {
    let file = dir.join(format!("{protocol}.json"));
    std::fs::write(&file, spec.to_string()).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(repo.join("tests/clients/otlp_send.py"))
        .args([protocol, endpoint, token])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{protocol}: {stderr}");
    // The exporters log a failed export and go on: none may fail.
    assert!(!stderr.contains("Failed to export"), "{protocol}: {stderr}");
}

/// metric name -> [sum of counter deltas, histogram count, histogram sum]
type MetricTotals = BTreeMap<String, [i64; 3]>;

/// Metrics as the SDK records them, per protocol: a cumulative counter
/// over two providers (the second one a reset: a new start time), a delta
/// counter, and a cumulative histogram over two providers; what their
/// deltas must add up to goes into `want`.
fn metric_runs(rng: &mut Rng, protocol: &str, want: &mut MetricTotals) -> Value {
    let attrs = [
        json!({"type": "input", "model": "claude-sonnet-4-5"}),
        json!({"type": "output", "model": "claude-sonnet-4-5"}),
    ];
    let mut runs = |n_runs: usize| -> Vec<Vec<(i64, Value)>> {
        (0..n_runs)
            .map(|_| {
                (0..4)
                    .map(|_| {
                        (
                            1 + rng.below(500) as i64,
                            attrs[rng.below(2) as usize].clone(),
                        )
                    })
                    .collect()
            })
            .collect()
    };
    let cumulative = runs(2);
    let delta = runs(1);
    let histogram = runs(2);
    let all = |r: &Vec<Vec<(i64, Value)>>| r.iter().flatten().map(|(v, _)| *v).collect::<Vec<_>>();
    let name = |n: &str| format!("{n}.{protocol}");
    want.insert(
        name("tokens.cumulative"),
        [all(&cumulative).iter().sum(), 0, 0],
    );
    want.insert(name("tokens.delta"), [all(&delta).iter().sum(), 0, 0]);
    want.insert(
        name("latency"),
        [
            0,
            all(&histogram).len() as i64,
            all(&histogram).iter().sum(),
        ],
    );
    let spec = |n: &str, kind: &str, temporality: &str, r: &Vec<Vec<(i64, Value)>>| {
        let runs: Vec<Vec<Value>> = r
            .iter()
            .map(|run| run.iter().map(|(v, a)| json!([v, a])).collect())
            .collect();
        json!({"name": name(n), "kind": kind, "temporality": temporality, "runs": runs})
    };
    json!([
        spec("tokens.cumulative", "counter", "cumulative", &cumulative),
        spec("tokens.delta", "counter", "delta", &delta),
        spec("latency", "histogram", "cumulative", &histogram),
    ])
}

async fn stored_metrics(t: &Tally, token: &str) -> MetricTotals {
    let rows = sql(
        t,
        token,
        "SELECT name, sum(value) AS v, sum(count) AS c, sum(sum) AS s FROM otel_metric_deltas
         WHERE tenant = 'acme' GROUP BY name",
    )
    .await;
    rows.iter()
        .map(|r| {
            let n = |k: &str| r[k].as_f64().unwrap_or(0.0) as i64;
            (
                r["name"].as_str().unwrap().to_string(),
                [n("v"), n("c"), n("s")],
            )
        })
        .collect()
}

async fn sql(t: &Tally, token: &str, query: &str) -> Vec<Value> {
    let r = reqwest::Client::new()
        .post(t.url("/v1/sql"))
        .bearer_auth(token)
        .body(query.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{query}");
    r.json().await.unwrap()
}

/// model → [calls, prompt, output, cache read, cache write, total]
type Totals = BTreeMap<String, [i64; 6]>;

fn add(t: &mut Totals, c: &Call, total: i64) {
    let e = t.entry(c.model.to_string()).or_default();
    for (i, v) in [1, c.prompt, c.output, c.read, c.creation, total]
        .iter()
        .enumerate()
    {
        e[i] += v;
    }
}

async fn stored(t: &Tally, token: &str) -> Totals {
    let rows = sql(
        t,
        token,
        "SELECT model, count(*) AS n, sum(prompt_tokens) AS p, sum(completion_tokens) AS o,
                sum(cache_read_tokens) AS r, sum(cache_creation_tokens) AS c, sum(total_tokens) AS t
         FROM usage_llm WHERE microdao_id = 'acme' GROUP BY model",
    )
    .await;
    rows.iter()
        .map(|r| {
            let n = |k: &str| r[k].as_i64().unwrap_or(0);
            (
                r["model"].as_str().unwrap().to_string(),
                [n("n"), n("p"), n("o"), n("r"), n("c"), n("t")],
            )
        })
        .collect()
}

#[tokio::test]
async fn opentelemetry_exporters_land_model_calls_once_with_their_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ingest = create_token(&data, "acme-otel", "ingest", &["acme"]);
    let admin = create_token(&data, "ops", "admin", &[]);
    let t = Tally::start(&data, &[]).await;
    let mut rng = Rng::from_time();
    let mut want = Totals::new();
    let mut want_metrics = MetricTotals::new();
    let mut specs = Vec::new();
    for (k, protocol) in ["grpc", "http-protobuf", "http-json"].iter().enumerate() {
        let claude = calls(
            &mut rng,
            &format!("req_{protocol}"),
            &CLAUDE_MODELS,
            8,
            true,
        );
        let codex = calls(
            &mut rng,
            &format!("conv-{protocol}"),
            &CODEX_MODELS,
            6,
            false,
        );
        let genai = calls(
            &mut rng,
            &format!("span-{protocol}"),
            &GENAI_MODELS,
            6,
            true,
        );
        for c in &claude {
            add(&mut want, c, c.prompt + c.output + c.read + c.creation);
        }
        for c in &codex {
            add(&mut want, c, c.prompt + c.read + c.output);
        }
        for c in &genai {
            add(&mut want, c, c.prompt + c.read + c.creation + c.output);
        }
        let mut logs = claude_logs(&claude);
        logs.extend(codex_logs(&codex));
        let metrics = metric_runs(&mut rng, protocol, &mut want_metrics);
        let spec = json!({"logs": logs, "spans": genai_spans(&genai, k as u64 + 1),
                          "metrics": metrics});
        send(dir.path(), protocol, &t.url(""), &ingest, &spec);
        specs.push((protocol, spec));
    }
    assert_eq!(stored(&t, &admin).await, want);
    assert_eq!(stored_metrics(&t, &admin).await, want_metrics);

    // Downstream reads them as any usage: /internal/usage/models has the
    // calls and tokens per model, priced by tally's catalogue.
    let r = reqwest::Client::new()
        .get(t.url(&format!(
            "/internal/usage/models?microdao_id=acme&from={}&to={}",
            rfc(T0 - 3_600_000_000_000),
            rfc(T0 + 2 * 3_600_000_000_000)
        )))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let models: Value = r.json().await.unwrap();
    for m in models["models"].as_array().unwrap() {
        let w = want[m["model"].as_str().unwrap()];
        let got = [
            m["calls"].as_i64().unwrap(),
            m["prompt_tokens"].as_i64().unwrap(),
            m["completion_tokens"].as_i64().unwrap(),
            m["cache_read_tokens"].as_i64().unwrap(),
            m["cache_creation_tokens"].as_i64().unwrap(),
        ];
        assert_eq!(got, w[..5], "{m}");
        if m["model"] == "claude-sonnet-4-5" || m["model"] == "gpt-4o" {
            assert!(m["cost_usd"].as_f64().unwrap() > 0.0, "{m}");
        }
    }
    assert_eq!(models["models"].as_array().unwrap().len(), want.len());

    // An exporter's retry: the same export again counts nothing more.
    let (protocol, spec) = &specs[1];
    send(dir.path(), protocol, &t.url(""), &ingest, spec);
    assert_eq!(stored(&t, &admin).await, want);

    // Every call has its time (none in 1970), its agent and its actor.
    let rows = sql(
        &t,
        &admin,
        "SELECT agent_id, actor_id, count(*) AS n, min(timestamp) AS first FROM usage_llm
         GROUP BY agent_id, actor_id ORDER BY agent_id",
    )
    .await;
    let seen: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| {
            assert!(
                r["first"].as_str().unwrap().starts_with("2026-11-26"),
                "{r}"
            );
            (
                r["agent_id"].as_str().unwrap().to_string(),
                r["actor_id"].as_str().unwrap().to_string(),
                r["n"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("claude-code".to_string(), "dev@acme.test".to_string(), 24),
            // Codex with an API key names no user: the token's name.
            ("codex_exec".to_string(), "token:acme-otel".to_string(), 18),
            ("support-bot".to_string(), "customer-7".to_string(), 18),
        ]
    );
}

#[tokio::test]
async fn otlp_json_takes_bare_integers_and_refuses_a_bad_record_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ingest = create_token(&data, "acme-otel", "ingest", &["acme"]);
    let admin = create_token(&data, "ops", "admin", &[]);
    // The OTLP routes alone on a port of their own, as on 4318.
    let otlp_addr = format!("127.0.0.1:{}", common::free_port());
    let t = Tally::start(&data, &["--otlp-listen", &otlp_addr]).await;
    let kv = |k: &str, v: Value| json!({"key": k, "value": v});
    let record = |id: Option<&str>, input: Value| {
        let mut attrs = vec![
            kv("event.name", json!({"stringValue": "api_request"})),
            kv("model", json!({"stringValue": "claude-sonnet-4-5"})),
            kv("input_tokens", json!({"intValue": input})),
            kv("output_tokens", json!({"intValue": "20"})),
            kv("cache_read_tokens", json!({"intValue": 300})),
            kv("cache_creation_tokens", json!({"intValue": 0})),
            kv("user.email", json!({"stringValue": "dev@acme.test"})),
        ];
        if let Some(id) = id {
            attrs.push(kv("request_id", json!({"stringValue": id})));
        }
        json!({"timeUnixNano": T0.to_string(), "observedTimeUnixNano": T0.to_string(),
               "body": {"stringValue": "claude_code.api_request"}, "attributes": attrs})
    };
    let body = json!({"resourceLogs": [{"resource": {"attributes": [
            kv("service.name", json!({"stringValue": "claude-code"}))]},
        "scopeLogs": [{"scope": {"name": "com.anthropic.claude_code.events"},
            "logRecords": [record(Some("req_a"), json!(101)), record(None, json!(5)),
                           record(Some("req_b"), json!("7"))]}]}]});
    let post = |token: &str, body: String| {
        reqwest::Client::new()
            .post(format!("http://{otlp_addr}/v1/logs"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = post(&ingest, body.to_string()).await.unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["partialSuccess"]["rejectedLogRecords"], "1",
        "{answer}"
    );
    let message = answer["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("resourceLogs[0].scopeLogs[0].logRecords[1]")
            && message.contains("request_id"),
        "{message}"
    );
    let rows = sql(
        &t,
        &admin,
        "SELECT sum(prompt_tokens) AS p, count(*) AS n FROM usage_llm WHERE microdao_id = 'acme'",
    )
    .await;
    assert_eq!(rows[0]["p"], json!(108));
    assert_eq!(rows[0]["n"], json!(2));

    // Gzip'd, as exporters send with OTEL_EXPORTER_OTLP_COMPRESSION=gzip.
    let gz = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        record(Some("req_gz"), json!(1000))]}]}]});
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, gz.to_string().as_bytes()).unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{otlp_addr}/v1/logs"))
        .bearer_auth(&ingest)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(enc.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rows = sql(
        &t,
        &admin,
        "SELECT sum(prompt_tokens) AS p FROM usage_llm WHERE event_id = 'claude-code:request:req_gz'",
    )
    .await;
    assert_eq!(rows[0]["p"], json!(1000));

    // Bad tokens and bad bodies, in OTLP/HTTP's error shape.
    let r = post("not-a-token", body.to_string()).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = post(&ingest, "{\"resourceLogs\": 3}".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    let status: Value = r.json().await.unwrap();
    assert!(
        status["message"].as_str().unwrap().contains("resourceLogs"),
        "{status}"
    );

    // A metric data point is stored once, however often it is exported.
    let metrics = json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{
        "name": "claude_code.token.usage", "unit": "tokens",
        "sum": {"aggregationTemporality": 1, "isMonotonic": true, "dataPoints": [
            {"asDouble": 12.0, "timeUnixNano": T0.to_string(),
             "attributes": [kv("type", json!({"stringValue": "input"}))]}]}}]}]}]});
    for _ in 0..2 {
        let r = reqwest::Client::new()
            .post(t.url("/v1/metrics"))
            .bearer_auth(&ingest)
            .header("content-type", "application/json")
            .body(metrics.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer, json!({}));
    }
    let rows = sql(
        &t,
        &admin,
        "SELECT count(*) AS n, sum(value) AS v FROM otel_metrics WHERE tenant = 'acme'",
    )
    .await;
    assert_eq!(
        (rows[0]["n"].as_i64(), rows[0]["v"].as_f64()),
        (Some(1), Some(12.0))
    );
}

/// Per-model totals of one tenant: [calls, prompt, output, cache read,
/// cache write, total].
async fn stored_of(t: &Tally, token: &str, tenant: &str) -> Totals {
    let rows = sql(
        t,
        token,
        &format!(
            "SELECT model, count(*) AS n, sum(prompt_tokens) AS p, sum(completion_tokens) AS o,
                    sum(cache_read_tokens) AS r, sum(cache_creation_tokens) AS c, sum(total_tokens) AS t
             FROM usage_llm WHERE microdao_id = '{tenant}' GROUP BY model"
        ),
    )
    .await;
    rows.iter()
        .map(|r| {
            let n = |k: &str| r[k].as_i64().unwrap_or(0);
            (
                r["model"].as_str().unwrap().to_string(),
                [n("n"), n("p"), n("o"), n("r"), n("c"), n("t")],
            )
        })
        .collect()
}

fn collect(agent: &str, dir: &Path, t: &Tally, token: &str, state: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["collect", agent, "--dir"])
        .arg(dir)
        .args([
            "--server",
            &t.url(""),
            "--token",
            token,
            "--tenant",
            "logs",
            "--state",
        ])
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_same_calls_from_session_logs_and_over_otlp_count_the_same_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let otel = create_token(&data, "acme-otel", "ingest", &["acme"]);
    let logs = create_token(&data, "logs-in", "ingest", &["logs"]);
    let admin = create_token(&data, "ops", "admin", &[]);
    let t = Tally::start(&data, &[]).await;
    let mut rng = Rng::from_time();
    let claude = calls(&mut rng, "req_same", &CLAUDE_MODELS, 12, true);
    let codex = calls(&mut rng, "conv-same", &CODEX_MODELS[..1], 10, false);

    // Claude Code's session log: one assistant line per call.
    let claude_dir = dir.path().join("claude/-home-dev-app");
    std::fs::create_dir_all(&claude_dir).unwrap();
    let lines: Vec<String> = claude
        .iter()
        .map(|c| {
            json!({"type": "assistant", "sessionId": "s-1", "cwd": "/home/dev/app",
                "timestamp": rfc(c.at_ns), "requestId": c.id, "version": "2.0.0",
                "message": {"id": format!("msg_{}", c.id), "model": c.model, "role": "assistant",
                    "usage": {"input_tokens": c.prompt, "output_tokens": c.output,
                        "cache_creation_input_tokens": c.creation,
                        "cache_read_input_tokens": c.read}}})
            .to_string()
        })
        .collect();
    std::fs::write(claude_dir.join("s-1.jsonl"), lines.join("\n") + "\n").unwrap();
    // Codex's session log: its token counts, input with the cached tokens.
    let codex_dir = dir.path().join("codex/2026/11/26");
    std::fs::create_dir_all(&codex_dir).unwrap();
    let mut lines = vec![
        json!({"timestamp": rfc(T0), "type": "session_meta",
            "payload": {"id": "conv-same", "cwd": "/home/dev/app"}})
        .to_string(),
        json!({"timestamp": rfc(T0), "type": "turn_context",
            "payload": {"cwd": "/home/dev/app", "model": CODEX_MODELS[0]}})
        .to_string(),
    ];
    let mut running = 0;
    for c in &codex {
        let input = c.prompt + c.read;
        running += input + c.output;
        lines.push(
            json!({"timestamp": rfc(c.at_ns), "type": "event_msg", "payload": {"type": "token_count",
                "info": {"total_token_usage": {"total_tokens": running},
                    "last_token_usage": {"input_tokens": input, "cached_input_tokens": c.read,
                        "output_tokens": c.output, "reasoning_output_tokens": 0,
                        "total_tokens": input + c.output}}}})
            .to_string(),
        );
    }
    std::fs::write(
        codex_dir.join("rollout-conv-same.jsonl"),
        lines.join("\n") + "\n",
    )
    .unwrap();
    collect(
        "claude-code",
        &dir.path().join("claude"),
        &t,
        &logs,
        &dir.path().join("c.json"),
    );
    collect(
        "codex",
        &dir.path().join("codex"),
        &t,
        &logs,
        &dir.path().join("x.json"),
    );

    // The same calls over OTLP, as the clients export them.
    let mut records = claude_logs(&claude);
    records.extend(codex_logs(&codex));
    send(
        dir.path(),
        "http-protobuf",
        &t.url(""),
        &otel,
        &json!({"logs": records}),
    );

    let from_logs = stored_of(&t, &admin, "logs").await;
    let from_otlp = stored_of(&t, &admin, "acme").await;
    assert_eq!(
        from_logs.values().map(|v| v[0]).sum::<i64>(),
        22,
        "{from_logs:?}"
    );
    assert_eq!(from_otlp, from_logs);
}

/// The Usage API reads OTLP calls as it reads any: a Claude Code user's
/// current 5-hour block counts the tokens of their `api_request` records.
#[tokio::test]
async fn the_usage_api_counts_a_claude_code_users_otlp_calls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ingest = create_token(&data, "acme-otel", "ingest", &["acme"]);
    let admin = create_token(&data, "ops", "admin", &[]);
    let t = Tally::start(&data, &[]).await;
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let kv = |k: &str, v: Value| json!({"key": k, "value": v});
    // (minutes ago, input, output, cache read, cache write)
    let calls = [(20, 1200, 300, 5000, 100), (10, 800, 250, 7000, 0)];
    let records: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (ago, input, output, read, write))| {
            json!({"timeUnixNano": (now - ago * 60_000_000_000i64).to_string(),
                "body": {"stringValue": "claude_code.api_request"},
                "attributes": [kv("event.name", json!({"stringValue": "api_request"})),
                    kv("request_id", json!({"stringValue": format!("req_now_{i}")})),
                    kv("user.email", json!({"stringValue": "dev@acme.test"})),
                    kv("model", json!({"stringValue": "claude-sonnet-4-5"})),
                    kv("input_tokens", json!({"intValue": input})),
                    kv("output_tokens", json!({"intValue": output})),
                    kv("cache_read_tokens", json!({"intValue": read})),
                    kv("cache_creation_tokens", json!({"intValue": write}))]})
        })
        .collect();
    let body = json!({"resourceLogs": [{"resource": {"attributes": [
        kv("service.name", json!({"stringValue": "claude-code"}))]},
        "scopeLogs": [{"logRecords": records}]}]});
    let r = reqwest::Client::new()
        .post(t.url("/v1/logs"))
        .bearer_auth(&ingest)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::Client::new()
        .get(t.url("/api/usage/stats?actor_id=dev@acme.test&microdao_id=acme"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s: Value = r.json().await.unwrap();
    let sum = |f: fn(&(i64, i64, i64, i64, i64)) -> i64| calls.iter().map(f).sum::<i64>();
    let (input, output, read, write) = (sum(|c| c.1), sum(|c| c.2), sum(|c| c.3), sum(|c| c.4));
    let cur = &s["current_session"];
    assert_eq!(cur["is_active"], true, "{s}");
    assert_eq!(
        cur["token_counts"],
        json!({"input_tokens": input, "output_tokens": output,
               "cache_creation_tokens": write, "cache_read_tokens": read,
               "total_tokens": input + output + read + write}),
        "{s}"
    );
    assert_eq!(cur["sent_messages_count"], 2, "{s}");
}
