//! Helpers shared by the end-to-end tests: the real `tally` binary on
//! loopback, a client, and an independent Parquet reader.
#![allow(dead_code)]

pub mod browser;
pub mod crash;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int32Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub struct Tally {
    pub child: Child,
    pub addr: String,
    pub data: PathBuf,
    /// `http`, or `https` when started with TLS.
    pub scheme: &'static str,
}

#[allow(dead_code)]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Tally {
    /// Starts `tally serve` on a free port and waits for `/health`.
    pub async fn start(data: &Path, args: &[&str]) -> Tally {
        Self::start_with_env(data, args, &[]).await
    }

    /// Starts with extra environment variables.
    pub async fn start_with_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Tally {
        Self::start_logged(data, &data.with_extension("log"), args, env).await
    }

    /// Starts with its log in `log` (nodes sharing a data directory).
    pub async fn start_logged(
        data: &Path,
        log_path: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Tally {
        Self::launch(data, log_path, args, env, &reqwest::Client::new(), "http").await
    }

    /// Starts over TLS; `client` (trusting the test CA, with a client
    /// certificate when the server asks for one) waits for `/health`.
    pub async fn start_tls(data: &Path, args: &[&str], client: &reqwest::Client) -> Tally {
        Self::launch(
            data,
            &data.with_extension("log"),
            args,
            &[],
            client,
            "https",
        )
        .await
    }

    async fn launch(
        data: &Path,
        log_path: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        client: &reqwest::Client,
        scheme: &'static str,
    ) -> Tally {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", &addr])
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tally starts");
        let mut t = Tally {
            child,
            addr,
            data: data.to_path_buf(),
            scheme,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(t.url("/health")).send().await {
                if r.status().is_success() {
                    return t;
                }
            }
            if let Ok(Some(status)) = t.child.try_wait() {
                panic!(
                    "tally exited with {status}: {}",
                    std::fs::read_to_string(log_path).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tally did not become healthy; see {}",
                log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "tally exited with {status}");
    }

    /// Resident memory of the server, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// POSTs `usage.llm` events as NDJSON, expects 200, returns the report.
    pub async fn post_llm_events(&self, events: &[serde_json::Value]) -> serde_json::Value {
        let r = reqwest::Client::new()
            .post(self.url("/v1/events/usage.llm"))
            .body(ndjson(events))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "usage.llm events refused at {}", self.addr);
        r.json().await.unwrap()
    }

    /// `/metrics` as text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `/health`: its status code and body.
    pub async fn health(&self) -> (u16, serde_json::Value) {
        let r = reqwest::get(self.url("/health")).await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub async fn sql(&self, query: &str) -> Vec<serde_json::Value> {
        let r = reqwest::Client::new()
            .post(self.url("/v1/sql"))
            .body(query.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{query}");
        r.json().await.unwrap()
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An LLM event as the usage engine spec has it.
/// `tally serve` on `data` that must refuse to start: its exit code and
/// what it wrote to stderr.
#[allow(dead_code)]
pub fn serve_refused(data: &Path, args: &[&str]) -> (i32, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["serve", "--data"])
        .arg(data)
        .args(["--listen", &addr])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tally starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "tally started on {}; it should have refused",
                data.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tally check --data DATA EXTRA…`: its exit code and what it printed
/// (and its stderr, when it failed).
#[allow(dead_code)]
pub fn tally_check(data: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["check", "--data"])
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() && !out.stderr.is_empty() {
        text.push_str("\nstderr: ");
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    (out.status.code().unwrap_or(-1), text)
}

/// Posts JSON events to `/v1/events/<subject>`; answers the 200 response.
#[allow(dead_code)]
pub async fn post_events(
    t: &Tally,
    subject: &str,
    events: &[serde_json::Value],
) -> serde_json::Value {
    let r = reqwest::Client::new()
        .post(t.url(&format!("/v1/events/{subject}")))
        .json(events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// A state file's JSON without its checksum line (`#tally-crc32 …`).
#[allow(dead_code)]
pub fn state_json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let body = match text.rfind("\n#tally-crc32 ") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    serde_json::from_str(body).unwrap()
}

pub fn llm_event(id: &str, timestamp: &str, prompt: i64, completion: i64) -> serde_json::Value {
    serde_json::json!({
        "event_id": id,
        "timestamp": timestamp,
        "actor_id": "user:93",
        "actor_type": "human",
        "agent_id": "agent:sofia",
        "microdao_id": "microdao:7",
        "model": "gpt-4.1-mini",
        "provider": "openai",
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "latency_ms": 1250,
        "success": true
    })
}

/// One billing.v1 VM sample at `secs` with CPU counter `cpu`.
pub fn vm_sample(secs: i64, cpu: i64) -> tally_proto::billing::v1::VmMetrics {
    tally_proto::billing::v1::VmMetrics {
        timestamp: Some(prost_types::Timestamp {
            seconds: secs,
            nanos: 0,
        }),
        cpu_time_nanos: cpu,
        memory_usage_bytes: 1 << 30,
        disk_read_bytes: 10,
        disk_write_bytes: 20,
        network_rx_bytes: 30,
        network_tx_bytes: 40,
    }
}

pub fn ndjson(events: &[serde_json::Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

/// Parquet files per hour directory under `dir` (`date=…/hour=…`, relative).
pub fn files_per_hour(dir: &Path) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for f in files_under(dir) {
        if f.extension().is_some_and(|e| e == "parquet") {
            let hour = f
                .strip_prefix(dir)
                .unwrap()
                .parent()
                .unwrap()
                .display()
                .to_string();
            *out.entry(hour).or_default() += 1;
        }
    }
    out
}

/// Every file below `dir`, in path order.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every committed Parquet file of a dataset (hidden temporary files excluded).
pub fn parquet_files(data: &Path, dataset: &str) -> Vec<PathBuf> {
    files_under(&data.join(dataset))
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|x| x == "parquet")
                && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        })
        .collect()
}

pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// A string column's values, whether plain or dictionary encoded.
pub fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
    let array = batch.column_by_name(column).unwrap();
    if let Some(dict) = array.as_dictionary_opt::<Int32Type>() {
        let values = dict.values().as_string::<i32>();
        return dict
            .keys()
            .iter()
            .map(|k| values.value(k.unwrap() as usize).to_string())
            .collect();
    }
    let s = array.as_string::<i32>();
    (0..s.len()).map(|i| s.value(i).to_string()).collect()
}

/// How many times each event_id of a dataset is stored in its Parquet files.
pub fn stored_event_ids(data: &Path, dataset: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for f in parquet_files(data, dataset) {
        for b in read_parquet(&f) {
            for id in strings(&b, "event_id") {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// A small deterministic PRNG (xorshift64*), seeded per test run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn from_time() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("rng seed {seed}");
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A real `nats-server` (with JetStream) on a free port, stopped on drop.
pub struct NatsServer {
    child: Child,
    pub url: String,
    _store: tempfile::TempDir,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        Self::start_with(&[]).await
    }

    /// With more `nats-server` flags (TLS).
    pub async fn start_with(extra: &[&str]) -> NatsServer {
        let port = free_port();
        let store = tempfile::tempdir().unwrap();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (./scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _store: store,
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `query` until its first row's `n` equals `want` (or 20 s pass).
pub async fn wait_for_count(t: &Tally, query: &str, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = t.sql(query).await[0]["n"].as_u64().unwrap();
        if n == want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `/health` reports the NATS component connected.
pub async fn wait_nats_connected(t: &Tally) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h: serde_json::Value = reqwest::get(t.url("/health"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if h["components"]["nats"]["status"] == "ok" {
            return;
        }
        assert!(Instant::now() < deadline, "NATS never connected: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a server program the test command installs (`$var`, else `name`
/// on PATH) and waits until it listens on `port`.
fn spawn_tool(var: &str, name: &str, args: &[&str], port: u16) -> Child {
    let bin = match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(name),
    };
    let child = Command::new(&bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{name} ({}) is not installed: ./scripts/test.sh installs it: {e}",
                bin.display()
            )
        });
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// A real Kafka-protocol broker: Tansu with in-memory storage, on a free
/// port, stopped on drop.
pub struct KafkaBroker {
    child: Child,
    pub brokers: String,
}

impl KafkaBroker {
    pub fn start() -> KafkaBroker {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = spawn_tool(
            "TALLY_TEST_TANSU",
            "tansu",
            &[
                "broker",
                "--storage-engine",
                "memory://tansu/",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ],
            port,
        );
        KafkaBroker {
            child,
            brokers: format!("127.0.0.1:{port}"),
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real S3-compatible server (moto's), on a free port, stopped on drop.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        let port = free_port();
        let child = spawn_tool(
            "TALLY_TEST_MOTO",
            "moto_server",
            &["-H", "127.0.0.1", "-p", &port.to_string()],
            port,
        );
        S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The `AWS_*` variables a client of this server needs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tally token create`; returns the secret it prints.
pub fn create_token(data: &Path, name: &str, role: &str, tenants: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally"));
    cmd.args(["token", "create", "--data"])
        .arg(data)
        .args(["--name", name, "--role", role]);
    for t in tenants {
        cmd.args(["--tenant", t]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        secret.starts_with("tally_") && secret.len() >= 6 + 32,
        "{secret}"
    );
    secret
}

/// `buf` (npm package @bufbuild/buf): the local install, else the PATH's.
pub fn buf() -> PathBuf {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("node_modules/.bin/buf");
    if local.exists() {
        return local;
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("buf"))
                .find(|p| p.exists())
        })
        .expect("`buf` is not installed: ./scripts/test.sh installs it (npm package @bufbuild/buf)")
}

/// One POST a [`WebhookReceiver`] got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: String,
    pub id: String,
    pub signature: Option<String>,
    pub body: String,
    /// What the receiver answered.
    pub status: u16,
}

/// An HTTP server that records the webhooks POSTed to it. Each alert id is
/// answered 503 the first time it comes (the sender must retry), 200 after;
/// while `refuse` is set, 503 always.
pub struct WebhookReceiver {
    pub addr: String,
    pub got: std::sync::Arc<std::sync::Mutex<Vec<Delivery>>>,
    pub refuse: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl WebhookReceiver {
    pub async fn start() -> WebhookReceiver {
        use axum::http::{HeaderMap, StatusCode, Uri};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let refuse = Arc::new(AtomicBool::new(false));
        let (g, r) = (got.clone(), refuse.clone());
        let app =
            axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
                let (got, refuse) = (g.clone(), r.clone());
                async move {
                    let id = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["id"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    let mut got = got.lock().unwrap();
                    let seen = got.iter().any(|d| d.id == id);
                    let status = if refuse.load(Ordering::SeqCst) || !seen {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    };
                    got.push(Delivery {
                        path: uri.path().to_string(),
                        id,
                        signature: headers
                            .get("x-tally-signature")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string),
                        body,
                        status: status.as_u16(),
                    });
                    status
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        WebhookReceiver { addr, got, refuse }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    /// The deliveries answered 200.
    pub fn accepted(&self) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.status == 200)
            .collect()
    }

    /// Waits until `n` deliveries were answered 200.
    pub async fn wait_accepted(&self, n: usize) -> Vec<Delivery> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.accepted();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} webhooks accepted: {:#?}",
                got.len(),
                self.deliveries()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `sha256=<hex HMAC-SHA256(key, message)>`, written out from RFC 2104 over
/// SHA-256 (independent of the server's HMAC).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |x: u8| k.iter().map(|b| b ^ x).collect::<Vec<u8>>();
    let inner = Sha256::digest([pad(0x36).as_slice(), message].concat());
    let outer = Sha256::digest([pad(0x5c).as_slice(), inner.as_slice()].concat());
    let hex: String = outer.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// A billing.v1 gRPC client of `t`.
pub async fn billing_client(
    t: &Tally,
) -> tally_proto::billing::v1::billing_service_client::BillingServiceClient<tonic::transport::Channel>
{
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", t.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tally_proto::billing::v1::billing_service_client::BillingServiceClient::new(channel)
}

#[allow(dead_code)]
/// CRC-32 (IEEE, reflected, polynomial 0xEDB88320) bit by bit: a second
/// implementation of the checksum the file names record.
pub fn crc32_bitwise(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// The value of one `/metrics` series (its name with labels, as written).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{text}"))
}

/// Standard base64 with padding (RFC 4648): checksum headers, and the body
/// encoding of `grpc-web-text`.
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
