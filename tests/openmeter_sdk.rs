//! OpenMeter's own clients against tally, unchanged but for the base URL
//! and the token: `@openmeter/sdk` (npm) and `openmeter` (PyPI), both
//! pinned and installed by `scripts/test.sh`. Each sends the events of the
//! test (one, a batch, a resend, a bad one) and lists them back, then makes
//! a meter, queries it (JSON, CSV; the JavaScript client also with
//! `filterGroupBy[model]`) and deletes it; what it saw is compared with
//! sums computed here from the events the test sent.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{create_token, Tally};
use serde_json::{json, Value};

/// The events one client sends: ids are the client's own.
fn plan(client: &str) -> Value {
    let ev = |n: u32, subject: &str, tokens: i64, time: &str| {
        json!({"specversion": "1.0", "id": format!("{client}-{n}"), "source": "sdk-test",
               "type": "tokens", "subject": subject, "time": time,
               "data": {"tokens": tokens, "model": "m1"}})
    };
    let mut bad = ev(99, "s", 1, "2026-12-06T10:00:00Z");
    bad.as_object_mut().unwrap().remove("subject");
    json!({
        "single": ev(1, "cust-1", 5, "2026-12-06T10:00:00.123Z"),
        // Microseconds (Python's isoformat) and no fraction.
        "batch": [ev(2, "cust-1", 7, "2026-12-06T10:05:00.123456Z"),
                  ev(3, "cust-2", 11, "2026-12-06T10:10:00Z"),
                  ev(4, "cust-2", 13, "2026-12-06T11:00:00.5Z")],
        "again": [ev(2, "cust-1", 7, "2026-12-06T10:05:00.123456Z")],
        "bad": bad,
        "since": "2026-12-01T00:00:00Z",
        "meter": {"slug": format!("{client}_tokens"), "eventType": "tokens", "aggregation": "SUM",
                  "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}},
        "query": {"windowSize": "HOUR", "windowTimeZone": "UTC", "subject": ["cust-1", "cust-2"],
                  "groupBy": ["model"], "filterModel": "m1"},
    })
}

/// Runs a client script with the plan on stdin; its JSON output.
fn run(program: &str, script: &Path, t: &Tally, tokens: [&str; 3], plan: &Value) -> Value {
    let [ingest, read, admin] = tokens;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(program)
        .arg(script)
        .current_dir(repo)
        .env("TALLY_URL", t.url(""))
        .env("TALLY_INGEST_TOKEN", ingest)
        .env("TALLY_READ_TOKEN", read)
        .env("TALLY_ADMIN_TOKEN", admin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(plan.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// What a client must have seen: the events of its plan once each, the bad
/// one refused naming its field.
fn check(client: &str, plan: &Value, seen: &Value) {
    assert_eq!(seen["bad_status"], 400, "{client}: {seen}");
    let detail = seen["bad_detail"].as_str().unwrap_or_default();
    assert!(detail.contains("subject is required"), "{client}: {detail}");
    let mut sent: BTreeMap<String, Value> = BTreeMap::new();
    for e in std::iter::once(&plan["single"]).chain(plan["batch"].as_array().unwrap()) {
        sent.insert(e["id"].as_str().unwrap().to_string(), e.clone());
    }
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for e in seen["events"].as_array().unwrap() {
        let id = e["id"].as_str().unwrap();
        *got.entry(id.to_string()).or_default() += 1;
        let want = &sent[id];
        assert_eq!(e["subject"], want["subject"], "{client}: {e}");
        assert_eq!(e["data"], want["data"], "{client}: {e}");
    }
    let want: BTreeMap<String, usize> = sent.keys().map(|k| (k.clone(), 1)).collect();
    assert_eq!(got, want, "{client}: each event once, the resend a copy");

    // The meter's rows: tokens per hour, subject and model, summed here.
    assert_eq!(
        seen["meter"]["id"].as_str().map(str::len),
        Some(26),
        "{client}: {seen}"
    );
    let mut sums: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for e in sent.values() {
        let t = chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap();
        let hour = t.timestamp() - t.timestamp().rem_euclid(3600);
        *sums
            .entry((
                hour.to_string(),
                e["subject"].as_str().unwrap().into(),
                e["data"]["model"].as_str().unwrap().into(),
            ))
            .or_default() += e["data"]["tokens"].as_f64().unwrap();
    }
    let mut rows: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for r in seen["rows"].as_array().unwrap() {
        let t = chrono::DateTime::parse_from_rfc3339(
            &r["windowStart"].as_str().unwrap().replace("+00:00", "Z"),
        )
        .unwrap();
        rows.insert(
            (
                t.timestamp().to_string(),
                r["subject"].as_str().unwrap().into(),
                r["groupBy"]["model"].as_str().unwrap().into(),
            ),
            r["value"].as_f64().unwrap(),
        );
    }
    assert_eq!(rows, sums, "{client}: {seen}");
    if let Some(posted) = seen.get("posted_rows") {
        assert_eq!(
            posted, &seen["rows"],
            "{client}: a POST query answers as the GET"
        );
    }
    if let Some(filtered) = seen.get("filtered") {
        let total: f64 = filtered
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["value"].as_f64().unwrap())
            .sum();
        assert_eq!(
            total,
            sums.values().sum::<f64>(),
            "{client}: every event is of model m1"
        );
    }
    if let Some(csv) = seen["csv"].as_str() {
        assert!(
            csv.starts_with("window_start,window_end,subject,model,value"),
            "{csv}"
        );
        assert_eq!(csv.lines().count(), 1 + sums.len(), "{csv}");
    }
    assert_eq!(seen["after_delete"], 0, "{client}");
}

#[tokio::test]
async fn openmeters_own_clients_send_and_list_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Meters are defined by an admin token (of every tenant).
    let admin = create_token(&data, "ops", "admin", &[]);
    let py = [
        create_token(&data, "py-in", "ingest", &["py"]),
        create_token(&data, "py-read", "read", &["py"]),
        admin.clone(),
    ];
    let js = [
        create_token(&data, "js-in", "ingest", &["js"]),
        create_token(&data, "js-read", "read", &["js"]),
        admin.clone(),
    ];
    let t = Tally::start(&data, &[]).await;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));

    let py_plan = plan("py");
    let seen = run(
        "python3",
        &repo.join("tests/clients/openmeter_events.py"),
        &t,
        py.each_ref().map(String::as_str),
        &py_plan,
    );
    check("python", &py_plan, &seen);

    let js_plan = plan("js");
    let seen = run(
        "node",
        &repo.join("tests/clients/openmeter_events.mjs"),
        &t,
        js.each_ref().map(String::as_str),
        &js_plan,
    );
    check("node", &js_plan, &seen);
}
