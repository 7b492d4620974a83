//! Checksums, with the real binary: a flipped byte in any file tally
//! writes is caught by `tally check`; the server keeps its answers right
//! (from rollups, from raw rows, or marked incomplete) when files are
//! damaged; the scrub finds damage made while it runs; `--repair --from`
//! brings the rows back; a data directory of a release before checksums
//! still opens and is reported as unverified.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{billing_client, create_token, files_under, tally_check, Rng, Tally, WebhookReceiver};
use serde_json::{json, Value};

const HOUR: i64 = 3600;

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// RFC 3339 of Unix seconds.
fn rfc(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The `date=…/hour=…` partition of Unix seconds.
fn partition(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap()
        .format("date=%Y-%m-%d/hour=%H")
        .to_string()
}

async fn post(t: &Tally, subject: &str, events: &[Value]) {
    let body = common::post_events(t, subject, events).await;
    assert_eq!(
        body["accepted"].as_u64(),
        Some(events.len() as u64),
        "{body}"
    );
}

async fn get(t: &Tally, path: &str) -> (Value, Option<String>) {
    let r = reqwest::get(t.url(path)).await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    let marker = r
        .headers()
        .get("tally-incomplete")
        .map(|v| v.to_str().unwrap().to_string());
    (r.json().await.unwrap(), marker)
}

/// Parquet files of a table, by partition.
fn by_hour(data: &Path, table: &str) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for f in files_under(&data.join(table)) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".parquet") || name.starts_with('.') {
            continue;
        }
        let rel = f.strip_prefix(data.join(table)).unwrap();
        let hour: Vec<String> = rel
            .iter()
            .take(2)
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        out.entry(hour.join("/")).or_default().push(f);
    }
    out
}

