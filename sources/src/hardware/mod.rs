//! The hardware sampler: CPU, RAM and (when a driver is there) GPU of this
//! host, every interval, into `host_usage` and onto the `/usage` WebSocket
//! stream (`stream.rs`).

pub mod gpu;

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Map, Value as Json};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
use tally_pipeline::batch::{Cell, Row, Rows};
use tally_pipeline::clock::NS_PER_SEC;
use tally_pipeline::component::{Component, Context, Handle};
use tally_pipeline::metrics::Outcome;
use tally_pipeline::{now_ns, Dataset, Pipeline};
use tokio::sync::watch;

use gpu::{GpuInfo, GpuProbe, GpuTotals, GpuUnavailable};

pub const SOURCE: &str = "sampler";
/// CPU usage needs two refreshes at least this far apart.
pub const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// What does not change while tally runs.
#[derive(Debug, Clone)]
pub struct HostInfo {
    pub hostname: String,
    pub cpu_model: String,
    pub cpu_count: usize,
    pub ram_total_mb: u64,
    pub gpus: Vec<GpuInfo>,
}

impl HostInfo {
    /// The `system_info` message (README "Host telemetry and the /usage WebSocket"); GPU fields only with GPU telemetry.
    pub fn system_info(&self) -> Json {
        let mut m = Map::new();
        m.insert("type".into(), json!("system_info"));
        m.insert("cpu_count".into(), json!(self.cpu_count));
        m.insert("cpu_model".into(), json!(self.cpu_model));
        m.insert("ram_total_mb".into(), json!(self.ram_total_mb));
        if !self.gpus.is_empty() {
            m.insert("gpu_count".into(), json!(self.gpus.len()));
            m.insert("gpus".into(), json!(self.gpus));
        }
        m.insert("hostname".into(), json!(self.hostname));
        m.insert("timestamp".into(), json!(now_ns() / NS_PER_SEC));
        Json::Object(m)
    }
}

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSample {
    pub timestamp_ns: i64,
    pub cpu_percent: f64,
    pub ram_used_mb: u64,
    pub ram_total_mb: u64,
    pub gpu: Option<GpuTotals>,
}

impl HostSample {
    pub fn ram_percent(&self) -> f64 {
        if self.ram_total_mb == 0 {
            0.0
        } else {
            self.ram_used_mb as f64 * 100.0 / self.ram_total_mb as f64
        }
    }

    /// The sample as a row of `host_usage`, by column name (checked where
    /// it joins its columns).
    pub fn row<'a>(&self, hostname: &'a str) -> Row<'a> {
        let mut r = Row::new(Dataset::HostUsage);
        r.set("hostname", hostname)
            .set("timestamp", Cell::Ts(self.timestamp_ns))
            .set("cpu_percent", self.cpu_percent)
            .set("ram_percent", self.ram_percent())
            .set("ram_used_mb", self.ram_used_mb as i64)
            .set("ram_total_mb", self.ram_total_mb as i64)
            .set("gpu_percent", self.gpu.map(|g| g.percent))
            .set("gpu_mem_used_mb", self.gpu.map(|g| g.mem_used_mb as i64))
            .set("gpu_mem_total_mb", self.gpu.map(|g| g.mem_total_mb as i64));
        r
    }

    /// The `usage_update` message (README "Host telemetry and the /usage WebSocket") with tally's ingest rates.
    pub fn usage_update(&self, rates: &Map<String, Json>) -> Json {
        let round1 = |x: f64| (x * 10.0).round() / 10.0;
        let mut m = Map::new();
        m.insert("type".into(), json!("usage_update"));
        m.insert("cpu_percent".into(), json!(round1(self.cpu_percent)));
        m.insert("ram_percent".into(), json!(round1(self.ram_percent())));
        m.insert("ram_used_mb".into(), json!(self.ram_used_mb));
        m.insert("ram_total_mb".into(), json!(self.ram_total_mb));
        if let Some(g) = self.gpu {
            m.insert("gpu_percent".into(), json!(round1(g.percent)));
            m.insert("gpu_mem_used_mb".into(), json!(g.mem_used_mb));
            m.insert("gpu_mem_total_mb".into(), json!(g.mem_total_mb));
        }
        m.insert("timestamp".into(), json!(self.timestamp_ns / NS_PER_SEC));
        m.insert("message_rates".into(), Json::Object(rates.clone()));
        Json::Object(m)
    }
}

/// The host sampler cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("cannot read host statistics: {0}")]
    HostStats(String),
}

const SAMPLER_INTERVAL: Duration = Duration::from_secs(1);

