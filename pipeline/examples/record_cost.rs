//! What building rows by column name and checking them at admission cost on
//! the hottest path (a `vm_metrics` row of a billing.v1 batch), against rows
//! in column order without a check, as before.
//!
//! `cargo run --release -p tally-pipeline --example record_cost`
//! prints nanoseconds per row for each way, the median of 7 rounds of
//! 2 million rows, the ways taking turns within each round.

use std::hint::black_box;
use std::time::Instant;

use tally_pipeline::{Dataset, Record, RecordBuilder, RowLayout, Value};

const ROWS: i64 = 2_000_000;

fn positional(i: i64) -> Record {
    Record::from_columns(
        Dataset::VmMetrics,
        vec![
            Value::Str("customer-0042".into()),
            Value::Str("vm-00017".into()),
            Value::Ts(1_767_225_600_000_000_000 + i),
            Value::I64(i),
            Value::I64(1 << 30),
            Value::I64(i * 3),
            Value::I64(i * 5),
            Value::I64(i * 7),
            Value::I64(i * 11),
        ],
    )
}

fn by_name(i: i64) -> Record {
    let mut r = RecordBuilder::new(Dataset::VmMetrics);
    r.set("customer_id", "customer-0042")
        .set("vm_id", "vm-00017")
        .set("timestamp", Value::Ts(1_767_225_600_000_000_000 + i))
        .set("cpu_time_nanos", i)
        .set("memory_usage_bytes", 1i64 << 30)
        .set("disk_read_bytes", i * 3)
        .set("disk_write_bytes", i * 5)
        .set("network_rx_bytes", i * 7)
        .set("network_tx_bytes", i * 11);
    r.build().expect("fits")
}

static VM_ROW: std::sync::LazyLock<RowLayout<9>> = std::sync::LazyLock::new(|| {
    // The same layout as billing.v1's batches: every column, in order.
    let columns = Dataset::VmMetrics.columns();
    RowLayout::new(Dataset::VmMetrics, std::array::from_fn(|i| columns[i].name))
        .expect("columns exist")
});

fn by_layout(i: i64) -> Record {
    VM_ROW
        .row([
            "customer-0042".into(),
            "vm-00017".into(),
            Value::Ts(1_767_225_600_000_000_000 + i),
            i.into(),
            (1i64 << 30).into(),
            (i * 3).into(),
            (i * 5).into(),
            (i * 7).into(),
            (i * 11).into(),
        ])
        .expect("fits")
}

fn time(f: impl Fn(i64) -> Record, check: bool) -> f64 {
    let started = Instant::now();
    for i in 0..ROWS {
        let r = f(i);
        if check {
            r.check().expect("fits");
        }
        black_box(r);
    }
    started.elapsed().as_nanos() as f64 / ROWS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let (mut old, mut new, mut admitted, mut layout) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..7 {
        old.push(time(positional, false));
        new.push(time(by_name, false));
        // What admission adds on top: the builder's row checked once more.
        admitted.push(time(by_name, true));
        layout.push(time(by_layout, true));
    }
    let (old, new, admitted, layout) = (median(old), median(new), median(admitted), median(layout));
    println!("vm_metrics row, ns per row (median of 7 rounds of {ROWS}):");
    println!("  column order, unchecked (before):        {old:6.1}");
    println!(
        "  by name, checked by build():             {new:6.1}  ({:.2}x)",
        new / old
    );
    println!(
        "  by name, checked again at admission:     {admitted:6.1}  ({:.2}x)",
        admitted / old
    );
    println!(
        "  RowLayout (names resolved once), checked at build and admission: {layout:6.1}  ({:.2}x)",
        layout / old
    );
}
