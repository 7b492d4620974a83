//! With the Parquet writer held back, the row bound answers 429 and memory
//! stays bounded.

mod common;

use common::{llm_event, ndjson, Tally};

#[tokio::test]
async fn full_queue_answers_429_with_retry_after_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // The writer never comes due: every record stays queued.
    let t = Tally::start(
        &dir.path().join("data"),
        &[
            "--flush-interval",
            "1h",
            "--flush-rows",
            "100000000",
            "--max-queued-rows",
            "2000",
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let mut accepted = 0u64;
    let mut refused = 0u64;
    let mut rss_after_first_refusal = 0;
    for batch in 0..400u64 {
        let events: Vec<_> = (0..100)
            .map(|i| llm_event(&format!("bp-{batch}-{i}"), "2025-11-24T12:00:00Z", 10, 10))
            .collect();
        let r = client
            .post(t.url("/v1/events/usage.llm"))
            .header("content-type", "application/x-ndjson")
            .body(ndjson(&events))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => {
                let body: serde_json::Value = r.json().await.unwrap();
                accepted += body["accepted"].as_u64().unwrap();
            }
            429 => {
                assert_eq!(r.headers()["retry-after"], "1");
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["error"], "Too many requests");
                assert!(
                    body["detail"]
                        .as_str()
                        .unwrap()
                        .contains("usage_llm queue is full"),
                    "{body}"
                );
                if refused == 0 {
                    rss_after_first_refusal = t.rss_kib();
                }
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(accepted, 2000, "exactly the bound is admitted");
    assert_eq!(refused, 380);
    // 38,000 more records were offered and refused: memory did not follow them.
    let rss_end = t.rss_kib();
    assert!(
        rss_end < rss_after_first_refusal + 20 * 1024,
        "RSS grew from {rss_after_first_refusal} KiB to {rss_end} KiB while refusing"
    );
    let rows = t.sql("SELECT count(*) AS n FROM usage_llm").await;
    assert_eq!(rows[0]["n"], 2000);
    let metrics = reqwest::get(t.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("tally_queue_full_total 380"), "{metrics}");
    assert!(metrics.contains("tally_queue_depth_rows{dataset=\"usage_llm\"} 2000"));
}
