//! TLS and mTLS on the shared port, with real clients: curl over HTTPS,
//! `buf curl` over Connect, gRPC and gRPC-Web, a tonic client with a client
//! certificate (and refused without one), and a certificate renewed on disk
//! while the server runs. The certificates come from `openssl` in the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Tally;
use serde_json::{json, Value};
use tally_proto::billing::v1::billing_service_client::BillingServiceClient;
use tally_proto::billing::v1::SendMetricsBatchRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

/// A CA: `<name>.pem` and `<name>.key` in `dir`.
fn ca(dir: &Path, name: &str) -> PathBuf {
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    let mut args = vec!["req", "-x509"];
    args.extend(EC);
    args.extend([
        "-nodes", "-keyout", &key, "-out", &pem, "-days", "2", "-subj",
    ]);
    let subj = format!("/CN={name}");
    args.push(&subj);
    args.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &args);
    dir.join(pem)
}

/// A certificate signed by CA `ca_name`: `(cert, key)` paths.
fn issue(dir: &Path, ca_name: &str, name: &str, ext: &str) -> (PathBuf, PathBuf) {
    let (pem, key, csr, extfile) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extfile), ext).unwrap();
    let mut args = vec!["req"];
    args.extend(EC);
    let subj = format!("/CN={name}");
    args.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(dir, &args);
    let (ca_pem, ca_key) = (format!("{ca_name}.pem"), format!("{ca_name}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ],
    );
    (dir.join(pem), dir.join(key))
}

const SERVER_EXT: &str = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n";
const CLIENT_EXT: &str = "subjectAltName=URI:spiffe://tally.test/metald/host-1\nextendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n";

fn https_client(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap());
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).unwrap();
        pem.extend(std::fs::read(key).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn batch(vm: &str, customer: &str) -> SendMetricsBatchRequest {
    SendMetricsBatchRequest {
        vm_id: vm.into(),
        customer_id: customer.into(),
        metrics: vec![common::vm_sample(chrono::Utc::now().timestamp() - 600, 5)],
    }
}

#[tokio::test]
async fn curl_and_buf_curl_reach_every_protocol_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    let ca_pem = ca(pki, "ca");
    let (cert, key) = issue(pki, "ca", "server", SERVER_EXT);
    let data = pki.join("data");
    let ingest = common::create_token(&data, "fleet", "ingest", &[]);
    let admin = common::create_token(&data, "ops", "admin", &[]);
    let client = https_client(&ca_pem, None);
    let t = Tally::start_tls(
        &data,
        &[
            "--flush-interval",
            "1h",
            "--tls-cert",
            path_str(&cert),
            "--tls-key",
            path_str(&key),
        ],
        &client,
    )
    .await;

    // curl: HTTPS, with the CA made here.
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--cacert", path_str(&ca_pem)])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, body) = curl(&[&t.url("/health")]);
    assert!(ok, "{body}");
    let event = common::llm_event("tls-1", "2026-01-12T03:12:34Z", 10, 5);
    let auth = format!("Authorization: Bearer {ingest}");
    let (ok, body) = curl(&[
        "-H",
        &auth,
        "-H",
        "content-type: application/json",
        "--data",
        &event.to_string(),
        &t.url("/v1/events/usage.llm"),
    ]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["accepted"],
        1,
        "{body}"
    );
    let (_, body) = curl(&[
        "-H",
        "content-type: application/json",
        "--data",
        &event.to_string(),
        &t.url("/v1/events/usage.llm"),
    ]);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "unauthorized",
        "{body}"
    );
    // Plain HTTP to the TLS port gets nothing.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/health", t.addr))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // buf curl: Connect, gRPC (h2 by ALPN) and gRPC-Web, token in the header.
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/proto");
    let url = t.url("/billing.v1.BillingService/SendMetricsBatch");
    let at = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() - 600, 0)
        .unwrap()
        .to_rfc3339();
    for protocol in ["connect", "grpc", "grpcweb"] {
        let data = json!({"vmId": format!("vm-{protocol}"), "customerId": "c",
            "metrics": [{"timestamp": at, "cpuTimeNanos": "5"}]});
        let run = |with_token: bool| {
            let mut cmd = Command::new(common::buf());
            cmd.args(["curl", "--schema"]).arg(&schema).args([
                "--protocol",
                protocol,
                "--cacert",
                path_str(&ca_pem),
                "--data",
                &data.to_string(),
            ]);
            if with_token {
                cmd.args(["-H", &auth]);
            }
            cmd.arg(&url).output().unwrap()
        };
        let out = run(true);
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
        let out = run(false);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unauthenticated"), "{protocol}: {err}");
    }
    let r = client
        .post(t.url("/v1/sql"))
        .bearer_auth(&admin)
        .body("SELECT count(*) AS n FROM vm_metrics")
        .send()
        .await
        .unwrap();
    let rows: Value = r.json().await.unwrap();
    assert_eq!(rows[0]["n"], 3, "{rows}");
}

