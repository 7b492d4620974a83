//! Bills from stored VM hours, read in place: the rows of `vm_usage_hours`
//! batches become windows without a `String` or a struct per hour.
//!
//! What it computes is [`vm::assemble`] then [`vm::windows`] over
//! [`vm::from_batch`] (the test below holds it to that): each VM's hours in
//! time order, the pair spanning two hours added to the later one, and
//! hours summed into the windows they fall in.
//!
//! How: VM and customer ids are interned per row (a hash of a borrowed
//! `&str`, or a comparison with the same row of the hour before); the
//! batches, one hour each, are walked in hour order and row by row, so the
//! columns are read in sequence, each VM's hours come in time order, and
//! what is kept per VM is its last sample and its windows. Only the
//! answer's rows get strings.

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, Int64Type};
use hashbrown::HashMap;

use super::vm::{self, sample_at, GapSpans, Sample, Usage, SAMPLE_FIELDS};

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

/// A row no bill keeps.
const DROPPED: (u32, u32) = (u32::MAX, u32::MAX);

/// The hour rows of many `vm_usage_hours` batches that a bill keeps.
pub struct HourIndex<'b> {
    batches: Vec<HourColumns<'b>>,
    /// The batches in hour order.
    order: Vec<usize>,
    vms: Interner<'b>,
    customers: Interner<'b>,
    /// Per batch, per row: (VM, customer), or [`DROPPED`].
    ids: Vec<Vec<(u32, u32)>>,
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

/// What the walk holds per VM.
#[derive(Default, Clone)]
struct VmState {
    /// The last sample of the VM's latest hour so far.
    last: Option<Sample>,
    /// Its windows in the answer (indices into it), the latest last.
    windows: Vec<u32>,
}

impl<'b> HourIndex<'b> {
    /// The rows `keep` accepts (by customer and VM) of `batches`, each of
    /// which holds the rows of one hour (as stored), in any order.
    pub fn new(batches: &[&'b RecordBatch], keep: &dyn Fn(&str, &str) -> bool) -> Self {
        let mut vms = Interner::default();
        let mut customers = Interner::default();
        let mut kept: HashMap<(u32, u32), bool> = HashMap::new();
        let columns: Vec<HourColumns<'b>> = batches.iter().map(|b| HourColumns::of(b)).collect();
        let mut ids: Vec<Vec<(u32, u32)>> = Vec::with_capacity(columns.len());
        // Hours list the same VMs in the same order, mostly: a row's ids
        // are those of the same row of the batch before when its strings
        // are equal, with its keep decision: a comparison instead of three
        // hashes.
        let mut before: Vec<(u32, u32, bool)> = Vec::new();
        for cols in &columns {
            let mut these = Vec::with_capacity(cols.hour.len());
            for r in 0..cols.hour.len() {
                let (c, v) = (cols.customers.value(r), cols.vms.value(r));
                let seen = match before.get(r) {
                    Some(&(vm, customer, keeps))
                        if vms.names[vm as usize] == v
                            && customers.names[customer as usize] == c =>
                    {
                        Some((vm, customer, keeps))
                    }
                    _ => None,
                };
                these.push(seen.unwrap_or_else(|| {
                    let (vm, customer) = (vms.id(v), customers.id(c));
                    let keeps = *kept.entry((vm, customer)).or_insert_with(|| keep(c, v));
                    (vm, customer, keeps)
                }));
            }
            ids.push(
                these
                    .iter()
                    .map(|&(vm, customer, keeps)| if keeps { (vm, customer) } else { DROPPED })
                    .collect(),
            );
            before = these;
        }
        let mut order: Vec<usize> = (0..columns.len()).collect();
        order.sort_by_key(|&b| (!columns[b].hour.is_empty()).then(|| columns[b].hour.value(0)));
        Self {
            batches: columns,
            order,
            vms,
            customers,
            ids,
        }
    }

    /// The VMs with a kept row.
    pub fn vm_ids(&self) -> impl Iterator<Item = &'b str> + '_ {
        let mut seen = vec![false; self.vms.names.len()];
        self.ids.iter().flatten().filter_map(move |&(vm, _)| {
            let first = vm != u32::MAX && !std::mem::replace(&mut seen[vm as usize], true);
            first.then(|| self.vms.names[vm as usize])
        })
    }

    /// The windows of every kept VM, ordered by customer, VM and start.
    /// `before` holds, per VM, its last sample before the first hour here.
    ///
    /// The batches are walked in hour order and each batch row by row, so
    /// the columns are read in sequence; what the walk keeps per VM is
    /// its last sample and its windows.
    pub fn windows(
        &self,
        before: &std::collections::HashMap<String, Sample>,
        spans: &GapSpans,
        limit_ns: i64,
        window_of: &dyn Fn(i64) -> (i64, i64),
    ) -> Vec<BillRow> {
        let none: Vec<(i64, i64)> = Vec::new();
        let mut state: Vec<VmState> = vec![VmState::default(); self.vms.names.len()];
        for (vm, s) in state.iter_mut().enumerate() {
            s.last = before.get(self.vms.names[vm]).copied();
        }
        // (customer, vm, start, end, usage)
        let mut out: Vec<(u32, u32, i64, i64, Usage)> = Vec::new();
        for &b in &self.order {
            let cols = &self.batches[b];
            // One hour per batch: one window.
            let Some(hour) = (!cols.hour.is_empty()).then(|| cols.hour.value(0)) else {
                continue;
            };
            let (start, end) = window_of(hour);
            for (r, &(vm, customer)) in self.ids[b].iter().enumerate() {
                if vm == u32::MAX {
                    continue;
                }
                let s = &mut state[vm as usize];
                let mut usage = cols.usage(r);
                if let Some(a) = s.last {
                    let vm_spans = spans.get(self.vms.names[vm as usize]).unwrap_or(&none);
                    let first = sample_at(&cols.first, r);
                    vm::add_pair(&mut usage, &a, &first, vm_spans, limit_ns);
                }
                s.last = Some(sample_at(&cols.last, r));
                // The latest window, or (a customer change, rare) an
                // earlier one of the same key.
                let found = s.windows.iter().rev().copied().find(|&w| {
                    let w = &out[w as usize];
                    w.0 == customer && w.2 == start
                });
                match found {
                    Some(w) => out[w as usize].4.add(&usage),
                    None => {
                        s.windows.push(out.len() as u32);
                        out.push((customer, vm, start, end, usage));
                    }
                }
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
