//! billing.v1 semantics, independent of the wire protocol: validation,
//! records for `vm_metrics` and `vm_events`, fleet state and metrics.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, DictionaryArray, Int32Array, Int64Array, StringArray, TimestampNanosecondArray,
};
use arrow::datatypes::Int32Type;
use std::time::Instant;

use parking_lot::Mutex;
use tally_pipeline::access::limits::{OverRate, RateLimiter};
use tally_pipeline::access::Access;
use tally_pipeline::batch::Columns;
use tally_pipeline::clock::{DAY_NS, NS_PER_SEC};
use tally_pipeline::rules::vm::SAMPLE_VALUES;
use tally_pipeline::{
    now_ns, Dataset, IngestError, Pipeline, Record, RecordBuilder, Rejection, SchemaError, Value,
};
use tally_proto::billing::v1::{
    NotifyPossibleGapRequest, NotifyVmStartedRequest, NotifyVmStoppedRequest, SendHeartbeatRequest,
    SendMetricsBatchRequest,
};

use super::metrics::BillingMetrics;

/// At most this many samples per batch.
pub const MAX_BATCH: usize = 1000;
/// Samples may be stamped at most this far in the future.
const MAX_FUTURE_NS: i64 = DAY_NS;

/// An RPC failure with its Connect / gRPC code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RpcError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Unimplemented(String),
    /// The token may not write for this customer.
    #[error("{0}")]
    PermissionDenied(String),
    /// The customer is over its rate (`--customer-rate`).
    #[error("{0}")]
    OverRate(OverRate),
}

impl From<SchemaError> for RpcError {
    /// A row this service built does not fit its dataset: a defect of
    /// tally's, not of the request.
    fn from(e: SchemaError) -> Self {
        RpcError::Internal(format!("the row does not fit the schema: {e}"))
    }
}

impl RpcError {
    /// The Connect code name.
    pub fn code(&self) -> &'static str {
        match self {
            RpcError::InvalidArgument(_) => "invalid_argument",
            RpcError::ResourceExhausted(_) => "resource_exhausted",
            RpcError::Unavailable(_) => "unavailable",
            RpcError::Internal(_) => "internal",
            RpcError::Unimplemented(_) => "unimplemented",
            RpcError::PermissionDenied(_) => "permission_denied",
            RpcError::OverRate(_) => "resource_exhausted",
        }
    }

    /// When to try again, for `resource_exhausted`.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            RpcError::OverRate(e) => Some(e.retry_after.as_secs().max(1)),
            RpcError::ResourceExhausted(_) => Some(1),
            _ => None,
        }
    }
}

impl From<IngestError> for RpcError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::QueueFull(q) => RpcError::ResourceExhausted(q.to_string()),
            IngestError::Wal(w) => RpcError::Unavailable(w.to_string()),
            IngestError::Relay(r) => RpcError::Unavailable(r.to_string()),
        }
    }
}

/// What the service remembers of the fleet, for gap detection and
/// `billaged_active_vms`.
#[derive(Default)]
struct Fleet {
    /// Newest sample time per VM (ns).
    last_sample: HashMap<String, i64>,
    /// VMs started and not stopped.
    running: HashSet<String>,
    /// Latest heartbeat list per metald instance.
    heartbeats: HashMap<String, Vec<String>>,
    /// The customer of each VM seen in a batch or a start: stops and gap
    /// notices name only the VM.
    owner: HashMap<String, String>,
}

impl Fleet {
    fn active(&self) -> usize {
        let mut all: HashSet<&str> = self.running.iter().map(String::as_str).collect();
        all.extend(self.heartbeats.values().flatten().map(String::as_str));
        all.len()
    }
}

#[derive(Clone)]
pub struct BillingService {
    pipeline: Pipeline,
    /// `--customer-rate`: samples per second per customer.
    customer_limits: Option<Arc<RateLimiter>>,
    fleet: Arc<Mutex<Fleet>>,
    pub metrics: Arc<BillingMetrics>,
    gap_limit_ns: i64,
}

fn required(name: &str, v: &str) -> Result<(), RpcError> {
    if v.is_empty() {
        Err(RpcError::InvalidArgument(format!("{name} is required")))
    } else if v.len() > 1024 || v.contains('\0') {
        Err(RpcError::InvalidArgument(format!(
            "{name} must be at most 1024 bytes without NUL characters"
        )))
    } else {
        Ok(())
    }
}

