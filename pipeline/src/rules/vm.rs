//! VM usage per hour by the billing rules (README, "billing.v1 (VM metering)"),
//! in one pass over samples ordered by VM and time. The read side (bills) and
//! the rollups the compactor stores both count pairs here.
//!
//! An hour's row holds the pairs whose both samples are in the hour, and the
//! hour's first and last sample. The pair that spans two hours (the last
//! sample of one hour with data and the first of the next) is counted when
//! hours are put together ([`assemble`]), so a late sample changes its own
//! hour only.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};

use crate::clock::HOUR_NS;

/// One sample's values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub ts: i64,
    pub cpu: i64,
    pub mem: i64,
    pub disk_read: i64,
    pub disk_write: i64,
    pub rx: i64,
    pub tx: i64,
}

/// Sums of counted pairs and counts of one VM over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_nanos: i64,
    /// Σ min(a, b) memory bytes × dt nanoseconds.
    pub mem_byte_ns: f64,
    pub disk_read: i64,
    pub disk_write: i64,
    pub rx: i64,
    pub tx: i64,
    pub observed_ns: i64,
    pub samples: i64,
    pub gaps: i64,
}

impl Usage {
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_nanos as f64 / 1e9
    }

    pub fn memory_gib_hours(&self) -> f64 {
        self.mem_byte_ns / 1e9 / 1_073_741_824.0 / 3600.0
    }

    pub fn observed_seconds(&self) -> f64 {
        self.observed_ns as f64 / 1e9
    }

    pub fn add(&mut self, o: &Usage) {
        self.cpu_nanos += o.cpu_nanos;
        self.mem_byte_ns += o.mem_byte_ns;
        self.disk_read += o.disk_read;
        self.disk_write += o.disk_write;
        self.rx += o.rx;
        self.tx += o.tx;
        self.observed_ns += o.observed_ns;
        self.samples += o.samples;
        self.gaps += o.gaps;
    }
}

/// One VM's hour.
#[derive(Debug, Clone, PartialEq)]
pub struct VmHour {
    pub customer_id: String,
    pub vm_id: String,
    pub hour: i64,
    /// Pairs inside the hour, and every sample of it.
    pub usage: Usage,
    pub first: Sample,
    pub last: Sample,
}

/// Reported gap spans per VM: `(last_sent, resume_time)` in nanoseconds.
pub type GapSpans = HashMap<String, Vec<(i64, i64)>>;

/// Adds the pair (a, b) to `u` by the billing rules.
pub fn add_pair(u: &mut Usage, a: &Sample, b: &Sample, spans: &[(i64, i64)], limit_ns: i64) {
    let dt = b.ts - a.ts;
    let reported = spans
        .iter()
        .any(|&(last_sent, resume)| a.ts.max(last_sent) < b.ts.min(resume));
    if dt > limit_ns || reported {
        u.gaps += 1;
        return;
    }
    u.cpu_nanos += (b.cpu - a.cpu).max(0);
    u.mem_byte_ns += a.mem.min(b.mem) as f64 * dt as f64;
    u.disk_read += (b.disk_read - a.disk_read).max(0);
    u.disk_write += (b.disk_write - a.disk_write).max(0);
    u.rx += (b.rx - a.rx).max(0);
    u.tx += (b.tx - a.tx).max(0);
    u.observed_ns += dt;
}

/// Folds samples (the columns of `vm_samples.sql`, ordered by VM and time)
/// into hours. A repeated (vm_id, timestamp) counts once.
pub fn fold(batches: &[RecordBatch], spans: &GapSpans, limit_ns: i64) -> Vec<VmHour> {
    let mut f = HourFold::new(spans, limit_ns);
    for b in batches {
        f.push(b);
    }
    f.finish()
}

/// [`fold`] one batch at a time: what it holds is one row per VM and hour
/// seen, whatever the number of samples, so an hour of any size is folded
/// as a stream.
pub struct HourFold<'s> {
    out: Vec<VmHour>,
    /// Bytes of the VM and customer ids held.
    id_bytes: usize,
    spans: &'s GapSpans,
    limit_ns: i64,
}

