//! A generated fleet with counter resets, silences, reported gaps, duplicate
//! and out-of-order batches: the rollups equal values computed here, from
//! the same samples, by the billing rules (README, "billing.v1 (VM metering)").

mod common;

use std::collections::BTreeMap;

use common::{Rng, Tally};
use serde_json::Value;
use tally_proto::billing::v1 as pb;
use tally_proto::billing::v1::billing_service_client::BillingServiceClient;

const NS: i64 = 1_000_000_000;
const GAP_LIMIT: i64 = 120 * NS;

/// (customer, vm, samples, reported gaps as (last_sent, resume_time)).
type Vm = (&'static str, &'static str, Vec<Sample>, Vec<(i64, i64)>);

#[derive(Clone, Debug)]
struct Sample {
    ts: i64,
    cpu: i64,
    mem: i64,
    disk_r: i64,
    disk_w: i64,
    rx: i64,
    tx: i64,
}

/// One VM's samples, every ~10 s with jitter, over `steps` steps.
fn generate(rng: &mut Rng, start: i64, steps: usize, special: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    let (mut ts, mut cpu, mut disk_r, mut disk_w, mut rx, mut tx) =
        (start, 0i64, 0i64, 0i64, 0i64, 0i64);
    for i in 0..steps {
        let mut step = 10 * NS + (rng.below(3_000_000_000) as i64);
        if special == "silence" && i == steps / 3 {
            step = 200 * NS; // over the gap limit
        }
        if special == "exact" && i == steps / 2 {
            step = 120 * NS; // exactly the limit: not a gap
        }
        ts += step;
        cpu += rng.below(2 * NS as u64) as i64;
        disk_r += rng.below(1 << 20) as i64;
        disk_w += rng.below(1 << 20) as i64;
        rx += rng.below(1 << 24) as i64;
        tx += rng.below(1 << 24) as i64;
        if i == steps * 2 / 3 {
            // Counter reset (the VM rebooted).
            cpu = rng.below(NS as u64) as i64;
            disk_r = 0;
            rx = 17;
        }
        out.push(Sample {
            ts,
            cpu,
            mem: (256 << 20) + rng.below(4 << 30) as i64,
            disk_r,
            disk_w,
            rx,
            tx,
        });
    }
    out
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Rollup {
    cpu_ns: i64,
    mem_byte_seconds: f64,
    disk_r: i64,
    disk_w: i64,
    rx: i64,
    tx: i64,
    observed_ns: i64,
    samples: i64,
    gaps: i64,
}

/// The billing rules, written out plainly.
fn expected(samples: &[Sample], gaps: &[(i64, i64)], window_ns: i64) -> BTreeMap<i64, Rollup> {
    let mut s = samples.to_vec();
    s.sort_by_key(|x| x.ts);
    s.dedup_by_key(|x| x.ts);
    let mut out: BTreeMap<i64, Rollup> = BTreeMap::new();
    let window = |ts: i64| ts - ts.rem_euclid(window_ns);
    out.entry(window(s[0].ts)).or_default().samples += 1;
    for pair in s.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let r = out.entry(window(b.ts)).or_default();
        r.samples += 1;
        let dt = b.ts - a.ts;
        let reported = gaps
            .iter()
            .any(|(last, resume)| a.ts.max(*last) < b.ts.min(*resume));
        if dt > GAP_LIMIT || reported {
            r.gaps += 1;
            continue;
        }
        r.cpu_ns += (b.cpu - a.cpu).max(0);
        r.disk_r += (b.disk_r - a.disk_r).max(0);
        r.disk_w += (b.disk_w - a.disk_w).max(0);
        r.rx += (b.rx - a.rx).max(0);
        r.tx += (b.tx - a.tx).max(0);
        r.mem_byte_seconds += a.mem.min(b.mem) as f64 * (dt as f64 / 1e9);
        r.observed_ns += dt;
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn to_pb(s: &Sample) -> pb::VmMetrics {
    pb::VmMetrics {
        timestamp: Some(prost_types::Timestamp {
            seconds: s.ts / NS,
            nanos: (s.ts % NS) as i32,
        }),
        cpu_time_nanos: s.cpu,
        memory_usage_bytes: s.mem,
        disk_read_bytes: s.disk_r,
        disk_write_bytes: s.disk_w,
        network_rx_bytes: s.rx,
        network_tx_bytes: s.tx,
    }
}

fn check(rows: &[Value], fleet: &[Vm], window_ns: i64, customer: Option<&str>) {
    let mut want = BTreeMap::new();
    for (cust, vm, samples, gaps) in fleet {
        if customer.is_some_and(|c| c != *cust) {
            continue;
        }
        for (w, r) in expected(samples, gaps, window_ns) {
            want.insert((cust.to_string(), vm.to_string(), w), r);
        }
    }
    let mut got = BTreeMap::new();
    for row in rows {
        let start =
            chrono::DateTime::parse_from_rfc3339(row["window_start"].as_str().unwrap()).unwrap();
        let end =
            chrono::DateTime::parse_from_rfc3339(row["window_end"].as_str().unwrap()).unwrap();
        let start_ns = start.timestamp_nanos_opt().unwrap();
        assert_eq!(
            end.timestamp_nanos_opt().unwrap() - start_ns,
            window_ns,
            "{row}"
        );
        let key = (
            row["customer_id"].as_str().unwrap().to_string(),
            row["vm_id"].as_str().unwrap().to_string(),
            start_ns,
        );
        got.insert(key, row.clone());
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (key, w) in &want {
        let g = &got[key];
        let int = |name: &str| g[name].as_i64().unwrap_or_else(|| panic!("{name} in {g}"));
        let float = |name: &str| g[name].as_f64().unwrap();
        assert_eq!(
            (
                int("disk_read_bytes"),
                int("disk_write_bytes"),
                int("network_rx_bytes"),
                int("network_tx_bytes"),
                int("samples"),
                int("gaps")
            ),
            (w.disk_r, w.disk_w, w.rx, w.tx, w.samples, w.gaps),
            "{key:?}: {g}"
        );
        assert!(
            close(float("cpu_seconds"), w.cpu_ns as f64 / 1e9),
            "{key:?} cpu: {g} vs {w:?}"
        );
        assert!(
            close(float("observed_seconds"), w.observed_ns as f64 / 1e9),
            "{key:?} observed: {g} vs {w:?}"
        );
        let gib_hours = w.mem_byte_seconds / (1u64 << 30) as f64 / 3600.0;
        assert!(
            close(float("memory_gib_hours"), gib_hours),
            "{key:?} memory: {g} vs {gib_hours}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_follow_the_billing_rules() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Small flushes: the rollups read Parquet files and the live buffer together.
    let t = Tally::start(&data, &["--flush-rows", "700", "--flush-interval", "300ms"]).await;
    let mut rng = Rng::from_time();
    // 2024-01-15T22:30:00Z: three hours of samples cross midnight.
    let start = 1_705_357_800 * NS;
    let mut fleet = vec![
        (
            "cust-a",
            "vm-1",
            generate(&mut rng, start, 1000, "silence"),
            vec![],
        ),
        (
            "cust-a",
            "vm-2",
            generate(&mut rng, start + 3 * NS, 1000, "exact"),
            vec![],
        ),
        (
            "cust-b",
            "vm-3",
            generate(&mut rng, start + 7 * NS, 1000, ""),
            vec![],
        ),
    ];
    // A reported gap on vm-3 over five minutes while samples kept coming,
    // and one on vm-1 that ends exactly at a sample: it spoils the pair
    // before that sample, not the pair after.
    let t300 = fleet[2].2[300].ts;
    fleet[2].3.push((t300 + NS, t300 + 300 * NS));
    let t10 = fleet[0].2[10].ts;
    fleet[0].3.push((t10 - 5 * NS, t10));

    let mut client = billing_client(&t).await;
    // Batches of 1..600 samples, sent out of order, some twice.
    let mut batches = Vec::new();
    for (cust, vm, samples, _) in &fleet {
        let mut i = 0;
        while i < samples.len() {
            let n = (1 + rng.below(600) as usize).min(samples.len() - i);
            batches.push(pb::SendMetricsBatchRequest {
                vm_id: vm.to_string(),
                customer_id: cust.to_string(),
                metrics: samples[i..i + n].iter().map(to_pb).collect(),
            });
            i += n;
        }
    }
    for i in (1..batches.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        batches.swap(i, j);
    }
    let resend: Vec<_> = batches.iter().step_by(3).cloned().collect();
    for b in batches.into_iter().chain(resend) {
        client.send_metrics_batch(b).await.unwrap();
    }
    for (_, vm, _, gaps) in &fleet {
        for (last, resume) in gaps {
            client
                .notify_possible_gap(pb::NotifyPossibleGapRequest {
                    vm_id: vm.to_string(),
                    last_sent: *last,
                    resume_time: *resume,
                })
                .await
                .unwrap();
        }
    }

    let get = |query: String| {
        let url = t.url(&format!("/v1/billing/vm-usage?{query}"));
        async move {
            let r = reqwest::get(url).await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Vec<Value>>().await.unwrap()
        }
    };
    let range = "from=2024-01-15T00:00:00Z&to=2024-01-17T00:00:00Z";
    check(
        &get(format!("window=hour&{range}")).await,
        &fleet,
        3600 * NS,
        None,
    );
    check(
        &get(format!("window=day&{range}")).await,
        &fleet,
        86_400 * NS,
        None,
    );
    check(
        &get(format!("window=hour&customer_id=cust-b&{range}")).await,
        &fleet,
        3600 * NS,
        Some("cust-b"),
    );
    // The same through SQL, by the tables' names.
    let rows = t
        .sql("SELECT * FROM vm_usage_hourly ORDER BY customer_id, vm_id, window_start")
        .await;
    check(&rows, &fleet, 3600 * NS, None);
    let rows = t
        .sql("SELECT * FROM vm_usage_daily ORDER BY customer_id, vm_id, window_start")
        .await;
    check(&rows, &fleet, 86_400 * NS, None);
    let rows = t
        .sql("SELECT * FROM vm_usage_hourly WHERE customer_id = 'cust-b'")
        .await;
    check(&rows, &fleet, 3600 * NS, Some("cust-b"));

    // Windows outside [from, to) are not returned; bad parameters are named.
    let one_hour =
        get("window=hour&from=2024-01-16T00:00:00Z&to=2024-01-16T01:00:00Z".into()).await;
    assert_eq!(one_hour.len(), 3, "{one_hour:?}");
    for row in &one_hour {
        let start =
            chrono::DateTime::parse_from_rfc3339(row["window_start"].as_str().unwrap()).unwrap();
        assert_eq!(start.timestamp(), 1_705_363_200, "{row}");
    }
    assert!(
        get("window=hour&from=2024-01-16T05:00:00Z&to=2024-01-16T06:00:00Z".into())
            .await
            .is_empty()
    );
    let r = reqwest::get(t.url("/v1/billing/vm-usage?window=week&from=yesterday"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["detail"], "window must be one of hour, day, month, got \"week\"; from must be an RFC 3339 time such as 2024-01-15T10:00:00Z, got \"yesterday\"");
}

/// Waits until every hour of `vm_metrics` is one file with its stored
/// rollup, and the stored rollups answer.
async fn wait_compacted(data: &std::path::Path, hours: usize) {
    for _ in 0..300 {
        let raw = common::files_per_hour(&data.join("vm_metrics"));
        let rolled = common::files_per_hour(&data.join("vm_usage_hours"));
        if raw.len() == hours && raw.values().all(|n| *n == 1) && rolled.len() == hours {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "not compacted ({hours} hours): {:?} / {:?}",
        common::files_per_hour(&data.join("vm_metrics")),
        common::files_per_hour(&data.join("vm_usage_hours"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_rollups_equal_the_rules_after_compaction_and_late_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "--flush-rows",
        "500",
        "--flush-interval",
        "200ms",
        "--compact-after",
        "0s",
        "--compact-interval",
        "300ms",
    ];
    let t = Tally::start(&data, &args).await;
    let mut rng = Rng::from_time();
    // 2024-01-15T22:30:00Z: about three hours of samples cross midnight.
    let start = 1_705_357_800 * NS;
    let mut fleet = vec![
        (
            "cust-a",
            "vm-1",
            generate(&mut rng, start, 900, "silence"),
            vec![],
        ),
        (
            "cust-b",
            "vm-2",
            generate(&mut rng, start + 5 * NS, 900, "exact"),
            vec![],
        ),
    ];
    let t200 = fleet[1].2[200].ts;
    fleet[1].3.push((t200 + NS, t200 + 200 * NS));
    // Hold back every fifth sample of vm-1: it comes late, after its hour
    // was compacted and rolled up.
    let late: Vec<Sample> = fleet[0].2.iter().step_by(5).cloned().collect();
    let mut client = billing_client(&t).await;
    let early: Vec<Sample> = fleet[0]
        .2
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 != 0)
        .map(|(_, s)| s.clone())
        .collect();
    send_samples(&mut client, "cust-a", "vm-1", &early, 97).await;
    // vm-2 newest batches first.
    for chunk in fleet[1].2.chunks(131).rev() {
        send_samples(&mut client, "cust-b", "vm-2", chunk, 131).await;
    }
    let get = |query: String| {
        let url = t.url(&format!("/v1/billing/vm-usage?{query}"));
        async move {
            let r = reqwest::get(url).await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Vec<Value>>().await.unwrap()
        }
    };
    let range = "from=2024-01-15T00:00:00Z&to=2024-01-17T00:00:00Z";
    let hours = hour_count(&fleet);
    wait_compacted(&data, hours).await;
    let without_late: Vec<Vm> = vec![
        ("cust-a", "vm-1", early.clone(), vec![]),
        ("cust-b", "vm-2", fleet[1].2.clone(), vec![]),
    ];
    check(
        &get(format!("window=hour&{range}")).await,
        &without_late,
        3600 * NS,
        None,
    );
    check(
        &get(format!("window=day&{range}")).await,
        &without_late,
        86_400 * NS,
        None,
    );

    // Late samples into compacted hours, the whole of vm-2 again (counted
    // once), and a gap reported late: the hours they touch are rolled up again.
    send_samples(&mut client, "cust-a", "vm-1", &late, 40).await;
    send_samples(&mut client, "cust-b", "vm-2", &fleet[1].2, 200).await;
    let t600 = fleet[1].2[600].ts;
    fleet[1].3.push((t600 - 3 * NS, t600 + 30 * NS));
    for (_, vm, _, gaps) in &fleet {
        for (last, resume) in gaps {
            client
                .notify_possible_gap(pb::NotifyPossibleGapRequest {
                    vm_id: vm.to_string(),
                    last_sent: *last,
                    resume_time: *resume,
                })
                .await
                .unwrap();
        }
    }
    // Right away (raw for the dirty hours) and once compacted again.
    check(
        &get(format!("window=hour&{range}")).await,
        &fleet,
        3600 * NS,
        None,
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    wait_compacted(&data, hours).await;
    check(
        &get(format!("window=hour&{range}")).await,
        &fleet,
        3600 * NS,
        None,
    );
    check(
        &get(format!("window=day&{range}")).await,
        &fleet,
        86_400 * NS,
        None,
    );
    // Raw SQL counts each sample once after compaction.
    let n = t.sql("SELECT count(*) AS n FROM vm_metrics").await;
    let want: usize = fleet.iter().map(|v| v.2.len()).sum();
    assert_eq!(n[0]["n"].as_u64().unwrap() as usize, want);
    // The stored hours are a SQL table too, and hold every sample once.
    let n = t
        .sql("SELECT sum(samples) AS n, count(DISTINCT hour) AS hours FROM vm_usage_hours")
        .await;
    assert_eq!(n[0]["n"].as_u64().unwrap() as usize, want);
    assert_eq!(n[0]["hours"].as_u64().unwrap() as usize, hours);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_compaction_loses_nothing_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "--flush-rows",
        "50",
        "--flush-interval",
        "50ms",
        "--compact-after",
        "0s",
        "--compact-interval",
        "50ms",
    ];
    let mut rng = Rng::from_time();
    let start = 1_705_357_800 * NS;
    let fleet: Vec<Vm> = vec![
        (
            "cust-a",
            "vm-1",
            generate(&mut rng, start, 700, "silence"),
            vec![],
        ),
        (
            "cust-b",
            "vm-2",
            generate(&mut rng, start + 3 * NS, 700, ""),
            vec![],
        ),
    ];
    // Several rounds: send a part (some of it again), kill -9 at a random
    // moment while hours are being compacted, start again.
    let parts = 4;
    for round in 0..parts {
        let t =
            Tally::start_with_env(&data, &args, &[("RUST_LOG", "info,tally_sinks=debug")]).await;
        let mut client = billing_client(&t).await;
        for (cust, vm, samples, _) in &fleet {
            let n = samples.len() / parts;
            let part = &samples[round * n..if round == parts - 1 {
                samples.len()
            } else {
                (round + 1) * n
            }];
            // Everything up to this part again, as a sender retrying would.
            let again = &samples[(round * n).saturating_sub(n / 2)..round * n];
            send_samples(&mut client, cust, vm, part, 23).await;
            send_samples(&mut client, cust, vm, again, 31).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50 + rng.below(400))).await;
        t.kill9();
    }
    let t = Tally::start_with_env(&data, &args, &[("RUST_LOG", "info,tally_sinks=debug")]).await;
    let hours = hour_count(&fleet);
    wait_compacted(&data, hours).await;
    assert_billed_once(&t, &fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_rollups_are_written_loses_nothing_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "--flush-rows",
        "200",
        "--flush-interval",
        "50ms",
        "--compact-after",
        "0s",
        "--compact-interval",
        "20ms",
    ];
    let mut rng = Rng::from_time();
    let start = 1_705_357_800 * NS;
    let fleet: Vec<Vm> = (0..3)
        .map(|i| {
            let vm: &'static str = ["vm-1", "vm-2", "vm-3"][i];
            (
                "cust-a",
                vm,
                generate(&mut rng, start + i as i64 * NS, 800, ""),
                vec![],
            )
        })
        .collect();
    // Each round sends every third sample (and some again): every hour
    // is dirty and compacted again. A watcher kills the server the moment
    // a rollup file is being written (its temporary file exists), or, if
    // it never sees one, after a while.
    let rounds = 3;
    let mut hits = 0;
    let mut acked: std::collections::BTreeSet<(String, i64)> = Default::default();
    for round in 0..rounds {
        let t = Tally::start(&data, &args).await;
        let pid = t.pid() as i32;
        let rollups = data.join("vm_usage_hours");
        let watcher = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                let writing = common::files_under(&rollups).iter().any(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
                });
                if writing {
                    // SAFETY: signals a child process this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
            false
        });
        // Batches the server answered are acknowledged; once it is killed
        // the rest of the round is not sent.
        let mut client = billing_client(&t).await;
        'send: for (cust, vm, samples, _) in &fleet {
            let part: Vec<Sample> = samples
                .iter()
                .skip(round)
                .step_by(rounds)
                .cloned()
                .collect();
            let again = if round > 0 {
                &samples[..samples.len() / 4]
            } else {
                &[][..]
            };
            for (chunk, size) in [(&part[..], 37), (again, 53)] {
                for batch in chunk.chunks(size) {
                    let sent = client
                        .send_metrics_batch(pb::SendMetricsBatchRequest {
                            vm_id: vm.to_string(),
                            customer_id: cust.to_string(),
                            metrics: batch.iter().map(to_pb).collect(),
                        })
                        .await;
                    if sent.is_err() {
                        break 'send;
                    }
                    acked.extend(batch.iter().map(|x| (vm.to_string(), x.ts)));
                }
            }
        }
        drop(client);
        if watcher.join().unwrap() {
            hits += 1;
        }
        t.kill9();
    }
    assert!(hits > 0, "no kill landed while a rollup was being written");
    let t = Tally::start(&data, &args).await;
    // Once recovered and compacted, every acknowledged sample is stored,
    // each once.
    let mut acked_hours: Vec<i64> = acked.iter().map(|(_, ts)| ts / (3600 * NS)).collect();
    acked_hours.dedup();
    acked_hours.sort();
    acked_hours.dedup();
    wait_compacted(&data, acked_hours.len()).await;
    let stored = t
        .sql("SELECT vm_id, CAST(timestamp AS BIGINT) AS ts FROM vm_metrics")
        .await;
    let mut keys: Vec<(String, i64)> = stored
        .iter()
        .map(|r| {
            (
                r["vm_id"].as_str().unwrap().to_string(),
                r["ts"].as_i64().unwrap(),
            )
        })
        .collect();
    keys.sort();
    let n = keys.len();
    keys.dedup();
    assert_eq!(n, keys.len(), "a sample stored twice");
    let missing: Vec<_> = acked
        .iter()
        .filter(|k| keys.binary_search(k).is_err())
        .collect();
    assert!(missing.is_empty(), "acknowledged, not stored: {missing:?}");
    // The senders retry what was not acknowledged (and the rest again: the
    // index lost the keys of compacted hours, so compaction drops those
    // copies); then the bill is exact.
    send_fleet(&t, &fleet, 97).await;
    let hours = hour_count(&fleet);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    wait_compacted(&data, hours).await;
    assert_billed_once(&t, &fleet).await;
    // One stored rollup per hour, no temporary file left behind. Looked for
    // after a clean stop: a running server has the temporary file of its
    // round in progress (the host sampler's rows flush every few seconds).
    let rolled = common::files_per_hour(&data.join("vm_usage_hours"));
    assert!(rolled.values().all(|n| *n == 1), "{rolled:?}");
    t.terminate();
    let leftovers: Vec<_> = common::files_under(&data)
        .into_iter()
        .filter(|f| f.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The hourly bill of the fleet equals the rules computed here, and raw SQL
/// holds every sample once.
async fn assert_billed_once(t: &Tally, fleet: &[Vm]) {
    let rows: Vec<Value> = reqwest::get(
        t.url("/v1/billing/vm-usage?window=hour&from=2024-01-15T00:00:00Z&to=2024-01-17T00:00:00Z"),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    check(&rows, fleet, 3600 * NS, None);
    let n = t.sql("SELECT count(*) AS n FROM vm_metrics").await;
    let want: usize = fleet.iter().map(|v| v.2.len()).sum();
    assert_eq!(
        n[0]["n"].as_u64().unwrap() as usize,
        want,
        "every sample once"
    );
}

/// How many distinct hours the fleet's samples fall in.
fn hour_count(fleet: &[Vm]) -> usize {
    let mut h: Vec<i64> = fleet
        .iter()
        .flat_map(|v| v.2.iter().map(|s| s.ts / (3600 * NS)))
        .collect();
    h.sort();
    h.dedup();
    h.len()
}

use common::billing_client;

/// Sends one VM's samples in batches of `size`.
async fn send_samples(
    client: &mut BillingServiceClient<tonic::transport::Channel>,
    customer: &str,
    vm: &str,
    samples: &[Sample],
    size: usize,
) {
    for chunk in samples.chunks(size) {
        client
            .send_metrics_batch(pb::SendMetricsBatchRequest {
                vm_id: vm.to_string(),
                customer_id: customer.to_string(),
                metrics: chunk.iter().map(to_pb).collect(),
            })
            .await
            .unwrap();
    }
}

/// Sends the fleet's samples in batches of `size`, and its reported gaps.
async fn send_fleet(t: &Tally, fleet: &[Vm], size: usize) {
    let mut client = billing_client(t).await;
    for (cust, vm, samples, gaps) in fleet {
        send_samples(&mut client, cust, vm, samples, size).await;
        for (last, resume) in gaps {
            client
                .notify_possible_gap(pb::NotifyPossibleGapRequest {
                    vm_id: vm.to_string(),
                    last_sent: *last,
                    resume_time: *resume,
                })
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bills_of_hours_past_the_raw_retention_do_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rng = Rng::from_time();
    let start = 1_705_357_800 * NS;
    let mut fleet: Vec<Vm> = vec![
        (
            "cust-a",
            "vm-1",
            generate(&mut rng, start, 600, "silence"),
            vec![],
        ),
        (
            "cust-b",
            "vm-2",
            generate(&mut rng, start + 5 * NS, 600, ""),
            vec![],
        ),
    ];
    let t100 = fleet[1].2[100].ts;
    fleet[1].3.push((t100 + NS, t100 + 100 * NS));
    let range =
        "/v1/billing/vm-usage?window=hour&from=2024-01-15T00:00:00Z&to=2024-01-17T00:00:00Z";
    let bill = |t: &Tally| {
        let url = t.url(range);
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<Vec<Value>>()
                .await
                .unwrap()
        }
    };
    // First without retention: compacted and rolled up, raw files kept.
    let hours = hour_count(&fleet);
    let fast = [
        "--compact-after",
        "0s",
        "--compact-interval",
        "200ms",
        "--flush-interval",
        "100ms",
    ];
    let t = Tally::start(&data, &fast).await;
    send_fleet(&t, &fleet, 77).await;
    wait_compacted(&data, hours).await;
    let before = bill(&t).await;
    check(&before, &fleet, 3600 * NS, None);
    t.terminate();

    // Then with a raw retention of a day: the 2024 hours lose their raw
    // files, the bill stays the same, also after another restart.
    let mut args = fast.to_vec();
    args.extend(["--raw-retention", "1d"]);
    let t = Tally::start(&data, &args).await;
    for _ in 0..300 {
        if common::files_per_hour(&data.join("vm_metrics")).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        common::files_per_hour(&data.join("vm_metrics")).is_empty(),
        "raw hours past the retention are deleted"
    );
    assert_eq!(
        common::files_per_hour(&data.join("vm_usage_hours")).len(),
        hours
    );
    assert_eq!(bill(&t).await, before);
    t.terminate();
    let t = Tally::start(&data, &args).await;
    assert_eq!(bill(&t).await, before);
    let n = t.sql("SELECT count(*) AS n FROM vm_metrics").await;
    assert_eq!(n[0]["n"], 0, "raw SQL sees what raw files are left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_day_of_data_keeps_dedup_exact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rng = Rng::from_time();
    // About 22 hours of samples of three VMs, ending a few minutes ago.
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let start = now - 23 * 3600 * NS;
    let fleet: Vec<Vm> = (0..3)
        .map(|i| {
            let vm: &'static str = ["vm-1", "vm-2", "vm-3"][i];
            (
                "cust-a",
                vm,
                generate(&mut rng, start + i as i64 * NS, 6500, ""),
                vec![],
            )
        })
        .filter(|v| v.2.last().unwrap().ts < now)
        .collect();
    let args = [
        "--compact-after",
        "0s",
        "--compact-interval",
        "200ms",
        "--flush-interval",
        "100ms",
    ];
    let t = Tally::start(&data, &args).await;
    send_fleet(&t, &fleet, 500).await;
    let closed = |data: &std::path::Path| {
        let raw = common::files_per_hour(&data.join("vm_metrics"));
        let rolled = common::files_per_hour(&data.join("vm_usage_hours"));
        let current = chrono::Utc::now()
            .format("date=%Y-%m-%d/hour=%H")
            .to_string();
        raw.iter()
            .filter(|(h, _)| **h != current)
            .all(|(h, n)| *n == 1 && rolled.contains_key(h))
    };
    for _ in 0..600 {
        if closed(&data) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        closed(&data),
        "{:?}",
        common::files_per_hour(&data.join("vm_metrics"))
    );
    t.kill9();

    let started = std::time::Instant::now();
    let t = Tally::start(&data, &args).await;
    eprintln!(
        "start-up with {} samples over a day: {:?}",
        fleet.iter().map(|v| v.2.len()).sum::<usize>(),
        started.elapsed()
    );
    // The whole day again: every sample still counts once.
    send_fleet(&t, &fleet, 500).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for _ in 0..600 {
        if closed(&data) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let n = t.sql("SELECT count(*) AS n FROM vm_metrics").await;
    let want: usize = fleet.iter().map(|v| v.2.len()).sum();
    assert_eq!(n[0]["n"].as_u64().unwrap() as usize, want);
    let to = chrono::DateTime::from_timestamp_nanos(now + 3600 * NS).to_rfc3339();
    let from = chrono::DateTime::from_timestamp_nanos(start - 3600 * NS).to_rfc3339();
    let rows: Vec<Value> = reqwest::Client::new()
        .get(t.url("/v1/billing/vm-usage"))
        .query(&[("window", "hour"), ("from", &from), ("to", &to)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    check(&rows, &fleet, 3600 * NS, None);
}
