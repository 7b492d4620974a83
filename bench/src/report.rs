//! The summary a person reads and the JSON a script reads.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::args::{Args, Scenario};
use crate::runner::RunResult;
use crate::server::ServerStats;

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub mode: String,
    pub batch: usize,
    pub concurrency: usize,
    pub duration_seconds: f64,
    pub requests: u64,
    pub records_acked: u64,
    pub records_per_second: f64,
    pub records_acked_by_protocol: BTreeMap<String, u64>,
    /// Acknowledgement latency per request, in milliseconds.
    pub latency_ms: BTreeMap<String, f64>,
    pub errors: BTreeMap<String, u64>,
    pub server: Option<ServerStats>,
    /// Server CPU time over the measured time per record acknowledged in
    /// it, in nanoseconds (warm-up and shutdown left out).
    pub server_cpu_ns_per_record: Option<f64>,
    /// `--first-record` of a run that goes on from this one.
    pub next_record: u64,
    /// Refused requests sent again (`--retry-refused`).
    pub retried: u64,
    /// The server's resident memory over the run (MiB), the peak sampled.
    pub rss_peak_mib: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<crate::server::Moment>,
}

impl Report {
    pub fn new(args: &Args, r: RunResult, server: Option<ServerStats>) -> Report {
        let secs = r.elapsed.as_secs_f64();
        let mut latency_ms = BTreeMap::new();
        if !r.latency_us.is_empty() {
            for (name, q) in [
                ("p50", 0.50),
                ("p95", 0.95),
                ("p99", 0.99),
                ("p99.9", 0.999),
            ] {
                latency_ms.insert(
                    name.to_string(),
                    r.latency_us.value_at_quantile(q) as f64 / 1000.0,
                );
            }
            latency_ms.insert("max".into(), r.latency_us.max() as f64 / 1000.0);
        }
        Report {
            scenario: args.scenario,
            mode: match args.rate {
                Some(rate) => format!("open loop at {rate} records/s"),
                None => format!("closed loop, {} senders", args.concurrency),
            },
            batch: args.batch,
            concurrency: args.concurrency,
            duration_seconds: secs,
            requests: r.requests,
            records_acked: r.records_acked,
            records_per_second: r.records_acked as f64 / secs.max(1e-9),
            records_acked_by_protocol: r.acked_by,
            latency_ms,
            errors: r.errors,
            server,
            server_cpu_ns_per_record: r
                .measured_cpu_seconds
                .map(|cpu| cpu * 1e9 / r.records_acked.max(1) as f64),
            next_record: r.next_record,
            retried: r.retried,
            rss_peak_mib: r.timeline.iter().filter_map(|m| m.rss_mib).reduce(f64::max),
            timeline: r.timeline,
        }
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn human(&self) -> String {
        let mut s = format!(
            "{:?}, {}, {} records/request\n  {:.0} records/s acknowledged ({} records, {} requests in {:.1}s)\n",
            self.scenario, self.mode, self.batch, self.records_per_second, self.records_acked, self.requests, self.duration_seconds
        );
        if !self.latency_ms.is_empty() {
            s += &format!(
                "  ack latency ms: p50 {:.2}  p95 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n",
                self.latency_ms["p50"],
                self.latency_ms["p95"],
                self.latency_ms["p99"],
                self.latency_ms["p99.9"],
                self.latency_ms["max"]
            );
        }
        if self.records_acked_by_protocol.len() > 1 {
            s += &format!(
                "  acked by protocol: {:?}\n",
                self.records_acked_by_protocol
            );
        }
        if !self.errors.is_empty() {
            s += &format!("  errors: {:?}\n", self.errors);
        }
        if let Some(srv) = &self.server {
            s += &format!(
                "  server: {:.1} CPU s, peak RSS {:.0} MiB, {} Parquet bytes = {:.1} bytes/record",
                srv.cpu_seconds, srv.peak_rss_mib, srv.parquet_bytes, srv.bytes_per_record
            );
        }
        if let Some(ns) = self.server_cpu_ns_per_record {
            s += &format!("\n  server CPU over the measured time: {ns:.0} ns per record");
        }
        s
    }
}
