//! Meters over CloudEvents, as OpenMeter's API has them, against the real
//! binary: one meter from the config file and one per aggregation made
//! through the API after their events arrived; queries by day in
//! America/New_York across the end of DST, by subject and group, filtered,
//! as JSON and CSV. The expected values are computed here, by a second
//! implementation over the events the test sent (New York's offsets are
//! written out, not taken from a time-zone library).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{create_token, metric, Rng, Tally};
use serde_json::{json, Value};

const HOUR: i64 = 3_600_000_000_000;
/// 2026-10-31T00:00:00Z; three days of events from there.
const START: i64 = 1_793_404_800_000_000_000;
/// When New York's clocks go back: 2026-11-01T06:00:00Z (02:00 EDT).
const DST_ENDS: i64 = 1_793_512_800_000_000_000;

/// The start of the New York day holding `t` (UTC ns): EDT (UTC-4) before
/// the change, EST (UTC-5) after.
fn ny_day(t: i64) -> (i64, i64) {
    let offset = if t < DST_ENDS { -4 * HOUR } else { -5 * HOUR };
    let local = t + offset;
    let day = 24 * HOUR;
    let local_midnight = local.div_euclid(day) * day;
    // Midnight's own offset: the day of the change started in EDT.
    let start_offset = |lm: i64| {
        if lm + 4 * HOUR < DST_ENDS {
            -4 * HOUR
        } else {
            -5 * HOUR
        }
    };
    let start = local_midnight - start_offset(local_midnight);
    let end = local_midnight + day - start_offset(local_midnight + day);
    (start, end)
}

