//! A few seconds of real load against a real server: the harness works.
//! (Figures come from `BENCHMARKS.md` runs, never from a timed test.)

use std::path::PathBuf;
use std::process::Command;

fn tally_bin() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_tally-bench"));
    let tally = bench.with_file_name("tally");
    assert!(
        tally.exists(),
        "build the tally binary first: cargo build --workspace"
    );
    tally
}

/// Runs tally-bench against a server it starts, with `args`, and returns
/// its JSON report.
fn bench_report(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("result.json");
    let status = Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .arg("--server-bin")
        .arg(tally_bin())
        .args(args)
        .args(["--quiet", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

#[test]
fn short_run_acknowledges_records_and_reports_json() {
    let report = bench_report(&[
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--concurrency",
        "2",
        "--batch",
        "50",
    ]);
    let acked = report["records_acked"].as_u64().unwrap();
    assert!(acked > 0, "{report}");
    assert_eq!(acked % 50, 0, "whole batches only: {report}");
    assert!(report["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    let server = &report["server"];
    assert!(
        server["parquet_bytes"].as_u64().unwrap() > 0,
        "the server flushed on SIGTERM: {report}"
    );
    assert!(server["cpu_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(report["errors"], serde_json::json!({}));
}

#[test]
fn mixed_run_acknowledges_every_protocol() {
    let report = bench_report(&[
        "--scenario",
        "mixed",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--concurrency",
        "4",
        "--batch",
        "40",
    ]);
    let by = report["records_acked_by_protocol"].as_object().unwrap();
    for protocol in ["grpc-vm", "connect-proto-vm", "connect-json-vm", "http-llm"] {
        let n = by.get(protocol).and_then(|v| v.as_u64()).unwrap_or(0);
        assert!(n > 0 && n.is_multiple_of(40), "{protocol}: {report}");
    }
    let sum: u64 = by.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(sum, report["records_acked"].as_u64().unwrap());
    assert_eq!(report["errors"], serde_json::json!({}));
}

#[test]
fn summary_run_says_why_the_postgres_peer_was_skipped() {
    let report = bench_report(&[
        "--scenario",
        "usage-summary",
        "--events",
        "3000",
        "--queries",
        "2",
        // Nothing listens on port 1: the peer cannot connect.
        "--database-url",
        "postgres://tally@127.0.0.1:1/none",
    ]);
    assert_eq!(report["tally"]["llm_calls_total"], 3000, "{report}");
    let skipped = report["postgres"]["skipped"].as_str().unwrap();
    assert!(
        skipped.contains("PostgreSQL at DATABASE_URL failed"),
        "{skipped}"
    );
}

/// A real `nats-server` on a free loopback port, stopped on drop.
struct NatsServer {
    child: std::process::Child,
    url: String,
}

impl NatsServer {
    fn start() -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server is installed (./scripts/test.sh installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The core NATS publisher writes the protocol itself: every event it
/// publishes at the offered rate reaches tally as a valid `usage.llm`
/// event and is stored (tally's own accepted count says so).
#[test]
fn core_nats_run_at_a_rate_stores_every_published_event() {
    let nats = NatsServer::start();
    let report = bench_report(&[
        "--scenario",
        "nats-core-llm",
        "--nats",
        &nats.url,
        "--rate",
        "2000",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
    ]);
    let published = report["published"].as_u64().unwrap();
    // 2.5 s at 2,000/s, give or take a scheduling tick.
    assert!((4_000..=5_600).contains(&published), "{report}");
    assert_eq!(report["stored_total"].as_u64(), Some(published), "{report}");
    assert_eq!(report["lost"].as_u64(), Some(0), "{report}");
    assert_eq!(report["offered_per_second"].as_u64(), Some(2000));
    assert!(
        report["cpu_seconds"]["tally"].as_f64().is_some(),
        "{report}"
    );
}