impl<'s> HourFold<'s> {
    pub fn new(spans: &'s GapSpans, limit_ns: i64) -> Self {
        Self {
            out: Vec::new(),
            id_bytes: 0,
            spans,
            limit_ns,
        }
    }

    /// Bytes held (rows and their ids).
    pub fn memory(&self) -> usize {
        self.out.capacity() * std::mem::size_of::<VmHour>() + self.id_bytes
    }

    /// Samples in the columns of `vm_samples.sql`, after those pushed before
    /// in VM and time order.
    pub fn push(&mut self, b: &RecordBatch) {
        let none: Vec<(i64, i64)> = Vec::new();
        let s = |name: &str| named(b, name).as_string::<i32>();
        let n = |name: &str| named(b, name).as_primitive::<Int64Type>();
        let (customers, vms, ts) = (s("customer_id"), s("vm_id"), n("ts"));
        let (cpu, mem) = (n("cpu_time_nanos"), n("memory_usage_bytes"));
        let (dr, dw) = (n("disk_read_bytes"), n("disk_write_bytes"));
        let (rx, tx) = (n("network_rx_bytes"), n("network_tx_bytes"));
        for r in 0..b.num_rows() {
            let sample = Sample {
                ts: ts.value(r),
                cpu: cpu.value(r),
                mem: mem.value(r),
                disk_read: dr.value(r),
                disk_write: dw.value(r),
                rx: rx.value(r),
                tx: tx.value(r),
            };
            let vm = vms.value(r);
            let hour = sample.ts.div_euclid(HOUR_NS) * HOUR_NS;
            match self.out.last_mut() {
                Some(h) if h.vm_id == vm && h.last.ts == sample.ts => continue,
                Some(h) if h.vm_id == vm && h.hour == hour => {
                    let vm_spans = self.spans.get(vm).unwrap_or(&none);
                    let prev = h.last;
                    add_pair(&mut h.usage, &prev, &sample, vm_spans, self.limit_ns);
                    h.usage.samples += 1;
                    h.last = sample;
                }
                _ => {
                    let customer_id = customers.value(r).to_string();
                    self.id_bytes += customer_id.len() + vm.len();
                    self.out.push(VmHour {
                        customer_id,
                        vm_id: vm.to_string(),
                        hour,
                        usage: Usage {
                            samples: 1,
                            ..Usage::default()
                        },
                        first: sample,
                        last: sample,
                    })
                }
            }
        }
    }

    pub fn finish(self) -> Vec<VmHour> {
        self.out
    }
}

/// The value columns of a `vm_metrics` row (its counters), in
/// `vm_samples.sql`'s order.
pub const SAMPLE_VALUES: [&str; 6] = [
    "cpu_time_nanos",
    "memory_usage_bytes",
    "disk_read_bytes",
    "disk_write_bytes",
    "network_rx_bytes",
    "network_tx_bytes",
];

/// A batch of `vm_metrics` rows (its stored columns, by name) in the
/// columns of `vm_samples.sql`, for [`HourFold::push`].
pub fn samples_of(b: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::compute::cast;
    let col = |name: &str, ty: &DataType| -> Result<Arc<dyn Array>, arrow::error::ArrowError> {
        let c = b.column_by_name(name).ok_or_else(|| {
            arrow::error::ArrowError::SchemaError(format!("vm_metrics has no column {name}"))
        })?;
        // Timestamps become their nanoseconds.
        let c = if matches!(c.data_type(), DataType::Timestamp(..)) {
            cast(c, &DataType::Int64)?
        } else {
            c.clone()
        };
        cast(&c, ty)
    };
    let mut columns = vec![
        col("customer_id", &DataType::Utf8)?,
        col("vm_id", &DataType::Utf8)?,
        col("timestamp", &DataType::Int64)?,
    ];
    for c in SAMPLE_VALUES {
        columns.push(col(c, &DataType::Int64)?);
    }
    RecordBatch::try_new(samples_schema(), columns)
}

/// The columns of `vm_samples.sql`.
pub fn samples_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("vm_id", DataType::Utf8, true),
        Field::new("ts", DataType::Int64, true),
    ];
    for c in SAMPLE_VALUES {
        fields.push(Field::new(c, DataType::Int64, true));
    }
    Arc::new(Schema::new(fields))
}