/// Waits until each of `hours` of `dataset` is one compacted file with its
/// rollup in `rollup`.
async fn wait_rolled(data: &Path, dataset: &str, rollup: &str, hours: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let raw = by_hour(data, dataset);
        let rolled = by_hour(data, rollup);
        if hours.iter().all(|h| {
            raw.get(h).is_some_and(|f| f.len() == 1) && rolled.get(h).is_some_and(|f| f.len() == 1)
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{dataset} not rolled up: {raw:?} / {rolled:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn flip(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x01;
    std::fs::write(path, &bytes).unwrap();
}

const COMPACT: [&str; 8] = [
    "--no-sampler",
    "--flush-interval",
    "200ms",
    "--compact-after",
    "0s",
    "--compact-interval",
    "300ms",
    "--scrub-interval=0s",
];

/// LLM events at minute 10 to 50 of the hour starting at `hour`, with
/// random tokens.
fn llm_events(rng: &mut Rng, prefix: &str, hour: i64, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let (p, c) = (rng.below(5000) as i64, rng.below(900) as i64);
            json!({"event_id": format!("{prefix}-{i}"),
                "timestamp": rfc(hour + 600 + (i as i64 * 2400) / n as i64),
                "actor_id": "user:1", "actor_type": "human", "agent_id": "agent:a",
                "microdao_id": "dao:1", "model": "gpt-4o-mini", "provider": "openai",
                "prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                "latency_ms": 100})
        })
        .collect()
}

fn tokens(events: &[Value]) -> u64 {
    events
        .iter()
        .map(|e| e["total_tokens"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flipped_byte_of_every_kind_of_file_is_caught_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A foreign file: its damage report makes the quarantine's state file.
    let foreign = data.join("usage_llm/date=2025-01-01/hour=00");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("x.parquet"), b"not parquet at all").unwrap();
    let receiver = WebhookReceiver::start().await;
    let t = Tally::start(&data, &COMPACT).await;

    let now = now_secs();
    let old = (now / HOUR - 3) * HOUR;
    let mut rng = Rng::new(7);
    // Old hours are compacted and rolled up; the open hour stays raw.
    for (hour, prefix) in [(old, "o"), ((now / HOUR) * HOUR, "n")] {
        post(&t, "usage.llm", &llm_events(&mut rng, prefix, hour, 20)).await;
        let ts = rfc(hour + 700);
        post(
            &t,
            "usage.tool",
            &[json!({"event_id": format!("{prefix}-t"), "timestamp": ts,
            "actor_id": "agent:a", "actor_type": "agent", "agent_id": "agent:a",
            "microdao_id": "dao:1", "tool_id": "search", "tool_name": "Search",
            "success": true, "latency_ms": 40})],
        )
        .await;
        post(
            &t,
            "usage.agent",
            &[json!({"event_id": format!("{prefix}-a"), "timestamp": ts,
            "agent_id": "agent:a", "microdao_id": "dao:1", "trigger": "message",
            "duration_ms": 100})],
        )
        .await;
        post(
            &t,
            "messaging.message.created",
            &[json!({"channel_id": "c",
            "message_id": format!("{prefix}-m"), "sender_id": "user:1", "microdao_id": "dao:1",
            "created_at": ts})],
        )
        .await;
    }
    let mut client = billing_client(&t).await;
    client
        .send_metrics_batch(tally_proto::billing::v1::SendMetricsBatchRequest {
            vm_id: "vm-1".into(),
            customer_id: "cust-1".into(),
            metrics: (0..30)
                .map(|i| common::vm_sample(old + 600 + i * 10, i * 5))
                .collect(),
        })
        .await
        .unwrap();
    client
        .notify_possible_gap(tally_proto::billing::v1::NotifyPossibleGapRequest {
            vm_id: "vm-1".into(),
            last_sent: (old + 900) * 1_000_000_000,
            resume_time: (old + 1200) * 1_000_000_000,
        })
        .await
        .unwrap();
    // A budget whose first threshold is crossed: its delivery state too.
    let r = reqwest::Client::new()
        .post(t.url("/v1/budgets"))
        .json(
            &json!({"name": "calls", "metric": "llm_calls", "period": "month", "limit": 4,
            "thresholds": [0.5], "webhook_url": receiver.url("/b"), "webhook_secret": "s"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let h = partition(old);
    for (dataset, rollup) in [
        ("usage_llm", "usage_llm_hourly"),
        ("usage_tool", "usage_tool_hourly"),
        ("usage_agent", "usage_agent_hourly"),
        ("usage_message", "usage_message_hourly"),
        ("vm_metrics", "vm_usage_hours"),
    ] {
        wait_rolled(&data, dataset, rollup, std::slice::from_ref(&h)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while files_under(&data.join("_tally/alerts")).is_empty() {
        assert!(Instant::now() < deadline, "no alert delivery state");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while by_hour(&data, "vm_events").is_empty() {
        assert!(Instant::now() < deadline, "no vm_events file");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.terminate();
    // A gap notice is stored at the hour it arrives, which is still open:
    // its file moves to the old hour, whose compaction writes the
    // vm_gap_spans rollup (the test cannot wait for the hour to end).
    let gaps = by_hour(&data, "vm_events").into_values().next().unwrap()[0].clone();
    let to = data.join("vm_events").join(&h);
    std::fs::create_dir_all(&to).unwrap();
    std::fs::rename(&gaps, to.join(gaps.file_name().unwrap())).unwrap();
    let t = Tally::start(&data, &COMPACT).await;
    wait_rolled(&data, "vm_events", "vm_gap_spans", std::slice::from_ref(&h)).await;
    // One more raw file of the open hour, for the sweep.
    post(&t, "usage.llm", &llm_events(&mut rng, "r", now - 1200, 5)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while by_hour(&data, "usage_llm").len() < 2 {
        assert!(Instant::now() < deadline, "no raw file of the open hour");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.terminate();
    create_token(&data, "ops", "admin", &[]);

    let mut files: Vec<PathBuf> = files_under(&data)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let state = p.starts_with(data.join("_tally"));
            if state {
                name.ends_with(".json")
                    && !p.starts_with(data.join("_tally/quarantine/files"))
                    && !name.ends_with(".tmp")
            } else {
                name.ends_with(".parquet") && !name.starts_with('.')
            }
        })
        .collect();
    files.sort();
    // Every kind is there: flushed and compacted raw files, each rollup,
    // each state file.
    let names: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(&data).unwrap().display().to_string())
        .collect();
    let current = partition(now);
    for want in [
        format!("usage_llm/{current}/"),
        format!("usage_llm/{h}/"),
        format!("usage_tool/{h}/"),
        format!("vm_metrics/{h}/"),
        format!("usage_llm_hourly/{h}/"),
        format!("usage_tool_hourly/{h}/"),
        format!("usage_agent_hourly/{h}/"),
        format!("usage_message_hourly/{h}/"),
        format!("vm_usage_hours/{h}/"),
        format!("vm_gap_spans/{h}/"),
        "_tally/checkpoint.json".into(),
        "_tally/tokens.json".into(),
        "_tally/usage_config.json".into(),
        "_tally/budgets/".into(),
        "_tally/alerts/".into(),
        "_tally/quarantine/damage.json".into(),
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(&want)),
            "no {want} in {names:#?}"
        );
    }
    let (code, out) = tally_check(&data, &[]);
    assert_eq!(code, 0, "{out}");

    let mut flips = 0;
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len() as usize;
        // 20 evenly spaced, first and last byte among them, and two more.
        let mut offsets: Vec<usize> = (0..20).map(|i| i * (len - 1) / 19).collect();
        offsets.extend([len / 7, len * 5 / 9]);
        offsets.sort_unstable();
        offsets.dedup();
        assert!(offsets.len() >= 20, "{} is {len} bytes", f.display());
        for o in offsets {
            flip(f, o);
            let (code, out) = tally_check(&data, &[]);
            let named = out
                .lines()
                .any(|l| l.starts_with("DAMAGE: ") && l.contains(&*f.to_string_lossy()));
            assert!(
                code == 1 && named,
                "a flip at {o} of {} was not caught:\n{out}",
                f.display()
            );
            flip(f, o);
            flips += 1;
        }
    }
    assert!(flips >= 20 * files.len());
    let (code, out) = tally_check(&data, &[]);
    assert_eq!(code, 0, "{out}");

    // A damaged token file or budget is never half-trusted: start-up
    // refuses, names the file and says what to do.
    let budget = files
        .iter()
        .find(|p| p.starts_with(data.join("_tally/budgets")))
        .unwrap()
        .clone();
    for f in [data.join("_tally/tokens.json"), budget] {
        flip(&f, 3);
        let (code, err) = common::serve_refused(&data, &["--no-sampler"]);
        assert_ne!(code, 0);
        assert!(
            err.contains(&format!("{} is damaged", f.display()))
                && err.contains("tally check --repair"),
            "{err}"
        );
        flip(&f, 3);
    }
}

/// The summary's LLM calls and tokens over the last `hours`.
async fn summary(t: &Tally, hours: u32) -> (u64, u64, Value) {
    let (s, _) = get(t, &format!("/internal/usage/summary?period_hours={hours}")).await;
    let sum = &s["summary"];
    (
        sum["llm_calls_total"].as_u64().unwrap(),
        sum["llm_tokens_total"].as_u64().unwrap(),
        s,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_raw_and_rollup_files_keep_answers_right_and_repair_brings_the_rows_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = Tally::start(&data, &COMPACT).await;
    let now = now_secs();
    let mut rng = Rng::from_time();
    // Four closed hours: a (raw damaged), b (rollup damaged), c (both),
    // d (intact).
    let hours: Vec<i64> = (2..6).rev().map(|k| (now / HOUR - k) * HOUR).collect();
    let events: Vec<Vec<Value>> = hours
        .iter()
        .enumerate()
        .map(|(i, h)| llm_events(&mut rng, &format!("h{i}"), *h, 40 + i * 10))
        .collect();
    for e in &events {
        post(&t, "usage.llm", e).await;
    }
    let parts: Vec<String> = hours.iter().map(|h| partition(*h)).collect();
    wait_rolled(&data, "usage_llm", "usage_llm_hourly", &parts).await;
    let all_calls: u64 = events.iter().map(|e| e.len() as u64).sum();
    let all_tokens: u64 = events.iter().map(|e| tokens(e)).sum();
    let (calls, toks, _) = summary(&t, 24).await;
    assert_eq!((calls, toks), (all_calls, all_tokens));
    t.terminate();

    // A backup of the data directory, as an operator keeps one.
    let backup = dir.path().join("backup");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(&backup)
        .status()
        .unwrap();
    assert!(status.success());

    let raw = by_hour(&data, "usage_llm");
    let rolled = by_hour(&data, "usage_llm_hourly");
    // The middle of the data pages: a flip there leaves the footer, and so
    // the row count the damage report gives, readable. (The middle of a
    // small file can fall in its footer.)
    let middle = |p: &Path| {
        let bytes = std::fs::read(p).unwrap();
        let n = bytes.len();
        let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
        4 + (n - 8 - footer - 4) / 2
    };
    let raw_a = raw[&parts[0]][0].clone();
    let rollup_b = rolled[&parts[1]][0].clone();
    let (raw_c, rollup_c) = (raw[&parts[2]][0].clone(), rolled[&parts[2]][0].clone());
    for p in [&raw_a, &rollup_b, &raw_c, &rollup_c] {
        flip(p, middle(p));
    }

    // Offline SQL leaves the damaged raw files out, names them, and fails.
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["sql", "--format", "json", "--data"])
        .arg(&data)
        .arg("SELECT count(*) AS n FROM usage_llm")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for p in [&raw_a, &raw_c] {
        assert!(err.contains(&format!("DAMAGE: {}", p.display())), "{err}");
    }
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rows[0]["n"].as_u64().unwrap(),
        all_calls - (events[0].len() + events[2].len()) as u64
    );

    let t = Tally::start(&data, &COMPACT).await;
    // b is answered from raw rows, a from its rollup; c is gone: the answer
    // says so.
    let (calls, toks, body) = summary(&t, 24).await;
    let lost = &events[2];
    assert_eq!(
        (calls, toks),
        (all_calls - lost.len() as u64, all_tokens - tokens(lost)),
        "{body}"
    );
    assert_eq!(body["incomplete"], true, "{body}");
    let c_hour = format!(
        "usage_llm {}",
        chrono::DateTime::from_timestamp(hours[2], 0)
            .unwrap()
            .format("%Y-%m-%dT%H:00:00Z")
    );
    assert_eq!(body["incomplete_hours"], json!([c_hour]), "{body}");
    // SQL over raw rows meets a's damaged file: quarantined; its rows are
    // gone from raw reads, and the answer's rows say they are incomplete.
    let r = reqwest::Client::new()
        .post(t.url("/v1/sql"))
        .body("SELECT count(*) AS n FROM usage_llm")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("tally-incomplete").is_some());
    let rows: Vec<Value> = r.json().await.unwrap();
    assert_eq!(
        rows[0]["n"].as_u64().unwrap(),
        all_calls - (events[0].len() + events[2].len()) as u64,
        "{rows:?}"
    );
    assert_eq!(rows[0]["incomplete"], true);

    // /v1/damage names each file and what it held.
    let (damage, _) = get(&t, "/v1/damage").await;
    let reports = damage["damage"].as_array().unwrap();
    let held = |p: &Path| {
        reports
            .iter()
            .find(|r| r["path"] == p.to_string_lossy().as_ref())
            .unwrap_or_else(|| panic!("{} not reported: {damage}", p.display()))["held"]
            .clone()
    };
    for (p, role, table, rows) in [
        (&raw_a, "raw", "usage_llm", Some(events[0].len())),
        (&raw_c, "raw", "usage_llm", Some(events[2].len())),
        (&rollup_b, "rollup", "usage_llm_hourly", None),
        (&rollup_c, "rollup", "usage_llm_hourly", None),
    ] {
        let h = held(p);
        assert_eq!(
            (h["role"].as_str(), h["table"].as_str()),
            (Some(role), Some(table)),
            "{h}"
        );
        if let Some(n) = rows {
            assert_eq!(h["rows"].as_u64(), Some(n as u64), "{h}");
        }
        assert!(!p.exists(), "{} still in place", p.display());
    }
    let (_, health) = t.health().await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(
        health["components"]["lost_rows"]["hours"],
        json!([c_hour]),
        "{health}"
    );

    // b's rollup is built again from its raw rows, without anyone's help;
    // the answers stay as they were.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !by_hour(&data, "usage_llm_hourly").contains_key(&parts[1]) {
        assert!(Instant::now() < deadline, "b's rollup was not rebuilt");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (calls2, toks2, _) = summary(&t, 24).await;
    assert_eq!((calls2, toks2), (calls, toks));
    t.terminate();

    // The copies in the backup bring a's and c's rows back.
    let (code, out) = tally_check(&data, &["--repair", "--from", backup.to_str().unwrap()]);
    assert!(
        out.contains(&format!("repaired: {}", raw_a.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("repaired: {}", raw_c.display())),
        "{out}"
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = tally_check(&data, &[]);
    assert_eq!(code, 0, "{out}");

    let t = Tally::start(&data, &COMPACT).await;
    let (calls, toks, body) = summary(&t, 24).await;
    assert_eq!((calls, toks), (all_calls, all_tokens), "{body}");
    assert!(body.get("incomplete").is_none(), "{body}");
    let n = t.sql("SELECT count(*) AS n FROM usage_llm").await;
    assert_eq!(n[0]["n"].as_u64(), Some(all_calls));
    let (_, health) = t.health().await;
    assert_eq!(
        health["components"]["lost_rows"]["status"], "ok",
        "{health}"
    );
    t.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrub_finds_a_byte_flipped_while_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let interval = 2;
    let mut args = COMPACT.to_vec();
    args.pop();
    let scrub = format!("--scrub-interval={interval}s");
    args.extend([scrub.as_str(), "--scrub-rate", "100"]);
    let t = Tally::start(&data, &args).await;
    let hour = (now_secs() / HOUR - 2) * HOUR;
    let mut rng = Rng::new(3);
    post(&t, "usage.llm", &llm_events(&mut rng, "s", hour, 50)).await;
    let part = partition(hour);
    wait_rolled(
        &data,
        "usage_llm",
        "usage_llm_hourly",
        std::slice::from_ref(&part),
    )
    .await;
    // A pass over the good files first.
    let passes = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while passes(&t.metrics_text().await, "tally_scrub_passes_total") == 0 {
        assert!(Instant::now() < deadline, "no scrub pass");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, h) = t.health().await;
    assert_eq!(h["status"], "ok", "{h}");

    let file = by_hour(&data, "usage_llm")[&part][0].clone();
    let len = std::fs::metadata(&file).unwrap().len() as usize;
    flip(&file, len / 3);
    let flipped = Instant::now();
    loop {
        let (_, h) = t.health().await;
        if h["status"] == "degraded" {
            let reports = h["components"]["damage"]["reports"].as_array().unwrap();
            assert!(
                reports
                    .iter()
                    .any(|r| r["path"] == file.to_string_lossy().as_ref()
                        && r["detail"].as_str().unwrap().contains("checksum mismatch")),
                "{h}"
            );
            break;
        }
        // One interval, and the pass's own time.
        assert!(
            flipped.elapsed() < Duration::from_secs(interval + 2),
            "the scrub did not find the flip within an interval"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = t.metrics_text().await;
    assert_eq!(
        passes(&text, "tally_scrub_damaged_files_total"),
        1,
        "{text}"
    );
    assert!(passes(&text, "tally_scrub_bytes_total") > 0);
    t.terminate();
}

/// Takes the checksums out of a data directory: the names and the state
/// files of the release before them.
fn as_previous_release(data: &Path) {
    for f in files_under(data) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".parquet") {
            let mut legacy = name.clone();
            while let Some(i) = legacy.find(".crc32-") {
                legacy.replace_range(i..i + 15, "");
            }
            if legacy != name {
                std::fs::rename(&f, f.with_file_name(legacy)).unwrap();
            }
        } else if name.ends_with(".json") {
            let text = std::fs::read_to_string(&f).unwrap();
            if let Some(i) = text.rfind("\n#tally-crc32 ") {
                std::fs::write(&f, &text[..i]).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_the_previous_release_opens_answers_and_is_unverified() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut no_compaction = COMPACT.to_vec();
    no_compaction[4] = "1000h";
    let t = Tally::start(&data, &COMPACT).await;
    let hour = (now_secs() / HOUR - 2) * HOUR;
    let mut rng = Rng::new(5);
    let old = llm_events(&mut rng, "p", hour, 30);
    post(&t, "usage.llm", &old).await;
    let part = partition(hour);
    wait_rolled(
        &data,
        "usage_llm",
        "usage_llm_hourly",
        std::slice::from_ref(&part),
    )
    .await;
    let fresh = llm_events(&mut rng, "q", now_secs() - 3000, 10);
    post(&t, "usage.llm", &fresh).await;
    let (calls, toks, _) = summary(&t, 24).await;
    assert_eq!(calls, 40);
    assert_eq!(toks, tokens(&old) + tokens(&fresh));
    t.terminate();
    as_previous_release(&data);

    // Read and listed as unverified; nothing is damage.
    let (code, out) = tally_check(&data, &[]);
    assert_eq!(code, 0, "{out}");
    let unverified = out
        .lines()
        .filter(|l| l.starts_with("unverified: "))
        .count();
    let parquet = files_under(&data)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count();
    assert!(unverified > parquet, "{out}");

    // The server opens it and answers the same.
    let t = Tally::start(&data, &no_compaction).await;
    let (c2, t2, _) = summary(&t, 24).await;
    assert_eq!((c2, t2), (calls, toks));
    let n = t.sql("SELECT count(*) AS n FROM usage_llm").await;
    assert_eq!(n[0]["n"].as_u64(), Some(40));
    t.terminate();

    // Compaction gives the closed hour's file a checksum; --repair the rest.
    let t = Tally::start(&data, &COMPACT).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let files = by_hour(&data, "usage_llm");
        let rolled = by_hour(&data, "usage_llm_hourly");
        let sealed = |fs: Option<&Vec<PathBuf>>| {
            fs.is_some_and(|fs| fs.len() == 1 && fs[0].to_string_lossy().contains(".crc32-"))
        };
        if sealed(files.get(&part)) && sealed(rolled.get(&part)) {
            break;
        }
        assert!(Instant::now() < deadline, "{files:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (c3, t3, _) = summary(&t, 24).await;
    assert_eq!((c3, t3), (calls, toks));
    t.terminate();
    let (code, out) = tally_check(&data, &["--repair"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = tally_check(&data, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("unverified: "), "{out}");
    assert!(out.contains(", 0 unverified file(s)"), "{out}");
    let t = Tally::start(&data, &COMPACT).await;
    let (c4, t4, _) = summary(&t, 24).await;
    assert_eq!((c4, t4), (calls, toks));
    t.terminate();
}