/// The host sampler's settings (`[sampler]` in `tally.toml`).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Host sampler (/usage, host_metrics)")]
pub struct SamplerArgs {
    #[arg(help = tally_pipeline::config::help("Sample CPU, RAM and GPU this often.", tally_pipeline::config::show_duration(SAMPLER_INTERVAL)), id = "sampler_interval",
        value_name = "DURATION", long = "sampler-interval", env = "TALLY_SAMPLER_INTERVAL", value_parser = tally_pipeline::duration::parse_duration)]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub interval: Option<std::time::Duration>,

    /// Do not sample the host (`/usage` still answers system_info).
    #[arg(
        id = "no_sampler",
        value_name = "BOOL",
        long = "no-sampler",
        env = "TALLY_NO_SAMPLER",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    #[serde(default)]
    pub off: Option<bool>,
}

impl SamplerArgs {
    /// The sampling interval, `None` when the sampler is off.
    pub fn resolve(
        &self,
    ) -> Result<Option<std::time::Duration>, tally_pipeline::config::ConfigError> {
        if self.off.unwrap_or(false) {
            return Ok(None);
        }
        let interval = self.interval.unwrap_or(SAMPLER_INTERVAL);
        if interval < std::time::Duration::from_millis(200) {
            return Err(tally_pipeline::config::ConfigError::new(
                "sampler.interval",
                "sampler_interval must be at least 200ms (CPU usage needs two readings that far apart)",
            ));
        }
        Ok(Some(interval))
    }
}

/// One long-lived `System`, refreshed narrowly (CPU usage and RAM only).
pub struct HostSampler {
    system: System,
    gpu: Option<Box<dyn GpuProbe>>,
    pub info: HostInfo,
    /// Why there is no GPU telemetry, when there is none.
    pub gpu_absent: Option<String>,
}

impl HostSampler {
    pub fn new(gpu: Result<Box<dyn GpuProbe>, GpuUnavailable>) -> Result<Self, SamplerError> {
        let kinds = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        let mut system = System::new_with_specifics(kinds)
            .map_err(|e| SamplerError::HostStats(e.to_string()))?;
        system.refresh_cpu_usage();
        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let cpus = system.cpus();
        let (gpu, gpu_absent) = match gpu {
            Ok(g) => (Some(g), None),
            Err(why) => (None, Some(why.0)),
        };
        let info = HostInfo {
            hostname: System::host_name().unwrap_or_else(|_| "unknown".into()),
            cpu_model: cpus
                .first()
                .map(|c| c.brand().trim().to_string())
                .unwrap_or_default(),
            cpu_count: cpus.len(),
            ram_total_mb: system.total_memory() >> 20,
            gpus: gpu.as_ref().map(|g| g.gpus().to_vec()).unwrap_or_default(),
        };
        Ok(Self {
            system,
            gpu,
            info,
            gpu_absent,
        })
    }

    /// Takes a sample; call at least [`MIN_INTERVAL`] after the previous one.
    pub fn sample(&mut self) -> HostSample {
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        HostSample {
            timestamp_ns: now_ns(),
            cpu_percent: self.system.global_cpu_usage() as f64,
            ram_used_mb: self.system.used_memory() >> 20,
            ram_total_mb: self.system.total_memory() >> 20,
            gpu: self.gpu.as_ref().and_then(|g| gpu::totals(&g.read())),
        }
    }
}

pub use tally_pipeline::host::HostUpdate as Update;

/// Ingest rates per dataset from the accepted-record counters.
struct Rates {
    last: [u64; Dataset::COUNT],
    at: Instant,
}

impl Rates {
    fn new(pipeline: &Pipeline) -> Self {
        let mut last = [0; Dataset::COUNT];
        for d in Dataset::ALL {
            last[d.index()] = pipeline.metrics().total(Outcome::Accepted, d);
        }
        Self {
            last,
            at: Instant::now(),
        }
    }

    fn next(&mut self, pipeline: &Pipeline) -> Map<String, Json> {
        let secs = self.at.elapsed().as_secs_f64().max(1e-3);
        self.at = Instant::now();
        let mut m = Map::new();
        let mut total = 0.0;
        let mut per = Vec::new();
        for d in Dataset::ALL {
            let now = pipeline.metrics().total(Outcome::Accepted, d);
            let rate = (now - self.last[d.index()]) as f64 / secs;
            self.last[d.index()] = now;
            total += rate;
            per.push((format!("{}_per_sec", d.name()), rate));
        }
        let round1 = |x: f64| (x * 10.0).round() / 10.0;
        m.insert("total_per_sec".into(), json!(round1(total)));
        for (k, v) in per {
            m.insert(k, json!(round1(v)));
        }
        m
    }
}

/// Samples every `interval` until `stop`: stores each sample in
/// `host_usage` and publishes it on `updates`.
/// What the rest of tally keeps of the sampler: the `/usage` feed it
/// drives, and its status.
pub struct Sampling {
    pub feed: tally_pipeline::host::UsageFeed,
    /// CPU time of the sampler's last tick, for `/metrics`.
    pub tick_cost: Arc<Mutex<Duration>>,
    /// GPU telemetry status for `/health`, when the sampler runs.
    pub gpu_status: Option<Json>,
}