/// Puts a VM's hours (any order, rolled up or computed from raw) together,
/// row by row: adds each hour's spanning pair (the previous hour with
/// data's last sample and its first); the reference the in-place bill
/// (`vm_bill.rs`) is tested against. `before` holds, per VM, the last sample before
/// the first hour given, when there is one.
#[cfg(test)]
pub(crate) fn assemble(
    mut hours: Vec<VmHour>,
    before: &HashMap<String, Sample>,
    spans: &GapSpans,
    limit_ns: i64,
) -> Vec<VmHour> {
    hours.sort_by(|a, b| a.vm_id.cmp(&b.vm_id).then(a.hour.cmp(&b.hour)));
    let none: Vec<(i64, i64)> = Vec::new();
    let mut prev: Option<(String, Sample)> = None;
    for h in hours.iter_mut() {
        let a = match &prev {
            Some((vm, s)) if *vm == h.vm_id => Some(*s),
            _ => before.get(&h.vm_id).copied(),
        };
        if let Some(a) = a {
            let vm_spans = spans.get(&h.vm_id).unwrap_or(&none);
            add_pair(&mut h.usage, &a, &h.first, vm_spans, limit_ns);
        }
        prev = Some((h.vm_id.clone(), h.last));
    }
    hours
}

/// The stored columns of `vm_usage_hourly`.
pub fn schema() -> SchemaRef {
    let i = |n: &str| Field::new(n, DataType::Int64, false);
    let mut fields = vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("vm_id", DataType::Utf8, false),
        i("hour"),
        i("cpu_nanos"),
        Field::new("memory_byte_ns", DataType::Float64, false),
        i("disk_read_bytes"),
        i("disk_write_bytes"),
        i("network_rx_bytes"),
        i("network_tx_bytes"),
        i("observed_ns"),
        i("samples"),
        i("gaps"),
    ];
    for side in ["first", "last"] {
        for c in SAMPLE_FIELDS {
            fields.push(i(&format!("{side}_{c}")));
        }
    }
    Arc::new(Schema::new(fields))
}

/// A sample's values as the stored hour names them (`first_ts`, …), in the
/// order of [`sample_values`].
pub(crate) const SAMPLE_FIELDS: [&str; 7] =
    ["ts", "cpu", "mem", "disk_read", "disk_write", "rx", "tx"];

/// Row `r` of a sample's seven columns (in [`SAMPLE_FIELDS`] order).
pub(crate) fn sample_at(cols: &[&Int64Array; 7], r: usize) -> Sample {
    Sample {
        ts: cols[0].value(r),
        cpu: cols[1].value(r),
        mem: cols[2].value(r),
        disk_read: cols[3].value(r),
        disk_write: cols[4].value(r),
        rx: cols[5].value(r),
        tx: cols[6].value(r),
    }
}

/// A column of a batch this module or `vm_samples.sql` shaped, by name.
fn named<'b>(b: &'b RecordBatch, name: &str) -> &'b arrow::array::ArrayRef {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("the VM rows have no column {name}"))
}

fn sample_values(s: &Sample) -> [i64; 7] {
    [s.ts, s.cpu, s.mem, s.disk_read, s.disk_write, s.rx, s.tx]
}

pub fn to_batch(hours: &[VmHour]) -> RecordBatch {
    let ints = |f: &dyn Fn(&VmHour) -> i64| -> Arc<dyn Array> {
        Arc::new(Int64Array::from_iter_values(hours.iter().map(f)))
    };
    let mut columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(StringArray::from_iter_values(
            hours.iter().map(|h| h.customer_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            hours.iter().map(|h| h.vm_id.as_str()),
        )),
        ints(&|h| h.hour),
        ints(&|h| h.usage.cpu_nanos),
        Arc::new(Float64Array::from_iter_values(
            hours.iter().map(|h| h.usage.mem_byte_ns),
        )),
        ints(&|h| h.usage.disk_read),
        ints(&|h| h.usage.disk_write),
        ints(&|h| h.usage.rx),
        ints(&|h| h.usage.tx),
        ints(&|h| h.usage.observed_ns),
        ints(&|h| h.usage.samples),
        ints(&|h| h.usage.gaps),
    ];
    for k in 0..7 {
        columns.push(ints(&|h| sample_values(&h.first)[k]));
    }
    for k in 0..7 {
        columns.push(ints(&|h| sample_values(&h.last)[k]));
    }
    RecordBatch::try_new(schema(), columns).expect("columns match the schema")
}

