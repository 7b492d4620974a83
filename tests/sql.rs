//! SQL over HTTP: fresh records are visible before any flush, formats follow
//! `Accept`, and anything but a query is refused.

mod common;

use std::io::Cursor;

use arrow::ipc::reader::StreamReader;
use common::{llm_event, Tally};

#[tokio::test]
async fn sql_sees_unflushed_records_in_every_format_and_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = Tally::start(&data, &["--flush-interval", "1h"]).await;
    let client = reqwest::Client::new();
    let mut sent_tokens = 0i64;
    for i in 0..25 {
        let e = llm_event(&format!("q-{i}"), "2025-11-24T12:00:00Z", i, 2 * i);
        sent_tokens += 3 * i;
        let r = client
            .post(t.url("/v1/events/usage.llm"))
            .json(&e)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Acknowledged a moment ago; no Parquet file exists yet.
    assert!(common::parquet_files(&data, "usage_llm").is_empty());
    let rows = t
        .sql("SELECT count(*) AS n, sum(total_tokens) AS tokens FROM usage_llm WHERE model = 'gpt-4.1-mini'")
        .await;
    assert_eq!(rows[0]["n"], 25);
    assert_eq!(rows[0]["tokens"], sent_tokens);

    let csv = client
        .post(t.url("/v1/sql"))
        .header("accept", "text/csv")
        .body("SELECT event_id, prompt_tokens FROM usage_llm WHERE prompt_tokens < 2 ORDER BY event_id")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        csv.text().await.unwrap(),
        "event_id,prompt_tokens\nq-0,0\nq-1,1\n"
    );

    let arrow = client
        .post(t.url("/v1/sql"))
        .header("accept", "application/vnd.apache.arrow.stream")
        .body("SELECT event_id FROM usage_llm")
        .send()
        .await
        .unwrap();
    let bytes = arrow.bytes().await.unwrap();
    let reader = StreamReader::try_new(Cursor::new(bytes), None).unwrap();
    let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 25);

    for statement in [
        "DROP TABLE usage_llm",
        "CREATE TABLE x AS SELECT 1",
        "INSERT INTO usage_llm SELECT * FROM usage_llm",
        "SET datafusion.execution.batch_size = 1",
        "SELEC 1",
        "",
    ] {
        let r = client
            .post(t.url("/v1/sql"))
            .body(statement)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{statement}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "Invalid query", "{statement}");
        assert!(!body["detail"].as_str().unwrap().is_empty());
    }
    // Still all there, and the same after a flush to Parquet.
    t.terminate();
    let t = Tally::start(&data, &["--flush-interval", "1h"]).await;
    assert_eq!(common::parquet_files(&data, "usage_llm").len(), 1);
    let rows = t.sql("SELECT count(*) AS n FROM usage_llm").await;
    assert_eq!(rows[0]["n"], 25);
}

/// The live buffer holds each request's rows as Arrow columns: SQL reads
/// them before any flush, /metrics says how much memory they take, and a
/// request whose events fall in several hours is split into one file per
/// hour when flushed, each row once.
#[tokio::test]
async fn the_live_buffer_answers_sql_reports_its_memory_and_splits_hours_when_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = Tally::start(&data, &["--flush-interval", "1h"]).await;
    // Three requests; the rows of each fall in three hours, out of order.
    let hours = ["2025-11-24T10", "2025-11-24T08", "2025-11-24T09"];
    let mut want: std::collections::BTreeMap<String, (u64, i64)> = Default::default();
    for request in 0..3 {
        let events: Vec<serde_json::Value> = (0..300)
            .map(|i| {
                let hour = hours[(i * 7 + request) % 3];
                let ts = format!("{hour}:{:02}:{:02}Z", i % 60, (i * 13) % 60);
                let (p, c) = ((i * 31 % 997) as i64, (i % 89) as i64);
                let e = want.entry(hour.to_string()).or_default();
                e.0 += 1;
                e.1 += p + c;
                llm_event(&format!("b-{request}-{i}"), &ts, p, c)
            })
            .collect();
        let body = t.post_llm_events(&events).await;
        assert_eq!(body["accepted"], 300, "{body}");
    }
    assert!(common::parquet_files(&data, "usage_llm").is_empty());
    let by_hour = |rows: Vec<serde_json::Value>| -> std::collections::BTreeMap<String, (u64, i64)> {
        rows.iter()
            .map(|r| {
                (
                    r["h"].as_str().unwrap()[..13].to_string(),
                    (r["n"].as_u64().unwrap(), r["tokens"].as_i64().unwrap()),
                )
            })
            .collect()
    };
    let query =
        "SELECT to_char(date_trunc('hour', timestamp), '%Y-%m-%dT%H') AS h, count(*) AS n, \
                 sum(total_tokens) AS tokens FROM usage_llm GROUP BY 1 ORDER BY 1";
    assert_eq!(by_hour(t.sql(query).await), want);

    // The buffer's gauges are whole numbers.
    let gauge = |text: &str, series: &str| common::metric(text, series) as u64;
    let metrics = t.metrics_text().await;
    let rows = gauge(&metrics, "tally_buffer_rows{dataset=\"usage_llm\"}");
    let bytes = gauge(&metrics, "tally_buffer_bytes{dataset=\"usage_llm\"}");
    let per_row = gauge(
        &metrics,
        "tally_buffer_bytes_per_row{dataset=\"usage_llm\"}",
    );
    assert_eq!(rows, 900);
    assert_eq!(per_row, bytes / rows);
    // Columns of a few short strings and numbers: more than the numbers
    // alone, far less than a row of separately allocated values.
    assert!((40..2_000).contains(&per_row), "{per_row} bytes a row");

    // Flushed at the stop: one file per hour, the same answers.
    t.terminate();
    let t = Tally::start(&data, &["--flush-interval", "1h"]).await;
    let files = common::parquet_files(&data, "usage_llm");
    assert_eq!(files.len(), 3, "{files:?}");
    assert_eq!(by_hour(t.sql(query).await), want);
    let metrics = t.metrics_text().await;
    assert_eq!(
        gauge(&metrics, "tally_buffer_rows{dataset=\"usage_llm\"}"),
        0
    );
    assert_eq!(
        gauge(
            &metrics,
            "tally_buffer_bytes_per_row{dataset=\"usage_llm\"}"
        ),
        0
    );
}

#[tokio::test]
async fn tally_sql_reads_files_and_the_wal_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = Tally::start(&data, &["--flush-interval", "1h"]).await;
    let client = reqwest::Client::new();
    for i in 0..3 {
        let e = llm_event(&format!("o-{i}"), "2025-11-24T12:00:00Z", 1, 1);
        client
            .post(t.url("/v1/events/usage.llm"))
            .json(&e)
            .send()
            .await
            .unwrap();
    }
    t.terminate();
    let t = Tally::start(&data, &["--flush-interval", "1h"]).await;
    let e = llm_event("o-wal", "2025-11-24T13:00:00Z", 1, 1);
    client
        .post(t.url("/v1/events/usage.llm"))
        .json(&e)
        .send()
        .await
        .unwrap();
    // Killed: o-wal is only in the WAL, the others in Parquet.
    t.kill9();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["sql", "--format", "csv", "--data"])
        .arg(&data)
        .arg("SELECT event_id FROM usage_llm ORDER BY event_id")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "event_id\no-0\no-1\no-2\no-wal\n"
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["sql", "--data"])
        .arg(&data)
        .arg("DELETE FROM usage_llm")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("DML not supported"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
