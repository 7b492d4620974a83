//! Counters and histograms of the pipeline, rendered as Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::dataset::Dataset;

/// What happened to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Rejected,
}

impl Outcome {
    fn metric(self) -> &'static str {
        match self {
            Outcome::Accepted => "tally_records_accepted_total",
            Outcome::Duplicate => "tally_records_duplicate_total",
            Outcome::Rejected => "tally_records_rejected_total",
        }
    }
}

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bytes a job holds now, and the most it held since start-up.
#[derive(Debug, Default)]
pub struct MemoryUse {
    current: AtomicU64,
    peak: AtomicU64,
}

impl MemoryUse {
    pub fn set(&self, bytes: u64) {
        self.current.store(bytes, Ordering::Relaxed);
        self.peak.fetch_max(bytes, Ordering::Relaxed);
    }
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

/// A fixed-bucket histogram of seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in nanoseconds, to keep it an integer.
    sum_ns: AtomicU64,
}

const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Self::with_bounds(LATENCY_BOUNDS)
    }
}

impl Histogram {
    /// A histogram with these upper bounds (ascending).
    pub fn with_bounds(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        if let Some(i) = self.bounds.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Every metric the pipeline and its sinks keep.
#[derive(Debug, Default)]
pub struct Metrics {
    records: Mutex<BTreeMap<(Outcome, Dataset, String), u64>>,
    pub wal_fsync_seconds: Histogram,
    pub wal_bytes: Counter,
    pub parquet_files: [Counter; Dataset::COUNT],
    pub parquet_bytes: [Counter; Dataset::COUNT],
    pub parquet_rows: [Counter; Dataset::COUNT],
    pub compactions: [Counter; Dataset::COUNT],
    pub compaction_duplicates: [Counter; Dataset::COUNT],
    pub compaction_errors: Counter,
    /// What the compactor holds: merge batches, the writer's open row
    /// group, the rollups being built.
    pub compaction_memory: MemoryUse,
    /// Rows compactions read (every round of a merge counts its rows).
    pub compaction_rows: Counter,
    /// Rows per second of the running pass (of the last one when idle).
    pub compaction_rows_per_second: Gauge,
    /// Closed hours that wait for their compaction, and the end of the
    /// oldest (nanoseconds since the epoch, 0 when none waits).
    pub compaction_backlog_hours: Gauge,
    pub compaction_backlog_oldest_ns: Gauge,
    pub flush_errors: Counter,
    pub dedup_evictions: Counter,
    pub queue_full: Counter,
    pub damage_reports: Counter,
    pub damage_unread_entries: Counter,
    pub records_failing_schema: Counter,
    /// The background scrub: files and bytes it read, damaged files it
    /// found, passes it finished, and when the last one ended (Unix
    /// seconds, 0 before the first).
    pub scrub_files: Counter,
    pub scrub_bytes: Counter,
    pub scrub_damaged: Counter,
    pub scrub_passes: Counter,
    pub scrub_last_pass_end: Gauge,
    pub scrub_last_pass_ms: Gauge,
    /// Files read on first use whose checksum was checked, and damaged
    /// files found that way.
    pub checksum_files: Counter,
    pub checksum_damaged: Counter,
    /// Hours meter queries read from stored rollups, and from raw events.
    pub meter_hours_rolled: Counter,
    pub meter_hours_raw: Counter,
    /// Days meter queries merged into memory, from a stored day's rollup
    /// and from its stored hours.
    pub meter_days_stored: Counter,
    pub meter_days_merged: Counter,
    /// OTLP records by what they were: model calls (stored, or duplicates),
    /// records that are not calls, records refused; metric data points
    /// taken.
    pub otlp_calls: Counter,
    pub otlp_not_calls: Counter,
    pub otlp_rejected: Counter,
    pub otlp_points: Counter,
    /// Per meter: events of its type in rolled-up hours that it cannot
    /// read (value missing, or not a number where it needs one).
    pub meter_unreadable: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    pub fn count(&self, outcome: Outcome, dataset: Dataset, source: &str, n: u64) {
        if n == 0 {
            return;
        }
        *self
            .records
            .lock()
            .entry((outcome, dataset, source.to_string()))
            .or_default() += n;
    }

    /// Records of `dataset` with `outcome`, over all sources.
    pub fn total(&self, outcome: Outcome, dataset: Dataset) -> u64 {
        self.records
            .lock()
            .iter()
            .filter(|((o, d, _), _)| *o == outcome && *d == dataset)
            .map(|(_, n)| n)
            .sum()
    }

    /// Renders everything; `queue_depth` gives each dataset's queued rows.
    pub fn render(&self, queue_depth: impl Fn(Dataset) -> usize) -> String {
        let mut out = String::with_capacity(8192);
        let records = self.records.lock().clone();
        for outcome in [Outcome::Accepted, Outcome::Duplicate, Outcome::Rejected] {
            let name = outcome.metric();
            let _ = writeln!(
                out,
                "# HELP {name} Records by dataset and source.\n# TYPE {name} counter"
            );
            for ((o, d, s), n) in &records {
                if *o == outcome {
                    let _ = writeln!(out, "{name}{{dataset=\"{d}\",source=\"{s}\"}} {n}");
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP tally_queue_depth_rows Rows admitted and not yet in a Parquet file.\n# TYPE tally_queue_depth_rows gauge"
        );
        for d in Dataset::ALL {
            let _ = writeln!(
                out,
                "tally_queue_depth_rows{{dataset=\"{d}\"}} {}",
                queue_depth(d)
            );
        }
        self.wal_fsync_seconds.render(
            "tally_wal_fsync_duration_seconds",
            "Time of each WAL write + fsync (one per commit group).",
            &mut out,
        );
        let per_dataset: [(&str, &str, &[Counter; Dataset::COUNT]); 5] = [
            (
                "tally_compactions_total",
                "Hour partitions compacted into one file (with their rollups).",
                &self.compactions,
            ),
            (
                "tally_compaction_duplicates_dropped_total",
                "Rows a compaction dropped because a row with the same key was stored before.",
                &self.compaction_duplicates,
            ),
            (
                "tally_parquet_files_written_total",
                "Parquet files committed.",
                &self.parquet_files,
            ),
            (
                "tally_parquet_bytes_written_total",
                "Bytes of committed Parquet files.",
                &self.parquet_bytes,
            ),
            (
                "tally_parquet_rows_written_total",
                "Rows in committed Parquet files.",
                &self.parquet_rows,
            ),
        ];
        for (name, help, counters) in per_dataset {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for d in Dataset::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{dataset=\"{d}\"}} {}",
                    counters[d.index()].get()
                );
            }
        }
        let scalars = [
            (
                "tally_wal_bytes_written_total",
                "Bytes written to the WAL.",
                &self.wal_bytes,
            ),
            (
                "tally_flush_errors_total",
                "Failed Parquet flush rounds (retried).",
                &self.flush_errors,
            ),
            (
                "tally_dedup_evictions_total",
                "Dedup keys dropped from memory before the window ended because the key bound was hit (compaction still drops copies of them).",
                &self.dedup_evictions,
            ),
            (
                "tally_compaction_errors_total",
                "Hour compactions (and passes) that failed; the hour is tried again on the next pass.",
                &self.compaction_errors,
            ),
            (
                "tally_queue_full_total",
                "Ingest requests refused because a queue was full.",
                &self.queue_full,
            ),
            (
                "tally_damage_reports_total",
                "Damaged WAL segments, unreadable Parquet files and foreign files found and quarantined.",
                &self.damage_reports,
            ),
            (
                "tally_damage_unread_wal_entries_total",
                "WAL entries (frames) that damage made unreadable.",
                &self.damage_unread_entries,
            ),
            (
                "tally_records_failing_schema_total",
                "Records a source built that did not fit their dataset's schema (rejected at admission).",
                &self.records_failing_schema,
            ),
        ];
        let scrub: [(&str, &str, &Counter); 6] = [
            (
                "tally_scrub_files_total",
                "Stored Parquet files (raw and rollup) the background scrub read and checked against their checksums.",
                &self.scrub_files,
            ),
            (
                "tally_scrub_bytes_total",
                "Bytes the background scrub read.",
                &self.scrub_bytes,
            ),
            (
                "tally_scrub_damaged_files_total",
                "Damaged files the background scrub found (each is quarantined and reported).",
                &self.scrub_damaged,
            ),
            (
                "tally_scrub_passes_total",
                "Scrub passes over every stored file that finished.",
                &self.scrub_passes,
            ),
            (
                "tally_checksum_checked_files_total",
                "Files whose checksum a read checked the first time it used them since start-up.",
                &self.checksum_files,
            ),
            (
                "tally_checksum_damaged_files_total",
                "Damaged files reads found by their checksum (each is quarantined and reported).",
                &self.checksum_damaged,
            ),
        ];
        for (name, help, c) in scalars.into_iter().chain(scrub) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
        let _ = writeln!(
            out,
            "# HELP tally_compaction_rows_total Rows compactions read (each merge round counts its rows).\n# TYPE tally_compaction_rows_total counter\ntally_compaction_rows_total {}",
            self.compaction_rows.get()
        );
        let oldest = self.compaction_backlog_oldest_ns.get();
        let age = if oldest == 0 {
            0.0
        } else {
            (crate::now_ns() as f64 - oldest as f64).max(0.0) / 1e9
        };
        let gauges: [(&str, &str, String); 7] = [
            (
                "tally_scrub_last_pass_end_seconds",
                "When the last scrub pass ended (Unix seconds; 0 before the first).",
                self.scrub_last_pass_end.get().to_string(),
            ),
            (
                "tally_scrub_last_pass_seconds",
                "How long the last scrub pass took.",
                format!("{:.3}", self.scrub_last_pass_ms.get() as f64 / 1000.0),
            ),
            (
                "tally_compaction_memory_bytes",
                "Bytes the compactor holds now (merge batches, the open row group, rollups being built).",
                self.compaction_memory.current().to_string(),
            ),
            (
                "tally_compaction_memory_peak_bytes",
                "The most bytes the compactor held since start-up.",
                self.compaction_memory.peak().to_string(),
            ),
            (
                "tally_compaction_rows_per_second",
                "Rows per second of the running compaction pass (the last one when idle).",
                self.compaction_rows_per_second.get().to_string(),
            ),
            (
                "tally_compaction_backlog_hours",
                "Closed hour partitions waiting for their compaction.",
                self.compaction_backlog_hours.get().to_string(),
            ),
            (
                "tally_compaction_backlog_oldest_seconds",
                "Seconds since the end of the oldest hour waiting for its compaction (0 when none waits).",
                format!("{age:.0}"),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP tally_meter_query_hours_total Hours meter queries read, from stored rollups (rolled) or from raw events (raw).\n# TYPE tally_meter_query_hours_total counter\ntally_meter_query_hours_total{{read=\"rolled\"}} {}\ntally_meter_query_hours_total{{read=\"raw\"}} {}",
            self.meter_hours_rolled.get(),
            self.meter_hours_raw.get()
        );
        let _ = writeln!(
            out,
            "# HELP tally_meter_query_days_loaded_total Days meter queries loaded into memory (then kept), from the day's stored rollup (meter_daily) or merged from its stored hours.\n# TYPE tally_meter_query_days_loaded_total counter\ntally_meter_query_days_loaded_total{{from=\"day\"}} {}\ntally_meter_query_days_loaded_total{{from=\"hours\"}} {}",
            self.meter_days_stored.get(),
            self.meter_days_merged.get()
        );
        let _ = writeln!(
            out,
            "# HELP tally_otlp_records_total OTLP log records and spans by outcome: a model call taken (call), not a model call (not_a_call), a call or data point refused in partial_success (rejected).\n# TYPE tally_otlp_records_total counter\ntally_otlp_records_total{{outcome=\"call\"}} {}\ntally_otlp_records_total{{outcome=\"not_a_call\"}} {}\ntally_otlp_records_total{{outcome=\"rejected\"}} {}\n# HELP tally_otlp_data_points_total OTLP metric data points taken into otel_metrics (stored, or copies).\n# TYPE tally_otlp_data_points_total counter\ntally_otlp_data_points_total {}",
            self.otlp_calls.get(),
            self.otlp_not_calls.get(),
            self.otlp_rejected.get(),
            self.otlp_points.get()
        );
        let _ = writeln!(
            out,
            "# HELP tally_meter_unreadable_events Events of a meter's type, in rolled-up hours, that the meter cannot read: its valueProperty is missing or not a number. SQL: SELECT * FROM meter('slug') WHERE unreadable IS NOT NULL.\n# TYPE tally_meter_unreadable_events gauge"
        );
        for (meter, n) in self.meter_unreadable.lock().iter() {
            let _ = writeln!(
                out,
                "tally_meter_unreadable_events{{meter=\"{meter}\"}} {n}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(0.0002);
        h.observe(0.003);
        h.observe(5.0);
        let mut out = String::new();
        h.render("x", "help", &mut out);
        assert!(out.contains("x_bucket{le=\"0.00025\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn records_are_labelled_by_dataset_and_source() {
        let m = Metrics::default();
        m.count(Outcome::Accepted, Dataset::UsageLlm, "http", 3);
        m.count(Outcome::Accepted, Dataset::UsageLlm, "nats", 2);
        assert_eq!(m.total(Outcome::Accepted, Dataset::UsageLlm), 5);
        let text = m.render(|_| 7);
        assert!(
            text.contains("tally_records_accepted_total{dataset=\"usage_llm\",source=\"http\"} 3")
        );
        assert!(text.contains("tally_queue_depth_rows{dataset=\"vm_metrics\"} 7"));
    }
}