fn rfc(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[derive(Debug, Clone)]
struct Sent {
    at: i64,
    subject: String,
    model: String,
    tokens: Option<Value>,
    user: String,
}

fn events(rng: &mut Rng, n: usize) -> Vec<Sent> {
    (0..n)
        .map(|i| {
            let tokens = match rng.below(20) {
                0 => None,
                1 => Some(json!("many")),
                2 => Some(json!(format!("{}", rng.below(50)))),
                _ => Some(json!(rng.below(1000) as i64)),
            };
            Sent {
                at: START + (rng.below(72 * 3600) as i64) * 1_000_000_000 + i as i64,
                subject: format!("cust-{}", rng.below(3)),
                model: ["gpt-4o", "claude"][rng.below(2) as usize].to_string(),
                tokens,
                user: format!("user-{}", rng.below(7)),
            }
        })
        .collect()
}

fn cloud_event(i: usize, e: &Sent) -> Value {
    let mut data = json!({"model": e.model, "user": e.user});
    if let Some(t) = &e.tokens {
        data["tokens"] = t.clone();
    }
    json!({"specversion": "1.0", "id": format!("ev-{i}"), "source": "test", "type": "llm_call",
           "subject": e.subject, "time": rfc(e.at), "data": data})
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A row's key: (window start, subject, model).
type RowKey = (i64, String, String);

/// The expected rows: (window start, subject, model) → value.
fn expected(sent: &[Sent], aggregation: &str, subjects: &[&str]) -> BTreeMap<RowKey, f64> {
    expected_by(sent, aggregation, subjects, ny_day)
}

/// A UTC day's bounds.
fn utc_day(t: i64) -> (i64, i64) {
    let start = t.div_euclid(24 * HOUR) * 24 * HOUR;
    (start, start + 24 * HOUR)
}

/// The expected rows by the windows of `window`.
fn expected_by(
    sent: &[Sent],
    aggregation: &str,
    subjects: &[&str],
    window: fn(i64) -> (i64, i64),
) -> BTreeMap<RowKey, f64> {
    let mut groups: BTreeMap<RowKey, Vec<(i64, Option<f64>, String)>> = BTreeMap::new();
    for e in sent {
        if !subjects.is_empty() && !subjects.contains(&e.subject.as_str()) {
            continue;
        }
        let x = e.tokens.as_ref().and_then(number);
        let needs_number = !matches!(aggregation, "COUNT" | "UNIQUE_COUNT");
        if needs_number && x.is_none() {
            continue;
        }
        groups
            .entry((window(e.at).0, e.subject.clone(), e.model.clone()))
            .or_default()
            .push((e.at, x, e.user.clone()));
    }
    groups
        .into_iter()
        .map(|(k, rows)| {
            let xs: Vec<f64> = rows.iter().filter_map(|r| r.1).collect();
            let v = match aggregation {
                "SUM" => xs.iter().sum(),
                "COUNT" => rows.len() as f64,
                "UNIQUE_COUNT" => rows
                    .iter()
                    .map(|r| r.2.clone())
                    .collect::<BTreeSet<_>>()
                    .len() as f64,
                "AVG" => xs.iter().sum::<f64>() / xs.len() as f64,
                "MIN" => xs.iter().cloned().fold(f64::INFINITY, f64::min),
                "MAX" => xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                "LATEST" => rows.iter().max_by_key(|r| r.0).unwrap().1.unwrap(),
                other => panic!("{other}"),
            };
            (k, v)
        })
        .collect()
}

async fn call(
    t: &Tally,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .request(method, t.url(path))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn rows_of(answer: &Value) -> BTreeMap<RowKey, f64> {
    rows_by(answer, ny_day)
}

fn rows_by(answer: &Value, window: fn(i64) -> (i64, i64)) -> BTreeMap<RowKey, f64> {
    answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let start = chrono::DateTime::parse_from_rfc3339(r["windowStart"].as_str().unwrap())
                .unwrap()
                .timestamp_nanos_opt()
                .unwrap();
            let end = chrono::DateTime::parse_from_rfc3339(r["windowEnd"].as_str().unwrap())
                .unwrap()
                .timestamp_nanos_opt()
                .unwrap();
            assert_eq!((start, end), window(start), "a window: {r}");
            (
                (
                    start,
                    r["subject"].as_str().unwrap().to_string(),
                    r["groupBy"]["model"].as_str().unwrap().to_string(),
                ),
                r["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn same(got: &BTreeMap<RowKey, f64>, want: &BTreeMap<RowKey, f64>, what: &str) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (k, w) in want {
        let g = got[k];
        assert!(
            (g - w).abs() <= 1e-9 * w.abs().max(1.0),
            "{what} {k:?}: got {g}, want {w}"
        );
    }
}

#[tokio::test]
async fn meters_of_every_aggregation_answer_as_computed_here() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("tally.toml");
    std::fs::write(
        &config,
        r#"
[[meters]]
slug = "tokens_total"
name = "Tokens"
eventType = "llm_call"
aggregation = "SUM"
valueProperty = "$.tokens"
groupBy = { model = "$.model" }
"#,
    )
    .unwrap();
    let ingest = create_token(&data, "acme-in", "ingest", &["acme"]);
    let read = create_token(&data, "acme-read", "read", &["acme"]);
    let admin = create_token(&data, "ops", "admin", &[]);
    let other = create_token(&data, "globex-read", "read", &["globex"]);
    let t = Tally::start(&data, &["--config", config.to_str().unwrap()]).await;

    let mut rng = Rng::from_time();
    let sent = events(&mut rng, 400);
    for (n, chunk) in sent.chunks(100).enumerate() {
        let batch: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| cloud_event(n * 100 + i, e))
            .collect();
        let r = reqwest::Client::new()
            .post(t.url("/api/v1/events"))
            .bearer_auth(&ingest)
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::Array(batch).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }

    // One meter per aggregation, made after the events arrived.
    for (slug, aggregation, value) in [
        ("tokens_count", "COUNT", None),
        ("users", "UNIQUE_COUNT", Some("$.user")),
        ("tokens_avg", "AVG", Some("$.tokens")),
        ("tokens_min", "MIN", Some("$.tokens")),
        ("tokens_max", "MAX", Some("$['tokens']")),
        ("tokens_latest", "LATEST", Some("$.tokens")),
    ] {
        let mut m = json!({"slug": slug, "eventType": "llm_call", "aggregation": aggregation,
                           "groupBy": {"model": "$.model"}});
        if let Some(v) = value {
            m["valueProperty"] = json!(v);
        }
        let (s, b) = call(&t, &admin, reqwest::Method::POST, "/api/v1/meters", Some(m)).await;
        assert_eq!(s, 201, "{b}");
        assert_eq!(b["slug"], slug);
        assert_eq!(b["id"].as_str().unwrap().len(), 26, "{b}");
    }
    let (s, list) = call(&t, &read, reqwest::Method::GET, "/api/v1/meters", None).await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 7, "{list}");

    let from = rfc(START - 24 * HOUR);
    let to = rfc(START + 96 * HOUR);
    for (slug, aggregation) in [
        ("tokens_total", "SUM"),
        ("tokens_count", "COUNT"),
        ("users", "UNIQUE_COUNT"),
        ("tokens_avg", "AVG"),
        ("tokens_min", "MIN"),
        ("tokens_max", "MAX"),
        ("tokens_latest", "LATEST"),
    ] {
        let q = format!(
            "/api/v1/meters/{slug}/query?from={from}&to={to}&windowSize=DAY&windowTimeZone=America/New_York&groupBy=subject&groupBy=model"
        );
        let (s, answer) = call(&t, &read, reqwest::Method::GET, &q, None).await;
        assert_eq!(s, 200, "{answer}");
        same(&rows_of(&answer), &expected(&sent, aggregation, &[]), slug);
        // The same through POST, filtered to two subjects and one model.
        let body = json!({"from": from, "to": to, "windowSize": "DAY", "windowTimeZone": "America/New_York",
                          "subject": ["cust-0", "cust-2"], "groupBy": ["model"],
                          "filterGroupBy": {"model": ["claude"]}});
        let (s, answer) = call(
            &t,
            &read,
            reqwest::Method::POST,
            &format!("/api/v1/meters/{slug}/query"),
            Some(body),
        )
        .await;
        assert_eq!(s, 200, "{answer}");
        let want: BTreeMap<_, _> = expected(&sent, aggregation, &["cust-0", "cust-2"])
            .into_iter()
            .filter(|((_, _, m), _)| m == "claude")
            .collect();
        same(&rows_of(&answer), &want, &format!("{slug} filtered"));
    }

    // Without a window: one row over the whole range, subject null.
    let (_, total) = call(
        &t,
        &read,
        reqwest::Method::GET,
        &format!("/api/v1/meters/tokens_total/query?from={from}&to={to}"),
        None,
    )
    .await;
    let want_total: f64 = expected(&sent, "SUM", &[]).values().sum();
    let rows = total["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{total}");
    assert!(rows[0]["subject"].is_null());
    assert_eq!(rows[0]["value"].as_f64().unwrap(), want_total);

    // CSV, as OpenMeter's columns.
    let csv = reqwest::Client::new()
        .get(t.url(&format!("/api/v1/meters/tokens_total/query?from={from}&to={to}&windowSize=DAY&windowTimeZone=America/New_York&groupBy=model&subject=cust-1")))
        .bearer_auth(&read)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv");
    let text = csv.text().await.unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("window_start,window_end,subject,model,value")
    );
    let mut from_csv = BTreeMap::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let start = chrono::DateTime::parse_from_rfc3339(f[0])
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap();
        from_csv.insert(
            (start, f[2].to_string(), f[3].to_string()),
            f[4].parse::<f64>().unwrap(),
        );
    }
    same(&from_csv, &expected(&sent, "SUM", &["cust-1"]), "csv");

    // Subjects and group-by values.
    let (_, subjects) = call(
        &t,
        &read,
        reqwest::Method::GET,
        "/api/v1/meters/tokens_total/subjects",
        None,
    )
    .await;
    let want_subjects: BTreeSet<&str> = sent.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(subjects, json!(want_subjects));
    let (_, models) = call(
        &t,
        &read,
        reqwest::Method::GET,
        "/api/v1/meters/tokens_total/group-by/model/values",
        None,
    )
    .await;
    let want_models: BTreeSet<&str> = sent.iter().map(|e| e.model.as_str()).collect();
    assert_eq!(models, json!(want_models));

    // Another tenant has the same meters, but none of acme's values.
    for slug in ["tokens_total", "users"] {
        let (s, theirs) = call(
            &t,
            &other,
            reqwest::Method::GET,
            &format!("/api/v1/meters/{slug}/query?from={from}&to={to}"),
            None,
        )
        .await;
        assert_eq!(s, 200, "{theirs}");
        assert_eq!(theirs["data"], json!([]), "{theirs}");
    }

    // Refusals: problem+json naming the field.
    let (s, b) = call(
        &t,
        &read,
        reqwest::Method::GET,
        "/api/v1/meters/nope/query",
        None,
    )
    .await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = call(&t, &admin, reqwest::Method::POST, "/api/v1/meters",
        Some(json!({"slug": "bad", "eventType": "x", "aggregation": "SUM", "valueProperty": "tokens"}))).await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["detail"].as_str().unwrap().contains("valueProperty"),
        "{b}"
    );
    let (s, b) = call(
        &t,
        &admin,
        reqwest::Method::POST,
        "/api/v1/meters",
        Some(json!({"slug": "users", "eventType": "x", "aggregation": "COUNT"})),
    )
    .await;
    assert_eq!(s, 409, "{b}");
    let (s, b) = call(
        &t,
        &read,
        reqwest::Method::POST,
        "/api/v1/meters",
        Some(json!({"slug": "x", "eventType": "x", "aggregation": "COUNT"})),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = call(
        &t,
        &read,
        reqwest::Method::GET,
        "/api/v1/meters/tokens_total/query?windowSize=WEEK&groupBy=color",
        None,
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(b["detail"].as_str().unwrap().contains("windowSize"), "{b}");
    let (s, _) = call(
        &t,
        &admin,
        reqwest::Method::DELETE,
        "/api/v1/meters/tokens_total",
        None,
    )
    .await;
    assert_eq!(s, 403, "a meter of the config file stays");
    let (s, b) = call(
        &t,
        &read,
        reqwest::Method::GET,
        "/api/v1/entitlements",
        None,
    )
    .await;
    assert_eq!(s, 501, "{b}");
    assert!(
        b["detail"].as_str().unwrap().contains("not part of tally"),
        "{b}"
    );

    // Meters survive a restart; a deleted one is gone.
    let (s, _) = call(
        &t,
        &admin,
        reqwest::Method::DELETE,
        "/api/v1/meters/tokens_min",
        None,
    )
    .await;
    assert_eq!(s, 204);
    t.terminate();
    let t = Tally::start(&data, &["--config", config.to_str().unwrap()]).await;
    let (_, list) = call(&t, &read, reqwest::Method::GET, "/api/v1/meters", None).await;
    let slugs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["slug"].as_str().unwrap())
        .collect();
    assert_eq!(
        slugs,
        [
            "tokens_avg",
            "tokens_count",
            "tokens_latest",
            "tokens_max",
            "tokens_total",
            "users"
        ]
    );
}

