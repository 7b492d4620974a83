//! Damage on disk, with the real binary: a flipped byte in the WAL after
//! `kill -9`, a damaged and a foreign Parquet file, a file damaged while
//! tally runs. What can be read is kept, the rest is in quarantine, and
//! tally says so until an operator acknowledges it.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{
    files_under, llm_event, parquet_files, serve_refused, state_json, stored_event_ids,
    tally_check, Tally,
};

/// Frames of a WAL segment as `(offset, payload length, seq)`, read with
/// the frame layout of `pipeline/src/wal/codec.rs` (u32 length, u32 crc, u64 seq, payload),
/// independently of tally's reader.
fn frames(bytes: &[u8]) -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let seq = u64::from_le_bytes(bytes[pos + 8..pos + 16].try_into().unwrap());
        if pos + 16 + len > bytes.len() {
            break;
        }
        out.push((pos, len, seq));
        pos += 16 + len;
    }
    out
}

fn wal_segments(data: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(data.join("_tally/wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    out.sort();
    out
}

fn batch(prefix: &str, n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            llm_event(
                &format!("{prefix}-{i:05}"),
                "2025-11-24T10:00:00Z",
                i as i64,
                3,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_wal_costs_one_entry_and_is_reported_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--flush-interval", "1h", "--no-sampler"];
    let t = Tally::start(&data, &args).await;
    let batches = [batch("a", 1000), batch("b", 1000), batch("c", 1000)];
    for b in &batches {
        let r = t.post_llm_events(b).await;
        assert_eq!(r["accepted"], 1000);
    }
    t.kill9();

    // Flip one byte in the middle of the second of the three entries.
    let segments = wal_segments(&data);
    let (path, mut bytes, offsets) = segments
        .iter()
        .map(|p| {
            let b = std::fs::read(p).unwrap();
            let f = frames(&b);
            (p.clone(), b, f)
        })
        .find(|(_, _, f)| f.len() == 3)
        .expect("one segment holds the three entries");
    let (at, len, _) = offsets[1];
    bytes[at + 16 + len / 2] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let t = Tally::start(&data, &args).await;
    let rows = t
        .sql("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM usage_llm")
        .await;
    assert_eq!(rows[0]["n"], 2000, "{rows:?}");
    assert_eq!(rows[0]["d"], 2000);
    let (status, h) = t.health().await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["status"], "degraded", "{h}");
    let damage = &h["components"]["damage"];
    assert_eq!(damage["status"], "degraded");
    assert_eq!(damage["unread_wal_entries"], 1, "{damage}");
    assert_eq!(damage["reports"][0]["kind"], "wal_segment");
    assert_eq!(damage["reports"][0]["offset"], at as u64, "{damage}");
    let kept = PathBuf::from(damage["reports"][0]["quarantined"].as_str().unwrap());
    assert!(kept.starts_with(data.join("_tally/quarantine")), "{kept:?}");
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        bytes,
        "the damaged segment is kept whole"
    );
    let metrics = t.metrics_text().await;
    assert!(
        metrics.contains("tally_damage_reports_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("tally_damage_unread_wal_entries_total 1\n"));
    assert!(metrics.contains("tally_damage_unacknowledged 1\n"));
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(
        log.contains("ERROR") && log.contains(&path.display().to_string()),
        "the log names the damaged segment at ERROR"
    );

    // Stopping flushes what was salvaged; the Parquet files hold exactly
    // the first and third batches.
    t.terminate();
    let stored = stored_event_ids(&data, "usage_llm");
    let want: BTreeSet<String> = batches[0]
        .iter()
        .chain(&batches[2])
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert!(stored.values().all(|&n| n == 1));
    assert!(
        kept.exists(),
        "the quarantined copy outlives the WAL segment"
    );

    // Still degraded after a restart, until acknowledged.
    let t = Tally::start(&data, &args).await;
    assert_eq!(t.health().await.1["status"], "degraded");
    let ack: serde_json::Value = reqwest::Client::new()
        .post(t.url("/v1/damage/acknowledge"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ack["acknowledged"], 1);
    let (_, h) = t.health().await;
    assert_eq!(h["status"], "ok", "{h}");
    t.terminate();
    let (code, out) = tally_check(&data, &[]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_and_a_foreign_file_are_quarantined_and_everything_else_answers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--no-sampler"];
    let t = Tally::start(&data, &args).await;
    let hour = |h: u32, prefix: &str| -> Vec<serde_json::Value> {
        (0..50)
            .map(|i| {
                llm_event(
                    &format!("{prefix}-{i}"),
                    &format!("2025-11-24T{h:02}:00:00Z"),
                    1,
                    1,
                )
            })
            .collect()
    };
    t.post_llm_events(&hour(10, "h10")).await;
    t.post_llm_events(&hour(11, "h11")).await;
    let tools: Vec<serde_json::Value> = (0..7)
        .map(|i| {
            serde_json::json!({"event_id": format!("tool-{i}"), "timestamp": "2025-11-24T10:00:00Z",
                "actor_id": "user:1", "actor_type": "human", "tool_id": "t", "tool_name": "search",
                "success": true, "latency_ms": 5})
        })
        .collect();
    let r = reqwest::Client::new()
        .post(t.url("/v1/events/usage.tool"))
        .body(common::ndjson(&tools))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    t.terminate();
    let (code, out) = tally_check(&data, &[]);
    assert_eq!(code, 0, "a healthy tree: {out}");

    // Two bytes of hour 10's file flipped in its footer length; a stray file
    // in hour 11.
    let files = parquet_files(&data, "usage_llm");
    let damaged = files
        .iter()
        .find(|p| p.to_string_lossy().contains("hour=10"))
        .unwrap()
        .clone();
    let mut bytes = std::fs::read(&damaged).unwrap();
    let n = bytes.len();
    bytes[n - 6] ^= 0xff;
    bytes[n - 7] ^= 0xff;
    std::fs::write(&damaged, &bytes).unwrap();
    let junk = damaged
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("hour=11/junk.parquet");
    std::fs::write(&junk, b"this is not a parquet file at all").unwrap();

    let (code, out) = tally_check(&data, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&damaged.display().to_string()), "{out}");
    assert!(out.contains(&junk.display().to_string()), "{out}");

    let t = Tally::start(&data, &args).await;
    let rows = t
        .sql("SELECT count(*) AS n FROM usage_llm WHERE event_id LIKE 'h11-%'")
        .await;
    assert_eq!(rows[0]["n"], 50);
    let rows = t.sql("SELECT count(*) AS n FROM usage_tool").await;
    assert_eq!(rows[0]["n"], 7);
    let (status, h) = t.health().await;
    assert_eq!(status, 200);
    assert_eq!(h["status"], "degraded");
    let reports = h["components"]["damage"]["reports"].as_array().unwrap();
    let kinds: BTreeSet<&str> = reports
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["parquet_file", "foreign_file"]));
    assert!(!damaged.exists() && !junk.exists());
    let kept = files_under(&data.join("_tally/quarantine/files"));
    let names: BTreeSet<String> = kept
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains("junk.parquet"), "{kept:?}");
    assert!(
        names.contains(&damaged.file_name().unwrap().to_string_lossy().into_owned()),
        "{kept:?}"
    );
    let moved = kept.iter().find(|p| p.file_name() == damaged.file_name());
    assert_eq!(std::fs::read(moved.unwrap()).unwrap(), bytes);

    // A file damaged while tally runs: the query that meets it still
    // answers, without it.
    let h11 = parquet_files(&data, "usage_llm")
        .into_iter()
        .find(|p| p.to_string_lossy().contains("hour=11"))
        .unwrap();
    let whole = std::fs::read(&h11).unwrap();
    std::fs::write(&h11, &whole[..whole.len() / 2]).unwrap();
    let rows = t.sql("SELECT count(*) AS n FROM usage_llm").await;
    assert_eq!(rows[0]["n"], 0, "{rows:?}");
    assert!(
        !h11.exists(),
        "the file damaged at read time is in quarantine"
    );
    let (_, h) = t.health().await;
    assert_eq!(h["components"]["damage"]["unacknowledged"], 3, "{h}");
    t.terminate();

    let (code, out) = tally_check(&data, &[]);
    assert_eq!(code, 0, "the tree is healthy once the files are out: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_repair_quarantines_without_serving() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = Tally::start(&data, &["--no-sampler"]).await;
    t.post_llm_events(&batch("x", 10)).await;
    t.terminate();
    let stray = data.join("usage_llm/date=2025-11-24/hour=10/copied-by-hand.parquet");
    std::fs::write(&stray, b"PAR1 not really").unwrap();
    let (code, out) = tally_check(&data, &["--repair"]);
    assert_eq!(code, 1, "damage was found: {out}");
    assert!(!stray.exists());
    let (code, out) = tally_check(&data, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 damage report(s)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_checkpoint_is_rebuilt_and_a_damaged_usage_config_refused_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Batch a in Parquet; batch b only in the WAL (kill -9).
    let t = Tally::start(&data, &["--no-sampler"]).await;
    let a = batch("a", 300);
    t.post_llm_events(&a).await;
    t.terminate();
    let t = Tally::start(&data, &["--no-sampler", "--flush-interval", "1h"]).await;
    let b = batch("b", 200);
    t.post_llm_events(&b).await;
    t.kill9();

    // Bit rot in the checkpoint and in the Usage API configuration.
    for name in ["checkpoint.json", "usage_config.json"] {
        let path = data.join("_tally").join(name);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0x20;
        bytes[5] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
    }
    let (code, out) = tally_check(&data, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("checkpoint.json"), "{out}");
    assert!(
        out.contains("usage_config.json: Usage API configuration"),
        "{out}"
    );

    // The configuration an operator set is never half-trusted: start-up
    // refuses, names the file and says what to do.
    let (code, err) = serve_refused(&data, &["--no-sampler"]);
    assert_ne!(code, 0);
    assert!(err.contains("usage_config.json is damaged"), "{err}");
    assert!(err.contains("tally check --repair"), "{err}");
    // The operator has no backup: --repair moves it aside.
    let (code, out) = tally_check(&data, &["--repair"]);
    assert_eq!(code, 1, "{out}");

    let t = Tally::start(&data, &["--no-sampler", "--flush-interval", "1h"]).await;
    // The checkpoint now says what a's files hold, read from their metadata
    // here with the parquet crate.
    let last_in_files = parquet_files(&data, "usage_llm")
        .iter()
        .map(|p| {
            let file = std::fs::File::open(p).unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap();
            let kv = reader
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .unwrap();
            kv.iter()
                .find(|kv| kv.key == "tally.last_wal_seq")
                .and_then(|kv| kv.value.as_deref())
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .max()
        .unwrap();
    let checkpoint = state_json(&data.join("_tally/checkpoint.json"));
    assert!(last_in_files > 0);
    assert_eq!(checkpoint["flushed_seq"], last_in_files);
    let rows = t
        .sql("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM usage_llm")
        .await;
    assert_eq!(rows[0]["n"], 500, "{rows:?}");
    assert_eq!(rows[0]["d"], 500);
    let (_, h) = t.health().await;
    assert_eq!(h["status"], "degraded");
    let reports = h["components"]["damage"]["reports"].as_array().unwrap();
    let paths: BTreeSet<String> = reports
        .iter()
        .map(|r| {
            assert_eq!(r["kind"], "state_file", "{r}");
            r["path"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(data
        .join("_tally/quarantine/state/checkpoint.json")
        .exists());
    assert!(data
        .join("_tally/quarantine/state/usage_config.json")
        .exists());
    // The Usage API answers with its defaults.
    let config: serde_json::Value = reqwest::get(t.url("/api/usage/config"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["plan"], "custom", "{config}");
    t.terminate();
    let stored = stored_event_ids(&data, "usage_llm");
    assert_eq!(stored.len(), 500);
    assert!(stored.values().all(|&n| n == 1), "every record stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_compaction_cannot_read_is_quarantined_and_its_hour_compacts_from_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let events = |h: u32, prefix: &str, n: usize| -> Vec<serde_json::Value> {
        (0..n)
            .map(|i| {
                llm_event(
                    &format!("{prefix}-{i}"),
                    &format!("2025-11-24T{h:02}:00:00Z"),
                    1,
                    1,
                )
            })
            .collect()
    };
    // Two runs with compaction held back: two files in each of hours 10 and 11.
    let hold = ["--no-sampler", "--compact-interval", "1h"];
    for (prefix, n) in [("a", 30), ("b", 40)] {
        let t = Tally::start(&data, &hold).await;
        for h in [10, 11] {
            let sent = t
                .post_llm_events(&events(h, &format!("h{h}{prefix}"), n))
                .await;
            assert_eq!(sent["accepted"], n);
        }
        t.terminate();
    }
    let hour10 = |data: &Path| -> Vec<PathBuf> {
        parquet_files(data, "usage_llm")
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("hour=10"))
            .collect()
    };
    let files = hour10(&data);
    assert_eq!(files.len(), 2, "{files:?}");
    // Compaction's first pass comes 2 s after start-up. Before it, the file
    // holding the first batch has its pages zeroed and its footer kept
    // whole: only a full read (the merge) fails on it.
    let t = Tally::start(
        &data,
        &[
            "--no-sampler",
            "--compact-after",
            "0s",
            "--compact-interval",
            "2s",
        ],
    )
    .await;
    let damaged = files
        .iter()
        .find(|f| {
            let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
            !text.contains("h10b-")
        })
        .unwrap()
        .clone();
    let mut bytes = std::fs::read(&damaged).unwrap();
    let end = bytes.len() * 3 / 5;
    bytes[4..end].fill(0);
    std::fs::write(&damaged, &bytes).unwrap();
    let mut layout = BTreeSet::new();
    for _ in 0..150 {
        layout = common::files_per_hour(&data.join("usage_llm"))
            .into_iter()
            .collect();
        if layout.len() == 2 && layout.iter().all(|(_, n)| *n == 1) && !damaged.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!damaged.exists(), "the damaged file left the data tree");
    assert!(
        layout.iter().all(|(_, n)| *n == 1) && layout.len() == 2,
        "each hour compacted into one file: {layout:?}"
    );
    let kept = files_under(&data.join("_tally/quarantine/files"));
    let moved = kept
        .iter()
        .find(|p| p.file_name() == damaged.file_name())
        .unwrap_or_else(|| panic!("{kept:?}"));
    assert_eq!(std::fs::read(moved).unwrap(), bytes, "kept as it was found");
    // Hour 10 holds the second batch only; hour 11 both, each once.
    let rows = t
        .sql("SELECT count(*) AS n FROM usage_llm WHERE event_id LIKE 'h10%'")
        .await;
    assert_eq!(rows[0]["n"], 40);
    let rows = t
        .sql("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM usage_llm WHERE event_id LIKE 'h11%'")
        .await;
    assert_eq!(
        (rows[0]["n"].as_u64(), rows[0]["d"].as_u64()),
        (Some(70), Some(70))
    );
    let (_, h) = t.health().await;
    let reports = h["components"]["damage"]["reports"].as_array().unwrap();
    assert!(
        reports.iter().any(|r| r["kind"] == "parquet_file"
            && r["path"]
                .as_str()
                .unwrap()
                .ends_with(&damaged.file_name().unwrap().to_string_lossy().into_owned())),
        "{h}"
    );
    let metrics = t.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tally_compaction_errors_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    t.terminate();
}
