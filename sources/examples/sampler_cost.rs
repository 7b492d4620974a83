//! CPU time of one hardware-sampler tick (refresh, sample, serialise).
//!
//! `cargo run --release -p tally-sources --example sampler_cost`

use std::time::Instant;

use serde_json::Map;
use tally_sources::hardware::{gpu, HostSampler};

/// User + system CPU seconds of this process, from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat[stat.rfind(')').map_or(0, |i| i + 2)..]
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn main() {
    const TICKS: u32 = 2000;
    let mut sampler = HostSampler::new(gpu::open()).expect("host statistics are readable");
    let rates = Map::new();
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let mut bytes = 0;
    for _ in 0..TICKS {
        let sample = sampler.sample();
        bytes += sample.usage_update(&rates).to_string().len();
    }
    let cpu = cpu_seconds() - cpu0;
    println!(
        "{TICKS} ticks: {:.1} µs CPU per tick, {:.1} µs wall per tick, {} bytes per update (GPU: {})",
        cpu * 1e6 / TICKS as f64,
        wall0.elapsed().as_secs_f64() * 1e6 / TICKS as f64,
        bytes / TICKS as usize,
        sampler.gpu_absent.as_deref().unwrap_or("present"),
    );
}
