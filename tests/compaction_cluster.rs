//! Two writers on one shared data directory: the node with the smallest id
//! among an hour's writers compacts it, the other leaves it alone, and both
//! read every record once afterwards.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{llm_event, Tally};

async fn node(data: &Path, state: &Path, id: &str, extra: &[&str]) -> Tally {
    let mut args = vec![
        "--state-dir",
        state.to_str().unwrap(),
        "--node-id",
        id,
        "--list-interval",
        "100ms",
        "--flush-interval",
        "100ms",
        "--no-sampler",
    ];
    args.extend_from_slice(extra);
    Tally::start_logged(data, &state.with_extension("log"), &args, &[]).await
}

/// `tally_compactions_total` of `usage_llm` on a node.
async fn compactions(t: &Tally) -> u64 {
    let text = t.metrics_text().await;
    text.lines()
        .find(|l| l.starts_with("tally_compactions_total{dataset=\"usage_llm\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no compaction counter in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smallest_node_id_compacts_a_shared_hour() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (state_a, state_b) = (dir.path().join("a"), dir.path().join("b"));
    let hour = "2026-11-20T10:15:00Z";
    let events = |from: usize, n: usize| -> Vec<serde_json::Value> {
        (from..from + n)
            .map(|i| llm_event(&format!("e{i}"), hour, 100, 20))
            .collect()
    };
    // Both nodes write into one closed hour, with compaction held back.
    let hold = ["--compact-interval", "1h"];
    let b = node(&data, &state_b, "node-b", &hold).await;
    let a = node(&data, &state_a, "node-a", &hold).await;
    assert_eq!(b.post_llm_events(&events(0, 300)).await["accepted"], 300);
    assert_eq!(a.post_llm_events(&events(300, 200)).await["accepted"], 200);
    a.terminate();
    b.terminate();
    let partition = data.join("usage_llm/date=2026-11-20/hour=10");
    let names = |dir: &Path| -> Vec<String> {
        common::files_under(dir)
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    let before = names(&partition);
    assert!(
        before.iter().any(|n| n.starts_with("node-a-"))
            && before.iter().any(|n| n.starts_with("node-b-")),
        "{before:?}"
    );

    // Both again, compacting: node-b starts first and still leaves it.
    let run = ["--compact-after", "0s", "--compact-interval", "200ms"];
    let b = node(&data, &state_b, "node-b", &run).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        compactions(&b).await,
        0,
        "node-b compacted an hour node-a wrote into"
    );
    assert_eq!(names(&partition).len(), before.len());
    let a = node(&data, &state_a, "node-a", &run).await;
    let mut after = Vec::new();
    for _ in 0..100 {
        after = names(&partition);
        if after.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].starts_with("node-a-"), "{after:?}");
    assert_eq!(compactions(&a).await, 1);
    assert_eq!(compactions(&b).await, 0);
    // Each node reads every event once: node-b from the file node-a wrote.
    for t in [&a, &b] {
        let mut n = 0;
        for _ in 0..50 {
            let rows = t
                .sql("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM usage_llm")
                .await;
            n = rows[0]["n"].as_u64().unwrap();
            if n == 500 && rows[0]["d"].as_u64() == Some(500) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(n, 500);
    }
}
