//! Compaction of a large hour in bounded memory, end to end: the real
//! binary compacts an hour of millions of VM samples (the test's own files,
//! written as flush rounds write them) under `--compact-memory`, in rounds,
//! and its process stays under a stated bound; the merged rows and the
//! stored rollups equal what this test computes from the samples it wrote,
//! also after `kill -9` in the middle of passes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use common::{metric, Rng, Tally};
use parquet::arrow::ArrowWriter;
use tally_pipeline::Dataset;

const NS: i64 = 1_000_000_000;
/// 2024-01-16T00:00:00Z: an hour long closed.
const HOUR: i64 = 1_705_363_200 * NS;
const STEP_NS: i64 = 2_400_000_000;
const GAP_LIMIT_NS: i64 = 120 * NS;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    ts: i64,
    cpu: i64,
    mem: i64,
    disk_read: i64,
    disk_write: i64,
    rx: i64,
    tx: i64,
}

/// One VM's samples of the hour, in time order, with a counter reset on
/// some VMs and a silence of four minutes (a gap) on others.
struct Vm {
    customer: String,
    vm: String,
    samples: Vec<Sample>,
}

fn fleet(vms: usize, per_vm: usize, rng: &mut Rng) -> Vec<Vm> {
    let mut out: Vec<Vm> = (0..vms)
        .map(|i| {
            let (mut cpu, mut disk, mut net) = (0i64, 0i64, 0i64);
            let mut samples = Vec::with_capacity(per_vm);
            for k in 0..per_vm {
                if i % 89 == 0 && (per_vm / 5..per_vm / 5 + 100).contains(&k) {
                    continue;
                }
                if i % 97 == 0 && k == per_vm / 2 {
                    cpu = 0;
                }
                cpu += rng.below(3 * NS as u64) as i64;
                disk += rng.below(1 << 20) as i64;
                net += rng.below(1 << 16) as i64;
                samples.push(Sample {
                    ts: HOUR + k as i64 * STEP_NS + (i as i64 % 1000) * 1_000_000,
                    cpu,
                    mem: (1 << 30) + rng.below(1 << 28) as i64,
                    disk_read: disk,
                    disk_write: disk / 2,
                    rx: net,
                    tx: net * 3,
                });
            }
            Vm {
                customer: format!("cust-{:02}", i % 40),
                vm: format!("vm-{i:05}"),
                samples,
            }
        })
        .collect();
    // The order of the files: customer, VM, time.
    out.sort_by(|a, b| (&a.customer, &a.vm).cmp(&(&b.customer, &b.vm)));
    out
}

/// Writes the fleet's hour as `files` flush-round files of time slices,
/// each sorted by (customer, VM, time) as tally writes them; a tenth of the
/// VMs send each slice's first sample again in the next file (a retry).
fn write_raw_files(data: &Path, fleet: &[Vm], files: usize) {
    let d = Dataset::VmMetrics;
    let schema = tally_pipeline::batch::schema(d);
    let dir = data.join("vm_metrics/date=2024-01-16/hour=00");
    std::fs::create_dir_all(&dir).unwrap();
    let slice_ns = 3600 * NS / files as i64;
    for f in 0..files {
        let (from, to) = (HOUR + f as i64 * slice_ns, HOUR + (f as i64 + 1) * slice_ns);
        let mut rows: Vec<(&str, &str, &Sample)> = Vec::new();
        for (i, vm) in fleet.iter().enumerate() {
            let mut taken: Vec<&Sample> = vm
                .samples
                .iter()
                .filter(|s| s.ts >= from && s.ts < to)
                .collect();
            if i % 10 == 0 {
                if let Some(again) = vm
                    .samples
                    .iter()
                    .find(|s| s.ts < from && s.ts >= from - slice_ns)
                {
                    taken.insert(0, again);
                }
            }
            rows.extend(
                taken
                    .into_iter()
                    .map(|s| (vm.customer.as_str(), vm.vm.as_str(), s)),
            );
        }
        let strings = |second: bool, ty: &DataType| -> ArrayRef {
            let a =
                StringArray::from_iter_values(rows.iter().map(|r| if second { r.1 } else { r.0 }));
            arrow::compute::cast(&a, ty).unwrap()
        };
        let ints = |f: &dyn Fn(&Sample) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| f(r.2))))
        };
        let ts = arrow::compute::cast(
            &ints(&|s| s.ts),
            &DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        )
        .unwrap();
        let columns = vec![
            strings(false, schema.field(0).data_type()),
            strings(true, schema.field(1).data_type()),
            ts,
            ints(&|s| s.cpu),
            ints(&|s| s.mem),
            ints(&|s| s.disk_read),
            ints(&|s| s.disk_write),
            ints(&|s| s.rx),
            ints(&|s| s.tx),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let seq = f as u64 + 1;
        let props = tally_sinks::parquet::writer::writer_properties(d, seq, seq);
        let path = dir.join(format!("n-{seq:020}-{seq:032x}.parquet"));
        let file = std::fs::File::create(&path).unwrap();
        let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
}

