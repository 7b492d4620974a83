//! Decodes the same `SendMetricsBatchRequest` (600 samples of one VM, as the
//! load generator sends them) with the direct decoder and with prost, and
//! prints ns per sample of each, median of the rounds:
//!
//! `cargo run --release -p tally-proto --example batch_decode`

use std::hint::black_box;
use std::time::Instant;

use prost::Message;
use tally_proto::billing::v1::{SendMetricsBatchRequest, VmMetrics};
use tally_proto::fast::{send_metrics_batch_into, BatchSink};

const SAMPLES: i64 = 600;
const BATCHES: usize = 20_000;
const ROUNDS: usize = 7;

/// Sums what it is handed, so that nothing is optimised away.
#[derive(Default)]
struct Sum(i64);

impl BatchSink for Sum {
    fn reserve(&mut self, samples: usize) {
        self.0 += samples as i64;
    }
    fn vm_id(&mut self, vm_id: &str) {
        self.0 += vm_id.len() as i64;
    }
    fn customer_id(&mut self, customer_id: &str) {
        self.0 += customer_id.len() as i64;
    }
    fn sample(&mut self, m: &VmMetrics) {
        self.0 = self.0.wrapping_add(m.cpu_time_nanos ^ m.network_tx_bytes);
    }
}

fn main() {
    let start = 1_790_000_000;
    let request = SendMetricsBatchRequest {
        vm_id: "vm-000123".into(),
        customer_id: "customer-0042".into(),
        metrics: (0..SAMPLES)
            .map(|i| VmMetrics {
                timestamp: Some(prost_types::Timestamp {
                    seconds: start + i,
                    nanos: 123_456_789,
                }),
                cpu_time_nanos: 3_600_000_000_000 + i * 1_000_000_007,
                memory_usage_bytes: 8 << 30,
                disk_read_bytes: 1_000_000 + i * 4096,
                disk_write_bytes: 2_000_000 + i * 8192,
                network_rx_bytes: 50_000_000 + i * 1500,
                network_tx_bytes: 70_000_000 + i * 1500,
            })
            .collect(),
    };
    let bytes = request.encode_to_vec();
    let per_sample = |f: &dyn Fn() -> i64| {
        let mut rounds: Vec<f64> = (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..BATCHES {
                    black_box(f());
                }
                t.elapsed().as_nanos() as f64 / (BATCHES as f64 * SAMPLES as f64)
            })
            .collect();
        rounds.sort_by(f64::total_cmp);
        rounds[ROUNDS / 2]
    };
    let direct = per_sample(&|| {
        let mut sum = Sum::default();
        send_metrics_batch_into(black_box(&bytes), &mut sum).expect("the direct decoder takes it");
        sum.0
    });
    let prost = per_sample(&|| {
        let r = SendMetricsBatchRequest::decode(black_box(&bytes[..])).expect("valid");
        r.metrics.len() as i64
    });
    println!("message: {} bytes, {SAMPLES} samples", bytes.len());
    println!("direct decoder: {direct:.1} ns per sample");
    println!(
        "prost:          {prost:.1} ns per sample ({:.2}x the direct decoder)",
        prost / direct
    );
}