/// The host sampler, every `interval` (`None`: off; `/usage` still answers
/// `system_info`).
pub struct Sampler {
    pub interval: Option<Duration>,
}

#[async_trait::async_trait]
impl Component for Sampler {
    const NAME: &'static str = "host sampler";
    type Running = Sampling;
    type Error = std::convert::Infallible;

    async fn start(self, ctx: &Context) -> Result<(Handle, Sampling), Self::Error> {
        Ok(start(self.interval, ctx).await)
    }
}

async fn start(interval: Option<Duration>, ctx: &Context) -> (Handle, Sampling) {
    let (updates_tx, updates_rx) = watch::channel(None);
    let tick_cost = Arc::new(Mutex::new(Duration::ZERO));
    let sampler = match interval {
        Some(_) => {
            let gpu = tokio::task::spawn_blocking(gpu::open)
                .await
                .unwrap_or_else(|e| Err(GpuUnavailable(format!("probing NVML failed: {e}"))));
            match HostSampler::new(gpu) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "hardware sampler disabled");
                    None
                }
            }
        }
        None => None,
    };
    let host = sampler.as_ref().map(|s| s.info.clone());
    let gpu_absent = sampler.as_ref().and_then(|s| s.gpu_absent.clone());
    if let Some(why) = &gpu_absent {
        tracing::info!(reason = %why, "no GPU telemetry; GPU fields are left out");
    }
    let gpu_status = host.as_ref().map(|h| match &gpu_absent {
        None => json!({"status": "ok", "count": h.gpus.len()}),
        Some(why) => json!({"status": "absent", "detail": why}),
    });
    let handle = match (sampler, interval) {
        (Some(sampler), Some(interval)) => {
            let task = tokio::spawn(run(
                sampler,
                interval,
                ctx.pipeline.clone(),
                updates_tx,
                tick_cost.clone(),
                ctx.stop.clone(),
            ));
            Handle::Task(task)
        }
        _ => {
            // No sampler sends updates: `/usage` stays open until the stop.
            let mut stop = ctx.stop.clone();
            Handle::Task(tokio::spawn(async move {
                let _ = stop.wait_for(|s| *s).await;
                drop(updates_tx);
            }))
        }
    };
    let feed = tally_pipeline::host::UsageFeed {
        system_info: Arc::new(move || match &host {
            Some(h) => h.system_info().to_string(),
            None => json!({"type": "system_info", "timestamp": now_ns() / NS_PER_SEC}).to_string(),
        }),
        updates: updates_rx,
    };
    (
        handle,
        Sampling {
            feed,
            tick_cost,
            gpu_status,
        },
    )
}

pub async fn run(
    mut sampler: HostSampler,
    interval: Duration,
    pipeline: Pipeline,
    updates: watch::Sender<Option<Update>>,
    tick_cost: Arc<Mutex<Duration>>,
    mut stop: watch::Receiver<bool>,
) {
    let interval = interval.max(MIN_INTERVAL);
    let mut rates = Rates::new(&pipeline);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let started = Instant::now();
        let sample = sampler.sample();
        let update = sample.usage_update(&rates.next(&pipeline));
        seq += 1;
        updates.send_replace(Some(Update {
            seq,
            json: update.to_string().into(),
        }));
        *tick_cost.lock() = started.elapsed();
        let mut rows = Rows::new(Dataset::HostUsage, 1);
        if let Err(e) = rows.push(&sample.row(&sampler.info.hostname)) {
            tracing::error!(error = %e, "host sample does not fit host_usage; not stored");
            continue;
        }
        if let Err(e) = pipeline
            .ingest_columns(SOURCE, rows.finish(), Vec::new())
            .await
        {
            tracing::debug!(error = %e, "host sample not stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_sample_has_plausible_values_and_no_gpu_fields() {
        let mut s =
            HostSampler::new(Err(gpu::GpuUnavailable("no GPU in this test".into()))).unwrap();
        std::thread::sleep(MIN_INTERVAL);
        let sample = s.sample();
        assert!(s.info.cpu_count >= 1);
        assert!(s.info.ram_total_mb > 0);
        assert!((0.0..=100.0).contains(&sample.cpu_percent), "{sample:?}");
        assert!(sample.ram_used_mb <= sample.ram_total_mb);
        let update = sample.usage_update(&Map::new());
        assert!(update.get("gpu_percent").is_none());
        assert!(s.info.system_info().get("gpus").is_none());
        let r = sample.row(&s.info.hostname);
        r.check().unwrap();
        let gpu = Dataset::HostUsage.column_index("gpu_percent").unwrap();
        assert_eq!(r.cell(gpu), &Cell::Null);
    }
}
