//! Measures how long a request's keys wait in the dedup index once it is
//! at its key bound.
//!
//! `cargo run --release -p tally-pipeline --example dedup_bound [KEYS] [MAX_KEYS]`
//!
//! Admits KEYS distinct keys (default 30 M) in batches of 500, with the
//! clock advancing one second per 50,000 keys (the design point), into an
//! index bounded at MAX_KEYS (default 10 M, the server's default), for
//! `usage_llm` ids (36-byte UUID text) and `vm_metrics` keys (1,000 VMs).
//! Prints the batches' time in the index: the longest while the index
//! fills, the median while it fills its last tenth, then the median, p99.9 and the longest after the bound
//! was first reached, and the number of keys evicted.

#[path = "common/keys.rs"]
mod keys;

use std::sync::Arc;
use std::time::Instant;

use tally_pipeline::dedup::Dedup;
use tally_pipeline::metrics::Metrics;
use tally_pipeline::Dataset;

fn main() {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args.next().map_or(30_000_000, |a| a.parse().expect("KEYS"));
    let max_keys: usize = args
        .next()
        .map_or(10_000_000, |a| a.parse().expect("MAX_KEYS"));
    const BATCH: u64 = 500;
    const RATE: u64 = 50_000;
    for (name, dataset) in [
        ("usage_llm ids", Dataset::UsageLlm),
        ("vm_metrics keys", Dataset::VmMetrics),
    ] {
        let metrics = Arc::new(Metrics::default());
        let dedup = Dedup::new(86_400, max_keys, metrics.clone());
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(BATCH as usize);
        let mut waits = Vec::new();
        let mut filling = Vec::new();
        let mut longest_filling = 0f64;
        let mut fresh = Vec::with_capacity(BATCH as usize);
        let mut i = 0;
        while i < keys {
            batch.clear();
            for j in i..i + BATCH {
                let mut key = Vec::new();
                keys::key_of(dataset, j, &mut key);
                batch.push(key);
            }
            let now = 1_700_000_000 + i / RATE;
            fresh.clear();
            let started = Instant::now();
            dedup.insert_all(batch.iter().map(|k| (dataset, &k[..])), now, &mut fresh);
            let took = started.elapsed();
            assert!(fresh.iter().all(|f| *f), "every key is distinct");
            if i >= max_keys as u64 {
                waits.push(took.as_secs_f64() * 1e3);
            } else {
                longest_filling = longest_filling.max(took.as_secs_f64() * 1e3);
                if i >= max_keys as u64 / 10 * 9 {
                    filling.push(took.as_secs_f64() * 1e3);
                }
            }
            i += BATCH;
        }
        waits.sort_by(f64::total_cmp);
        filling.sort_by(f64::total_cmp);
        let at = |q: f64| waits[((waits.len() as f64 - 1.0) * q) as usize];
        println!(
            "{name}: {keys} keys, bound {max_keys}: per batch of {BATCH} while filling, longest {:.1} ms; in the last tenth before the bound, median {:.3} ms; past the bound, median {:.3} ms, p99.9 {:.3} ms, longest {:.1} ms; {} keys evicted, {} held",
            longest_filling,
            filling.get(filling.len() / 2).copied().unwrap_or(0.0),
            at(0.5),
            at(0.999),
            waits.last().copied().unwrap_or(0.0),
            metrics.dedup_evictions.get(),
            dedup.len(dataset),
        );
    }
}
