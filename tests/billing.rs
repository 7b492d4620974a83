//! billing.v1 end to end: the five RPCs over Connect (JSON and binary, gzip),
//! gRPC (tonic client) and gRPC-Web, their errors, and `buf curl`.

mod common;

use std::io::{Read, Write};

use common::{base64, vm_sample as sample, Tally};
use prost::Message;
use serde_json::{json, Value};
use tally_proto::billing::v1 as pb;
use tally_proto::billing::v1::billing_service_client::BillingServiceClient;

const NO_FLUSH: [&str; 2] = ["--flush-interval", "1h"];

pub async fn grpc_client(t: &Tally) -> BillingServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", t.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    BillingServiceClient::new(channel)
}

#[tokio::test]
async fn all_five_rpcs_over_grpc_with_errors() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tally::start(&dir.path().join("data"), &NO_FLUSH).await;
    let mut c = grpc_client(&t).await;
    let r = c
        .send_metrics_batch(pb::SendMetricsBatchRequest {
            vm_id: "vm-1".into(),
            customer_id: "cust-1".into(),
            metrics: (0..600)
                .map(|i| sample(1_705_314_600 + i, i * 1000))
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.success);
    assert_eq!(r.message, "processed 600 metrics");
    assert!(
        c.send_heartbeat(pb::SendHeartbeatRequest {
            instance_id: "metald-1".into(),
            active_vms: vec!["vm-1".into()]
        })
        .await
        .unwrap()
        .into_inner()
        .success
    );
    assert!(
        c.notify_vm_started(pb::NotifyVmStartedRequest {
            vm_id: "vm-1".into(),
            customer_id: "cust-1".into(),
            start_time: 1_705_314_000_000_000_000
        })
        .await
        .unwrap()
        .into_inner()
        .success
    );
    assert!(
        c.notify_vm_stopped(pb::NotifyVmStoppedRequest {
            vm_id: "vm-1".into(),
            stop_time: 1_705_320_600_000_000_000
        })
        .await
        .unwrap()
        .into_inner()
        .success
    );
    assert!(
        c.notify_possible_gap(pb::NotifyPossibleGapRequest {
            vm_id: "vm-1".into(),
            last_sent: 1_705_317_000_000_000_000,
            resume_time: 1_705_317_600_000_000_000
        })
        .await
        .unwrap()
        .into_inner()
        .success
    );

    // Errors: the field and, for samples, the index.
    let mut bad = pb::SendMetricsBatchRequest {
        vm_id: "vm-1".into(),
        customer_id: "cust-1".into(),
        metrics: (0..20).map(|i| sample(1_705_400_000 + i, i)).collect(),
    };
    bad.metrics[17].timestamp = None;
    let e = c.send_metrics_batch(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.message(), "metrics[17].timestamp is required");
    let e = c
        .notify_vm_started(pb::NotifyVmStartedRequest {
            vm_id: "vm-2".into(),
            customer_id: String::new(),
            start_time: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::InvalidArgument, "customer_id is required")
    );
    let e = c
        .notify_possible_gap(pb::NotifyPossibleGapRequest {
            vm_id: "v".into(),
            last_sent: 10,
            resume_time: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "resume_time (5) must not be before last_sent (10)"
    );
    let e = c
        .send_heartbeat(pb::SendHeartbeatRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.message(), "instance_id is required");

    // The rejected batch stored nothing; the accepted one all of it.
    assert_eq!(
        t.sql("SELECT count(*) AS n FROM vm_metrics").await[0]["n"],
        600
    );
    let kinds = t
        .sql("SELECT kind, count(*) AS n FROM vm_events GROUP BY kind ORDER BY kind")
        .await;
    // The heartbeat listed vm-1, whose newest sample (in 2024) is far older
    // than the gap limit: a gap is recorded from that sample on.
    assert_eq!(
        kinds,
        vec![
            json!({"kind": "gap_detected", "n": 1}),
            json!({"kind": "heartbeat", "n": 1}),
            json!({"kind": "possible_gap", "n": 1}),
            json!({"kind": "started", "n": 1}),
            json!({"kind": "stopped", "n": 1}),
        ]
    );
    let gap = t.sql("SELECT vm_id, CAST(last_sent AS BIGINT) AS last FROM vm_events WHERE kind = 'gap_detected'").await;
    assert_eq!(
        gap,
        vec![json!({"vm_id": "vm-1", "last": (1_705_314_600i64 + 599) * 1_000_000_000})]
    );
    let rejected = t
        .sql("SELECT subject, reason FROM rejected ORDER BY reason")
        .await;
    assert_eq!(rejected.len(), 4);
    assert!(rejected
        .iter()
        .any(|r| r["reason"] == "metrics[17].timestamp is required"
            && r["subject"] == "billing.v1.BillingService/SendMetricsBatch"));

    // A resent batch counts once.
    let again = c
        .send_metrics_batch(pb::SendMetricsBatchRequest {
            vm_id: "vm-1".into(),
            customer_id: "cust-1".into(),
            metrics: (0..600)
                .map(|i| sample(1_705_314_600 + i, i * 1000))
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.message, "processed 0 metrics, 600 duplicates ignored");
    let metrics = reqwest::get(t.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("billaged_metrics_processed_total 600"),
        "{metrics}"
    );
    assert!(metrics.contains("billaged_batch_size_histogram_count 2"));
    assert!(metrics.contains("billaged_active_vms 1"));
    assert!(metrics.contains("billaged_processing_duration_seconds_bucket"));
}

async fn connect_post(
    t: &Tally,
    method: &str,
    content_type: &str,
    body: Vec<u8>,
    gzip: bool,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(t.url(&format!("/billing.v1.BillingService/{method}")))
        .header("content-type", content_type)
        .header("connect-protocol-version", "1");
    let body = if gzip {
        req = req
            .header("content-encoding", "gzip")
            .header("accept-encoding", "gzip");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&body).unwrap();
        enc.finish().unwrap()
    } else {
        body
    };
    req.body(body).send().await.unwrap()
}

#[tokio::test]
async fn connect_json_binary_gzip_and_error_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tally::start(&dir.path().join("data"), &NO_FLUSH).await;

    // The spec's example, as JSON with int64 as numbers and as strings.
    let body = json!({
        "vm_id": "ud-1234567890abcdef", "customer_id": "customer-456",
        "metrics": [{"timestamp": "2024-01-15T10:30:00.100Z", "cpu_time_nanos": 1234567890123i64,
            "memory_usage_bytes": 536870912, "disk_read_bytes": "1048576", "disk_write_bytes": 2097152,
            "network_rx_bytes": 4194304, "network_tx_bytes": 8388608}]
    });
    let r = connect_post(
        &t,
        "SendMetricsBatch",
        "application/json",
        body.to_string().into_bytes(),
        false,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"success": true, "message": "processed 1 metrics"})
    );

    // Binary protobuf, gzip both ways.
    let msg = pb::NotifyVmStartedRequest {
        vm_id: "ud-1".into(),
        customer_id: "customer-456".into(),
        start_time: 1_705_317_000_000_000_000,
    };
    let r = connect_post(
        &t,
        "NotifyVmStarted",
        "application/proto",
        msg.encode_to_vec(),
        true,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["content-type"], "application/proto");
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&r.bytes().await.unwrap()[..])
        .read_to_end(&mut plain)
        .unwrap();
    assert!(
        pb::NotifyVmStartedResponse::decode(&plain[..])
            .unwrap()
            .success
    );

    // JSON, lowerCamelCase, gzip.
    let r = connect_post(
        &t,
        "NotifyPossibleGap",
        "application/json",
        br#"{"vmId":"ud-1","lastSent":"1705317000000000000","resumeTime":1705317600000000000}"#
            .to_vec(),
        true,
    )
    .await;
    assert_eq!(r.status(), 200);

    // Errors: Connect codes and HTTP statuses.
    let r = connect_post(
        &t,
        "SendMetricsBatch",
        "application/json",
        br#"{"customer_id":"c","metrics":[]}"#.to_vec(),
        false,
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"code": "invalid_argument", "message": "vm_id is required"})
    );
    let r = connect_post(&t, "SendMetricsBatch", "application/json",
        br#"{"vm_id":"v","customer_id":"c","metrics":[{"timestamp":"2024-01-15T10:30:00Z","cpu_time_nanos":-1}]}"#.to_vec(), false).await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "metrics[0].cpu_time_nanos must be >= 0, got -1"
    );
    let r = connect_post(
        &t,
        "SendMetricsBatch",
        "application/json",
        br#"{"vm_id": 5}"#.to_vec(),
        false,
    )
    .await;
    assert_eq!(r.status(), 400);
    let e = r.json::<Value>().await.unwrap();
    assert_eq!(e["code"], "invalid_argument");
    assert!(e["message"].as_str().unwrap().starts_with("vm_id:"), "{e}");
    let r = connect_post(
        &t,
        "SendMetricsBatch",
        "application/proto",
        vec![0xff, 0xff, 0xff],
        false,
    )
    .await;
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_argument");
    let r = connect_post(&t, "SendHeartbeat", "text/plain", b"{}".to_vec(), false).await;
    assert_eq!(r.status(), 415);
    let r = connect_post(
        &t,
        "NoSuchMethod",
        "application/json",
        b"{}".to_vec(),
        false,
    )
    .await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
}

