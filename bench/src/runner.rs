//! Closed- and open-loop load, with latency into an HdrHistogram.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use prost::Message;
use tally_proto::billing::v1 as pb;
use tally_proto::billing::v1::billing_service_client::BillingServiceClient;
use tally_proto::opentelemetry::proto::collector::logs::v1 as otlp;
use tally_proto::opentelemetry::proto::collector::logs::v1::logs_service_client::LogsServiceClient;
use tonic::transport::Channel;

use crate::args::{Args, Scenario};

pub struct RunResult {
    pub elapsed: Duration,
    pub requests: u64,
    pub records_acked: u64,
    /// Including the warm-up: what the server stores.
    pub records_stored: u64,
    /// Latency of acknowledged requests, in microseconds.
    pub latency_us: Histogram<u64>,
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Records acknowledged per protocol (one entry unless mixed).
    pub acked_by: std::collections::BTreeMap<String, u64>,
    /// The server's CPU seconds (user + system) over the measured time,
    /// when its process is known.
    pub measured_cpu_seconds: Option<f64>,
    /// The number of the next record a run going on from here sends.
    pub next_record: u64,
    /// Refused requests sent again (`--retry-refused`).
    pub retried: u64,
    /// `--timeline`: the server each second.
    pub timeline: Vec<crate::server::Moment>,
}

struct Shared {
    next_id: AtomicU64,
    /// No record numbered from here on is sent (`--records`).
    last_id: u64,
    retry_refused: bool,
    retried: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
    acked: AtomicU64,
    stored: AtomicU64,
    requests: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    /// The slowest acknowledgement since the timeline's last moment, µs.
    slowest_us: AtomicU64,
    errors: Mutex<std::collections::BTreeMap<String, u64>>,
    acked_by: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Whether an error code says the server refused for load (it took nothing).
fn refused(code: &str) -> bool {
    code.contains("ResourceExhausted") || code.contains("429") || code.contains("Unavailable")
}

impl Shared {
    fn sent_all(&self) -> bool {
        self.next_id.load(Ordering::Relaxed) >= self.last_id
    }
}

pub use crate::llm_events::body;

/// How requests go out, per scenario.
#[derive(Clone)]
pub enum Client {
    HttpLlm {
        http: reqwest::Client,
        url: String,
    },
    /// One HTTP/2 connection per sender: a single tonic channel, not the
    /// server, was the limit in earlier runs.
    GrpcVm {
        step_ns: i64,
        grpc: Arc<Vec<BillingServiceClient<Channel>>>,
        turn: Arc<AtomicU64>,
        vms: u64,
    },
    ConnectVm {
        http: reqwest::Client,
        url: String,
        vms: u64,
        json: bool,
    },
    OtlpHttp {
        http: reqwest::Client,
        url: String,
    },
    OtlpGrpc {
        grpc: Arc<Vec<LogsServiceClient<Channel>>>,
        turn: Arc<AtomicU64>,
    },
    /// Every protocol at once: request `i` goes to `clients[i % len]`.
    Mixed {
        clients: Vec<Client>,
        turn: Arc<AtomicU64>,
    },
}

impl Client {
    /// The short name errors are counted under in a mixed run.
    fn name(&self) -> &'static str {
        match self {
            Client::HttpLlm { .. } => "http-llm",
            Client::GrpcVm { .. } => "grpc-vm",
            Client::ConnectVm { json: false, .. } => "connect-proto-vm",
            Client::ConnectVm { json: true, .. } => "connect-json-vm",
            Client::OtlpHttp { .. } => "otlp-http-logs",
            Client::OtlpGrpc { .. } => "otlp-grpc-logs",
            Client::Mixed { .. } => "mixed",
        }
    }
}

/// Nanoseconds between one VM's samples: 100 ms, or what puts
/// `hour_rows` samples of `vms` VMs in an hour.
pub fn vm_step_ns(vms: u64, hour_rows: Option<u64>) -> i64 {
    match hour_rows {
        Some(rows) if rows > 0 => {
            (3_600_000_000_000u128 * vms.max(1) as u128 / rows as u128) as i64
        }
        _ => 100_000_000,
    }
}