fn required_time(name: &str, v: i64) -> Result<(), RpcError> {
    if v <= 0 {
        Err(RpcError::InvalidArgument(format!(
            "{name} is required (Unix time in nanoseconds, > 0), got {v}"
        )))
    } else {
        Ok(())
    }
}

/// Checks a batch; the first error names the field and the sample's index.
pub fn validate_batch(req: &SendMetricsBatchRequest, now: i64) -> Result<(), RpcError> {
    required("vm_id", &req.vm_id)?;
    required("customer_id", &req.customer_id)?;
    let n = req.metrics.len();
    if n == 0 || n > MAX_BATCH {
        return Err(RpcError::InvalidArgument(format!(
            "metrics must hold between 1 and {MAX_BATCH} samples, got {n}"
        )));
    }
    for (i, m) in req.metrics.iter().enumerate() {
        let Some(ts) = &m.timestamp else {
            return Err(RpcError::InvalidArgument(format!(
                "metrics[{i}].timestamp is required"
            )));
        };
        if !(0..NS_PER_SEC as i32).contains(&ts.nanos) || ts.seconds <= 0 {
            return Err(RpcError::InvalidArgument(format!(
                "metrics[{i}].timestamp must be after 1970 with nanos in 0..1e9, got {}s {}ns",
                ts.seconds, ts.nanos
            )));
        }
        let ns = timestamp_ns(ts).ok_or_else(|| {
            RpcError::InvalidArgument(format!("metrics[{i}].timestamp is out of range"))
        })?;
        if ns > now + MAX_FUTURE_NS {
            return Err(RpcError::InvalidArgument(format!(
                "metrics[{i}].timestamp is more than 24h in the future"
            )));
        }
        for (name, v) in [
            ("cpu_time_nanos", m.cpu_time_nanos),
            ("memory_usage_bytes", m.memory_usage_bytes),
            ("disk_read_bytes", m.disk_read_bytes),
            ("disk_write_bytes", m.disk_write_bytes),
            ("network_rx_bytes", m.network_rx_bytes),
            ("network_tx_bytes", m.network_tx_bytes),
        ] {
            if v < 0 {
                return Err(RpcError::InvalidArgument(format!(
                    "metrics[{i}].{name} must be >= 0, got {v}"
                )));
            }
        }
    }
    Ok(())
}

/// The `vm_metrics` rows of a validated batch, as columns, and its newest
/// sample time. Each sample is read once into the columns it fills; the
/// VM and customer are one dictionary value each, whatever the batch's
/// length. The columns are checked against the schema by name when
/// assembled.
pub fn batch_columns(req: &SendMetricsBatchRequest) -> Result<(Columns, i64), SchemaError> {
    let n = req.metrics.len();
    let mut times = Vec::with_capacity(n);
    let mut newest = i64::MIN;
    let mut counters: [Vec<i64>; 6] = std::array::from_fn(|_| Vec::with_capacity(n));
    for m in &req.metrics {
        let ts = m
            .timestamp
            .as_ref()
            .and_then(timestamp_ns)
            .unwrap_or_default();
        newest = newest.max(ts);
        times.push(ts);
        for (column, v) in counters.iter_mut().zip([
            m.cpu_time_nanos,
            m.memory_usage_bytes,
            m.disk_read_bytes,
            m.disk_write_bytes,
            m.network_rx_bytes,
            m.network_tx_bytes,
        ]) {
            column.push(v);
        }
    }
    let one = |v: &str| -> ArrayRef {
        Arc::new(DictionaryArray::<Int32Type>::new(
            Int32Array::from(vec![0; n]),
            Arc::new(StringArray::from(vec![v])),
        ))
    };
    let mut columns: Vec<(&str, ArrayRef)> = vec![
        ("customer_id", one(&req.customer_id)),
        ("vm_id", one(&req.vm_id)),
        (
            "timestamp",
            Arc::new(TimestampNanosecondArray::from(times).with_timezone("UTC")),
        ),
    ];
    // The counters were pushed in the order of the sample's fields, which
    // is the order of SAMPLE_VALUES.
    for (name, values) in SAMPLE_VALUES.into_iter().zip(counters) {
        columns.push((name, Arc::new(Int64Array::from(values))));
    }
    Ok((Columns::assemble(Dataset::VmMetrics, n, columns)?, newest))
}

