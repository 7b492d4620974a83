//! billing.v1 semantics, independent of the wire protocol: validation,
//! the rows of `vm_metrics` and `vm_events`, fleet state and metrics.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use std::time::Instant;

use parking_lot::Mutex;
use tally_pipeline::access::limits::RateLimiter;
use tally_pipeline::access::Access;
use tally_pipeline::batch::{Cell, Row, Rows};
use tally_pipeline::clock::NS_PER_SEC;
use tally_pipeline::{now_ns, Dataset, Pipeline, Rejection, SchemaError};
use tally_proto::billing::v1::{
    NotifyPossibleGapRequest, NotifyVmStartedRequest, NotifyVmStoppedRequest, SendHeartbeatRequest,
};

use super::batch::{required, MetricsBatch};
use super::error::RpcError;
use super::metrics::BillingMetrics;

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

fn required_time(name: &str, v: i64) -> Result<(), RpcError> {
    if v <= 0 {
        Err(RpcError::InvalidArgument(format!(
            "{name} is required (Unix time in nanoseconds, > 0), got {v}"
        )))
    } else {
        Ok(())
    }
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
    /// Appends the event to `rows` (of `vm_events`) by column name,
    /// checked as it joins them.
    fn push(
        self,
        rows: &mut Rows,
        event_id: &str,
        kind: &str,
        now: i64,
    ) -> Result<(), SchemaError> {
        let t = |v: Option<i64>| v.map_or(Cell::Null, Cell::Ts);
        let mut r = Row::new(Dataset::VmEvents);
        r.set("event_id", event_id)
            .set("timestamp", Cell::Ts(now))
            .set("kind", kind)
            .set("vm_id", self.vm_id)
            .set("customer_id", self.customer_id)
            .set("instance_id", self.instance_id)
            .set("active_vms", self.active_vms)
            .set("event_time", t(self.event_time))
            .set("last_sent", t(self.last_sent))
            .set("resume_time", t(self.resume_time));
        rows.push(&r)
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

    async fn store(&self, source: &str, rows: Rows) -> Result<(usize, usize), RpcError> {
        let report = self
            .pipeline
            .ingest_columns(source, rows.finish(), Vec::new())
            .await?;
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
        batch: MetricsBatch,
    ) -> Result<String, RpcError> {
        let started = Instant::now();
        let now = now_ns();
        if let Err(e) = batch.validate(now) {
            self.reject(source, "SendMetricsBatch", batch.summary(), &e)
                .await;
            return Err(e);
        }
        Self::check_customer(access, &batch.customer_id)?;
        let n = batch.samples.len();
        if let Some(limits) = &self.customer_limits {
            limits
                .take(&batch.customer_id, n as u64)
                .map_err(RpcError::OverRate)?;
        }
        let (vm_id, customer_id) = (batch.vm_id.clone(), batch.customer_id.clone());
        let (columns, newest) = batch.into_columns()?;
        let report = self
            .pipeline
            .ingest_columns(source, columns, Vec::new())
            .await?;
        let (accepted, duplicates) = (report.accepted, report.duplicates);
        {
            let mut fleet = self.fleet.lock();
            let last = fleet.last_sample.entry(vm_id.clone()).or_insert(newest);
            *last = (*last).max(newest);
            fleet.owner.insert(vm_id, customer_id);
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
        let mut rows = Rows::new(Dataset::VmEvents, 1 + req.active_vms.len());
        VmEvent {
            instance_id: Some(&req.instance_id),
            active_vms: Some(list),
            ..Default::default()
        }
        .push(
            &mut rows,
            &format!("heartbeat:{}:{now}", req.instance_id),
            "heartbeat",
            now,
        )?;
        {
            let mut fleet = self.fleet.lock();
            for vm in &req.active_vms {
                if let Some(&last) = fleet.last_sample.get(vm) {
                    if now - last > self.gap_limit_ns {
                        // Keyed by the last sample: one gap per silence, however
                        // many heartbeats notice it.
                        VmEvent {
                            vm_id: Some(vm),
                            instance_id: Some(&req.instance_id),
                            last_sent: Some(last),
                            ..Default::default()
                        }
                        .push(
                            &mut rows,
                            &format!("gap_detected:{vm}:{last}"),
                            "gap_detected",
                            now,
                        )?;
                    }
                }
            }
            fleet
                .heartbeats
                .insert(req.instance_id.clone(), req.active_vms.clone());
            self.metrics.active_vms.set(fleet.active() as u64);
        }
        self.store(source, rows).await.map(|_| ())
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
        let mut rows = Rows::new(Dataset::VmEvents, 1);
        VmEvent {
            vm_id: Some(&req.vm_id),
            customer_id: Some(&req.customer_id),
            event_time: Some(req.start_time),
            ..Default::default()
        }
        .push(
            &mut rows,
            &format!("started:{}:{}", req.vm_id, req.start_time),
            "started",
            now,
        )?;
        self.store(source, rows).await?;
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
        let mut rows = Rows::new(Dataset::VmEvents, 1);
        VmEvent {
            vm_id: Some(&req.vm_id),
            event_time: Some(req.stop_time),
            ..Default::default()
        }
        .push(
            &mut rows,
            &format!("stopped:{}:{}", req.vm_id, req.stop_time),
            "stopped",
            now,
        )?;
        self.store(source, rows).await?;
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
        let mut rows = Rows::new(Dataset::VmEvents, 1);
        VmEvent {
            vm_id: Some(&req.vm_id),
            last_sent: Some(req.last_sent),
            resume_time: Some(req.resume_time),
            ..Default::default()
        }
        .push(
            &mut rows,
            &format!(
                "possible_gap:{}:{}:{}",
                req.vm_id, req.last_sent, req.resume_time
            ),
            "possible_gap",
            now,
        )?;
        self.store(source, rows).await.map(|_| ())
    }
}