/// The hour's rollup per VM by the billing rules (README, "billing.v1"), computed here.
#[derive(Debug, Default, PartialEq)]
struct Expected {
    cpu: i64,
    mem_byte_ns: f64,
    disk_read: i64,
    disk_write: i64,
    rx: i64,
    tx: i64,
    observed_ns: i64,
    samples: i64,
    gaps: i64,
}

fn expected(fleet: &[Vm]) -> BTreeMap<String, Expected> {
    let mut out = BTreeMap::new();
    for vm in fleet {
        let mut e = Expected {
            samples: vm.samples.len() as i64,
            ..Expected::default()
        };
        for w in vm.samples.windows(2) {
            let (a, b) = (w[0], w[1]);
            let dt = b.ts - a.ts;
            if dt > GAP_LIMIT_NS {
                e.gaps += 1;
                continue;
            }
            e.cpu += (b.cpu - a.cpu).max(0);
            e.mem_byte_ns += a.mem.min(b.mem) as f64 * dt as f64;
            e.disk_read += (b.disk_read - a.disk_read).max(0);
            e.disk_write += (b.disk_write - a.disk_write).max(0);
            e.rx += (b.rx - a.rx).max(0);
            e.tx += (b.tx - a.tx).max(0);
            e.observed_ns += dt;
        }
        out.insert(vm.vm.clone(), e);
    }
    out
}

/// The peak resident memory of a process (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn committed(data: &Path, table: &str) -> Vec<PathBuf> {
    common::parquet_files(data, table)
}

