//! Bills from stored VM hours, read in place: the rows of `vm_usage_hours`
//! batches become windows without a `String` or a struct per hour.
//!
//! What it computes is [`vm::assemble`] then [`vm::windows`] over
//! [`vm::from_batch`] (the test below holds it to that): each VM's hours in
//! time order, the pair spanning two hours added to the later one, and
//! hours summed into the windows they fall in.
//!
//! How: VM and customer ids are interned once per row (a hash of a borrowed
//! `&str`); each kept row becomes a 16-byte entry; entries are grouped by VM
//! with a counting sort (the batches come in hour order, so each VM's
//! entries are already in time order); one walk adds the spanning pairs and
//! sums windows, reading the numbers from the columns. Only the answer's
//! rows get strings.

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, Int64Type};
use hashbrown::HashMap;

use super::vm::{self, GapSpans, Sample, Usage};

/// The columns of one `vm_usage_hours` batch ([`vm::schema`]).
struct HourColumns<'b> {
    customers: &'b StringArray,
    vms: &'b StringArray,
    hour: &'b Int64Array,
    cpu: &'b Int64Array,
    mem: &'b Float64Array,
    counts: [&'b Int64Array; 7],
    first: [&'b Int64Array; 7],
    last: [&'b Int64Array; 7],
}

/// The integer usage columns after `cpu_nanos` and `memory_byte_ns`.
const COUNTS: [&str; 7] = [
    "disk_read_bytes",
    "disk_write_bytes",
    "network_rx_bytes",
    "network_tx_bytes",
    "observed_ns",
    "samples",
    "gaps",
];
const SAMPLE_FIELDS: [&str; 7] = ["ts", "cpu", "mem", "disk_read", "disk_write", "rx", "tx"];

impl<'b> HourColumns<'b> {
    fn of(b: &'b RecordBatch) -> Self {
        let col = |name: &str| {
            b.column_by_name(name)
                .unwrap_or_else(|| panic!("vm_usage_hours has no column {name}"))
        };
        let n = |name: &str| col(name).as_primitive::<Int64Type>();
        let side = |side: &str| SAMPLE_FIELDS.map(|f| n(&format!("{side}_{f}")));
        Self {
            customers: col("customer_id").as_string::<i32>(),
            vms: col("vm_id").as_string::<i32>(),
            hour: n("hour"),
            cpu: n("cpu_nanos"),
            mem: col("memory_byte_ns").as_primitive::<Float64Type>(),
            counts: COUNTS.map(n),
            first: side("first"),
            last: side("last"),
        }
    }

    fn sample(cols: &[&Int64Array; 7], r: usize) -> Sample {
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

    fn usage(&self, r: usize) -> Usage {
        let c = |i: usize| self.counts[i].value(r);
        Usage {
            cpu_nanos: self.cpu.value(r),
            mem_byte_ns: self.mem.value(r),
            disk_read: c(0),
            disk_write: c(1),
            rx: c(2),
            tx: c(3),
            observed_ns: c(4),
            samples: c(5),
            gaps: c(6),
        }
    }
}

/// Strings borrowed from the batches, numbered in the order first seen.
#[derive(Default)]
struct Interner<'b> {
    ids: HashMap<&'b str, u32>,
    names: Vec<&'b str>,
}

impl<'b> Interner<'b> {
    fn id(&mut self, s: &'b str) -> u32 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(s);
        self.ids.insert(s, i);
        i
    }
}

/// One kept hour row: where it is, and whose.
#[derive(Clone, Copy)]
struct Entry {
    vm: u32,
    customer: u32,
    batch: u32,
    row: u32,
}

/// The hour rows of many `vm_usage_hours` batches that a bill keeps.
pub struct HourIndex<'b> {
    batches: Vec<HourColumns<'b>>,
    vms: Interner<'b>,
    customers: Interner<'b>,
    /// Grouped by VM, each VM's in time order.
    entries: Vec<Entry>,
}

/// One window of one VM's bill.
#[derive(Debug, Clone, PartialEq)]
pub struct BillRow {
    pub customer_id: String,
    pub vm_id: String,
    pub start: i64,
    pub end: i64,
    pub usage: Usage,
}

impl<'b> HourIndex<'b> {
    /// The rows `keep` accepts (by customer and VM) of `batches`, which
    /// hold distinct hours and come in hour order (a batch of hours out of
    /// order is sorted in too).
    pub fn new(batches: &[&'b RecordBatch], keep: &dyn Fn(&str, &str) -> bool) -> Self {
        let mut vms = Interner::default();
        let mut customers = Interner::default();
        let mut kept: HashMap<(u32, u32), bool> = HashMap::new();
        let mut rows = Vec::new();
        let columns: Vec<HourColumns<'b>> = batches.iter().map(|b| HourColumns::of(b)).collect();
        for (bi, cols) in columns.iter().enumerate() {
            for r in 0..cols.hour.len() {
                let (c, v) = (cols.customers.value(r), cols.vms.value(r));
                let (vm, customer) = (vms.id(v), customers.id(c));
                let keep = *kept.entry((vm, customer)).or_insert_with(|| keep(c, v));
                if keep {
                    rows.push(Entry {
                        vm,
                        customer,
                        batch: bi as u32,
                        row: r as u32,
                    });
                }
            }
        }
        // Counting sort by VM: stable, so each VM's rows keep batch order.
        let mut starts = vec![0usize; vms.names.len() + 1];
        for e in &rows {
            starts[e.vm as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut next = starts.clone();
        let mut entries = vec![
            Entry {
                vm: 0,
                customer: 0,
                batch: 0,
                row: 0
            };
            rows.len()
        ];
        for e in rows {
            let slot = &mut next[e.vm as usize];
            entries[*slot] = e;
            *slot += 1;
        }
        let mut index = Self {
            batches: columns,
            vms,
            customers,
            entries,
        };
        // Batches out of hour order leave a VM's rows out of time order.
        for w in starts.windows(2) {
            let run = &index.entries[w[0]..w[1]];
            let hour = |e: &Entry| index.batches[e.batch as usize].hour.value(e.row as usize);
            if !run.windows(2).all(|p| hour(&p[0]) <= hour(&p[1])) {
                let mut run = run.to_vec();
                run.sort_by_key(|e| hour(e));
                index.entries[w[0]..w[1]].copy_from_slice(&run);
            }
        }
        index
    }

    /// The VMs with a kept row.
    pub fn vm_ids(&self) -> impl Iterator<Item = &'b str> + '_ {
        let mut seen = vec![false; self.vms.names.len()];
        self.entries.iter().filter_map(move |e| {
            let first = !std::mem::replace(&mut seen[e.vm as usize], true);
            first.then(|| self.vms.names[e.vm as usize])
        })
    }

    /// The windows of every kept VM, ordered by customer, VM and start.
    /// `before` holds, per VM, its last sample before the first hour here.
    pub fn windows(
        &self,
        before: &std::collections::HashMap<String, Sample>,
        spans: &GapSpans,
        limit_ns: i64,
        window_of: &dyn Fn(i64) -> (i64, i64),
    ) -> Vec<BillRow> {
        let none: Vec<(i64, i64)> = Vec::new();
        // (customer, vm, start, end, usage) of the VM being walked.
        let mut out: Vec<(u32, u32, i64, i64, Usage)> = Vec::new();
        let mut run_start = 0;
        let mut prev: Option<(u32, Sample)> = None;
        // The last window found: hours of one window come together.
        let mut window = (i64::MAX, i64::MIN);
        for e in &self.entries {
            let cols = &self.batches[e.batch as usize];
            let r = e.row as usize;
            let hour = cols.hour.value(r);
            let first = HourColumns::sample(&cols.first, r);
            let vm_name = self.vms.names[e.vm as usize];
            let a = match prev {
                Some((vm, s)) if vm == e.vm => Some(s),
                _ => {
                    run_start = out.len();
                    before.get(vm_name).copied()
                }
            };
            let mut usage = cols.usage(r);
            if let Some(a) = a {
                let vm_spans = spans.get(vm_name).unwrap_or(&none);
                vm::add_pair(&mut usage, &a, &first, vm_spans, limit_ns);
            }
            prev = Some((e.vm, HourColumns::sample(&cols.last, r)));
            if !(window.0 <= hour && hour < window.1) {
                window = window_of(hour);
            }
            // This VM's windows so far; a customer change (rare) may bring
            // back an earlier key.
            let found = out[run_start..]
                .iter_mut()
                .rev()
                .find(|w| w.0 == e.customer && w.2 == window.0);
            match found {
                Some(w) => w.4.add(&usage),
                None => out.push((e.customer, e.vm, window.0, window.1, usage)),
            }
        }
        let mut rows: Vec<BillRow> = out
            .into_iter()
            .map(|(c, v, start, end, usage)| BillRow {
                customer_id: self.customers.names[c as usize].to_string(),
                vm_id: self.vms.names[v as usize].to_string(),
                start,
                end,
                usage,
            })
            .collect();
        rows.sort_by(|a, b| {
            (a.customer_id.as_str(), a.vm_id.as_str(), a.start).cmp(&(
                b.customer_id.as_str(),
                b.vm_id.as_str(),
                b.start,
            ))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::HOUR_NS;
    use crate::rules::vm::{assemble, from_batch, to_batch, windows, VmHour};

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn sample(rng: &mut Rng, ts: i64) -> Sample {
        let mut v = || rng.below(1 << 40) as i64;
        Sample {
            ts,
            cpu: v(),
            mem: v(),
            disk_read: v(),
            disk_write: v(),
            rx: v(),
            tx: v(),
        }
    }

    /// Hours of 40 VMs over 30 days, some missing, some VMs moving to
    /// another customer, as stored batches of one hour each.
    fn hours(rng: &mut Rng) -> Vec<Vec<VmHour>> {
        let day0 = 1_790_000_000 / 86_400 * 86_400 * 1_000_000_000;
        (0..24 * 30)
            .map(|k| {
                let hour = day0 + k * HOUR_NS;
                let present: Vec<u64> = (0..40u64).filter(|_| rng.below(10) != 0).collect();
                present
                    .into_iter()
                    .map(|vm| {
                        let customer = if vm % 7 == 0 && rng.below(3) == 0 {
                            "c-moved".to_string()
                        } else {
                            format!("c-{}", vm % 5)
                        };
                        let t = hour + rng.below(1000) as i64 * 1_000_000;
                        VmHour {
                            customer_id: customer,
                            vm_id: format!("vm-{vm:03}"),
                            hour,
                            usage: Usage {
                                cpu_nanos: rng.below(1 << 30) as i64,
                                mem_byte_ns: rng.below(1 << 50) as f64,
                                disk_read: rng.below(1 << 20) as i64,
                                disk_write: rng.below(1 << 20) as i64,
                                rx: rng.below(1 << 20) as i64,
                                tx: rng.below(1 << 20) as i64,
                                observed_ns: rng.below(HOUR_NS as u64) as i64,
                                samples: rng.below(200) as i64,
                                gaps: rng.below(3) as i64,
                            },
                            first: sample(rng, t),
                            last: sample(rng, t + HOUR_NS / 2),
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn windows_in_place_equal_the_row_by_row_bill() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let hours = hours(&mut rng);
        let mut batches: Vec<RecordBatch> = hours.iter().map(|h| to_batch(h)).collect();
        // One batch out of hour order (as raw hours come after the rolled).
        let late = batches.remove(100);
        batches.push(late);
        let limit = 3 * HOUR_NS;
        let mut spans = GapSpans::new();
        let h0 = hours[0][0].hour;
        spans.insert("vm-003".into(), vec![(h0 + 5 * HOUR_NS, h0 + 9 * HOUR_NS)]);
        let mut before = std::collections::HashMap::new();
        before.insert("vm-001".to_string(), sample(&mut rng, h0 - 60_000_000_000));
        let day = |h: i64| {
            let s = h.div_euclid(24 * HOUR_NS) * 24 * HOUR_NS;
            (s, s + 24 * HOUR_NS)
        };
        let week = |h: i64| {
            let s = h.div_euclid(7 * 24 * HOUR_NS) * 7 * 24 * HOUR_NS;
            (s, s + 7 * 24 * HOUR_NS)
        };
        let hourly = |h: i64| (h, h + HOUR_NS);
        for keep in [
            &(|_: &str, _: &str| true) as &dyn Fn(&str, &str) -> bool,
            &|c: &str, v: &str| c != "c-2" && v != "vm-011",
        ] {
            for window_of in [&day as &dyn Fn(i64) -> (i64, i64), &week, &hourly] {
                let rows: Vec<VmHour> = batches.iter().flat_map(|b| from_batch(b, keep)).collect();
                let expected: Vec<BillRow> =
                    windows(&assemble(rows, &before, &spans, limit), window_of)
                        .into_iter()
                        .map(|((customer_id, vm_id, start), (end, usage))| BillRow {
                            customer_id,
                            vm_id,
                            start,
                            end,
                            usage,
                        })
                        .collect();
                let refs: Vec<&RecordBatch> = batches.iter().collect();
                let index = HourIndex::new(&refs, keep);
                let got = index.windows(&before, &spans, limit, window_of);
                assert!(expected.len() > 40, "{}", expected.len());
                assert_eq!(got.len(), expected.len());
                for (g, e) in got.iter().zip(&expected) {
                    assert_eq!(
                        (&g.customer_id, &g.vm_id, g.start, g.end),
                        (&e.customer_id, &e.vm_id, e.start, e.end)
                    );
                    let u = (g.usage, e.usage);
                    // Float sums in another order may differ in the last bits.
                    assert!((u.0.mem_byte_ns - u.1.mem_byte_ns).abs() <= u.1.mem_byte_ns * 1e-12);
                    assert_eq!(
                        Usage {
                            mem_byte_ns: 0.0,
                            ..u.0
                        },
                        Usage {
                            mem_byte_ns: 0.0,
                            ..u.1
                        }
                    );
                }
                let mut vms: Vec<&str> = index.vm_ids().collect();
                vms.sort();
                let mut want: Vec<&str> = expected.iter().map(|r| r.vm_id.as_str()).collect();
                want.sort();
                want.dedup();
                assert_eq!(vms, want);
            }
        }
    }
}