/// A batch of one VM's samples: request `r` covers VM `r % vms`, the
/// `r / vms`-th stretch of `n` samples `step_ns` apart, so no two requests
/// overlap. Counters grow with jitter and restart now and then.
fn vm_batch(first_id: u64, n: usize, vms: u64, step_ns: i64) -> pb::SendMetricsBatchRequest {
    let r = first_id / n as u64;
    let (vm, round) = (r % vms.max(1), r / vms.max(1));
    // 2024-01-15T10:00:00Z: the first synthetic hour starts on the hour.
    let base_ns = 1_705_312_800_000_000_000i64 + (round as i64 * n as i64) * step_ns;
    let metrics = (0..n as i64)
        .map(|i| {
            let ts = base_ns + i * step_ns;
            let step = round as i64 * n as i64 + i;
            let jitter = (step * 7919 + vm as i64 * 104_729) % 1000;
            // Every 50,000 samples the VM "reboots": counters restart.
            let since_boot = step % 50_000;
            pb::VmMetrics {
                timestamp: Some(prost_types::Timestamp {
                    seconds: ts / 1_000_000_000,
                    nanos: (ts % 1_000_000_000) as i32,
                }),
                cpu_time_nanos: since_boot * 50_000_000 + jitter * 1000,
                memory_usage_bytes: (1 << 30) + jitter * 4096,
                disk_read_bytes: since_boot * 4096 + jitter,
                disk_write_bytes: since_boot * 8192,
                network_rx_bytes: since_boot * 1500 + jitter * 3,
                network_tx_bytes: since_boot * 900,
            }
        })
        .collect();
    pb::SendMetricsBatchRequest {
        vm_id: format!("vm-{vm:05}"),
        customer_id: format!("customer-{}", vm % 100),
        metrics,
    }
}

/// An OTLP logs export of `n` model calls as Claude Code sends them
/// (`api_request` records with their attributes), calls `first..first+n`.
fn otlp_logs(first: u64, n: usize) -> otlp::ExportLogsServiceRequest {
    use tally_proto::opentelemetry::proto::common::v1::{
        any_value::Value as V, AnyValue, KeyValue,
    };
    use tally_proto::opentelemetry::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use tally_proto::opentelemetry::proto::resource::v1::Resource;
    let kv = |k: &str, v: V| KeyValue {
        key: k.to_string(),
        value: Some(AnyValue { value: Some(v) }),
    };
    let s = |x: &str| V::StringValue(x.to_string());
    // 2026-11-26T10:00:00Z, one call a millisecond.
    let t0 = 1_795_687_200_000_000_000u64;
    let records = (first..first + n as u64)
        .map(|i| LogRecord {
            time_unix_nano: t0 + i * 1_000_000,
            observed_time_unix_nano: t0 + i * 1_000_000,
            body: Some(AnyValue {
                value: Some(s("claude_code.api_request")),
            }),
            attributes: vec![
                kv("event.name", s("api_request")),
                kv("session.id", s(&format!("session-{}", i / 50))),
                kv("user.email", s(&format!("dev{}@acme.test", i % 200))),
                kv("organization.id", s("org-1")),
                kv(
                    "model",
                    s(["claude-sonnet-4-5", "claude-haiku-4-5"][(i % 2) as usize]),
                ),
                kv("request_id", s(&format!("req_{i:012}"))),
                kv("input_tokens", V::IntValue((i % 900) as i64 + 10)),
                kv("output_tokens", V::IntValue((i % 400) as i64 + 5)),
                kv("cache_read_tokens", V::IntValue((i % 30_000) as i64)),
                kv("cache_creation_tokens", V::IntValue((i % 2_000) as i64)),
                kv("cost_usd", V::DoubleValue(0.0123)),
                kv("duration_ms", V::DoubleValue(1234.0)),
            ],
            ..Default::default()
        })
        .collect();
    otlp::ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("claude-code")),
                    kv("service.version", s("2.0.14")),
                ],
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The protobuf JSON mapping of a batch, as Connect JSON clients send it.
fn vm_batch_json(req: &pb::SendMetricsBatchRequest) -> String {
    let metrics: Vec<serde_json::Value> = req
        .metrics
        .iter()
        .map(|m| {
            let t = m.timestamp.unwrap_or_default();
            let ts =
                chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap_or_default();
            serde_json::json!({
                "timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                "cpuTimeNanos": m.cpu_time_nanos.to_string(),
                "memoryUsageBytes": m.memory_usage_bytes.to_string(),
                "diskReadBytes": m.disk_read_bytes.to_string(),
                "diskWriteBytes": m.disk_write_bytes.to_string(),
                "networkRxBytes": m.network_rx_bytes.to_string(),
                "networkTxBytes": m.network_tx_bytes.to_string(),
            })
        })
        .collect();
    serde_json::json!({"vmId": req.vm_id, "customerId": req.customer_id, "metrics": metrics})
        .to_string()
}