/// Waits until the hour is one compacted file with its rollup.
async fn wait_compacted(data: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let raw = committed(data, "vm_metrics");
        let rolled = committed(data, "vm_usage_hours");
        if raw.len() == 1 && rolled.len() == 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted: {raw:?} / {rolled:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The compacted file holds every distinct sample once, in key order, and
/// the stored rollup equals the rules computed here.
fn check_hour(data: &Path, fleet: &[Vm]) {
    let raw = committed(data, "vm_metrics");
    assert_eq!(raw.len(), 1, "{raw:?}");
    let mut got: Vec<(String, String, i64, i64)> = Vec::new();
    for b in common::read_parquet(&raw[0]) {
        let (c, v) = (
            common::strings(&b, "customer_id"),
            common::strings(&b, "vm_id"),
        );
        let ts = b.column_by_name("timestamp").unwrap();
        let ts = arrow::compute::cast(ts, &DataType::Int64).unwrap();
        let ts = ts.as_primitive::<Int64Type>();
        let cpu = b.column_by_name("cpu_time_nanos").unwrap();
        let cpu = cpu.as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            got.push((c[r].clone(), v[r].clone(), ts.value(r), cpu.value(r)));
        }
    }
    let want: Vec<(String, String, i64, i64)> = fleet
        .iter()
        .flat_map(|vm| {
            vm.samples
                .iter()
                .map(|s| (vm.customer.clone(), vm.vm.clone(), s.ts, s.cpu))
        })
        .collect();
    assert_eq!(got.len(), want.len(), "rows of the compacted hour");
    assert!(
        got == want,
        "the compacted rows differ from the samples written"
    );

    let rolled = committed(data, "vm_usage_hours");
    assert_eq!(rolled.len(), 1, "{rolled:?}");
    let want = expected(fleet);
    let mut seen = 0;
    for b in common::read_parquet(&rolled[0]) {
        let vm = b.column_by_name("vm_id").unwrap().as_string::<i32>();
        let n = |c: &str| {
            b.column_by_name(c)
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone()
        };
        let mem = b
            .column_by_name("memory_byte_ns")
            .unwrap()
            .as_primitive::<Float64Type>()
            .clone();
        for r in 0..b.num_rows() {
            let e = &want[vm.value(r)];
            let got = Expected {
                cpu: n("cpu_nanos").value(r),
                mem_byte_ns: mem.value(r),
                disk_read: n("disk_read_bytes").value(r),
                disk_write: n("disk_write_bytes").value(r),
                rx: n("network_rx_bytes").value(r),
                tx: n("network_tx_bytes").value(r),
                observed_ns: n("observed_ns").value(r),
                samples: n("samples").value(r),
                gaps: n("gaps").value(r),
            };
            assert!(
                (got.mem_byte_ns - e.mem_byte_ns).abs() <= e.mem_byte_ns * 1e-9,
                "{}: {got:?} != {e:?}",
                vm.value(r)
            );
            assert_eq!(
                Expected {
                    mem_byte_ns: 0.0,
                    ..got
                },
                Expected {
                    mem_byte_ns: 0.0,
                    ..*e
                },
                "{}",
                vm.value(r)
            );
            seen += 1;
        }
    }
    assert_eq!(seen, want.len(), "one rollup row per VM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_of_millions_of_samples_compacts_within_its_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rng = Rng::new(38);
    // 2,000 VMs × 1,500 samples: 3 M samples in 60 files.
    let fleet = fleet(2_000, 1_500, &mut rng);
    write_raw_files(&data, &fleet, 60);
    let rows: usize = fleet.iter().map(|v| v.samples.len()).sum();
    assert!(rows > 2_900_000, "{rows}");

    let t = Tally::start(
        &data,
        &[
            "--node-id",
            "n",
            "--compact-memory",
            "64MiB",
            "--compact-after",
            "0s",
            "--compact-interval",
            "2s",
        ],
    )
    .await;
    // Before the first pass: what the server holds without compaction.
    let before_kib = t.rss_kib();
    wait_compacted(&data, Duration::from_secs(600)).await;
    let peak_kib = peak_rss_kib(t.pid());
    let metrics = t.metrics_text().await;
    let held = metric(&metrics, "tally_compaction_memory_peak_bytes");
    let rows_read = metric(&metrics, "tally_compaction_rows_total");

    // The bound: what the server held before, the 64 MiB budget, and
    // 96 MiB for what the budget does not count (allocator slack, thread
    // stacks, the decoders' buffers). Before this bound existed the same
    // hour took ~1 GiB (330 bytes a row).
    let bound_kib = before_kib + (64 + 96) * 1024;
    eprintln!(
        "{rows} rows: RSS before {before_kib} KiB, peak {peak_kib} KiB, bound {bound_kib} KiB; accounted peak {held} bytes; {rows_read} rows read"
    );
    assert!(
        peak_kib < bound_kib,
        "peak RSS {peak_kib} KiB over the bound {bound_kib} KiB (before: {before_kib} KiB)"
    );
    assert!(held > 0.0 && held <= (64 << 20) as f64, "accounted {held}");
    // 60 files do not fit one merge of 64 MiB: rounds read rows twice.
    assert!(rows_read > rows as f64, "{rows_read} rows read for {rows}");
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(log.contains("hour merged in rounds"), "{log}");
    check_hour(&data, &fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_passes_of_a_large_hour_loses_nothing_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rng = Rng::from_time();
    let fleet = fleet(1_000, 1_500, &mut rng);
    write_raw_files(&data, &fleet, 40);
    let args = [
        "--node-id",
        "n",
        "--compact-memory",
        "16MiB",
        "--compact-after",
        "0s",
        "--compact-interval",
        "1s",
    ];
    let partition = data.join("vm_metrics/date=2024-01-16/hour=00");
    for _ in 0..3 {
        let started = Instant::now();
        let t = Tally::start(&data, &args).await;
        // Start-up does not compact inline: the server answers while the
        // hour is still as it was.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "start-up took {:?}",
            started.elapsed()
        );
        // Wait for a pass to be under way (a run or the merged file being
        // written), then kill it at a random moment of it.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let busy = std::fs::read_dir(&partition)
                .unwrap()
                .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp"));
            if busy || committed(&data, "vm_metrics").len() == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "no pass started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(3000))).await;
        t.kill9();
    }
    let t = Tally::start(&data, &args).await;
    wait_compacted(&data, Duration::from_secs(600)).await;
    // No temporary file outlives the passes.
    let left: Vec<_> = common::files_under(&data.join("vm_metrics"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    check_hour(&data, &fleet);
    // Bills read the stored rollup: equal to the rules over raw samples.
    let rows = t.sql("SELECT count(*) AS n FROM vm_metrics").await;
    let want: usize = fleet.iter().map(|v| v.samples.len()).sum();
    assert_eq!(rows[0]["n"], want as u64);
}