#[tokio::test]
async fn mutual_tls_lets_in_clients_with_a_certificate_of_the_ca_alone() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    let ca_pem = ca(pki, "ca");
    let (cert, key) = issue(pki, "ca", "server", SERVER_EXT);
    let (client_cert, client_key) = issue(pki, "ca", "metald", CLIENT_EXT);
    // A client certificate of another CA.
    ca(pki, "rogue");
    let (rogue_cert, rogue_key) = issue(pki, "rogue", "intruder", CLIENT_EXT);
    let data = pki.join("data");
    let fleet = common::create_token(&data, "fleet-c1", "ingest", &["c1"]);
    let ops = common::create_token(&data, "ops", "read", &[]);
    let t = Tally::start_tls(
        &data,
        &[
            "--flush-interval",
            "1h",
            "--tls-cert",
            path_str(&cert),
            "--tls-key",
            path_str(&key),
            "--tls-client-ca",
            path_str(&ca_pem),
        ],
        &https_client(&ca_pem, Some((&client_cert, &client_key))),
    )
    .await;
    let channel = |identity: Option<(&Path, &Path)>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&ca_pem).unwrap()))
            .domain_name("localhost");
        if let Some((c, k)) = identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(c).unwrap(),
                std::fs::read(k).unwrap(),
            ));
        }
        Channel::from_shared(t.url(""))
            .unwrap()
            .tls_config(tls)
            .unwrap()
    };
    let with_token = |req: SendMetricsBatchRequest, tok: Option<&str>| {
        let mut r = tonic::Request::new(req);
        if let Some(tok) = tok {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {tok}").parse().unwrap());
        }
        r
    };
    let mut grpc = BillingServiceClient::new(
        channel(Some((&client_cert, &client_key)))
            .connect()
            .await
            .unwrap(),
    );
    let ok = grpc
        .send_metrics_batch(with_token(batch("vm-1", "c1"), Some(&fleet)))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().message, "processed 1 metrics");
    let e = grpc
        .send_metrics_batch(with_token(batch("vm-2", "c1"), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let e = grpc
        .send_metrics_batch(with_token(batch("vm-3", "c2"), Some(&fleet)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("\"c2\""), "{e}");
    // Counted by route and reason, as HTTP refusals are.
    let metrics = https_client(&ca_pem, Some((&client_cert, &client_key)))
        .get(t.url("/metrics"))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "tally_auth_failures_total{route=\"/billing.v1.BillingService/{method}\",reason=\"missing\"} 1",
        "tally_auth_failures_total{route=\"/billing.v1.BillingService/{method}\",reason=\"tenant\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }

    // Without a client certificate, or with one of another CA: refused.
    for identity in [None, Some((rogue_cert.as_path(), rogue_key.as_path()))] {
        let refused = match channel(identity).connect().await {
            Err(_) => true,
            Ok(ch) => BillingServiceClient::new(ch)
                .send_metrics_batch(with_token(batch("vm-4", "c1"), Some(&fleet)))
                .await
                .is_err(),
        };
        assert!(refused, "a client without a certificate of the CA got in");
        let out = Command::new("curl")
            .args(["-sS", "--cacert", path_str(&ca_pem)])
            .args(identity.map_or(vec![], |(c, k)| {
                vec!["--cert", path_str(c), "--key", path_str(k)]
            }))
            .arg(t.url("/health"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "curl got in");
    }
    let out = Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            path_str(&ca_pem),
            "--cert",
            path_str(&client_cert),
            "--key",
        ])
        .arg(path_str(&client_key))
        .arg(t.url("/health"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    let old_ca = ca(pki, "old-ca");
    let (cert, key) = issue(pki, "old-ca", "server-old", SERVER_EXT);
    let new_ca = ca(pki, "new-ca");
    let (new_cert, new_key) = issue(pki, "new-ca", "server-new", SERVER_EXT);
    let (live_cert, live_key) = (pki.join("live.pem"), pki.join("live.key"));
    std::fs::copy(&cert, &live_cert).unwrap();
    std::fs::copy(&key, &live_key).unwrap();
    let data = pki.join("data");
    let old_client = https_client(&old_ca, None);
    let new_client = https_client(&new_ca, None);
    let t = Tally::start_tls(
        &data,
        &[
            "--tls-cert",
            path_str(&live_cert),
            "--tls-key",
            path_str(&live_key),
        ],
        &old_client,
    )
    .await;
    assert!(new_client.get(t.url("/health")).send().await.is_err());
    // Renewed as cert managers do: new files renamed into place.
    std::fs::copy(&new_key, pki.join("live.key.tmp")).unwrap();
    std::fs::copy(&new_cert, pki.join("live.pem.tmp")).unwrap();
    std::fs::rename(pki.join("live.key.tmp"), &live_key).unwrap();
    std::fs::rename(pki.join("live.pem.tmp"), &live_cert).unwrap();
    let renewed = Instant::now();
    loop {
        // Fresh connections: a pooled one would keep the old session.
        let fresh = https_client(&new_ca, None);
        if fresh.get(t.url("/health")).send().await.is_ok() {
            break;
        }
        assert!(
            renewed.elapsed() < Duration::from_secs(10),
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fresh_old = https_client(&old_ca, None);
    assert!(fresh_old.get(t.url("/health")).send().await.is_err());
}

#[tokio::test]
async fn the_nats_source_connects_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    let ca_pem = ca(pki, "ca");
    let (server_cert, server_key) = issue(pki, "ca", "nats", SERVER_EXT);
    let (client_cert, client_key) = issue(pki, "ca", "tally-node", CLIENT_EXT);
    // The broker requires TLS and a client certificate of the CA.
    let nats = common::NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        path_str(&server_cert),
        "--tlskey",
        path_str(&server_key),
        "--tlsverify",
        "--tlscacert",
        path_str(&ca_pem),
    ])
    .await;
    let data = pki.join("data");
    let t = Tally::start(
        &data,
        &[
            "--nats",
            &nats.url,
            "--nats-tls-ca",
            path_str(&ca_pem),
            "--nats-tls-cert",
            path_str(&client_cert),
            "--nats-tls-key",
            path_str(&client_key),
        ],
    )
    .await;
    common::wait_nats_connected(&t).await;
    let publisher = async_nats::ConnectOptions::new()
        .add_root_certificates(ca_pem.clone())
        .add_client_certificate(client_cert.clone(), client_key.clone())
        .require_tls(true)
        .connect(&nats.url)
        .await
        .unwrap();
    let event = common::llm_event("nats-tls-1", "2026-01-12T03:12:34Z", 10, 5);
    publisher
        .publish("usage.llm", event.to_string().into())
        .await
        .unwrap();
    publisher.flush().await.unwrap();
    let n = common::wait_for_count(&t, "SELECT count(*) AS n FROM usage_llm", 1).await;
    assert_eq!(n, 1);
    // A plain client is refused by the broker: the TLS settings were what
    // let tally in.
    assert!(async_nats::connect(&nats.url).await.is_err());
}