async fn http_outcome(result: reqwest::Result<reqwest::Response>) -> Result<(), String> {
    match result {
        Ok(r) if r.status().is_success() => {
            r.bytes().await.map(|_| ()).map_err(|_| "read".to_string())
        }
        Ok(r) => Err(r.status().as_u16().to_string()),
        Err(e) if e.is_timeout() => Err("timeout".into()),
        Err(_) => Err("connect".into()),
    }
}

/// The open loop's send times, `interval` apart, each delivered when it is
/// due. A thread of its own sleeps to each: tokio's timer fires on whole
/// milliseconds, so at 3 ms intervals every request would leave up to 1 ms
/// late (by the run's phase against the timer), and that lateness would
/// count as the server's latency. Ends when the receiver is dropped.
fn ticker(interval: Duration) -> tokio::sync::mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        for i in 0u32.. {
            let intended = start + interval * i;
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            if tx.send(intended).is_err() {
                break;
            }
        }
    });
    rx
}

async fn send(client: &Client, shared: &Shared, batch: usize, intended: Instant) {
    let (client, mixed) = match client {
        Client::Mixed { clients, turn } => {
            let i = turn.fetch_add(1, Ordering::Relaxed) as usize;
            (&clients[i % clients.len()], true)
        }
        other => (other, false),
    };
    let first = shared.next_id.fetch_add(batch as u64, Ordering::Relaxed);
    let outcome = loop {
        let outcome = match client {
            Client::HttpLlm { http, url } => {
                let req = http
                    .post(url)
                    .header("content-type", "application/x-ndjson")
                    .body(body(first, batch));
                http_outcome(req.send().await).await
            }
            Client::GrpcVm {
                grpc,
                turn,
                vms,
                step_ns,
            } => {
                let i = turn.fetch_add(1, Ordering::Relaxed) as usize;
                let mut grpc = grpc[i % grpc.len()].clone();
                grpc.send_metrics_batch(vm_batch(first, batch, *vms, *step_ns))
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}", s.code()))
            }
            Client::ConnectVm {
                http,
                url,
                vms,
                json,
            } => {
                let req = vm_batch(first, batch, *vms, 100_000_000);
                let (ct, body) = if *json {
                    ("application/json", vm_batch_json(&req).into_bytes())
                } else {
                    ("application/proto", req.encode_to_vec())
                };
                let req = http.post(url).header("content-type", ct).body(body);
                http_outcome(req.send().await).await
            }
            Client::OtlpHttp { http, url } => {
                let req = http
                    .post(url)
                    .header("content-type", "application/x-protobuf")
                    .body(otlp_logs(first, batch).encode_to_vec());
                http_outcome(req.send().await).await
            }
            Client::OtlpGrpc { grpc, turn } => {
                let i = turn.fetch_add(1, Ordering::Relaxed) as usize;
                let mut grpc = grpc[i % grpc.len()].clone();
                grpc.export(otlp_logs(first, batch))
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}", s.code()))
            }
            Client::Mixed { .. } => Err("nested mixed client".into()),
        };
        // `--retry-refused`: a refused request is sent again, as a client
        // with retries would; only the final outcome counts.
        match outcome {
            Err(code) if shared.retry_refused && refused(&code) => {
                shared.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other,
        }
    };
    let outcome = match outcome {
        Err(code) if mixed => Err(format!("{}:{code}", client.name())),
        other => other,
    };
    if outcome.is_ok() {
        shared.stored.fetch_add(batch as u64, Ordering::Relaxed);
    }
    if !shared.measuring.load(Ordering::Relaxed) {
        return;
    }
    shared.requests.fetch_add(1, Ordering::Relaxed);
    match outcome {
        Ok(()) => {
            shared.acked.fetch_add(batch as u64, Ordering::Relaxed);
            *shared
                .acked_by
                .lock()
                .expect("not poisoned")
                .entry(client.name().to_string())
                .or_default() += batch as u64;
            let us = intended.elapsed().as_micros() as u64;
            let _ = shared.hist.lock().expect("not poisoned").record(us.max(1));
            shared.slowest_us.fetch_max(us, Ordering::Relaxed);
        }
        Err(code) => {
            *shared
                .errors
                .lock()
                .expect("not poisoned")
                .entry(code)
                .or_default() += 1
        }
    }
}