pub fn timestamp_ns(ts: &prost_types::Timestamp) -> Option<i64> {
    ts.seconds
        .checked_mul(NS_PER_SEC)?
        .checked_add(ts.nanos as i64)
}

/// The optional columns of a `vm_events` row.
#[derive(Default)]
struct VmEvent<'a> {
    vm_id: Option<&'a str>,
    customer_id: Option<&'a str>,
    instance_id: Option<&'a str>,
    active_vms: Option<String>,
    event_time: Option<i64>,
    last_sent: Option<i64>,
    resume_time: Option<i64>,
}

impl VmEvent<'_> {
    fn record(self, event_id: String, kind: &str, now: i64) -> Result<Record, SchemaError> {
        let t = |v: Option<i64>| v.map(Value::Ts).unwrap_or(Value::Null);
        let mut r = RecordBuilder::new(Dataset::VmEvents);
        r.set("event_id", event_id)
            .set("timestamp", Value::Ts(now))
            .set("kind", kind)
            .set("vm_id", self.vm_id)
            .set("customer_id", self.customer_id)
            .set("instance_id", self.instance_id)
            .set("active_vms", self.active_vms)
            .set("event_time", t(self.event_time))
            .set("last_sent", t(self.last_sent))
            .set("resume_time", t(self.resume_time));
        r.build()
    }
}

impl BillingService {
    pub fn new(pipeline: Pipeline) -> Self {
        Self {
            pipeline,
            customer_limits: None,
            fleet: Arc::new(Mutex::new(Fleet::default())),
            metrics: Arc::new(BillingMetrics::default()),
            gap_limit_ns: tally_pipeline::rollup::VM_GAP_LIMIT_SECS as i64 * NS_PER_SEC,
        }
    }

    /// Holds each customer to `limits` samples per second.
    pub fn with_customer_limits(mut self, limits: Option<RateLimiter>) -> Self {
        self.customer_limits = limits.map(Arc::new);
        self
    }

    /// Whether `access` may write for `customer_id`.
    fn check_customer(access: &Access, customer_id: &str) -> Result<(), RpcError> {
        match access.refuse_write("customer_id", Some(customer_id)) {
            None => Ok(()),
            Some(reason) => Err(RpcError::PermissionDenied(reason)),
        }
    }

    /// Whether `access` may write for the VM's customer, when this server
    /// has seen it (a VM never seen in a batch or a start is let through:
    /// its customer is unknown here).
    fn check_vm(&self, access: &Access, vm_id: &str) -> Result<(), RpcError> {
        if access.all_tenants() {
            return Ok(());
        }
        let owner = self.fleet.lock().owner.get(vm_id).cloned();
        match owner {
            Some(customer) => Self::check_customer(access, &customer),
            None => Ok(()),
        }
    }

    async fn store(&self, source: &str, records: Vec<Record>) -> Result<(usize, usize), RpcError> {
        let report = self.pipeline.ingest(source, records, Vec::new()).await?;
        Ok((report.accepted, report.duplicates))
    }

    /// Keeps a refused request in `rejected` (best effort: the caller's
    /// answer is the error either way).
    async fn reject(&self, source: &str, what: &str, payload: String, e: &RpcError) {
        let rejection = Rejection {
            index: None,
            subject: Some(format!("billing.v1.BillingService/{what}")),
            dataset: Some(if what == "SendMetricsBatch" {
                Dataset::VmMetrics
            } else {
                Dataset::VmEvents
            }),
            reason: e.to_string(),
            payload,
        };
        if let Err(err) = self
            .pipeline
            .ingest(source, Vec::new(), vec![rejection])
            .await
        {
            tracing::warn!(error = %err, "could not keep a refused billing request in `rejected`");
        }
    }

