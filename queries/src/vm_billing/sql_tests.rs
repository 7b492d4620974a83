//! `sql/vm_usage.sql` (the `vm_usage_*` views of `tally sql`) on a few
//! samples, against the table written out here by the billing rules
//! (README, "billing.v1 (VM metering)").

use std::sync::Arc;

use arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use tally_pipeline::batch::{records_to_batch, schema};
use tally_pipeline::{Dataset, Record, RecordBuilder, Value};

/// 2025-11-20T10:00:00Z in seconds.
const T0: i64 = 1_763_632_800;
const GIB: i64 = 1 << 30;

fn sample(vm: &str, secs: i64, cpu_s: i64, mem_gib: i64, rx: i64) -> Record {
    let mut r = RecordBuilder::new(Dataset::VmMetrics);
    r.set("customer_id", "cust")
        .set("vm_id", vm)
        .set("timestamp", Value::Ts((T0 + secs) * 1_000_000_000))
        .set("cpu_time_nanos", cpu_s * 1_000_000_000)
        .set("memory_usage_bytes", mem_gib * GIB)
        .set("disk_read_bytes", 0i64)
        .set("disk_write_bytes", 0i64)
        .set("network_rx_bytes", rx)
        .set("network_tx_bytes", 0i64);
    r.build().unwrap()
}

fn gap(vm: &str, last_sent: i64, resume: i64) -> Record {
    let ns = |s: i64| Value::Ts((T0 + s) * 1_000_000_000);
    let mut r = RecordBuilder::new(Dataset::VmEvents);
    for c in Dataset::VmEvents.columns() {
        let v = match c.name {
            "event_id" => Value::Str(format!("gap:{vm}:{last_sent}")),
            "timestamp" => ns(resume),
            "kind" => Value::Str("possible_gap".into()),
            "vm_id" => Value::Str(vm.into()),
            "last_sent" => ns(last_sent),
            "resume_time" => ns(resume),
            _ => Value::Null,
        };
        r.set(c.name, v);
    }
    r.build().unwrap()
}

#[tokio::test]
async fn vm_usage_hourly_follows_the_billing_rules() {
    let samples = [
        // vm-1: 60 s counted; then a counter reset (cpu 0, rx 0 for the
        // pair); then a 200 s silence (a gap); a copy of one sample.
        sample("vm-1", 0, 100, 2, 1000),
        sample("vm-1", 60, 130, 1, 1500),
        sample("vm-1", 60, 130, 1, 1500),
        sample("vm-1", 120, 10, 1, 100),
        sample("vm-1", 320, 40, 1, 400),
        // vm-2: two pairs of 100 s, the second inside a reported gap.
        sample("vm-2", 0, 0, 4, 0),
        sample("vm-2", 100, 50, 4, 10),
        sample("vm-2", 200, 90, 4, 30),
    ];
    let events = [gap("vm-2", 150, 180)];
    let ctx = SessionContext::new();
    for (name, d, batch) in [
        (
            "vm_metrics",
            Dataset::VmMetrics,
            records_to_batch(Dataset::VmMetrics, samples.iter()).unwrap(),
        ),
        (
            "vm_events",
            Dataset::VmEvents,
            records_to_batch(Dataset::VmEvents, events.iter()).unwrap(),
        ),
    ] {
        let table = MemTable::try_new(schema(d), vec![vec![batch]]).unwrap();
        ctx.register_table(name, Arc::new(table)).unwrap();
    }
    let sql = super::RAW_VIEW_SQL
        .replace("{window}", "hour")
        .replace("{gap_limit_ns}", "120000000000");
    let out = ctx
        .sql(&format!(
            "SELECT vm_id, cpu_seconds, memory_gib_hours, network_rx_bytes, \
             observed_seconds, samples, gaps FROM ({sql}) ORDER BY vm_id"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    // vm-1: pairs (0,60) counted: cpu 30 s, memory min(2,1) GiB × 60 s =
    // 1/60 GiB-hour, rx 500; (60,120) counted with its resets: cpu 0, rx 0,
    // memory 1 GiB × 60 s; (120,320) a gap. 4 distinct samples, the copy
    // counting once.
    // vm-2: (0,100) counted: cpu 50, rx 10, memory 4 GiB × 100 s; (100,200)
    // overlaps the reported span (150, 180): a gap.
    assert_eq!(
        pretty_format_batches(&out).unwrap().to_string(),
        [
            "+-------+-------------+---------------------+------------------+------------------+---------+------+",
            "| vm_id | cpu_seconds | memory_gib_hours    | network_rx_bytes | observed_seconds | samples | gaps |",
            "+-------+-------------+---------------------+------------------+------------------+---------+------+",
            "| vm-1  | 30.0        | 0.03333333333333333 | 500              | 120.0            | 4       | 1    |",
            "| vm-2  | 50.0        | 0.1111111111111111  | 10               | 100.0            | 3       | 1    |",
            "+-------+-------------+---------------------+------------------+------------------+---------+------+",
        ]
        .join("\n")
    );
}