/// gRPC `SendMetricsBatch` is served by hand (decoded into columns): it
/// takes and gives gzip as the generated service does, refuses a message
/// over the body bound with gRPC's own status, and what it acknowledges is
/// stored with every field in its column.
#[tokio::test]
async fn grpc_batches_gzip_both_ways_within_the_body_bound() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tally::start(
        &dir.path().join("data"),
        &["--flush-interval", "1h", "--max-body-bytes", "20000"],
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", t.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = BillingServiceClient::new(channel)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let samples: Vec<pb::VmMetrics> = (0..100)
        .map(|i| pb::VmMetrics {
            network_rx_bytes: 7 * i,
            ..sample(1_705_314_600 + i, 1_000 * i)
        })
        .collect();
    let r = c
        .send_metrics_batch(pb::SendMetricsBatchRequest {
            vm_id: "vm-gz".into(),
            customer_id: "cust-gz".into(),
            metrics: samples.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        r.metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip")
    );
    assert_eq!(r.into_inner().message, "processed 100 metrics");
    // Sums computed here from the samples sent.
    let (cpu, rx): (i64, i64) = samples
        .iter()
        .map(|m| (m.cpu_time_nanos, m.network_rx_bytes))
        .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
    let rows = t
        .sql(
            "SELECT count(*) AS n, sum(cpu_time_nanos) AS cpu, sum(network_rx_bytes) AS rx, \
             CAST(min(timestamp) AS BIGINT) AS first FROM vm_metrics WHERE vm_id = 'vm-gz' AND customer_id = 'cust-gz'",
        )
        .await;
    assert_eq!(rows[0]["n"], 100);
    assert_eq!(rows[0]["cpu"], cpu);
    assert_eq!(rows[0]["rx"], rx);
    assert_eq!(rows[0]["first"], 1_705_314_600_000_000_000i64);

    // 1,000 samples of large counters are over 20,000 bytes uncompressed.
    let big = pb::SendMetricsBatchRequest {
        vm_id: "vm-big".into(),
        customer_id: "cust-gz".into(),
        metrics: (0..1000)
            .map(|i| sample(1_705_314_600 + i, i64::MAX - i))
            .collect(),
    };
    assert!(big.encoded_len() > 20_000);
    let mut plain = BillingServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", t.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let e = plain.send_metrics_batch(big).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("message length too large"), "{e:?}");
    let rows = t
        .sql("SELECT count(*) AS n FROM vm_metrics WHERE vm_id = 'vm-big'")
        .await;
    assert_eq!(rows[0]["n"], 0);
}

#[tokio::test]
async fn grpc_web_frames_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tally::start(&dir.path().join("data"), &NO_FLUSH).await;
    let msg = pb::SendHeartbeatRequest {
        instance_id: "metald-web".into(),
        active_vms: vec!["a".into(), "b".into()],
    };
    let call = |msg: Vec<u8>| {
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(&msg);
        reqwest::Client::new()
            .post(t.url("/billing.v1.BillingService/SendHeartbeat"))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(frame)
            .send()
    };
    let r = call(msg.encode_to_vec()).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert_eq!(body[0], 0, "first frame is data");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    assert!(
        pb::SendHeartbeatResponse::decode(&body[5..5 + len])
            .unwrap()
            .success
    );
    let trailer = String::from_utf8_lossy(&body[5 + len + 5..]).to_lowercase();
    assert!(
        body[5 + len] & 0x80 != 0 && trailer.contains("grpc-status:0"),
        "{trailer}"
    );

    // An error is a trailers-only response: the status is in the headers.
    let r = call(pb::SendHeartbeatRequest::default().encode_to_vec())
        .await
        .unwrap();
    assert_eq!(r.headers()["grpc-status"], "3");
    assert_eq!(r.headers()["grpc-message"], "instance_id%20is%20required");
    let rows = t.sql("SELECT instance_id, active_vms FROM vm_events").await;
    assert_eq!(
        rows,
        vec![json!({"instance_id": "metald-web", "active_vms": "[\"a\",\"b\"]"})]
    );
}