async fn client_for(
    scenario: Scenario,
    args: &Args,
    base: &str,
    http: &reqwest::Client,
) -> anyhow::Result<Client> {
    let method = format!("{base}/billing.v1.BillingService/SendMetricsBatch");
    Ok(match scenario {
        Scenario::HttpLlm => Client::HttpLlm {
            http: http.clone(),
            url: format!("{base}/v1/events/usage.llm"),
        },
        Scenario::GrpcVm => {
            let mut grpc = Vec::new();
            for _ in 0..args.concurrency.max(1) {
                let channel = tonic::transport::Endpoint::from_shared(base.to_string())?
                    .connect()
                    .await?;
                grpc.push(BillingServiceClient::new(channel));
            }
            Client::GrpcVm {
                step_ns: vm_step_ns(args.vms, args.hour_rows),
                grpc: Arc::new(grpc),
                turn: Arc::new(AtomicU64::new(0)),
                vms: args.vms,
            }
        }
        Scenario::OtlpHttpLogs => Client::OtlpHttp {
            http: http.clone(),
            url: format!("{base}/v1/logs"),
        },
        Scenario::OtlpGrpcLogs => {
            let mut grpc = Vec::new();
            for _ in 0..args.concurrency.max(1) {
                let channel = tonic::transport::Endpoint::from_shared(base.to_string())?
                    .connect()
                    .await?;
                grpc.push(LogsServiceClient::new(channel));
            }
            Client::OtlpGrpc {
                grpc: Arc::new(grpc),
                turn: Arc::new(AtomicU64::new(0)),
            }
        }
        Scenario::ConnectProtoVm => Client::ConnectVm {
            http: http.clone(),
            url: method,
            vms: args.vms,
            json: false,
        },
        Scenario::ConnectJsonVm => Client::ConnectVm {
            http: http.clone(),
            url: method,
            vms: args.vms,
            json: true,
        },
        other => anyhow::bail!("{other:?} is not a request/response load scenario"),
    })
}

/// `server_pid`, when the server runs here, is sampled for its CPU time at
/// the start and the end of the measured time.
pub async fn run(args: &Args, base: &str, server_pid: Option<u32>) -> anyhow::Result<RunResult> {
    run_with(args, base, None, server_pid).await
}

