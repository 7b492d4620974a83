//! Measures the memory of the dedup index per million keys.
//!
//! `cargo run --release -p tally-pipeline --example dedup_memory`
//! prints RSS growth per million keys for 36-byte event ids (UUID text) and
//! for `vm_metrics` keys (vm id + timestamp).

#[path = "common/keys.rs"]
mod keys;

use std::sync::Arc;

use tally_pipeline::dedup::Dedup;
use tally_pipeline::metrics::Metrics;
use tally_pipeline::Dataset;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    // Each kind of key is measured in a fresh process: memory freed by one
    // measurement stays in the allocator and would hide the next one's.
    let Some(which) = std::env::args().nth(1) else {
        let me = std::env::current_exe().expect("own path");
        for which in ["uuid", "vm"] {
            let status = std::process::Command::new(&me).arg(which).status();
            assert!(status.is_ok_and(|s| s.success()), "{which} run failed");
        }
        return;
    };
    const N: u64 = 2_000_000;
    for (name, dataset) in [
        ("event_id (36-byte UUID text)", Dataset::UsageLlm),
        ("vm_id + timestamp", Dataset::VmMetrics),
    ] {
        if (which == "vm") != (dataset == Dataset::VmMetrics) {
            continue;
        }
        let dedup = Dedup::new(86_400, usize::MAX, Arc::new(Metrics::default()));
        let before = rss_kib();
        let mut key = Vec::new();
        for i in 0..N {
            key.clear();
            keys::key_of(dataset, i, &mut key);
            dedup.insert(dataset, &key, 1_700_000_000);
        }
        let after = rss_kib();
        let per_million_mib = (after - before) as f64 / 1024.0 / (N as f64 / 1e6);
        println!(
            "{name}: {} keys, {:.1} MiB per million keys ({:.0} bytes/key)",
            dedup.len(dataset),
            per_million_mib,
            per_million_mib * 1024.0 * 1024.0 / 1e6
        );
    }
}