/// The inverse of [`common::base64`], group by group of four characters, so that
/// padded pieces written one after another decode too.
fn unbase64(text: &[u8]) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    for group in text.chunks(4) {
        let digits: Vec<u8> = group.iter().copied().filter(|&c| c != b'=').collect();
        let n = digits
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (value(c) as u32) << (18 - 6 * i));
        for i in 0..digits.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// `SendMetricsBatch` over gRPC-Web, binary and text, is served by the
/// same hand-served method as gRPC: the rows are stored, counted under the
/// source `grpc-web`, and an invalid batch is a trailers-only error.
#[tokio::test]
async fn grpc_web_metrics_batches_binary_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tally::start(&dir.path().join("data"), &NO_FLUSH).await;
    let batch = |vm: &str, n: i64| pb::SendMetricsBatchRequest {
        vm_id: vm.into(),
        customer_id: "cust-web".into(),
        metrics: (0..n)
            .map(|i| sample(1_705_314_600 + i, 7 * i + 3))
            .collect(),
    };
    let frame = |msg: &pb::SendMetricsBatchRequest| {
        let msg = msg.encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(&msg);
        frame
    };
    // The answer is written in the encoding the `accept` header asks for.
    let call = |content_type: &'static str, body: Vec<u8>| {
        reqwest::Client::new()
            .post(t.url("/billing.v1.BillingService/SendMetricsBatch"))
            .header("content-type", content_type)
            .header("accept", content_type)
            .header("x-grpc-web", "1")
            .body(body)
            .send()
    };
    let answer = |body: &[u8]| {
        assert_eq!(body[0], 0, "first frame is data");
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let r = pb::SendMetricsBatchResponse::decode(&body[5..5 + len]).unwrap();
        let trailer = String::from_utf8_lossy(&body[5 + len + 5..]).to_lowercase();
        assert!(
            body[5 + len] & 0x80 != 0 && trailer.contains("grpc-status:0"),
            "{trailer}"
        );
        r
    };

    let binary = batch("vm-web-bin", 600);
    let r = call("application/grpc-web+proto", frame(&binary))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/grpc-web+proto");
    let r = answer(&r.bytes().await.unwrap());
    assert!(r.success);
    assert_eq!(r.message, "processed 600 metrics");

    let text = batch("vm-web-text", 5);
    let r = call(
        "application/grpc-web-text",
        base64(&frame(&text)).into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/grpc-web-text+proto"
    );
    // The answer is base64 too; its frames decode as above.
    let r = answer(&unbase64(&r.bytes().await.unwrap()));
    assert!(r.success);
    assert_eq!(r.message, "processed 5 metrics");

    // An invalid batch: the status and message in the headers, nothing stored.
    let r = call(
        "application/grpc-web+proto",
        frame(&pb::SendMetricsBatchRequest {
            customer_id: "cust-web".into(),
            ..batch("", 3)
        }),
    )
    .await
    .unwrap();
    assert_eq!(r.headers()["grpc-status"], "3");
    assert_eq!(r.headers()["grpc-message"], "vm_id%20is%20required");

    for (req, vm) in [(&binary, "vm-web-bin"), (&text, "vm-web-text")] {
        let cpu: i64 = req.metrics.iter().map(|m| m.cpu_time_nanos).sum();
        let rows = t
            .sql(&format!(
                "SELECT count(*) AS n, sum(cpu_time_nanos) AS cpu FROM vm_metrics WHERE vm_id = '{vm}'"
            ))
            .await;
        assert_eq!(rows[0]["n"], req.metrics.len() as u64, "{vm}");
        assert_eq!(rows[0]["cpu"], cpu, "{vm}");
    }
    assert_eq!(
        t.sql("SELECT count(*) AS n FROM vm_metrics").await[0]["n"],
        605
    );
    let metrics = t.metrics_text().await;
    assert!(
        metrics.contains(
            "tally_records_accepted_total{dataset=\"vm_metrics\",source=\"grpc-web\"} 605"
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("tally_records_accepted_total{dataset=\"vm_metrics\",source=\"grpc\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn buf_curl_speaks_connect_grpc_and_grpc_web() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tally::start(&dir.path().join("data"), &NO_FLUSH).await;
    let schema = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/proto");
    for (i, protocol) in ["connect", "grpc", "grpcweb"].iter().enumerate() {
        let data = json!({"vmId": format!("vm-{protocol}"), "customerId": "c",
            "metrics": [{"timestamp": "2024-01-15T10:30:00Z", "cpuTimeNanos": "5"}]});
        let mut cmd = std::process::Command::new(common::buf());
        cmd.args(["curl", "--schema"]).arg(&schema).args([
            "--protocol",
            protocol,
            "--data",
            &data.to_string(),
        ]);
        if *protocol == "grpc" {
            cmd.arg("--http2-prior-knowledge");
        }
        let out = cmd
            .arg(t.url("/billing.v1.BillingService/SendMetricsBatch"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{protocol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v,
            json!({"success": true, "message": "processed 1 metrics"}),
            "{protocol}"
        );

        // And an error, with its code.
        let out = std::process::Command::new(common::buf())
            .args(["curl", "--schema"])
            .arg(&schema)
            .args(["--protocol", protocol, "--data", r#"{"customerId":"c"}"#])
            .args(if *protocol == "grpc" {
                vec!["--http2-prior-knowledge"]
            } else {
                vec![]
            })
            .arg(t.url("/billing.v1.BillingService/SendMetricsBatch"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("invalid_argument") && err.contains("vm_id is required"),
            "{protocol}: {err}"
        );
        assert_eq!(
            t.sql("SELECT count(*) AS n FROM vm_metrics").await[0]["n"],
            i as u64 + 1
        );
    }
}