/// Reads rows written by [`to_batch`]; `keep` filters by (customer, vm).
pub fn from_batch(b: &RecordBatch, keep: &dyn Fn(&str, &str) -> bool) -> Vec<VmHour> {
    let s = |name: &str| named(b, name).as_string::<i32>();
    let n = |name: &str| named(b, name).as_primitive::<Int64Type>();
    let f = named(b, "memory_byte_ns").as_primitive::<arrow::datatypes::Float64Type>();
    let side = |side: &str| SAMPLE_FIELDS.map(|c| n(&format!("{side}_{c}")));
    let (firsts, lasts) = (side("first"), side("last"));
    let sample = sample_at;
    let (customers, vms, hours) = (s("customer_id"), s("vm_id"), n("hour"));
    let (cpu, dr, dw) = (n("cpu_nanos"), n("disk_read_bytes"), n("disk_write_bytes"));
    let (rx, tx) = (n("network_rx_bytes"), n("network_tx_bytes"));
    let (observed, samples, gaps) = (n("observed_ns"), n("samples"), n("gaps"));
    let mut out = Vec::new();
    for r in 0..b.num_rows() {
        let (c, v) = (customers.value(r), vms.value(r));
        if !keep(c, v) {
            continue;
        }
        out.push(VmHour {
            customer_id: c.to_string(),
            vm_id: v.to_string(),
            hour: hours.value(r),
            usage: Usage {
                cpu_nanos: cpu.value(r),
                mem_byte_ns: f.value(r),
                disk_read: dr.value(r),
                disk_write: dw.value(r),
                rx: rx.value(r),
                tx: tx.value(r),
                observed_ns: observed.value(r),
                samples: samples.value(r),
                gaps: gaps.value(r),
            },
            first: sample(&firsts, r),
            last: sample(&lasts, r),
        });
    }
    out
}

/// Sums hours into windows: `window_of(hour)` gives a window's start and
/// end. With [`assemble`], the reference of the in-place bill's test.
#[cfg(test)]
pub(crate) fn windows(
    hours: &[VmHour],
    window_of: &dyn Fn(i64) -> (i64, i64),
) -> std::collections::BTreeMap<(String, String, i64), (i64, Usage)> {
    let mut out = std::collections::BTreeMap::new();
    for h in hours {
        let (start, end) = window_of(h.hour);
        let e = out
            .entry((h.customer_id.clone(), h.vm_id.clone(), start))
            .or_insert((end, Usage::default()));
        e.1.add(&h.usage);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::NS_PER_SEC;

    fn s(ts_s: i64, cpu: i64) -> Sample {
        Sample {
            ts: ts_s * NS_PER_SEC,
            cpu,
            mem: 1 << 30,
            ..Sample::default()
        }
    }

    #[test]
    fn pairs_follow_the_billing_rules() {
        let limit = 120_000_000_000;
        let mut u = Usage::default();
        add_pair(&mut u, &s(0, 10), &s(120, 30), &[], limit);
        assert_eq!(
            (u.cpu_nanos, u.observed_ns, u.gaps),
            (20, 120_000_000_000, 0)
        );
        // Over the limit: a gap; a reset counts zero.
        add_pair(&mut u, &s(120, 30), &s(241, 90), &[], limit);
        add_pair(&mut u, &s(241, 90), &s(250, 5), &[], limit);
        assert_eq!((u.cpu_nanos, u.gaps), (20, 1));
        // A reported span overlapping the pair makes it a gap; one that only
        // touches it does not.
        let spans = [(5_000_000_000, 7_000_000_000)];
        let mut v = Usage::default();
        add_pair(&mut v, &s(0, 0), &s(10, 5), &spans, limit);
        add_pair(&mut v, &s(7, 0), &s(10, 5), &spans, limit);
        assert_eq!((v.gaps, v.cpu_nanos), (1, 5));
    }
}