/// Files under `dir`, recursively, whose name ends with `.parquet`.
fn parquet_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(parquet_files(&p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out
}

async fn metrics(t: &Tally, token: &str) -> String {
    match call(t, token, reqwest::Method::GET, "/metrics", None).await {
        (200, Value::String(text)) => text,
        other => panic!("/metrics: {other:?}"),
    }
}

/// Waits until every hour of events has its meters' rollup, rolled up
/// from its one compacted file, and a query of every hour reads none raw
/// (nothing of them is buffered, no rollup is stale).
async fn wait_rolled_up(t: &Tally, data: &std::path::Path, tokens: (&str, &str), hours: usize) {
    let (admin, read) = tokens;
    let raw_reads = r#"tally_meter_query_hours_total{read="raw"}"#;
    let probe = format!(
        "/api/v1/meters/tokens_total/query?from={}&to={}",
        rfc(START - 24 * HOUR),
        rfc(START + 96 * HOUR)
    );
    for _ in 0..600 {
        let raw = parquet_files(&data.join("events"));
        let rolled = parquet_files(&data.join("meter_hourly"));
        if raw.len() == hours && rolled.len() == hours {
            let before = metric(&metrics(t, admin).await, raw_reads);
            let (s, answer) = call(t, read, reqwest::Method::GET, &probe, None).await;
            assert_eq!(s, 200, "{answer}");
            if metric(&metrics(t, admin).await, raw_reads) == before {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the events' hours were not rolled up within 60 s");
}

const AGGREGATIONS: [(&str, &str); 7] = [
    ("tokens_total", "SUM"),
    ("tokens_count", "COUNT"),
    ("users", "UNIQUE_COUNT"),
    ("tokens_avg", "AVG"),
    ("tokens_min", "MIN"),
    ("tokens_max", "MAX"),
    ("tokens_latest", "LATEST"),
];

/// Every meter by New York day, subject and model, against `sent`.
async fn every_meter_answers(t: &Tally, read: &str, sent: &[Sent], what: &str) {
    let (from, to) = (rfc(START - 24 * HOUR), rfc(START + 96 * HOUR));
    for (slug, aggregation) in AGGREGATIONS {
        let q = format!(
            "/api/v1/meters/{slug}/query?from={from}&to={to}&windowSize=DAY&windowTimeZone=America/New_York&groupBy=subject&groupBy=model"
        );
        let (s, answer) = call(t, read, reqwest::Method::GET, &q, None).await;
        assert_eq!(s, 200, "{answer}");
        same(
            &rows_of(&answer),
            &expected(sent, aggregation, &[]),
            &format!("{slug} {what}"),
        );
    }
}

/// Every meter by UTC day (whole days of stored hours are read as days),
/// and over the whole range by subject, against `sent`.
async fn every_meter_answers_by_utc_day(t: &Tally, read: &str, sent: &[Sent], what: &str) {
    let (from, to) = (rfc(START - 24 * HOUR), rfc(START + 96 * HOUR));
    for (slug, aggregation) in AGGREGATIONS {
        let q = format!(
            "/api/v1/meters/{slug}/query?from={from}&to={to}&windowSize=DAY&groupBy=subject&groupBy=model"
        );
        let (s, answer) = call(t, read, reqwest::Method::GET, &q, None).await;
        assert_eq!(s, 200, "{answer}");
        same(
            &rows_by(&answer, utc_day),
            &expected_by(sent, aggregation, &[], utc_day),
            &format!("{slug} by UTC day {what}"),
        );
        // One subject, one model, no window.
        let q = format!(
            "/api/v1/meters/{slug}/query?from={from}&to={to}&subject=cust-1&filterGroupBy[model]=claude"
        );
        let (s, answer) = call(t, read, reqwest::Method::GET, &q, None).await;
        assert_eq!(s, 200, "{answer}");
        let rows: Vec<(i64, Option<f64>, String)> = sent
            .iter()
            .filter(|e| e.subject == "cust-1" && e.model == "claude")
            .map(|e| (e.at, e.tokens.as_ref().and_then(number), e.user.clone()))
            .collect();
        let xs: Vec<f64> = rows.iter().filter_map(|r| r.1).collect();
        let want = match aggregation {
            "SUM" => xs.iter().sum(),
            "COUNT" => rows.len() as f64,
            "UNIQUE_COUNT" => rows.iter().map(|r| &r.2).collect::<BTreeSet<_>>().len() as f64,
            "AVG" => xs.iter().sum::<f64>() / xs.len() as f64,
            "MIN" => xs.iter().cloned().fold(f64::INFINITY, f64::min),
            "MAX" => xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            _ => rows
                .iter()
                .filter(|r| r.1.is_some())
                .max_by_key(|r| r.0)
                .unwrap()
                .1
                .unwrap(),
        };
        let got = answer["data"][0]["value"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{slug} one subject {what}: got {got}, want {want}: {answer}"
        );
        assert_eq!(answer["data"][0]["subject"], "cust-1", "{answer}");
    }
}

#[tokio::test]
async fn stored_rollups_answer_as_the_events_and_late_events_count() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ingest = create_token(&data, "acme-in", "ingest", &["acme"]);
    let read = create_token(&data, "acme-read", "read", &["acme"]);
    let admin = create_token(&data, "ops", "admin", &[]);
    let t = Tally::start(
        &data,
        &["--compact-after", "0s", "--compact-interval", "1s"],
    )
    .await;
    for (slug, aggregation) in AGGREGATIONS {
        let mut m = json!({"slug": slug, "eventType": "llm_call", "aggregation": aggregation,
                           "groupBy": {"model": "$.model"}});
        if aggregation != "COUNT" {
            m["valueProperty"] = json!(if slug == "users" {
                "$.user"
            } else {
                "$.tokens"
            });
        }
        let (s, b) = call(&t, &admin, reqwest::Method::POST, "/api/v1/meters", Some(m)).await;
        assert_eq!(s, 201, "{b}");
    }
    let mut rng = Rng::from_time();
    let mut sent = events(&mut rng, 300);
    let post = |batch: Vec<Value>| {
        let (t, ingest) = (&t, &ingest);
        async move {
            let r = reqwest::Client::new()
                .post(t.url("/api/v1/events"))
                .bearer_auth(ingest)
                .header("content-type", "application/cloudevents-batch+json")
                .body(Value::Array(batch).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
        }
    };
    post(
        sent.iter()
            .enumerate()
            .map(|(i, e)| cloud_event(i, e))
            .collect(),
    )
    .await;
    let hours = sent
        .iter()
        .map(|e| e.at.div_euclid(HOUR))
        .collect::<BTreeSet<_>>();
    wait_rolled_up(&t, &data, (&admin, &read), hours.len()).await;

    // Every hour is read from its stored rollup, none from raw events.
    let before = metrics(&t, &admin).await;
    every_meter_answers(&t, &read, &sent, "from stored rollups").await;
    let after = metrics(&t, &admin).await;
    let rolled = r#"tally_meter_query_hours_total{read="rolled"}"#;
    let raw = r#"tally_meter_query_hours_total{read="raw"}"#;
    assert_eq!(
        metric(&after, rolled) - metric(&before, rolled),
        (hours.len() * AGGREGATIONS.len()) as f64
    );
    assert_eq!(metric(&after, raw), metric(&before, raw));
    // Whole UTC days read as days merged from the stored hours; twice, the
    // second time from the kept days.
    for pass in ["merged", "kept"] {
        every_meter_answers_by_utc_day(&t, &read, &sent, pass).await;
    }
    assert_eq!(
        metric(&metrics(&t, &admin).await, raw),
        metric(&before, raw)
    );

    // The events the SUM meter cannot read: in /metrics and in SQL.
    let unreadable = sent
        .iter()
        .filter(|e| e.tokens.as_ref().and_then(number).is_none())
        .count();
    assert!(unreadable > 0, "the events hold unreadable values");
    for slug in ["tokens_total", "tokens_avg", "tokens_latest"] {
        let name = format!("tally_meter_unreadable_events{{meter=\"{slug}\"}}");
        assert_eq!(metric(&after, &name), unreadable as f64, "{slug}");
    }
    assert_eq!(
        metric(
            &after,
            r#"tally_meter_unreadable_events{meter="tokens_count"}"#
        ),
        0.0
    );
    let r = reqwest::Client::new()
        .post(t.url("/v1/sql"))
        .bearer_auth(&admin)
        .body("SELECT count(*) AS n FROM meter('tokens_total') WHERE unreadable IS NOT NULL")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rows: Vec<Value> = r.json().await.unwrap();
    assert_eq!(rows[0]["n"], json!(unreadable));

    // A late event into a compacted hour, and a resent one: the answer
    // changes at once (the hour is read raw), and again once rolled up.
    let late = Sent {
        at: START + 5 * HOUR + 1,
        subject: "cust-0".into(),
        model: "claude".into(),
        tokens: Some(json!(7777)),
        user: "user-late".into(),
    };
    post(vec![cloud_event(10_000, &late), cloud_event(0, &sent[0])]).await;
    sent.push(late);
    every_meter_answers(&t, &read, &sent, "with a late event, raw").await;
    every_meter_answers_by_utc_day(&t, &read, &sent, "with a late event, raw").await;
    let hours_now = hours.len() + usize::from(!hours.contains(&((START + 5 * HOUR) / HOUR)));
    wait_rolled_up(&t, &data, (&admin, &read), hours_now).await;
    let before = metrics(&t, &admin).await;
    every_meter_answers(&t, &read, &sent, "with a late event, rolled up again").await;
    every_meter_answers_by_utc_day(&t, &read, &sent, "with a late event, rolled up again").await;
    let after = metrics(&t, &admin).await;
    assert_eq!(metric(&after, raw), metric(&before, raw));

    // A meter made after its events were rolled up counts them at once.
    let (s, b) = call(
        &t,
        &admin,
        reqwest::Method::POST,
        "/api/v1/meters",
        Some(
            json!({"slug": "claude_tokens", "eventType": "llm_call", "aggregation": "SUM",
                    "valueProperty": "$.tokens"}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, answer) = call(
        &t,
        &read,
        reqwest::Method::GET,
        &format!(
            "/api/v1/meters/claude_tokens/query?from={}&to={}",
            rfc(START - 24 * HOUR),
            rfc(START + 96 * HOUR)
        ),
        None,
    )
    .await;
    assert_eq!(s, 200, "{answer}");
    let want: f64 = expected(&sent, "SUM", &[]).values().sum();
    assert_eq!(
        answer["data"][0]["value"].as_f64().unwrap(),
        want,
        "{answer}"
    );
    drop(t);
    stored_days_answer_after_a_restart_and_a_damaged_one_is_merged_again(
        &data,
        (&admin, &read),
        &sent,
    )
    .await;
}

/// The file name (without its checksum) that the stored day of `date`
/// must have: FNV-1a over the names of the day's `meter_hourly` files in
/// hour order, each followed by a newline (the hours it was merged from).
fn day_name_of_hours(data: &std::path::Path, date: &str) -> Option<String> {
    let mut hours: Vec<(String, String)> = parquet_files(&data.join("meter_hourly"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&format!("date={date}")))
        .map(|p| {
            let hour = p
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (hour, p.file_name().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    if hours.is_empty() {
        return None;
    }
    hours.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (_, name) in &hours {
        for b in name.bytes().chain([b'\n']) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Some(format!("{h:016x}"))
}

/// Waits until every UTC date of `dates` has exactly one stored day, the
/// one merged from the day's stored hours now; returns their files.
async fn wait_days_merged(data: &std::path::Path, dates: &[String]) -> Vec<std::path::PathBuf> {
    for _ in 0..600 {
        let files = parquet_files(&data.join("meter_daily"));
        let fresh = dates.iter().all(|date| {
            let want = day_name_of_hours(data, date);
            let of_date: Vec<_> = files
                .iter()
                .filter(|p| p.to_string_lossy().contains(&format!("date={date}/")))
                .collect();
            of_date.len() == 1
                && want.is_some_and(|w| {
                    of_date[0]
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(&format!("{w}."))
                })
        });
        if fresh && files.len() == dates.len() {
            return files;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let want: Vec<_> = dates
        .iter()
        .map(|d| (d, day_name_of_hours(data, d)))
        .collect();
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
    let log: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("day") || l.contains("ERROR"))
        .collect();
    panic!(
        "the days were not merged from their hours within 60 s: {:?}, want {want:?}; log: {log:#?}",
        parquet_files(&data.join("meter_daily"))
    );
}

/// After the hours of `stored_rollups_…`: every closed UTC day has a stored
/// day merged from its hours as they are now (the late event's day again);
/// a restart reads whole days from them, not from hours; a stored day with
/// a flipped byte is set aside, its hours answer, and the compactor merges
/// it again.
async fn stored_days_answer_after_a_restart_and_a_damaged_one_is_merged_again(
    data: &std::path::Path,
    tokens: (&str, &str),
    sent: &[Sent],
) {
    let (admin, read) = tokens;
    let dates: Vec<String> = sent
        .iter()
        .map(|e| {
            chrono::DateTime::from_timestamp_nanos(e.at.div_euclid(24 * HOUR) * 24 * HOUR)
                .format("%Y-%m-%d")
                .to_string()
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let compacting = ["--compact-after", "0s", "--compact-interval", "1s"];
    let t = Tally::start(data, &compacting).await;
    let files = wait_days_merged(data, &dates).await;
    drop(t);
    let from_day = r#"tally_meter_query_days_loaded_total{from="day"}"#;
    let from_hours = r#"tally_meter_query_days_loaded_total{from="hours"}"#;
    let hold = ["--compact-after", "0s", "--compact-interval", "1h"];

    // A restart reads whole days from the stored days only.
    let t = Tally::start(data, &hold).await;
    every_meter_answers_by_utc_day(&t, read, sent, "from stored days").await;
    let m = metrics(&t, admin).await;
    assert!(metric(&m, from_day) > 0.0, "{m}");
    assert_eq!(metric(&m, from_hours), 0.0);
    drop(t);

    // A flipped byte in one of them: set aside at its first use, its hours
    // answer (the same values), and the compactor merges it again.
    let damaged = &files[files.len() / 2];
    let mut bytes = std::fs::read(damaged).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(damaged, bytes).unwrap();
    let t = Tally::start(data, &hold).await;
    every_meter_answers_by_utc_day(&t, read, sent, "with a damaged stored day").await;
    let m = metrics(&t, admin).await;
    assert_eq!(metric(&m, from_hours), AGGREGATIONS.len() as f64, "{m}");
    assert!(
        metric(&m, "tally_checksum_damaged_files_total") >= 1.0,
        "{m}"
    );
    assert!(!damaged.exists(), "the damaged day is set aside");
    drop(t);
    let _t = Tally::start(data, &compacting).await;
    wait_days_merged(data, &dates).await;
}