/// [`run`], trusting the server's CA and sending a bearer token when
/// `secure` is given.
pub async fn run_with(
    args: &Args,
    base: &str,
    secure: Option<&crate::secure::Credentials>,
    server_pid: Option<u32>,
) -> anyhow::Result<RunResult> {
    let mut http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30));
    if let Some(s) = secure {
        anyhow::ensure!(
            !matches!(args.scenario, Scenario::GrpcVm | Scenario::Mixed),
            "--secure-ab runs http-llm, connect-proto-vm and connect-json-vm"
        );
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", s.token).parse()?,
        );
        http = http
            .add_root_certificate(reqwest::Certificate::from_pem(&s.ca_pem)?)
            .default_headers(headers);
    }
    let http = http.build()?;
    let client = match args.scenario {
        Scenario::Mixed => {
            let mut clients = Vec::new();
            for s in [
                Scenario::GrpcVm,
                Scenario::ConnectProtoVm,
                Scenario::ConnectJsonVm,
                Scenario::HttpLlm,
            ] {
                clients.push(client_for(s, args, base, &http).await?);
            }
            Client::Mixed {
                clients,
                turn: Arc::new(AtomicU64::new(0)),
            }
        }
        s => client_for(s, args, base, &http).await?,
    };
    let shared = Arc::new(Shared {
        next_id: AtomicU64::new(args.first_record),
        retry_refused: args.retry_refused,
        retried: AtomicU64::new(0),
        last_id: args
            .records
            .map_or(u64::MAX, |n| args.first_record.saturating_add(n)),
        measuring: AtomicBool::new(args.warmup.is_zero()),
        stop: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        stored: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        slowest_us: AtomicU64::new(0),
        errors: Mutex::new(Default::default()),
        acked_by: Mutex::new(Default::default()),
    });
    let mut tasks = Vec::new();
    match args.rate {
        None => {
            for _ in 0..args.concurrency {
                let (client, shared, batch) = (client.clone(), shared.clone(), args.batch);
                tasks.push(tokio::spawn(async move {
                    while !shared.stop.load(Ordering::Relaxed) && !shared.sent_all() {
                        send(&client, &shared, batch, Instant::now()).await;
                    }
                }));
            }
        }
        Some(rate) => {
            let interval = Duration::from_secs_f64(args.batch as f64 / rate.max(1) as f64);
            let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1) * 64));
            let (client, shared, batch) = (client.clone(), shared.clone(), args.batch);
            let mut ticks = ticker(interval);
            tasks.push(tokio::spawn(async move {
                while let Some(intended) = ticks.recv().await {
                    if shared.stop.load(Ordering::Relaxed) || shared.sent_all() {
                        break;
                    }
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        break;
                    };
                    let (client, shared) = (client.clone(), shared.clone());
                    tokio::spawn(async move {
                        send(&client, &shared, batch, intended).await;
                        drop(permit);
                    });
                }
            }));
        }
    }
    tokio::time::sleep(args.warmup).await;
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let cpu_at_start = server_pid.and_then(|pid| crate::server::cpu_seconds(pid).ok());
    let mut last = 0;
    let mut timeline = Vec::new();
    let pid = server_pid.or(args.server_pid);
    while started.elapsed() < args.duration && !shared.sent_all() {
        tokio::time::sleep(Duration::from_secs(1).min(args.duration)).await;
        if args.timeline {
            let mut moment = crate::server::sample(&http, base, pid, started.elapsed()).await;
            moment.slowest_ack_ms = Some(shared.slowest_us.swap(0, Ordering::Relaxed) as f64 / 1e3);
            timeline.push(moment);
        }
        if !args.quiet {
            let now = shared.acked.load(Ordering::Relaxed);
            eprint!(
                "\r{:>6.1}s  {:>10} records/s  {:>12} acked",
                started.elapsed().as_secs_f64(),
                now - last,
                now
            );
            last = now;
        }
    }
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let measured_cpu_seconds = match (server_pid, cpu_at_start) {
        (Some(pid), Some(start)) => crate::server::cpu_seconds(pid).ok().map(|end| end - start),
        _ => None,
    };
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    if !args.quiet {
        eprintln!();
    }
    let hist = shared.hist.lock().expect("not poisoned").clone();
    let errors = shared.errors.lock().expect("not poisoned").clone();
    let acked_by = shared.acked_by.lock().expect("not poisoned").clone();
    Ok(RunResult {
        elapsed,
        requests: shared.requests.load(Ordering::Relaxed),
        records_acked: shared.acked.load(Ordering::Relaxed),
        records_stored: shared.stored.load(Ordering::Relaxed),
        latency_us: hist,
        errors,
        acked_by,
        measured_cpu_seconds,
        next_record: shared.next_id.load(Ordering::Relaxed),
        retried: shared.retried.load(Ordering::Relaxed),
        timeline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_ticker_gives_evenly_spaced_times_and_none_before_it_is_due() {
        let interval = Duration::from_micros(2_500);
        let mut ticks = ticker(interval);
        let first = ticks.recv().await.expect("a tick");
        for i in 1..40u32 {
            let due = ticks.recv().await.expect("a tick");
            let now = Instant::now();
            assert_eq!(due - first, interval * i, "tick {i}");
            assert!(now >= due, "tick {i} came {:?} early", due - now);
        }
        // Dropping the receiver ends the thread (nothing to observe but
        // that dropping does not hang the test).
        drop(ticks);
    }
}
