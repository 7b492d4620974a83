//! CloudEvents ingest (`POST /api/v1/events`) and the list of events
//! (`GET /api/v1/events`), as OpenMeter's API has them, against the real
//! binary over HTTP: the three content types, problem+json refusals that
//! name the event and the field, a bad batch stored not at all, dedup on
//! (tenant, source, id) across a restart, and tenants kept apart.

mod common;

use std::collections::BTreeMap;

use common::{create_token, Tally};
use serde_json::{json, Value};

async fn send(t: &Tally, token: &str, content_type: &str, body: &Value) -> (u16, String, Value) {
    let r = reqwest::Client::new()
        .post(t.url("/api/v1/events"))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    (
        status,
        ct,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

async fn list(t: &Tally, token: &str, query: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(t.url(&format!("/api/v1/events{query}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn event(id: &str, subject: &str, tokens: i64) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "api-gateway", "type": "request",
           "subject": subject, "time": "2026-12-06T10:00:00.123Z",
           "data": {"tokens": tokens, "model": "m1"}})
}

/// (id → times listed) of a tenant's events, and the events by id.
async fn listed(t: &Tally, token: &str) -> (BTreeMap<String, usize>, BTreeMap<String, Value>) {
    let (status, body) = list(t, token, "?from=2026-12-01T00:00:00Z").await;
    assert_eq!(status, 200, "{body}");
    let mut counts = BTreeMap::new();
    let mut events = BTreeMap::new();
    for e in body.as_array().unwrap() {
        let id = e["event"]["id"].as_str().unwrap().to_string();
        *counts.entry(id.clone()).or_insert(0) += 1;
        events.insert(id, e.clone());
    }
    (counts, events)
}

fn problem(status: u16, ct: &str, body: &Value, want_status: u16, needles: &[&str]) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(ct, "application/problem+json", "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    for n in needles {
        assert!(detail.contains(n), "{n:?} not in {detail:?}");
    }
}

#[tokio::test]
async fn events_in_three_content_types_deduplicated_per_tenant_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let acme = create_token(&data, "acme-in", "ingest", &["acme"]);
    let globex = create_token(&data, "globex-in", "ingest", &["globex"]);
    let acme_read = create_token(&data, "acme-read", "read", &["acme"]);
    let globex_read = create_token(&data, "globex-read", "read", &["globex"]);
    let admin = create_token(&data, "ops", "admin", &[]);
    let t = Tally::start(&data, &[]).await;

    // One event, a batch, and both as application/json.
    let (s, _, b) = send(
        &t,
        &acme,
        "application/cloudevents+json",
        &event("e1", "cust-1", 5),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    let batch = json!([event("e2", "cust-1", 7), event("e3", "cust-2", 11)]);
    let (s, _, b) = send(&t, &acme, "application/cloudevents-batch+json", &batch).await;
    assert_eq!(s, 204, "{b}");
    let (s, _, b) = send(&t, &acme, "application/json", &event("e4", "cust-2", 13)).await;
    assert_eq!(s, 204, "{b}");
    let (s, _, b) = send(
        &t,
        &acme,
        "application/json",
        &json!([event("e5", "cust-3", 17)]),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    // Sent again (a retry), and the same id from another source.
    let (s, _, _) = send(
        &t,
        &acme,
        "application/cloudevents+json",
        &event("e1", "cust-1", 5),
    )
    .await;
    assert_eq!(s, 204);
    let mut other_source = event("e1", "cust-1", 5);
    other_source["source"] = json!("billing-job");
    let (s, _, _) = send(&t, &acme, "application/cloudevents+json", &other_source).await;
    assert_eq!(s, 204);
    // Another tenant with the same id: its own event.
    let (s, _, _) = send(
        &t,
        &globex,
        "application/cloudevents+json",
        &event("e1", "cust-9", 99),
    )
    .await;
    assert_eq!(s, 204);

    // Refusals: problem+json naming the event and the field.
    let mut no_id = event("x", "cust-1", 1);
    no_id.as_object_mut().unwrap().remove("id");
    let (s, ct, b) = send(&t, &acme, "application/cloudevents+json", &no_id).await;
    problem(s, &ct, &b, 400, &["id is required"]);
    let mut not_object = event("x1", "cust-1", 1);
    not_object["data"] = json!("tokens=3");
    let (s, ct, b) = send(&t, &acme, "application/cloudevents+json", &not_object).await;
    problem(s, &ct, &b, 400, &["\"x1\"", "data must be a JSON object"]);
    let mut bad_time = event("x2", "cust-1", 1);
    bad_time["time"] = json!("yesterday");
    let bad_batch = json!([event("b1", "cust-1", 1), bad_time, event("b3", "cust-1", 1)]);
    let (s, ct, b) = send(&t, &acme, "application/cloudevents-batch+json", &bad_batch).await;
    problem(
        s,
        &ct,
        &b,
        400,
        &[
            "event 1 (id \"x2\")",
            "time must be an RFC 3339 time",
            "Nothing of the batch was stored",
        ],
    );
    let (s, ct, b) = send(&t, &acme, "text/plain", &event("x3", "c", 1)).await;
    problem(s, &ct, &b, 415, &["application/cloudevents+json"]);
    let (s, ct, b) = send(
        &t,
        "tally_wrong",
        "application/cloudevents+json",
        &event("x4", "c", 1),
    )
    .await;
    problem(s, &ct, &b, 401, &[]);
    let (s, b) = list(&t, &acme_read, "?limit=500").await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["detail"]
            .as_str()
            .unwrap()
            .contains("limit must be an integer from 1 to 100"),
        "{b}"
    );

    // Every event once, a tenant's own only; nothing of the bad batch.
    let want_acme: BTreeMap<String, usize> =
        [("e1", 2), ("e2", 1), ("e3", 1), ("e4", 1), ("e5", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    let (acme_ids, acme_events) = listed(&t, &acme_read).await;
    assert_eq!(acme_ids, want_acme, "e1 twice: from two sources");
    let (globex_ids, globex_events) = listed(&t, &globex_read).await;
    assert_eq!(globex_ids, BTreeMap::from([("e1".to_string(), 1)]));
    assert_eq!(globex_events["e1"]["event"]["data"]["tokens"], 99);
    let e3 = &acme_events["e3"];
    assert_eq!(e3["event"]["subject"], "cust-2");
    assert_eq!(e3["event"]["type"], "request");
    assert_eq!(e3["event"]["specversion"], "1.0");
    assert_eq!(e3["event"]["time"], "2026-12-06T10:00:00.123Z");
    assert_eq!(e3["event"]["data"], json!({"tokens": 11, "model": "m1"}));
    assert!(e3["ingestedAt"].as_str().unwrap().starts_with("20"), "{e3}");
    // Filters: part of a subject, part of an id, and the limit.
    let (_, by_subject) = list(&t, &acme_read, "?from=2026-12-01T00:00:00Z&subject=cust-2").await;
    let mut ids: Vec<&str> = by_subject
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["e3", "e4"]);
    let (_, limited) = list(&t, &acme_read, "?from=2026-12-01T00:00:00Z&limit=2").await;
    assert_eq!(limited.as_array().unwrap().len(), 2);

    // After a restart, the same events sent again are still copies.
    t.terminate();
    let t = Tally::start(&data, &[]).await;
    let (s, _, _) = send(
        &t,
        &acme,
        "application/cloudevents-batch+json",
        &json!([event("e2", "cust-1", 7), event("e6", "cust-1", 1)]),
    )
    .await;
    assert_eq!(s, 204);
    let (acme_ids, _) = listed(&t, &acme_read).await;
    let mut want = want_acme.clone();
    want.insert("e6".into(), 1);
    assert_eq!(acme_ids, want);
    // The stored rows, read back by SQL, agree.
    let r = reqwest::Client::new()
        .post(t.url("/v1/sql"))
        .bearer_auth(&admin)
        .body("SELECT CAST(tenant AS VARCHAR) AS tenant, count(*) AS n FROM events GROUP BY 1 ORDER BY 1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rows: Value = r.json().await.unwrap();
    assert_eq!(
        rows,
        json!([{"tenant": "acme", "n": 7}, {"tenant": "globex", "n": 1}])
    );
}
