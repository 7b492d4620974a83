//! Parquet on S3-compatible object storage (`--data s3://bucket/prefix`)
//! against a real S3 server (moto's), read back over S3's own REST API.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{base64, llm_event, parquet_files, strings, S3Server, Tally};
use object_store::aws::AmazonS3Builder;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

const BUCKET: &str = "metering";
const DATA: &str = "s3://metering/tally/prod";

/// Keys under `prefix`, from a plain ListObjectsV2 call (moto lets an
/// unsigned request list, not read).
async fn list_keys(s3: &S3Server, prefix: &str) -> Vec<String> {
    let xml = reqwest::get(format!(
        "{}/{BUCKET}?list-type=2&prefix={prefix}",
        s3.endpoint
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    xml.split("<Key>")
        .skip(1)
        .map(|s| s.split("</Key>").next().unwrap().to_string())
        .collect()
}

/// How often each event_id is stored in the objects of `usage_llm`. Objects
/// are private, so the download is a signed S3 GET.
async fn stored_in_bucket(s3: &S3Server) -> BTreeMap<String, usize> {
    let mut builder = AmazonS3Builder::new().with_bucket_name(BUCKET);
    for (k, v) in s3.env() {
        builder = builder.with_config(k.to_ascii_lowercase().parse().unwrap(), v);
    }
    let client = builder.build().unwrap();
    let mut counts = BTreeMap::new();
    for key in list_keys(s3, "tally/prod/usage_llm/").await {
        let body: Bytes = match client
            .get(&object_store::path::Path::from(key.as_str()))
            .await
        {
            Ok(got) => got.bytes().await.unwrap(),
            // Listed, then deleted: a compaction replaced it meanwhile.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => panic!("{key}: {e}"),
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(body)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            for id in strings(&b.unwrap(), "event_id") {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
    }
    counts
}

async fn start(s3: &S3Server, state: &Path, flush: &str) -> Tally {
    start_with(s3, state, &["--flush-interval", flush]).await
}

async fn start_with(s3: &S3Server, state: &Path, extra: &[&str]) -> Tally {
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut args = vec![
        "--state-dir",
        state.to_str().unwrap(),
        "--node-id",
        "object-node",
        "--no-sampler",
    ];
    args.extend_from_slice(extra);
    Tally::start_logged(Path::new(DATA), &state.with_extension("log"), &args, &env).await
}

fn events(range: std::ops::Range<usize>) -> Vec<Value> {
    range
        .map(|i| llm_event(&format!("s3-{i}"), "2026-11-20T10:15:00Z", 100, 20))
        .collect()
}

/// A moto S3 server with the test bucket.
async fn with_bucket() -> S3Server {
    let s3 = S3Server::start();
    let created = reqwest::Client::new()
        .put(format!("{}/{BUCKET}", s3.endpoint))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success());
    s3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_goes_to_s3_survives_kill_9_and_reads_back_with_sql() {
    let s3 = with_bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    // 1. 500 events, then a clean stop: the final flush uploads them.
    let t = start(&s3, &state, "300ms").await;
    assert_eq!(t.post_llm_events(&events(0..500)).await["accepted"], 500);
    t.terminate();
    let keys = list_keys(&s3, "tally/prod/usage_llm/").await;
    assert!(!keys.is_empty());
    for k in &keys {
        let name = k.rsplit('/').next().unwrap();
        assert!(
            k.starts_with("tally/prod/usage_llm/date=2026-11-20/hour=10/")
                && name.starts_with("object-node-")
                && name.ends_with(".parquet"),
            "{k}"
        );
    }
    let stored = stored_in_bucket(&s3).await;
    assert_eq!(stored.len(), 500);
    assert!(stored.values().all(|&n| n == 1));
    // The local directory only staged them.
    assert!(parquet_files(&state, "usage_llm").is_empty());

    // 2. Acknowledged but not flushed when the process is killed: the local
    //    WAL brings them back, and the restart uploads them.
    let t = start(&s3, &state, "1h").await;
    let again = t.post_llm_events(&events(0..500)).await;
    assert_eq!(
        again["duplicates"], 500,
        "dedup keys come back from the objects"
    );
    assert_eq!(t.post_llm_events(&events(500..600)).await["accepted"], 100);
    t.kill9();
    let t = start(&s3, &state, "300ms").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = stored_in_bucket(&s3).await;
        if stored.len() == 600 {
            assert!(stored.values().all(|&n| n == 1), "{stored:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{} of 600 stored", stored.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = t
        .sql("SELECT count(*) AS n, sum(prompt_tokens) AS p FROM usage_llm")
        .await;
    assert_eq!(rows[0]["n"], 600);
    assert_eq!(rows[0]["p"], 600 * 100);
    t.terminate();

    // 3. `tally sql` reads the prefix offline.
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["sql", "--data", DATA, "--format", "json"])
        .arg("SELECT count(DISTINCT event_id) AS d FROM usage_llm")
        .envs(s3.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["d"], 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_hours_on_s3_compact_into_one_object_with_their_rollup() {
    let s3 = with_bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let fast = [
        "--flush-interval",
        "100ms",
        "--compact-after",
        "0s",
        "--compact-interval",
        "300ms",
    ];
    // Several flushes into one closed hour, a kill -9, and everything sent
    // again after the restart (the copies get past the in-memory index and
    // compaction drops them).
    let t = start_with(&s3, &state, &fast).await;
    for part in 0..4 {
        let range = part * 150..(part + 1) * 150;
        assert_eq!(t.post_llm_events(&events(range)).await["accepted"], 150);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    t.kill9();
    let t = start_with(&s3, &state, &fast).await;
    t.post_llm_events(&events(0..600)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let raw = list_keys(&s3, "tally/prod/usage_llm/").await;
        let rolled = list_keys(&s3, "tally/prod/usage_llm_hourly/").await;
        let stored = stored_in_bucket(&s3).await;
        if raw.len() == 1 && rolled.len() == 1 && stored.values().all(|&n| n == 1) {
            assert_eq!(stored.len(), 600);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not one object an hour: {raw:?} {rolled:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = t
        .sql("SELECT count(*) AS n, sum(prompt_tokens) AS p FROM usage_llm")
        .await;
    assert_eq!(
        (rows[0]["n"].as_u64(), rows[0]["p"].as_u64()),
        (Some(600), Some(60_000))
    );
    let rolled = t
        .sql("SELECT sum(calls) AS n, sum(prompt_tokens) AS p FROM usage_llm_hourly")
        .await;
    assert_eq!(
        (rolled[0]["n"].as_u64(), rolled[0]["p"].as_u64()),
        (Some(600), Some(60_000))
    );
    t.terminate();
}

/// One PUT seen by [`RecordingProxy`]: its path, its
/// `x-amz-checksum-sha256` header, and the SHA-256 of its body.
type Put = (String, Option<String>, Vec<u8>);

/// An HTTP proxy in front of moto that keeps what each PUT carried (moto
/// stores a checksum only when an AWS SDK names its algorithm, so the
/// request itself is looked at).
struct RecordingProxy {
    endpoint: String,
    puts: std::sync::Arc<std::sync::Mutex<Vec<Put>>>,
}

impl RecordingProxy {
    async fn start(upstream: String) -> RecordingProxy {
        use axum::extract::{Request, State};
        use sha2::Digest;
        type Shared = (String, std::sync::Arc<std::sync::Mutex<Vec<Put>>>);
        async fn forward(
            State((upstream, puts)): State<Shared>,
            req: Request,
        ) -> axum::response::Response {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            if parts.method == axum::http::Method::PUT {
                puts.lock().unwrap().push((
                    parts.uri.path().to_string(),
                    parts
                        .headers
                        .get("x-amz-checksum-sha256")
                        .map(|v| v.to_str().unwrap().to_string()),
                    sha2::Sha256::digest(&body).to_vec(),
                ));
            }
            let url = format!(
                "{upstream}{}",
                parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
            );
            let mut headers = parts.headers.clone();
            headers.remove(axum::http::header::HOST);
            let got = reqwest::Client::new()
                .request(parts.method, url)
                .headers(headers)
                .body(body)
                .send()
                .await
                .unwrap();
            let mut out = axum::response::Response::builder().status(got.status());
            for (k, v) in got.headers() {
                if k != axum::http::header::TRANSFER_ENCODING {
                    out = out.header(k, v);
                }
            }
            out.body(axum::body::Body::from(got.bytes().await.unwrap()))
                .unwrap()
        }
        let puts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .fallback(forward)
            .with_state((upstream, puts.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        RecordingProxy { endpoint, puts }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_carry_a_checksum_and_a_damaged_download_is_quarantined() {
    let s3 = with_bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let proxy = RecordingProxy::start(s3.endpoint.clone()).await;
    let mut env = s3.env();
    env.retain(|(k, _)| *k != "AWS_ENDPOINT");
    env.push(("AWS_ENDPOINT", proxy.endpoint.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = [
        "--state-dir",
        state.to_str().unwrap(),
        "--node-id",
        "object-node",
        "--no-sampler",
        "--flush-interval",
        "100ms",
    ];
    let t = Tally::start_logged(Path::new(DATA), &state.with_extension("log"), &args, &env).await;
    assert_eq!(t.post_llm_events(&events(0..300)).await["accepted"], 300);
    let deadline = Instant::now() + Duration::from_secs(30);
    let key = loop {
        if let Some(k) = list_keys(&s3, "tally/prod/usage_llm/").await.pop() {
            break k;
        }
        assert!(Instant::now() < deadline, "nothing uploaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    t.terminate();
    // Every upload carried the SHA-256 of its bytes, for S3 to verify.
    let puts = proxy.puts.lock().unwrap().clone();
    assert!(
        puts.iter()
            .any(|(p, _, _)| p.replace("%3D", "=").ends_with(&key)),
        "{puts:?}"
    );
    for (path, header, sha) in &puts {
        assert_eq!(header.as_deref(), Some(base64(sha).as_str()), "{path}");
    }
    // The object's name records the CRC-32 of its bytes.
    let mut builder = AmazonS3Builder::new().with_bucket_name(BUCKET);
    for (k, v) in s3.env() {
        builder = builder.with_config(k.to_ascii_lowercase().parse().unwrap(), v);
    }
    let client = builder.build().unwrap();
    let path = object_store::path::Path::from(key.as_str());
    let bytes = client.get(&path).await.unwrap().bytes().await.unwrap();
    let crc = key
        .rsplit_once(".crc32-")
        .unwrap()
        .1
        .trim_end_matches(".parquet");
    assert_eq!(
        u32::from_str_radix(crc, 16).unwrap(),
        common::crc32_bitwise(&bytes)
    );

    // Bit rot in the bucket: the next read checks the download.
    assert_eq!(base64(b"tally"), "dGFsbHk=");
    let mut bad = bytes.to_vec();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x01;
    client.put(&path, bad.into()).await.unwrap();
    let t = start(&s3, &state, "100ms").await;
    let n = t.sql("SELECT count(*) AS n FROM usage_llm").await;
    assert_eq!(n[0]["n"], 0, "the damaged object is not read");
    let damage: Value = reqwest::get(t.url("/v1/damage"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let report = &damage["damage"][0];
    assert_eq!(report["path"], format!("s3://{BUCKET}/{key}"), "{damage}");
    assert!(
        report["detail"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch"),
        "{damage}"
    );
    assert_eq!(report["held"]["rows"], 300, "{damage}");
    assert!(list_keys(&s3, "tally/prod/usage_llm/").await.is_empty());
    assert_eq!(
        list_keys(&s3, "tally/prod/_tally/quarantine/usage_llm/")
            .await
            .len(),
        1
    );
    t.terminate();
}

#[tokio::test]
async fn a_data_location_without_a_bucket_is_refused_with_the_rule() {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["sql", "--data", "s3:///x", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("names no bucket"), "{err}");
}
