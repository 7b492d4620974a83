//! The billing service's Prometheus metrics, under the names of README "billing.v1".

use std::fmt::Write;

use tally_pipeline::metrics::{Counter, Gauge, Histogram};

const BATCH_BOUNDS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 600.0, 750.0, 1000.0];

#[derive(Debug)]
pub struct BillingMetrics {
    pub processed: Counter,
    pub batch_size: Histogram,
    pub duration: Histogram,
    pub active_vms: Gauge,
}

impl Default for BillingMetrics {
    fn default() -> Self {
        Self {
            processed: Counter::default(),
            batch_size: Histogram::with_bounds(BATCH_BOUNDS),
            duration: Histogram::default(),
            active_vms: Gauge::default(),
        }
    }
}

impl BillingMetrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP billaged_metrics_processed_total VM metric samples stored.\n# TYPE billaged_metrics_processed_total counter\nbillaged_metrics_processed_total {}",
            self.processed.get()
        );
        self.batch_size.render(
            "billaged_batch_size_histogram",
            "Samples per SendMetricsBatch request.",
            &mut out,
        );
        self.duration.render(
            "billaged_processing_duration_seconds",
            "SendMetricsBatch time from request to durable acknowledgement.",
            &mut out,
        );
        let _ = writeln!(
            out,
            "# HELP billaged_active_vms VMs started and not stopped, or listed in a metald heartbeat.\n# TYPE billaged_active_vms gauge\nbillaged_active_vms {}",
            self.active_vms.get()
        );
        out
    }
}