    pub async fn send_metrics_batch(
        &self,
        source: &str,
        access: &Access,
        req: SendMetricsBatchRequest,
    ) -> Result<String, RpcError> {
        let started = Instant::now();
        let now = now_ns();
        if let Err(e) = validate_batch(&req, now) {
            let payload = format!(
                "{{\"vm_id\":{:?},\"customer_id\":{:?},\"samples\":{}}}",
                req.vm_id,
                req.customer_id,
                req.metrics.len()
            );
            self.reject(source, "SendMetricsBatch", payload, &e).await;
            return Err(e);
        }
        Self::check_customer(access, &req.customer_id)?;
        let n = req.metrics.len();
        if let Some(limits) = &self.customer_limits {
            limits
                .take(&req.customer_id, n as u64)
                .map_err(RpcError::OverRate)?;
        }
        let (columns, newest) = batch_columns(&req)?;
        let report = self
            .pipeline
            .ingest_columns(source, columns, Vec::new())
            .await?;
        let (accepted, duplicates) = (report.accepted, report.duplicates);
        {
            let mut fleet = self.fleet.lock();
            let last = fleet.last_sample.entry(req.vm_id.clone()).or_insert(newest);
            *last = (*last).max(newest);
            fleet.owner.insert(req.vm_id, req.customer_id);
        }
        self.metrics.processed.add(accepted as u64);
        self.metrics.batch_size.observe(n as f64);
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        Ok(if duplicates > 0 {
            format!("processed {accepted} metrics, {duplicates} duplicates ignored")
        } else {
            format!("processed {accepted} metrics")
        })
    }

    pub async fn send_heartbeat(
        &self,
        source: &str,
        req: SendHeartbeatRequest,
    ) -> Result<(), RpcError> {
        let now = now_ns();
        if let Err(e) = required("instance_id", &req.instance_id) {
            self.reject(source, "SendHeartbeat", format!("{req:?}"), &e)
                .await;
            return Err(e);
        }
        if let Some(i) = req.active_vms.iter().position(|v| v.is_empty()) {
            let e = RpcError::InvalidArgument(format!("active_vms[{i}] must not be empty"));
            self.reject(source, "SendHeartbeat", format!("{req:?}"), &e)
                .await;
            return Err(e);
        }
        let list = serde_json::to_string(&req.active_vms).unwrap_or_default();
        let mut records = vec![VmEvent {
            instance_id: Some(&req.instance_id),
            active_vms: Some(list),
            ..Default::default()
        }
        .record(
            format!("heartbeat:{}:{now}", req.instance_id),
            "heartbeat",
            now,
        )?];
        {
            let mut fleet = self.fleet.lock();
            for vm in &req.active_vms {
                if let Some(&last) = fleet.last_sample.get(vm) {
                    if now - last > self.gap_limit_ns {
                        // Keyed by the last sample: one gap per silence, however
                        // many heartbeats notice it.
                        records.push(
                            VmEvent {
                                vm_id: Some(vm),
                                instance_id: Some(&req.instance_id),
                                last_sent: Some(last),
                                ..Default::default()
                            }
                            .record(
                                format!("gap_detected:{vm}:{last}"),
                                "gap_detected",
                                now,
                            )?,
                        );
                    }
                }
            }
            fleet
                .heartbeats
                .insert(req.instance_id.clone(), req.active_vms.clone());
            self.metrics.active_vms.set(fleet.active() as u64);
        }
        self.store(source, records).await.map(|_| ())
    }

    pub async fn notify_vm_started(
        &self,
        source: &str,
        access: &Access,
        req: NotifyVmStartedRequest,
    ) -> Result<(), RpcError> {
        let now = now_ns();
        let check = required("vm_id", &req.vm_id)
            .and_then(|_| required("customer_id", &req.customer_id))
            .and_then(|_| required_time("start_time", req.start_time));
        if let Err(e) = check {
            self.reject(source, "NotifyVmStarted", format!("{req:?}"), &e)
                .await;
            return Err(e);
        }
        Self::check_customer(access, &req.customer_id)?;
        let r = VmEvent {
            vm_id: Some(&req.vm_id),
            customer_id: Some(&req.customer_id),
            event_time: Some(req.start_time),
            ..Default::default()
        }
        .record(
            format!("started:{}:{}", req.vm_id, req.start_time),
            "started",
            now,
        )?;
        self.store(source, vec![r]).await?;
        let mut fleet = self.fleet.lock();
        fleet.owner.insert(req.vm_id.clone(), req.customer_id);
        fleet.running.insert(req.vm_id);
        self.metrics.active_vms.set(fleet.active() as u64);
        Ok(())
    }

