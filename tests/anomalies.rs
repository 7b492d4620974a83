//! Anomaly detection end to end: eight days of hourly LLM usage and VM CPU
//! with ±10 % noise. Steady scopes give no anomaly; a tenfold last hour
//! gives one per metric (LLM cost and tokens, VM CPU), stored, signed to the
//! webhook, listed by `/v1/anomalies`; a tenant with two days of history is
//! "not enough history", whatever its last hour.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use common::{hmac_sha256, Rng, Tally, WebhookReceiver};
use serde_json::{json, Value};
use tally_proto::billing::v1 as pb;

const HOUR: i64 = 3_600_000_000_000;
const DAY: i64 = 24 * HOUR;
const SECRET: &str = "anomaly-secret";

fn ts(ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// ±10 %.
fn noise(rng: &mut Rng) -> f64 {
    1.0 + (rng.below(20_001) as f64 - 10_000.0) / 100_000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenfold_hour_is_an_anomaly_and_a_steady_week_is_not() {
    // The last closed hour must stay the last closed hour while the test
    // runs: start clear of the end of an hour.
    let into_hour = Utc::now().timestamp_nanos_opt().unwrap().rem_euclid(HOUR);
    if into_hour > HOUR - 150_000_000_000 {
        tokio::time::sleep(Duration::from_nanos(
            (HOUR - into_hour) as u64 + 1_000_000_000,
        ))
        .await;
    }
    let now = Utc::now().timestamp_nanos_opt().unwrap();
    let current = now.div_euclid(HOUR) * HOUR;
    let spike = current - HOUR;
    let first = current - 8 * DAY;

    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start().await;
    let hook = receiver.url("/anomalies");
    let t = Tally::start(
        &dir.path().join("data"),
        &[
            "--no-sampler",
            "--anomaly-interval",
            "500ms",
            "--alert-webhook",
            &hook,
            "--alert-webhook-secret",
            SECRET,
        ],
    )
    .await;
    let mut rng = Rng::from_time();

    // One LLM call an hour per tenant; hourly total tokens kept here.
    let mut tokens: BTreeMap<(&str, i64), i64> = BTreeMap::new();
    let mut events = Vec::new();
    for (tenant, from) in [
        ("microdao:steady", first),
        ("microdao:spike", first),
        ("microdao:new", current - 2 * DAY),
    ] {
        let mut h = from;
        while h < current {
            let x = if h == spike && tenant != "microdao:steady" {
                10.0
            } else {
                1.0
            };
            let p = (10_000.0 * noise(&mut rng) * x) as i64;
            let c = (2_000.0 * noise(&mut rng) * x) as i64;
            tokens.insert((tenant, h), p + c);
            events.push(json!({
                "event_id": format!("{tenant}-{h}"), "timestamp": ts(h + 60_000_000_000 + rng.below(3_000_000_000_000) as i64),
                "actor_id": "user:1", "actor_type": "human", "agent_id": "agent:a", "microdao_id": tenant,
                "model": "gpt-4.1-mini", "provider": "openai", "prompt_tokens": p, "completion_tokens": c,
                "total_tokens": p + c, "latency_ms": 900, "success": true
            }));
            h += HOUR;
        }
    }
    for chunk in events.chunks(500) {
        let report = t.post_llm_events(chunk).await;
        assert_eq!(
            report["accepted"].as_u64(),
            Some(chunk.len() as u64),
            "{report}"
        );
    }

    // A VM per customer, a sample a minute, about 30 CPU-seconds a minute.
    let mut client = common::billing_client(&t).await;
    for customer in ["cust-steady", "cust-spike"] {
        let mut cpu = 0i64;
        let mut samples = Vec::new();
        let mut at = first;
        while at < current {
            let hour = at.div_euclid(HOUR) * HOUR;
            let x = if hour == spike && customer == "cust-spike" {
                10.0
            } else {
                1.0
            };
            cpu += (30e9 * noise(&mut rng) * x) as i64;
            samples.push(common::vm_sample(at / 1_000_000_000, cpu));
            at += 60_000_000_000;
        }
        for chunk in samples.chunks(1000) {
            client
                .send_metrics_batch(pb::SendMetricsBatchRequest {
                    vm_id: format!("vm-{customer}"),
                    customer_id: customer.to_string(),
                    metrics: chunk.to_vec(),
                })
                .await
                .unwrap();
        }
    }

    // The three anomalies of the spike hour come, and nothing else.
    let want = [
        ("microdao:spike", "cost_usd"),
        ("microdao:spike", "total_tokens"),
        ("cust-spike", "vm_cpu_seconds"),
    ];
    let deadline = Instant::now() + Duration::from_secs(90);
    let report = loop {
        let r = reqwest::get(t.url(&format!("/v1/anomalies?since={}", ts(spike))))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        if v["anomalies"].as_array().unwrap().len() >= want.len() {
            break v;
        }
        assert!(Instant::now() < deadline, "{v:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut found: Vec<(String, String, String)> = report["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let (k, v) = a["scope"].as_object().unwrap().iter().next().unwrap();
            assert!(k == "microdao_id" || k == "customer_id");
            (
                v.as_str().unwrap().to_string(),
                a["metric"].as_str().unwrap().to_string(),
                a["hour"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    let mut expected: Vec<(String, String, String)> = want
        .iter()
        .map(|(s, m)| (s.to_string(), m.to_string(), ts(spike)))
        .collect();
    expected.sort();
    assert_eq!(found, expected, "{report:#}");

    // The baseline of the tokens anomaly is the median of the same hour on
    // the seven days before, computed here.
    let a = report["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["metric"] == "total_tokens")
        .unwrap();
    let mut days: Vec<i64> = (1..=7)
        .map(|k| tokens[&("microdao:spike", spike - k * DAY)])
        .collect();
    days.sort();
    assert_eq!(a["baseline"].as_f64().unwrap(), days[3] as f64, "{a}");
    assert_eq!(
        a["value"].as_f64().unwrap(),
        tokens[&("microdao:spike", spike)] as f64
    );
    assert_eq!(a["baseline_days"], 7);

    // The steady scopes are judged ok; the new tenant has too little history.
    let checked = report["checked"].as_array().unwrap();
    let status = |scope: &str, metric: &str| -> Value {
        checked
            .iter()
            .find(|c| {
                c["scope_id"] == scope && c["metric"] == metric && c["hour"] == ts(spike).as_str()
            })
            .unwrap_or_else(|| panic!("{scope} {metric} not judged: {report:#}"))
            .clone()
    };
    for (scope, metric) in [
        ("microdao:steady", "cost_usd"),
        ("microdao:steady", "total_tokens"),
        ("cust-steady", "vm_cpu_seconds"),
    ] {
        let c = status(scope, metric);
        assert_eq!(
            (c["status"].as_str(), c["baseline_days"].as_u64()),
            (Some("ok"), Some(7)),
            "{c}"
        );
        assert!(
            c["score"].as_f64().unwrap() < report["threshold"].as_f64().unwrap(),
            "{c}"
        );
    }
    for metric in ["cost_usd", "total_tokens"] {
        let c = status("microdao:new", metric);
        assert_eq!(c["status"], "not enough history", "{c}");
    }

    // Each went to the webhook once accepted (after a 503), signed, and is
    // a row of the anomalies dataset; a few more scans add nothing.
    let accepted = receiver.wait_accepted(3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.accepted().len(), 3, "{:#?}", receiver.deliveries());
    for d in &accepted {
        assert_eq!(
            d.signature.as_deref(),
            Some(hmac_sha256(SECRET.as_bytes(), d.body.as_bytes()).as_str())
        );
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["type"], "anomaly");
    }
    let rows = t
        .sql("SELECT scope_id, metric, value, baseline FROM anomalies ORDER BY scope_id, metric")
        .await;
    let stored: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["scope_id"].as_str().unwrap().to_string(),
                r["metric"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        stored,
        [
            ("cust-spike", "vm_cpu_seconds"),
            ("microdao:spike", "cost_usd"),
            ("microdao:spike", "total_tokens")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
}