    pub async fn notify_vm_stopped(
        &self,
        source: &str,
        access: &Access,
        req: NotifyVmStoppedRequest,
    ) -> Result<(), RpcError> {
        let now = now_ns();
        let check =
            required("vm_id", &req.vm_id).and_then(|_| required_time("stop_time", req.stop_time));
        if let Err(e) = check {
            self.reject(source, "NotifyVmStopped", format!("{req:?}"), &e)
                .await;
            return Err(e);
        }
        self.check_vm(access, &req.vm_id)?;
        let r = VmEvent {
            vm_id: Some(&req.vm_id),
            event_time: Some(req.stop_time),
            ..Default::default()
        }
        .record(
            format!("stopped:{}:{}", req.vm_id, req.stop_time),
            "stopped",
            now,
        )?;
        self.store(source, vec![r]).await?;
        let mut fleet = self.fleet.lock();
        fleet.running.remove(&req.vm_id);
        self.metrics.active_vms.set(fleet.active() as u64);
        Ok(())
    }

    pub async fn notify_possible_gap(
        &self,
        source: &str,
        access: &Access,
        req: NotifyPossibleGapRequest,
    ) -> Result<(), RpcError> {
        let now = now_ns();
        let check = required("vm_id", &req.vm_id)
            .and_then(|_| required_time("last_sent", req.last_sent))
            .and_then(|_| required_time("resume_time", req.resume_time))
            .and_then(|_| {
                if req.resume_time < req.last_sent {
                    Err(RpcError::InvalidArgument(format!(
                        "resume_time ({}) must not be before last_sent ({})",
                        req.resume_time, req.last_sent
                    )))
                } else {
                    Ok(())
                }
            });
        if let Err(e) = check {
            self.reject(source, "NotifyPossibleGap", format!("{req:?}"), &e)
                .await;
            return Err(e);
        }
        self.check_vm(access, &req.vm_id)?;
        let r = VmEvent {
            vm_id: Some(&req.vm_id),
            last_sent: Some(req.last_sent),
            resume_time: Some(req.resume_time),
            ..Default::default()
        }
        .record(
            format!(
                "possible_gap:{}:{}:{}",
                req.vm_id, req.last_sent, req.resume_time
            ),
            "possible_gap",
            now,
        )?;
        self.store(source, vec![r]).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_proto::billing::v1::VmMetrics;

    fn sample(secs: i64) -> VmMetrics {
        VmMetrics {
            timestamp: Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            cpu_time_nanos: 1,
            memory_usage_bytes: 1,
            disk_read_bytes: 1,
            disk_write_bytes: 1,
            network_rx_bytes: 1,
            network_tx_bytes: 1,
        }
    }

    fn batch(metrics: Vec<VmMetrics>) -> SendMetricsBatchRequest {
        SendMetricsBatchRequest {
            vm_id: "vm".into(),
            customer_id: "c".into(),
            metrics,
        }
    }

    fn err(req: &SendMetricsBatchRequest) -> String {
        validate_batch(req, 2_000_000_000 * NS_PER_SEC)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn validation_names_the_field_and_the_index() {
        let mut b = batch((0..20).map(|i| sample(1_700_000_000 + i)).collect());
        assert!(validate_batch(&b, 2_000_000_000 * NS_PER_SEC).is_ok());
        b.metrics[17].timestamp = None;
        assert_eq!(err(&b), "metrics[17].timestamp is required");
        b.metrics[17] = sample(1_700_000_000);
        b.metrics[3].disk_write_bytes = -5;
        assert_eq!(err(&b), "metrics[3].disk_write_bytes must be >= 0, got -5");
        b.metrics[3] = sample(2_000_000_000 + 25 * 3600);
        assert_eq!(
            err(&b),
            "metrics[3].timestamp is more than 24h in the future"
        );
        assert_eq!(
            err(&batch(vec![])),
            "metrics must hold between 1 and 1000 samples, got 0"
        );
        assert_eq!(
            err(&batch(
                (0..1001).map(|i| sample(1_700_000_000 + i)).collect()
            )),
            "metrics must hold between 1 and 1000 samples, got 1001"
        );
        let mut no_vm = batch(vec![sample(1_700_000_000)]);
        no_vm.vm_id.clear();
        assert_eq!(err(&no_vm), "vm_id is required");
    }
}
